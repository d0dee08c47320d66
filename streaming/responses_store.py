"""Stored responses at the Responses door: a request naming `previous_response_id` is expanded into the whole
conversation before it is routed, so every deployment dialect can continue a stored response (the provider gets
the full input, never the id); and a request with `store` (the default) gets a plan for storing its answer, whose
entry the relay puts in the call's usage event when the call finishes (accounts.stored_responses).

As OpenAI does it, a continued response carries over the earlier turns' input and output items, never their
`instructions`. Output items become input items: an assistant message with its text (and refusals), function calls
with their call id, name and arguments; reasoning only when it is self-contained (`encrypted_content`), as only its
author can read it otherwise (a translation drops it anyway). Item ids the gateway or a provider gave are left out of
what is sent on: a provider asked with `store: false` keeps nothing it could look them up in.
"""

import logging
import uuid
from dataclasses import dataclass

from accounts.context import KeyContext
from accounts.stored_responses import StoredView, stored_response_entry, stored_response_find, stored_response_keep
from aigateway.errors import GatewayError, bad_request

logger = logging.getLogger(__name__)

# The id prefix of an input item the client sent without one, by its type (as OpenAI names them).
_ITEM_ID_PREFIXES = {"message": "msg_", "function_call": "fc_", "function_call_output": "fco_"}
# The statuses a response ends with; one captured in any other (in_progress) ended before its final event.
_FINAL_STATUSES = ("completed", "incomplete", "failed", "cancelled")


def new_response_id() -> str:
    return "resp_" + uuid.uuid4().hex


def input_as_items(raw) -> list:
    """A Responses `input` as a list of items (a string is one user message)."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": raw}]}]
    return list(raw) if isinstance(raw, list) else []


def _expandable(raw) -> bool:
    # Anything else is left for check_responses_body to refuse, naming 'input'.
    return (isinstance(raw, str) or isinstance(raw, list)) and bool(raw)


async def stored_request_expand(ctx: KeyContext, body: dict) -> tuple[dict, StoredView | None]:
    """`body` continuing the stored response it names in `previous_response_id`: a new body whose input is that
    response's whole conversation followed by this request's input, without `previous_response_id`; and the
    stored response (None, and `body` itself, when the body names none). A 404 naming `previous_response_id` when
    there is no such response of this key's owner (another owner's reads as unknown)."""
    previous_id = body.get("previous_response_id")
    if previous_id is None:
        return body, None
    if not isinstance(previous_id, str) or not previous_id:
        raise bad_request("'previous_response_id' must be a non-empty string", param="previous_response_id")
    previous = await stored_response_find(owner_id=ctx.owner_id, response_id=previous_id)
    if previous is None:
        raise GatewayError(404, "not_found", f"no response with id '{previous_id}'", param="previous_response_id")
    expanded = {name: value for name, value in body.items() if name != "previous_response_id"}
    if _expandable(body.get("input")):
        expanded["input"] = [*previous.conversation(), *input_as_items(body["input"])]
    return expanded, previous


def output_as_input(output) -> list:
    """A response's output items as the input items a later turn sends them back as."""
    items = []
    for item in output if isinstance(output, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "message":
            content = []
            for part in item.get("content") or ():
                if not isinstance(part, dict):
                    continue
                if part.get("type") == "refusal" and isinstance(part.get("refusal"), str):
                    content.append({"type": "refusal", "refusal": part["refusal"]})
                elif isinstance(part.get("text"), str):
                    content.append({"type": "output_text", "text": part["text"]})
            if content:
                items.append({"type": "message", "role": item.get("role") or "assistant", "content": content})
        elif kind == "function_call":
            call = {name: item[name] for name in ("call_id", "name", "arguments", "namespace") if name in item}
            items.append({"type": "function_call", **call})
        elif kind == "reasoning":
            if item.get("encrypted_content"):
                items.append({name: value for name, value in item.items() if name != "status"})
        else:
            # A built-in tool's item (web search, file search, ...): only a Responses provider reads it, as it is.
            items.append(item)
    return items


def _item_listed(item: dict) -> dict:
    """An input item as the input items list shows it: typed, its content as parts, with an id."""
    listed = dict(item)
    kind = listed.setdefault("type", "message")
    if kind == "message":
        role = listed.get("role")
        content = listed.get("content")
        part_type = "output_text" if role == "assistant" else "input_text"
        if isinstance(content, str):
            content = [{"type": part_type, "text": content}]
        if role == "assistant" and isinstance(content, list):
            content = [
                {**part, "annotations": part.get("annotations", [])}
                if isinstance(part, dict) and part.get("type") == "output_text"
                else part
                for part in content
            ]
        listed["content"] = content
        listed.setdefault("status", "completed")
    if not isinstance(listed.get("id"), str) or not listed["id"]:
        # A type of the wrong kind (a list, a number) is the dialect's to refuse; it still gets an id here.
        prefix = _ITEM_ID_PREFIXES.get(kind, "item_") if isinstance(kind, str) else "item_"
        listed["id"] = prefix + uuid.uuid4().hex
    return listed


@dataclass
class StorePlan:
    """How a Responses call's answer is to be stored: under `response_id` (the id its client is shown), with
    this request's own input items (as listed, each with an id), and the conversation it continues and adds to
    (the earlier turns, then this request's input as sent on)."""

    response_id: str
    previous_response_id: str
    input_items: list
    conversation: list

    @property
    def response_fields(self) -> dict:
        """What every response object of the call carries (its events', its stored copy's): the id GET
        /v1/responses/{id} knows, `store`, and the response it continues."""
        return {"id": self.response_id, "store": True, "previous_response_id": self.previous_response_id or None}

    def entry(self, call) -> dict | None:
        """The call's stored response entry, from the response object its client got (`call.response_object`)."""
        return store_entry(self, call.response_object, call)

    async def keep(self, entry: dict) -> None:
        """Keep `entry` readable until the flush has written it (accounts.stored_responses)."""
        await stored_response_keep(entry)


def store_plan(ctx: KeyContext, body: dict, previous: StoredView | None) -> StorePlan | None:
    """The plan for storing the answer to `body` (as stored_request_expand returned it, `previous` the stored
    response it continues), or None when the client asked for none (`store: false`)."""
    if body.get("store") is False:
        return None
    conversation = input_as_items(body.get("input"))
    prefix = len(previous.conversation()) if previous is not None else 0
    own = conversation[prefix:]
    return StorePlan(
        response_id=new_response_id(),
        previous_response_id=previous.response_id if previous is not None else "",
        input_items=[_item_listed(item) for item in own if isinstance(item, dict)],
        conversation=conversation,
    )


def store_entry(plan: StorePlan, response: dict | None, call) -> dict | None:
    """The stored response entry of a finished call (what rides in its usage event as `stored_response`, and what
    stored_response_keep keeps), from its plan and the final response object its client got; None when there is
    no response object (the call failed before any answer) or it cannot be made (the call is booked all the same).
    """
    if not isinstance(response, dict):
        return None
    try:
        kept = {**response, **plan.response_fields}
        status = kept.get("status")
        if status not in _FINAL_STATUSES:
            # The stream ended before its final event (the provider failed mid-answer, the client left): what it
            # had is kept, as a response that failed.
            status = kept["status"] = "failed"
            problem = call.error_type or "server_error"
            kept["error"] = {"code": problem, "message": "the response ended before it was complete"}
        model = kept.get("model")
        return stored_response_entry(
            response_id=plan.response_id,
            api_key_id=call.ctx.key_id,
            user_id=call.ctx.owner_id,
            team_id=call.ctx.team_id,
            model=model if isinstance(model, str) and model else call.response_model,
            status=status,
            previous_response_id=plan.previous_response_id,
            response=kept,
            input_items=plan.input_items,
            conversation=[*plan.conversation, *output_as_input(kept.get("output"))],
        )
    except Exception:
        logger.exception("request %s: its stored response could not be made", getattr(call, "request_id", "?"))
        return None
