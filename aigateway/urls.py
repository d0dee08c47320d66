"""URL map: OpenAI/Anthropic-compatible API under /v1, management API under /api, admin."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("", include("streaming.urls")),
]
