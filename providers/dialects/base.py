"""The dialect interface: what every wire format knows, all of it pure translation (no I/O).

A dialect plays two roles. Facing a provider it builds the upstream request and parses the
upstream's replies and stream events; facing a client it parses the client's request and renders
replies, stream events and errors in its own shape. Same dialect on both sides = the pass-through
methods (`prepare_chat`, `stream_passthrough`); different dialects = through the canonical model.
"""

from collections.abc import Callable
from dataclasses import dataclass, field

from aigateway.errors import GatewayError
from providers.dialects.canonical import ChatRequest, ChatResponse, StreamEvent, Usage

__all__ = ["Dialect", "StreamParser", "StreamRenderer", "StreamPassthrough", "Usage"]


class StreamParser:
    """Upstream stream events -> canonical events; one instance per upstream stream (it keeps state)."""

    def feed(self, name: str | None, data: str) -> tuple[dict | None, list[StreamEvent]]:
        """One SSE event (its `event:` name and data) -> (the parsed JSON payload, canonical events).

        Raises MalformedEvent when the data is not what the dialect promises."""
        raise NotImplementedError


class StreamRenderer:
    """Canonical events -> client SSE bytes, one body chunk per item; one instance per client stream."""

    def render(self, event: StreamEvent) -> list[bytes]:
        raise NotImplementedError

    def close(self) -> list[bytes]:
        """What ends a stream that completed (or stopped after a rendered error)."""
        raise NotImplementedError


class StreamPassthrough:
    """Same dialect in and out: forward each upstream event with only the model rewritten."""

    # The gateway's usage estimate so far, for a client that asked for usage when the provider sends none.
    estimate: Callable[[], Usage] | None = None

    def forward(self, name: str | None, payload: dict | None, data: str | None = None) -> bytes | None:
        """The bytes for one parsed upstream event, None to swallow it. `data`, the event's data as it came,
        is sent on as is (its model member rewritten in place) when nothing else in the event changes:
        byte for byte what the provider sent, and no re-encoding."""
        raise NotImplementedError

    def close(self) -> list[bytes]:
        raise NotImplementedError


@dataclass
class Dialect:
    name: str
    # Path appended to the provider's base URL, per endpoint ("chat" is the chat/messages call).
    paths: dict[str, str] = field(default_factory=dict)

    # Errors, in the client-facing shape.

    def error_body(self, error: GatewayError) -> dict:
        raise NotImplementedError

    def stream_error_event(self, error: GatewayError) -> bytes:
        raise NotImplementedError

    # Facing a provider.

    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        raise NotImplementedError

    def upstream_error_message(self, payload) -> str | None:
        raise NotImplementedError

    def build_request(
        self, request: ChatRequest, *, upstream_model: str, stream: bool, max_output_tokens: int | None
    ) -> dict:
        raise NotImplementedError

    def parse_response(self, data: dict) -> ChatResponse:
        raise NotImplementedError

    def stream_parser(self) -> StreamParser:
        raise NotImplementedError

    def response_usage(self, data: dict) -> Usage | None:
        raise NotImplementedError

    def response_text(self, data: dict) -> str:
        raise NotImplementedError

    # Facing a client.

    def parse_request(self, body: dict) -> ChatRequest:
        raise NotImplementedError

    def render_response(self, response: ChatResponse, *, model: str) -> dict:
        raise NotImplementedError

    def stream_renderer(self, *, model: str, include_usage: bool, prompt_estimate: int | None = None) -> StreamRenderer:
        """`prompt_estimate`: the gateway's guess at the prompt's tokens, for formats that announce them
        before the provider has reported any."""
        raise NotImplementedError

    # Same dialect on both sides.

    def prepare_chat(self, body: dict, *, upstream_model: str, stream: bool, max_output_tokens: int | None) -> dict:
        raise NotImplementedError

    def stream_passthrough(self, *, model: str, include_usage: bool) -> StreamPassthrough:
        raise NotImplementedError
