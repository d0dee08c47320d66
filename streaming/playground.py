"""The browser playground page: server-rendered, it streams one or more models side by side over the
/ws/playground/ websocket (streaming.consumers), paying with one of the logged-in user's own keys."""

from django.contrib.auth.decorators import login_required
from django.shortcuts import render

from accounts.selectors import playground_keys
from accounts.services import playground_key_get_or_create
from providers.models import Model

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
    scheme = "https" if secure else "http"
    return {
        "user": user.get_username(),
        "ws_path": "/ws/playground/",
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
