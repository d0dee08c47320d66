"""Stored responses end to end: the official openai SDK (and openai-agents) against a gateway process over
loopback, with real Redis, the upstream simulator and the usage flush.

- A response is stored by default: readable (GET /v1/responses/{id}, its input items) the moment the call has
  finished, from Redis, and from the database once the flush has written it; DELETE removes it for good.
- `previous_response_id` continues a stored response on every deployment dialect (Responses passed through,
  OpenAI and Anthropic translated): the provider gets the whole conversation, never the id, and never the earlier
  turns' instructions; a tool call is continued with only its output.
- Another owner's id is unknown to every endpoint (404), `store: false` stores nothing, and a real Celery worker
  writes the rows.
"""

import asyncio

import httpx
import openai
import pytest
from django.contrib.auth import get_user_model

from accounts.models import StoredResponse, UsageRecord
from accounts.stored_responses import STORED_COPY_PREFIX
from accounts.usage import usage_flush
from aigateway.redis import redis_sync
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import usage_events, wait_usage
from tests.support.waiting import eventually

pytestmark = pytest.mark.django_db(transaction=True)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
}
# public model -> the path the simulator is asked on
PATHS = {"resp": "/v1/responses", "chat": "/v1/chat/completions", "claude": "/v1/messages"}


@pytest.fixture
def keys(fresh_simulator):
    """(a key, another key of the same owner, a key of another owner)."""
    responses = provider_create("sim-responses", fresh_simulator.openai_base, dialect="responses")
    chat = provider_create("sim-chat", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("resp", [(responses, "sim-echo", 0)])
    model_create("chat", [(chat, "sim-echo", 0)])
    model_create("claude", [(claude, "sim-claude", 0)])
    users = get_user_model().objects
    owner, stranger = users.create_user("stored-owner"), users.create_user("stored-stranger")
    return key_create("stored", user=owner), key_create("stored", user=owner), key_create("stored", user=stranger)


def client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)


def create(gateway_client: openai.OpenAI, streamed: bool, **fields):
    if not streamed:
        return gateway_client.responses.create(**fields)
    with gateway_client.responses.stream(**fields) as stream:
        for _ in stream:
            pass
        return stream.get_final_response()


def user_text(text: str) -> dict:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def chat_text(message: dict) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


def stored_events() -> list[dict]:
    return [event for event in usage_events() if event.get("stored_response")]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_response_is_stored_read_listed_and_deleted(gateway, keys, fresh_simulator, streamed):
    key, same_owner, _ = keys
    gateway_client = client(gateway, key)
    created = create(gateway_client, streamed, model="chat", input="Tell me about tides", instructions="Be brief")
    assert created.id.startswith("resp_") and created.store is True

    # Readable at once (the Redis copy), before any flush.
    retrieved = gateway_client.responses.retrieve(created.id)
    assert retrieved.id == created.id and retrieved.status == "completed"
    assert retrieved.output_text == created.output_text and len(created.output_text.split()) == 12
    assert retrieved.model == "chat" and retrieved.usage.output_tokens == 12
    items = gateway_client.responses.input_items.list(created.id)
    assert [(item.type, item.role, item.content[0].text) for item in items.data] == [
        ("message", "user", "Tell me about tides")
    ]
    assert items.data[0].id.startswith("msg_") and items.first_id == items.last_id == items.data[0].id
    assert not items.has_more
    (event,) = wait_usage(lambda events: len(stored_events()) == 1)
    assert event["stored_response"]["response_id"] == created.id and event["endpoint"] == "responses"

    # Written by the flush, then read from the database (the Redis copy is dropped once the row is there).
    assert usage_flush() == 1
    row = StoredResponse.objects.get(response_id=created.id)
    assert (row.model, row.status, row.previous_response_id) == ("chat", "completed", "")
    assert row.user_id == UsageRecord.objects.get().user_id and row.stored_bytes > 0
    assert not redis_sync().exists(STORED_COPY_PREFIX + created.id)
    # Any key of the same owner reads it.
    assert client(gateway, same_owner).responses.retrieve(created.id).output_text == created.output_text

    deleted = httpx.delete(f"{gateway.openai_base}/responses/{created.id}", headers={"Authorization": f"Bearer {key}"})
    assert deleted.status_code == 200
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    assert not StoredResponse.objects.exists()
    with pytest.raises(openai.NotFoundError) as gone:
        gateway_client.responses.retrieve(created.id)
    assert gone.value.body["code"] == "not_found" and created.id in gone.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        gateway_client.responses.input_items.list(created.id)
    with pytest.raises(openai.NotFoundError):
        gateway_client.responses.delete(created.id)


def test_input_items_are_paged_as_openai_pages_them(gateway, keys):
    key, _, _ = keys
    gateway_client = client(gateway, key)
    turns = [user_text("one"), {"role": "assistant", "content": "two"}, {"role": "user", "content": "three"}]
    created = gateway_client.responses.create(model="chat", input=turns)

    newest_first = gateway_client.responses.input_items.list(created.id)
    assert [chat_text(item.model_dump()) for item in newest_first.data] == ["three", "two", "one"], "desc by default"
    first = gateway_client.responses.input_items.list(created.id, limit=2, order="asc")
    assert [chat_text(item.model_dump()) for item in first.data] == ["one", "two"] and first.has_more
    every = list(gateway_client.responses.input_items.list(created.id, limit=2, order="asc"))
    assert [chat_text(item.model_dump()) for item in every] == ["one", "two", "three"], "the SDK follows `after`"
    assert len({item.id for item in every}) == 3 and every[1].role == "assistant"
    assert every[1].content[0].type == "output_text"

    headers = {"Authorization": f"Bearer {key}"}
    for query, param in (("limit=0", "limit"), ("limit=101", "limit"), ("order=up", "order"), ("after=nope", "after")):
        refused = httpx.get(f"{gateway.openai_base}/responses/{created.id}/input_items?{query}", headers=headers)
        assert refused.status_code == 400 and refused.json()["error"]["param"] == param


@pytest.mark.parametrize("model", ["resp", "chat", "claude"])
@pytest.mark.parametrize("streamed", [False, True])
def test_previous_response_id_sends_the_whole_conversation_on_every_dialect(
    gateway, keys, fresh_simulator, model, streamed
):
    key, _, _ = keys
    gateway_client = client(gateway, key)
    first = create(gateway_client, streamed, model=model, input="Remember the word marmalade", instructions="Be terse")
    second = create(gateway_client, streamed, model=model, input="Which word?", previous_response_id=first.id)
    third = create(gateway_client, streamed, model=model, input="Once more", previous_response_id=second.id)
    assert second.previous_response_id == first.id and third.previous_response_id == second.id
    assert len({first.id, second.id, third.id}) == 3

    sent = [record["body"] for record in fresh_simulator.requests(path=PATHS[model])]
    assert len(sent) == 3
    expected = [
        ("user", "Remember the word marmalade"),
        ("assistant", first.output_text),
        ("user", "Which word?"),
        ("assistant", second.output_text),
        ("user", "Once more"),
    ]
    for body in sent:
        assert "previous_response_id" not in body
    if model == "resp":
        assert sent[0]["instructions"] == "Be terse" and "instructions" not in sent[2], "instructions are not carried"
        assert sent[2]["input"] == [
            user_text("Remember the word marmalade"),
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": first.output_text}]},
            user_text("Which word?"),
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": second.output_text}]},
            user_text("Once more"),
        ]
    elif model == "chat":
        assert sent[0]["messages"][0] == {"role": "system", "content": "Be terse"}
        assert [(m["role"], chat_text(m)) for m in sent[2]["messages"]] == expected, "no system message carried"
    else:
        assert sent[0]["system"] and "system" not in sent[2]
        assert [(m["role"], chat_text(m)) for m in sent[2]["messages"]] == expected
    # Each response lists only its own input.
    listed = client(gateway, key).responses.input_items.list(third.id)
    assert [chat_text(item.model_dump()) for item in listed.data] == ["Once more"]


@pytest.mark.parametrize("model", ["resp", "chat", "claude"])
def test_a_tool_call_is_continued_with_only_its_output(gateway, keys, fresh_simulator, model):
    key, _, _ = keys
    gateway_client = client(gateway, key)
    question = "What is the weather in Paris?"
    first = gateway_client.responses.create(model=model, input=question, tools=[WEATHER_TOOL])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    second = gateway_client.responses.create(
        model=model, input=[output], tools=[WEATHER_TOOL], previous_response_id=first.id
    )
    assert second.output[0].type == "message" and len(second.output_text.split()) == 12

    sent = fresh_simulator.requests(path=PATHS[model])[-1]["body"]
    if model == "resp":
        assert sent["input"] == [
            user_text(question),
            {"type": "function_call", "call_id": call.call_id, "name": "get_weather", "arguments": call.arguments},
            output,
        ]
    elif model == "chat":
        asked, assistant, tool = sent["messages"]
        assert asked == {"role": "user", "content": question}
        assert assistant["tool_calls"][0]["id"] == call.call_id == tool["tool_call_id"]
        assert tool["content"] == "Sunny, 21 C"
    else:
        asked, assistant, result = sent["messages"]
        assert chat_text(asked) == question
        use = assistant["content"][0]
        assert use["type"] == "tool_use" and use["input"] == {"location": "Paris"}
        assert result["content"][0]["tool_use_id"] == use["id"], "the provider's own id came back"


def test_another_owners_response_is_unknown_to_every_endpoint(gateway, keys, fresh_simulator):
    key, _, stranger = keys
    mine = client(gateway, key).responses.create(model="chat", input="Private notes")
    usage_flush()
    asked = len(fresh_simulator.requests())
    theirs = client(gateway, stranger)
    headers = {"Authorization": f"Bearer {stranger}"}

    for call in (
        lambda: theirs.responses.retrieve(mine.id),
        lambda: theirs.responses.input_items.list(mine.id),
        lambda: theirs.responses.delete(mine.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.NotFoundError) as continued:
        theirs.responses.create(model="chat", input="Go on", previous_response_id=mine.id)
    assert continued.value.body["param"] == "previous_response_id" and continued.value.body["code"] == "not_found"
    unknown = httpx.get(f"{gateway.openai_base}/responses/resp_{'0' * 32}", headers=headers)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"

    assert len(fresh_simulator.requests()) == asked, "no provider was asked to continue it"
    assert StoredResponse.objects.filter(response_id=mine.id).exists(), "its owner's still"
    assert client(gateway, key).responses.retrieve(mine.id).output_text == mine.output_text


def test_store_false_stores_nothing(gateway, keys):
    key, _, _ = keys
    gateway_client = client(gateway, key)
    created = gateway_client.responses.create(model="chat", input="Forget this", store=False)
    assert created.store is False
    wait_usage(lambda events: any(event["endpoint"] == "responses" for event in events))
    assert stored_events() == []
    with pytest.raises(openai.NotFoundError):
        gateway_client.responses.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        gateway_client.responses.create(model="chat", input="Go on", previous_response_id=created.id)
    usage_flush()
    assert UsageRecord.objects.filter(endpoint="responses").count() == 1
    assert not StoredResponse.objects.exists()


def test_a_conversation_is_refused_with_a_clear_message(gateway, keys, fresh_simulator):
    key, _, _ = keys
    response = httpx.post(
        f"{gateway.openai_base}/responses",
        json={"model": "chat", "input": "hi", "conversation": "conv_1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "conversation" and "previous_response_id" in error["message"]
    assert fresh_simulator.requests() == []


def test_a_real_worker_writes_the_stored_response(gateway, keys, celery_worker):
    key, _, _ = keys
    celery_worker(flush_seconds=0.3)
    created = client(gateway, key).responses.create(model="chat", input="Keep this")
    eventually(lambda: StoredResponse.objects.filter(response_id=created.id).exists(), timeout=15)
    eventually(lambda: not redis_sync().exists(STORED_COPY_PREFIX + created.id), timeout=5)
    assert client(gateway, key).responses.retrieve(created.id).output_text == created.output_text


def test_openai_agents_chain_their_turns_through_stored_responses(gateway, keys, fresh_simulator):
    """openai-agents' previous-response mode: within a run each model call after a tool call sends only the tool's
    output with `previous_response_id` (auto_previous_response_id), and a second run continues the first by its
    last response id; the provider always gets the whole conversation."""
    from agents import Agent, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled

    set_tracing_disabled(True)
    key, _, _ = keys

    @function_tool
    def get_weather(location: str) -> str:
        """Current weather."""
        return f"Sunny in {location}, 21 C"

    async def both_runs():
        sdk = openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
        agent = Agent(
            name="forecaster",
            instructions="Answer about the weather",
            model=OpenAIResponsesModel(model="chat", openai_client=sdk),
            tools=[get_weather],
        )
        first = await Runner.run(agent, "What is the weather in Paris?", auto_previous_response_id=True)
        second = await Runner.run(agent, "Thank you", previous_response_id=first.last_response_id)
        await sdk.close()
        return first, second

    first, second = asyncio.run(both_runs())
    assert len(first.final_output.split()) == 12 and second.final_output

    sent = [record["body"] for record in fresh_simulator.requests(path="/v1/chat/completions")]
    assert len(sent) == 3, "the tool call, the answer after it, the second run"
    roles = [[message["role"] for message in body["messages"]] for body in sent]
    assert roles[0] == ["system", "user"]
    assert roles[1] == ["system", "user", "assistant", "tool"], "the first call's turn sent back whole"
    assert sent[1]["messages"][3]["content"] == "Sunny in Paris, 21 C"
    assert roles[2] == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert chat_text(sent[2]["messages"][1]) == "What is the weather in Paris?"
    assert chat_text(sent[2]["messages"][4]) == first.final_output
    assert chat_text(sent[2]["messages"][5]) == "Thank you"
