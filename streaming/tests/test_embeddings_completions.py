"""/v1/embeddings and legacy /v1/completions end to end: the official openai SDK (sync and async) ->
gateway process -> simulator over loopback; failover, usage and bad input for each."""

import httpx
import openai
import pytest

from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import wait_usage

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def key(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("embed", [(sim, "sim-embed", 0)], input_price_per_million=1, kinds=["embeddings"])
    model_create("embed-failover", [(sim, "sim-embed?fail=500", 0), (sim, "sim-embed", 1)], kinds=["embeddings"])
    model_create("text", [(sim, "sim-echo?tokens=6", 0)], kinds=["chat", "completions"])
    model_create("text-failover", [(sim, "sim-echo?fail=503", 0), (sim, "sim-echo?tokens=6", 1)], kinds=["completions"])
    model_create("claude-only", [(claude, "sim-claude", 0)], kinds=["chat", "embeddings", "completions"])
    return key_create("free")


def clients(gateway, simulator, key):
    return (
        openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0),
        openai.OpenAI(base_url=simulator.openai_base, api_key="x", max_retries=0),
    )


def test_embeddings_single_batch_and_base64(gateway, key, fresh_simulator):
    through, direct = clients(gateway, fresh_simulator, key)
    single = through.embeddings.create(model="embed", input="hello world")
    expected = direct.embeddings.create(model="sim-embed", input="hello world")
    assert single.data[0].embedding == pytest.approx(expected.data[0].embedding)
    assert single.model == "embed" and single.usage.prompt_tokens == 2
    batch = through.embeddings.create(model="embed", input=["one", "two two", "three"], dimensions=8)
    assert [len(d.embedding) for d in batch.data] == [8, 8, 8]
    assert batch.data[0].embedding != batch.data[1].embedding
    floats = through.embeddings.create(model="embed", input="hello world", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(single.data[0].embedding, abs=1e-6)
    sent = fresh_simulator.requests(path="/v1/embeddings")
    # The SDK asks for base64 unless told otherwise; the gateway passes the choice through.
    assert sent[0]["body"]["encoding_format"] == "base64" and sent[-1]["body"]["encoding_format"] == "float"
    events = wait_usage(lambda evs: len([e for e in evs if e["endpoint"] == "embeddings"]) == 3)
    assert [e["prompt_tokens"] for e in events] == [2, 4, 2]
    assert all(e["completion_tokens"] == 0 and e["status_code"] == 200 for e in events)


async def test_embeddings_async_and_failover(gateway, key):
    client = openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    response = await client.embeddings.with_raw_response.create(model="embed-failover", input=["a b c"])
    assert response.headers["x-gateway-route"] == "default; attempts=2"
    assert len(response.parse().data) == 1
    await client.close()


def test_completions_streamed_and_not(gateway, key, fresh_simulator):
    through, direct = clients(gateway, fresh_simulator, key)
    plain = through.completions.create(model="text", prompt="Say something")
    expected = direct.completions.create(model="sim-echo?tokens=6", prompt="Say something")
    assert plain.choices[0].text == expected.choices[0].text and plain.model == "text"
    assert plain.usage.completion_tokens == 6
    chunks = list(through.completions.create(model="text-failover", prompt="Say something", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected.choices[0].text
    assert {c.model for c in chunks} == {"text-failover"}
    events = wait_usage(lambda evs: len([e for e in evs if e["endpoint"] == "completions"]) == 2)
    assert [e["completion_tokens"] for e in events] == [6, 6]
    assert events[1]["attempts"] == 2 and events[1]["stream"] is True


async def test_completions_async(gateway, key):
    client = openai.AsyncOpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    completion = await client.completions.create(model="text", prompt=["Say", "something"], max_tokens=3)
    assert len(completion.choices[0].text.split()) == 3 and completion.choices[0].finish_reason == "length"
    await client.close()


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/embeddings", {"input": "x"}, "'model' is required"),
        ("/embeddings", {"model": "embed"}, "'input' is required"),
        ("/embeddings", {"model": "embed", "input": []}, "'input' must be"),
        ("/embeddings", {"model": "embed", "input": [""]}, "empty strings"),
        ("/embeddings", {"model": "embed", "input": "x", "dimensions": 0}, "'dimensions'"),
        ("/embeddings", {"model": "embed", "input": "x", "encoding_format": "hex"}, "'encoding_format'"),
        ("/completions", {"model": "text"}, "'prompt' is required"),
        ("/completions", {"model": "text", "prompt": 5}, "'prompt' must be"),
        ("/completions", {"model": "text", "prompt": "x", "max_tokens": -1}, "'max_tokens'"),
        ("/completions", {"model": "claude-only", "prompt": "x"}, "no deployment that offers completions"),
        ("/embeddings", {"model": "claude-only", "input": "x"}, "no deployment that offers embeddings"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(gateway, key, path, body, needle):
    response = httpx.post(gateway.openai_base + path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_models_list_says_what_each_model_is_for(gateway, key):
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    kinds = {m.id: m.model_extra["kinds"] for m in client.models.list()}
    assert kinds["embed"] == ["embeddings"] and kinds["text"] == ["chat", "completions"]
    assert client.models.retrieve("embed").model_extra["kinds"] == ["embeddings"]
