"""OpenAI Chat Completions wire format (OpenAI, DeepSeek, 01.AI, OpenRouter, Ollama, vLLM, ...)."""

import orjson

from aigateway.errors import GatewayError
from providers.dialects import register
from providers.dialects.base import Dialect, StreamDigest, Usage
from streaming.sse import sse_encode

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_exceeded",
}


class OpenAIDialect(Dialect):
    def upstream_headers(self, api_key: str, extra_headers: dict[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        if api_key:
            headers["authorization"] = f"Bearer {api_key}"
        headers.update(extra_headers)
        return headers

    def error_body(self, error: GatewayError) -> dict:
        error_type = _ERROR_TYPES.get(error.status, "server_error" if error.status >= 500 else "invalid_request_error")
        return {"error": {"message": error.message, "type": error_type, "param": error.param, "code": error.code}}

    def stream_error_event(self, error: GatewayError) -> bytes:
        return sse_encode(orjson.dumps(self.error_body(error))) + b"data: [DONE]\n\n"

    # Same-dialect relay -------------------------------------------------------------------------

    def prepare_chat(self, body: dict, *, upstream_model: str, stream: bool, max_output_tokens: int | None) -> dict:
        """The client's body, passed through with our model name, forced usage, capped output."""
        out = dict(body)
        out["model"] = upstream_model
        if stream:
            options = dict(out.get("stream_options") or {})
            options["include_usage"] = True
            out["stream_options"] = options
        if max_output_tokens is not None:
            capped = False
            for name in ("max_tokens", "max_completion_tokens"):
                value = out.get(name)
                if isinstance(value, int) and value > max_output_tokens:
                    out[name] = max_output_tokens
                if isinstance(out.get(name), int):
                    capped = True
            if not capped:
                out["max_tokens"] = max_output_tokens
        return out

    def digest_chunk(self, chunk: dict, *, client_wants_usage: bool) -> StreamDigest:
        digest = StreamDigest()
        usage = chunk.get("usage")
        if usage:
            digest.usage = Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)
        choices = chunk.get("choices")
        if choices:
            parts = []
            for choice in choices:
                delta = choice.get("delta") or {}
                content = delta.get("content")
                if content:
                    parts.append(content)
                reasoning = delta.get("reasoning_content")
                if reasoning:
                    parts.append(reasoning)
                for call in delta.get("tool_calls") or ():
                    function = call.get("function") or {}
                    parts.append(function.get("name") or "")
                    parts.append(function.get("arguments") or "")
                if choice.get("finish_reason"):
                    digest.finish_reason = choice["finish_reason"]
            digest.text = "".join(parts)
        elif usage and not client_wants_usage:
            # The usage-only chunk we asked for on the client's behalf.
            digest.forward = False
        if chunk.get("error"):
            error = chunk["error"]
            digest.error = error.get("message") if isinstance(error, dict) else str(error)
        if not client_wants_usage and "usage" in chunk and digest.forward:
            chunk.pop("usage", None)
        return digest

    def response_usage(self, response: dict) -> Usage | None:
        usage = response.get("usage")
        if not usage:
            return None
        return Usage(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0)

    def response_text(self, response: dict) -> str:
        parts = []
        for choice in response.get("choices") or ():
            message = choice.get("message") or {}
            parts.append(message.get("content") or "")
            for call in message.get("tool_calls") or ():
                function = call.get("function") or {}
                parts.append(function.get("name") or "")
                parts.append(function.get("arguments") or "")
        return "".join(p for p in parts if isinstance(p, str))

    def upstream_error_message(self, payload) -> str | None:
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return payload["error"].get("message")
        return None


openai = register(OpenAIDialect(name="openai", paths={"chat": "/chat/completions", "models": "/models"}))
