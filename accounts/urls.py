"""Management API routes, mounted under /api/v1/."""

from django.urls import path

from accounts.api import UsageView

urlpatterns = [
    path("usage", UsageView.as_view(), name="api-usage"),
]
