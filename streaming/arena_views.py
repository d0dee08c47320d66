"""The playground's arena in the browser: the vote a page casts on a blind battle (accounts.arena), answered with
the reveal, and the leaderboard page of the overall votes or of one of the user's teams."""

import orjson
from django.contrib.auth.decorators import login_required
from django.http import Http404, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.shortcuts import render
from django.utils.decorators import decorator_from_middleware
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from accounts.arena import arena_leaderboard, arena_team_resolve, arena_teams_visible
from aigateway.errors import GatewayError
from streaming.playground_runs import playground_arena_vote

# The leaderboard page is plain server-rendered HTML with one script of its own: nothing from another origin.
LEADERBOARD_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# Win-rate cells are shaded in steps of a tenth (CSS classes, since the page allows no inline style).
SHADE_STEPS = 10


def _json_error(status: int, code: str, message: str, param: str | None = None) -> JsonResponse:
    error = {"code": code, "message": message}
    if param is not None:
        error["param"] = param
    return JsonResponse({"error": error}, status=status)


class _JsonCsrfCheck(CsrfViewMiddleware):
    """Django's CSRF check, refusing in the page's JSON error shape rather than with the HTML failure page."""

    def _reject(self, request, reason):
        return _json_error(403, "csrf_failed", f"CSRF check failed: {reason}")


# The page's JSON writes (this vote, sharing a run) check CSRF with it.
json_csrf_protect = decorator_from_middleware(_JsonCsrfCheck)


@csrf_exempt  # the global middleware steps aside for the same check with a JSON refusal
@never_cache
@json_csrf_protect
def arena_vote(request):
    """POST `{"battle_id", "outcome"}` from the logged-in page (its CSRF token in `X-CSRFToken`): the user's vote
    on their own battle, answered with the reveal (each side's model, provider and cost), which the battle's saved
    playground turn keeps from then on."""
    if not request.user.is_authenticated:
        return _json_error(401, "unauthenticated", "log in to vote in the arena")
    if request.method != "POST":
        return _json_error(405, "method_not_allowed", "POST only")
    try:
        body = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        return _json_error(400, "invalid_json", "the body must be a JSON object")
    if not isinstance(body, dict):
        return _json_error(400, "invalid_json", "the body must be a JSON object")
    battle_id, outcome = body.get("battle_id"), body.get("outcome")
    if not isinstance(battle_id, str) or not battle_id:
        return _json_error(400, "invalid_battle_id", "battle_id must be a battle's id", "battle_id")
    try:
        reveal = playground_arena_vote(user_id=request.user.pk, battle_id=battle_id, outcome=outcome)
    except GatewayError as error:
        return _json_error(error.status, error.code, error.message, error.param)
    return JsonResponse(reveal)


def _shade(share: float | None) -> str:
    return "none" if share is None else str(round(share * SHADE_STEPS))


@login_required
def arena_leaderboard_page(request):
    """The leaderboard: the overall board, or (`?team=<id or name>`) one of the teams the user may see."""
    user = request.user
    try:
        team = arena_team_resolve(value=request.GET.get("team"), user_id=user.pk, is_staff=user.is_staff)
    except GatewayError:
        raise Http404("no such team of yours") from None
    board = arena_leaderboard(team_id=None if team is None else team.pk)
    models = [row["model"] for row in board["models"]]
    matrix_rows = [
        {
            "model": row,
            "cells": [
                {
                    "column": column,
                    "share": None if column == row else board["matrix"][row].get(column),
                    "self": column == row,
                    "shade": "self" if column == row else _shade(board["matrix"][row].get(column)),
                }
                for column in models
            ],
        }
        for row in models
    ]
    context = {
        "board": board,
        "team": team,
        "teams": arena_teams_visible(user_id=user.pk, is_staff=user.is_staff),
        "matrix_models": models,
        "matrix_rows": matrix_rows,
        "votes": sum(row["battles"] for row in board["models"]) // 2,
    }
    response = render(request, "playground/leaderboard.html", context)
    response["Content-Security-Policy"] = LEADERBOARD_CSP
    response["Referrer-Policy"] = "same-origin"
    return response
