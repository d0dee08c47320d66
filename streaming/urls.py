from django.urls import path

from streaming import views

urlpatterns = [
    path("health", views.health, name="health"),
    path("v1/chat/completions", views.chat_completions, name="chat-completions"),
    path("v1/messages", views.messages, name="messages"),
    path("v1/models", views.models, name="models"),
]
