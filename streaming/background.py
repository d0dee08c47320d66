"""Background responses (`background: true` on /v1/responses): the call runs to completion without a client,
its events buffered like a resumable stream's, polled with GET /v1/responses/{id}, resumed with
`?stream=true&starting_after=N` from any gateway process, and stopped with POST /v1/responses/{id}/cancel."""

from accounts.context import KeyContext


async def background_lookup(ctx: KeyContext, response_id: str) -> dict | None:
    """The response object of a background response of `ctx`'s owner still queued or in progress (its status
    and what it has so far), or None when there is none by that id (finished ones are in the store)."""
    return None
