"""The dialect interface and the small canonical model that sits between dialects."""

from dataclasses import dataclass, field

from aigateway.errors import GatewayError


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass(slots=True)
class StreamDigest:
    """What the relay learns from one upstream stream event (parsed once)."""

    usage: Usage | None = None
    text: str = ""
    finish_reason: str | None = None
    # False for upstream events the client did not ask for (e.g. the usage chunk we force).
    forward: bool = True
    error: str | None = None


@dataclass
class Dialect:
    name: str
    # Path appended to the provider's base URL, per endpoint.
    paths: dict[str, str] = field(default_factory=dict)

    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        raise NotImplementedError

    def error_body(self, error: GatewayError) -> dict:
        raise NotImplementedError

    def stream_error_event(self, error: GatewayError) -> bytes:
        raise NotImplementedError
