"""Management API routes, mounted under /api/v1/."""

from django.urls import path

from accounts.api import BudgetView, UsageView
from accounts.arena_api import ArenaLeaderboardView

urlpatterns = [
    path("usage", UsageView.as_view(), name="api-usage"),
    path("budget", BudgetView.as_view(), name="api-budget"),
    path("arena/leaderboard", ArenaLeaderboardView.as_view(), name="api-arena-leaderboard"),
]
