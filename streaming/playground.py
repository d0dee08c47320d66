"""The browser playground page: server-rendered, it streams one or more models side by side over the
/ws/playground/ websocket (streaming.consumers), paying with one of the logged-in user's own keys. Its saved
conversations (streaming.playground_runs) are read back as JSON under /playground/runs/; one can be shared as a
read-only page at /playground/shared/<token>/ for the members of its team."""

from functools import wraps

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from accounts.selectors import playground_keys
from accounts.services import playground_key_get_or_create
from providers.availability import model_names_down
from providers.models import Model
from streaming.arena_views import json_csrf_protect
from streaming.playground_runs import (
    playground_run_get,
    playground_run_payload,
    playground_run_share,
    playground_run_shared_get,
    playground_run_shared_payload,
    playground_run_unshare,
    playground_runs_list,
)

# Model output is untrusted: no inline script, nothing loaded from another origin, no plugins, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self' {websocket}; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)


def _price(value) -> float | None:
    return None if value is None else float(value)


def playground_config(*, user, host: str, secure: bool) -> dict:
    """What the page needs: the user's keys, each with the models its tier allows and their prices."""
    keys = playground_keys(user=user)
    if not keys and user.is_staff:
        playground_key_get_or_create(user=user)
        keys = playground_keys(user=user)
    # The page chats: models for embeddings or completions only would always be refused.
    models = [
        model
        for model in Model.objects.filter(enabled=True)
        .order_by("name")
        .values("name", "input_price_per_million", "output_price_per_million", "kinds")
        if "chat" in (model["kinds"] or ["chat"])
    ]
    down = model_names_down()
    scheme = "https" if secure else "http"
    return {
        "user": user.get_username(),
        "max_frame_bytes": settings.GATEWAY_MAX_BODY_BYTES,
        "ws_path": "/ws/playground/",
        "runs_url": reverse("playground-runs"),
        "arena_vote_url": reverse("playground-arena-vote"),
        "api_base": f"{scheme}://{host}/v1",
        "keys": [
            {
                "id": key.id,
                "name": key.name,
                "prefix": key.prefix,
                "tier": key.tier.name,
                "playground": key.playground,
                "max_compare_models": key.tier.max_compare_models,
                "models": [
                    {
                        "name": model["name"],
                        "input_price_per_million": _price(model["input_price_per_million"]),
                        "output_price_per_million": _price(model["output_price_per_million"]),
                        # "vision" offers image input; `down`: every provider serving it is marked down.
                        "kinds": model["kinds"] or ["chat"],
                        "down": model["name"] in down,
                    }
                    for model in models
                    if not allowed or model["name"] in allowed
                ],
            }
            for key in keys
            for allowed in [{m.name for m in key.tier.allowed_models.all()}]
        ],
    }


@login_required
def playground(request):
    config = playground_config(user=request.user, host=request.get_host(), secure=request.is_secure())
    response = render(request, "playground/page.html", {"config": config})
    websocket = ("wss://" if request.is_secure() else "ws://") + request.get_host()
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(websocket=websocket)
    response["Referrer-Policy"] = "same-origin"
    return response


def _json_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _page_json(view):
    """A JSON endpoint of the page: the session's user only (a JSON 401, not the login redirect, since a script
    asks), GET only, never cached (the answer is one user's own)."""

    @wraps(view)
    @never_cache
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return _json_error(401, "unauthenticated", "log in to see your playground runs")
        if request.method != "GET":
            return _json_error(405, "method_not_allowed", "GET only")
        return view(request, *args, **kwargs)

    return wrapped


@_page_json
def playground_runs(request):
    """The user's saved runs, most recently used first: id, title, models, whether a turn is running, times."""
    return JsonResponse({"runs": playground_runs_list(user_id=request.user.pk)})


@_page_json
def playground_run(request, run_id: int):
    """One of the user's saved runs with every turn, for the page to reopen, continue or resume."""
    run = playground_run_get(user_id=request.user.pk, run_id=run_id)
    if run is None:
        return _json_error(404, "run_not_found", f"you have no saved playground run {run_id}")
    payload = playground_run_payload(run=run)
    payload["share_url"] = _share_url(request, run.share_token)
    return JsonResponse(payload)


def _share_url(request, token: str | None) -> str | None:
    return request.build_absolute_uri(reverse("playground-shared", args=[token])) if token else None


@csrf_exempt  # the global middleware steps aside for the same check with a JSON refusal
@never_cache
@json_csrf_protect
def playground_run_sharing(request, run_id: int):
    """POST: share one of the user's runs as a read-only link (the same link each time), answered with its URL;
    DELETE: stop sharing it (the link answers 404 from then on)."""
    if not request.user.is_authenticated:
        return _json_error(401, "unauthenticated", "log in to share your playground runs")
    if request.method == "POST":
        run = playground_run_share(user_id=request.user.pk, run_id=run_id)
    elif request.method == "DELETE":
        run = playground_run_unshare(user_id=request.user.pk, run_id=run_id)
    else:
        return _json_error(405, "method_not_allowed", "POST to share, DELETE to stop sharing")
    if run is None:
        return _json_error(404, "run_not_found", f"you have no saved playground run {run_id}")
    return JsonResponse(
        {
            "run_id": run.pk,
            "shared": bool(run.share_token),
            "url": _share_url(request, run.share_token),
            # Who may open the link besides its owner: the members of the run's team (nobody else without one).
            "team": run.team.name if run.team_id else None,
        }
    )


@login_required
@never_cache
def playground_shared(request, token: str):
    """A shared run, read-only, for its owner and the members of its team; for anyone else the same 404 page as
    for a link that never existed, so a link says nothing about runs one may not see."""
    run = playground_run_shared_get(token=token, user_id=request.user.pk)
    if run is None:
        response = render(request, "playground/shared.html", {"missing": True}, status=404)
    else:
        payload = playground_run_shared_payload(run=run)
        context = {"run": payload, "owner": run.user_id == request.user.pk, "updated_at": run.updated_at}
        response = render(request, "playground/shared.html", context)
    response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY.format(websocket="")
    # The token is in the URL: links out of the page must not carry it to another site.
    response["Referrer-Policy"] = "same-origin"
    return response
