import re

from django.contrib.auth import views as auth_views
from django.urls import path, re_path
from django.views.generic import RedirectView

from streaming import arena_views, playground, responses_api, views

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="playground", permanent=False)),
    path("health", views.health, name="health"),
    path("ready", views.ready, name="ready"),
    path("v1/chat/completions", views.chat_completions, name="chat-completions"),
    path("v1/responses", views.create_response, name="responses"),
    path("v1/responses/<str:response_id>", responses_api.response_detail, name="response-detail"),
    path("v1/responses/<str:response_id>/input_items", responses_api.response_input_items, name="response-items"),
    path("v1/responses/<str:response_id>/cancel", views.response_cancel, name="response-cancel"),
    path("v1/messages", views.messages, name="messages"),
    path("v1/messages/count_tokens", views.count_tokens, name="count-tokens"),
    path("v1/compare", views.compare, name="compare"),
    path("v1/embeddings", views.embeddings, name="embeddings"),
    path("v1/completions", views.completions, name="completions"),
    path("v1/models", views.models, name="models"),
    path("v1/models/<path:model>", views.model_detail, name="model-detail"),
    path("v1/streams/<str:stream_id>", views.stream_resume, name="stream-resume"),
    path("playground/", playground.playground, name="playground"),
    path("playground/runs/", playground.playground_runs, name="playground-runs"),
    path("playground/runs/<int:run_id>/", playground.playground_run, name="playground-run"),
    path("playground/runs/<int:run_id>/share", playground.playground_run_sharing, name="playground-run-share"),
    path("playground/shared/<str:token>/", playground.playground_shared, name="playground-shared"),
    path("playground/arena/vote", arena_views.arena_vote, name="playground-arena-vote"),
    path("playground/leaderboard/", arena_views.arena_leaderboard_page, name="playground-leaderboard"),
    path("login/", auth_views.LoginView.as_view(template_name="playground/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # A base URL without /v1, or with it twice: a JSON 404 that says which base URL to set.
    re_path(rf"^(?:{'|'.join(re.escape(rest) for rest in views.API_ENDPOINTS)}|models/.+)$", views.wrong_base_url),
    re_path(r"^v1/v1/", views.wrong_base_url),
    # Last: every other /v1/ path answers the API's JSON 404, never an HTML page.
    re_path(r"^v1/(?P<rest>.*)$", views.not_found),
]
