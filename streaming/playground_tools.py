"""Tool results in the playground's saved conversations: a model's tool calls are kept with its answer (its done
event's `tool_calls`), and the results the user typed for them, sent back as the next turn's tool messages, are kept
with that turn, per model, so a reopened run shows them and goes on from them."""

# A saved result keeps at most this many characters.
RESULT_TEXT_MAX = 100_000


def _text(content) -> str:
    """A tool message's text: a string, or its text parts joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def playground_turn_results(body: dict) -> dict[str, list[dict]]:
    """Each model's tool results of a chat frame: the tool messages after its history's last assistant message
    (`{"tool_call_id", "content"}`), for the models that have any."""
    by_model = body.get("messages_by_model")
    if not isinstance(by_model, dict):
        models = body.get("models")
        messages = body.get("messages")
        by_model = dict.fromkeys(models, messages) if isinstance(models, list) else {}
    results = {}
    for name, messages in by_model.items():
        if not isinstance(name, str) or not isinstance(messages, list):
            continue
        tail = []
        for message in reversed(messages):
            if not isinstance(message, dict) or message.get("role") in ("system", "developer", "user"):
                continue
            if message.get("role") != "tool":
                break
            call_id = message.get("tool_call_id")
            tail.append(
                {
                    "tool_call_id": call_id if isinstance(call_id, str) else "",
                    "content": _text(message.get("content"))[:RESULT_TEXT_MAX],
                }
            )
        if tail:
            results[name] = tail[::-1]
    return results
