"""The stored responses of the Responses API, for the key's owner: GET /v1/responses/{id} (the response object;
a background response still running answers from streaming.background, and `?stream=true` streams it from
there), GET /v1/responses/{id}/input_items (OpenAI's cursor-paged list) and DELETE /v1/responses/{id}. Another
owner's id is answered as unknown: a 404, never a 403 that would tell it exists."""

from urllib.parse import parse_qsl

import orjson
from django.http import HttpResponse

from accounts.stored_responses import stored_response_delete, stored_response_find
from aigateway.errors import GatewayError, bad_request
from providers.dialects.openai import openai
from streaming.background import background_lookup
from streaming.edge import authenticate, only, speaks

# The input items list's page size: OpenAI's default and maximum.
ITEMS_LIMIT_DEFAULT = 20
ITEMS_LIMIT_MAX = 100
_TRUE = ("true", "1")


def _json(payload) -> HttpResponse:
    return HttpResponse(orjson.dumps(payload), content_type="application/json")


def _query(request) -> dict[str, str]:
    """The query string's parameters (the last of a repeated one): the API's requests carry no QueryDict."""
    return dict(parse_qsl(request.META.get("QUERY_STRING", ""), keep_blank_values=True))


def _not_found(response_id: str) -> GatewayError:
    return GatewayError(404, "not_found", f"no response with id '{response_id}'")


@speaks(openai)
async def response_detail(request, response_id: str):
    """GET: the stored response (or a background response's state); DELETE: the stored response, deleted."""
    only("GET", "DELETE")(request)
    ctx = await authenticate(request)
    if request.method == "DELETE":
        if not await stored_response_delete(owner_id=ctx.owner_id, response_id=response_id):
            raise _not_found(response_id)
        return _json({"id": response_id, "object": "response", "deleted": True})
    if _query(request).get("stream", "").strip().lower() in _TRUE:
        from streaming.background import background_stream_response

        return await background_stream_response(request, ctx, response_id)
    stored = await stored_response_find(owner_id=ctx.owner_id, response_id=response_id)
    if stored is not None:
        return _json(stored.response())
    running = await background_lookup(ctx, response_id)
    if running is not None:
        return _json(running)
    raise _not_found(response_id)


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return ITEMS_LIMIT_DEFAULT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= ITEMS_LIMIT_MAX:
        raise bad_request(f"'limit' must be an integer from 1 to {ITEMS_LIMIT_MAX}, got '{raw}'", param="limit")
    return int(raw)


@speaks(openai)
async def response_input_items(request, response_id: str):
    """The stored response's own input items, OpenAI's list: `limit` (1-100, default 20), `order` (`desc`, the
    default, newest first; or `asc`) and `after` (the id of the item the page starts after)."""
    only("GET")(request)
    ctx = await authenticate(request)
    query = _query(request)
    limit = _limit(query.get("limit"))
    order = query.get("order") or "desc"
    if order not in ("asc", "desc"):
        raise bad_request(f"'order' must be 'asc' or 'desc', got '{order}'", param="order")
    after = query.get("after") or None
    stored = await stored_response_find(owner_id=ctx.owner_id, response_id=response_id)
    if stored is None:
        raise _not_found(response_id)
    items = stored.input_items()
    if order == "desc":
        items = items[::-1]
    start = 0
    if after is not None:
        ids = [item.get("id") if isinstance(item, dict) else None for item in items]
        if after not in ids:
            raise bad_request(f"'after' names no input item of response '{response_id}': '{after}'", param="after")
        start = ids.index(after) + 1
    page = items[start : start + limit]
    return _json(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(items),
        }
    )
