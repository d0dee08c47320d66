"""The playground's blind arena as the page sees it: what a battle's frames and saved turns may say before the vote
(the sides "a" and "b", never a model, provider, served model, route, request id or cost), and which two models a
battle draws from a key's tier.

A battle itself (its sides, its answers, its vote) belongs to accounts.arena. The websocket consumer runs the two
models as one compare run and passes every event through `arena_event` before it is buffered for a resume or sent,
so neither a live socket nor a resumed one ever gets a name. A saved arena run keeps the names on the server;
`arena_turn_view` shows a turn to the page (and to a shared link) blind until its vote put the reveal beside it.
"""

import secrets

from accounts.context import KeyContext
from aigateway.errors import GatewayError, bad_request
from aigateway.redis import redis_async
from providers.health import HEALTH_DOWN_KEY
from providers.routing import BREAKER_OPEN_KEY, router

SIDES = ("a", "b")
LABELS = {"a": "Model A", "b": "Model B"}
# What a frame of a battle may carry besides its type and side: nothing here tells one model from another. Any
# other field (those a compare event gains later included) stays out until it is known to say nothing either.
_FRAME_FIELDS = (
    "content",
    "cache",
    "finish_reason",
    "usage",
    "tokens_estimated",
    "ttft_ms",
    "duration_ms",
    "tokens_per_s",
    "cached",
    "status",
    "code",
)
# What a saved answer's stats may show before the vote (the rest of its done fields name or price the model).
_DONE_FIELDS = ("finish_reason", "usage", "tokens_estimated", "ttft_ms", "duration_ms", "tokens_per_s", "cached")
_ANSWER_FIELDS = ("status", "text", "reasoning", "truncated", "cache")


def arena_error_message(side: str, status) -> str:
    """A failed side's message: the provider's own words could name it (an upstream error often does)."""
    if status == 499:
        return f"{LABELS[side]} was stopped before it finished."
    return f"{LABELS[side]} could not answer."


def arena_results(results: dict, side_of: dict[str, str]) -> dict[str, dict]:
    """A `complete` frame's results by side: each side's status, and its finish reason and usage or error code."""
    out = {}
    for model, result in results.items():
        side = side_of.get(model)
        if side is None or not isinstance(result, dict):
            continue
        view = {"status": result.get("status")}
        if result.get("status") == "done":
            view.update({name: result[name] for name in ("finish_reason", "usage") if name in result})
        error = result.get("error")
        if isinstance(error, dict):
            view["error"] = {
                "status": error.get("status"),
                "code": error.get("code"),
                "message": arena_error_message(side, error.get("status")),
            }
        out[side] = view
    return out


def arena_event(event: dict, side_of: dict[str, str]) -> dict | None:
    """A compare event as a battle's frame: `side` instead of `model`, and only the fields that cannot tell the
    models apart; None for an event of a model that is not in the battle."""
    kind = event.get("type")
    if kind == "complete":
        # Not the compare run's id either: the usage records it names name the models.
        return {"type": "complete", "results": arena_results(event.get("results") or {}, side_of)}
    model = event.get("model")
    if model is None:
        return event
    side = side_of.get(model)
    if side is None:
        return None
    frame = {"type": kind, "side": side}
    frame.update({name: event[name] for name in _FRAME_FIELDS if name in event})
    if kind == "error":
        frame["message"] = arena_error_message(side, event.get("status"))
    return frame


def arena_error_blind(error: GatewayError, hidden: list[str]) -> GatewayError:
    """A refusal of a whole battle with the models the user did not choose taken out of its message."""
    message = error.message
    for name in sorted(hidden, key=len, reverse=True):
        message = message.replace(name, "one of the arena's models")
    if message == error.message:
        return error
    return GatewayError(error.status, error.code, message, param=error.param)


def _answer_view(answer: dict, side: str, *, revealed: bool) -> dict:
    if revealed:
        return dict(answer)
    view = {name: answer[name] for name in _ANSWER_FIELDS if name in answer}
    done = answer.get("done")
    if isinstance(done, dict):
        view["done"] = {name: done.get(name) for name in _DONE_FIELDS}
    error = answer.get("error")
    if isinstance(error, dict):
        view["error"] = {
            "status": error.get("status"),
            "code": error.get("code"),
            "message": arena_error_message(side, error.get("status")),
        }
    return view


def arena_turn_view(turn: dict) -> dict:
    """A saved arena turn for the page: answers by side, blind until the turn's vote, then with its reveal (each
    side's model, provider and cost) and the answers' full stats."""
    arena = turn.get("arena") or {}
    sides = arena.get("sides") or {}
    reveal = arena.get("reveal")
    answers = turn.get("answers") or {}
    view = {
        name: turn[name]
        for name in ("prompt", "system", "status", "stream_id", "started_at", "ended_at")
        if name in turn
    }
    view["models"] = list(SIDES)
    view["answers"] = {
        side: _answer_view(
            answers.get(sides.get(side), {"status": "interrupted", "text": ""}), side, revealed=bool(reveal)
        )
        for side in SIDES
    }
    view["arena"] = {"battle_id": arena.get("battle_id"), "vote": arena.get("vote"), "reveal": reveal}
    return view


def arena_run_models(model_names: list[str], options: dict) -> list[str]:
    """What a saved arena run's models are called in lists: their names once one of its turns was voted on."""
    arena = options.get("arena") or {}
    return list(model_names) if arena.get("revealed") else [LABELS[side] for side in SIDES]


def arena_picks(value) -> list[str]:
    """The models a battle's user chose (none, one, or two); the rest are drawn."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 2:
        raise bad_request("an arena battle's 'models' is a list of at most two model names", param="models")
    for index, name in enumerate(value):
        if not isinstance(name, str) or not name.strip():
            raise bad_request(f"'models[{index}]' must be a non-empty string", param=f"models[{index}]")
    if len(set(value)) != len(value):
        raise bad_request("an arena battle needs two different models", param="models")
    return list(value)


async def arena_models_drawable(ctx: KeyContext) -> list[str]:
    """The chat models of the key's tier (and team) that a battle may draw: each has an enabled deployment whose
    provider the health check has not marked down and whose circuit breaker is closed (one MGET)."""
    table = await router.table()
    candidates = {
        name: routes
        for name, routes in table.routes.items()
        if routes and "chat" in table.kinds.get(name, ("chat",)) and ctx.may_use(name)
    }
    deployments = sorted({route.deployment_id for routes in candidates.values() for route in routes})
    providers = sorted({route.provider.id for routes in candidates.values() for route in routes})
    keys = [BREAKER_OPEN_KEY.format(deployment_id=d) for d in deployments]
    keys += [HEALTH_DOWN_KEY.format(provider_id=p) for p in providers]
    try:
        values = await redis_async().mget(keys) if keys else []
    except Exception:
        # Availability unknown for a moment: every candidate may be drawn, as the router would try them.
        values = [None] * len(keys)
    breaker_open = {d for d, value in zip(deployments, values[: len(deployments)], strict=True) if value is not None}
    down = {p for p, value in zip(providers, values[len(deployments) :], strict=True) if value is not None}
    return sorted(
        name
        for name, routes in candidates.items()
        if any(route.deployment_id not in breaker_open and route.provider.id not in down for route in routes)
    )


async def arena_pair_choose(*, ctx: KeyContext, picks: list[str]) -> list[str]:
    """The battle's two models: the user's picks, the rest drawn at random from the drawable models."""
    if len(picks) == 2:
        return picks
    pool = [name for name in await arena_models_drawable(ctx) if name not in picks]
    if len(pool) < 2 - len(picks):
        raise GatewayError(
            400,
            "arena_needs_two_models",
            "the arena needs two chat models that this key may use and whose providers are up; "
            f"{len(pool) + len(picks)} available",
            param="models",
        )
    return picks + secrets.SystemRandom().sample(pool, 2 - len(picks))
