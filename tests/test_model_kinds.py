"""A model serves only its kinds: a request of another kind (embeddings on a chat model, chat on an
embeddings model) is a 400 in the client's format naming the model and its kinds, refused before
admission: no request of the key's limits spent, no lease, no usage record, nothing sent upstream."""

import anthropic
import httpx
import openai
import pytest
from django.contrib.auth import get_user_model

from accounts.models import Tier
from accounts.services import api_key_issue
from aigateway.management.commands.seed_demo import demo_config
from providers.models import Model
from streaming.playground import playground_config
from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import leases_held, usage_events, wait_usage

pytestmark = pytest.mark.django_db(transaction=True)

MESSAGES = [{"role": "user", "content": "kinds"}]


@pytest.fixture
def models(fresh_simulator):
    sim = provider_create("sim", fresh_simulator.openai_base)
    claude = provider_create("sim-anthropic", fresh_simulator.anthropic_base, dialect="anthropic")
    model_create("sim-fast", [(sim, "sim-echo", 0)])  # the default kinds: chat
    model_create("embed", [(sim, "sim-embed", 0)], kinds=["embeddings"], aliases=["text-embedding-3-small"])
    model_create("claude-embed", [(claude, "sim-echo", 0)], kinds=["embeddings"])
    model_create("text", [(sim, "sim-echo?tokens=4", 0)], kinds=["chat", "completions"])
    model_create("no-kinds", [(sim, "sim-echo", 0)], kinds=[])
    # Every deployment fails; its fallback is for embeddings only, so a chat call must not reach it.
    model_create("broken", [(sim, "sim-echo?fail=500", 0)], fallbacks=["embed"])


def refusal(response: httpx.Response, shape: str = "openai") -> str:
    assert response.status_code == 400, response.text
    body = response.json()
    if shape == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    else:
        error = body["error"]
        assert (error["code"], error["param"], error["type"]) == (
            "unsupported_model_kind",
            "model",
            "invalid_request_error",
        ), body
    return body["error"]["message"]


def test_a_chat_model_refuses_embeddings_and_completions_before_admission(gateway, models, fresh_simulator):
    key = key_create("kinds-rpm", rpm=2)
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    for _ in range(3):  # more than the key's requests per minute
        with pytest.raises(openai.BadRequestError) as raised:
            client.embeddings.create(model="sim-fast", input="hello")
        assert raised.value.code == "unsupported_model_kind" and raised.value.param == "model"
        assert raised.value.body["message"] == "model 'sim-fast' serves chat, not embeddings"
        with pytest.raises(openai.BadRequestError) as raised:
            client.completions.create(model="sim-fast", prompt="hello")
        assert raised.value.body["message"] == "model 'sim-fast' serves chat, not completions"
    refused = httpx.post(
        gateway.openai_base + "/embeddings",
        json={"model": "text", "input": "x"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert refusal(refused) == "model 'text' serves chat and completions, not embeddings"
    assert "x-ratelimit-remaining-requests" not in refused.headers
    # Nothing of the key's limits was spent: both of its requests per minute are still there, then no more.
    assert client.chat.completions.create(model="sim-fast", messages=MESSAGES).choices
    assert client.completions.create(model="text", prompt="hello").choices
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="sim-fast", messages=MESSAGES)
    events = wait_usage(lambda evs: len(evs) == 3)
    assert sorted(e["endpoint"] for e in events) == ["chat.completions", "chat.completions", "completions"]
    assert sorted(e["status_code"] for e in events) == [200, 200, 429]
    assert leases_held() == 0
    sent = fresh_simulator.requests()
    assert [r["path"] for r in sent] == ["/v1/chat/completions", "/v1/completions"]


def test_an_embeddings_model_refuses_every_chat_door(gateway, models, fresh_simulator):
    key = key_create("kinds")
    bearer = {"Authorization": f"Bearer {key}"}
    expected = "model 'embed' serves embeddings, not chat"
    for path, body in (
        ("/chat/completions", {"model": "embed", "messages": MESSAGES}),
        ("/chat/completions", {"model": "embed", "messages": MESSAGES, "stream": True}),
        ("/responses", {"model": "embed", "input": "hi"}),
        ("/compare", {"models": ["sim-fast", "embed"], "messages": MESSAGES}),
        ("/completions", {"model": "embed", "prompt": "hi"}),
    ):
        wanted = "model 'embed' serves embeddings, not completions" if path == "/completions" else expected
        assert refusal(httpx.post(gateway.openai_base + path, json=body, headers=bearer)) == wanted, path
    # An alias names the model it stands for.
    aliased = httpx.post(
        gateway.openai_base + "/chat/completions",
        json={"model": "text-embedding-3-small", "messages": MESSAGES},
        headers=bearer,
    )
    assert refusal(aliased) == "model 'embed' (asked for as 'text-embedding-3-small') serves embeddings, not chat"
    claude = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    for model in ("embed", "claude-embed"):
        with pytest.raises(anthropic.BadRequestError) as raised:
            claude.messages.create(model=model, max_tokens=5, messages=MESSAGES)
        assert raised.value.body["error"] == {
            "type": "invalid_request_error",
            "message": f"model '{model}' serves embeddings, not chat",
        }
        with pytest.raises(anthropic.BadRequestError, match="serves embeddings, not chat"):
            claude.messages.count_tokens(model=model, messages=MESSAGES)
    # The right kind is served as before.
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    assert len(client.embeddings.create(model="text-embedding-3-small", input="hi").data) == 1
    wait_usage(lambda evs: len(evs) == 1)
    assert [e["endpoint"] for e in usage_events()] == ["embeddings"]
    assert [r["path"] for r in fresh_simulator.requests()] == ["/v1/embeddings"]


def test_no_kinds_means_chat_and_fallbacks_keep_to_the_kind(gateway, models, fresh_simulator):
    key = key_create("kinds")
    client = openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0)
    assert client.chat.completions.create(model="no-kinds", messages=MESSAGES).choices
    with pytest.raises(openai.BadRequestError, match="model 'no-kinds' serves chat, not embeddings"):
        client.embeddings.create(model="no-kinds", input="x")
    # The chat model's only fallback serves embeddings: it is not tried, the failure is the chat model's own.
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="broken", messages=MESSAGES)
    assert {r["body"]["model"] for r in fresh_simulator.requests()} == {"sim-echo", "sim-echo?fail=500"}


def test_the_playground_offers_chat_models_only(models):
    staff = get_user_model().objects.create_user("kinds-staff", password="pw-kinds-12345", is_staff=True)
    api_key_issue(owner=staff, tier=Tier.objects.create(name="all-models"), name="staff-key")
    config = playground_config(user=staff, host="127.0.0.1:8000", secure=False)
    assert [m["name"] for m in config["keys"][0]["models"]] == ["broken", "no-kinds", "sim-fast", "text"]
    assert set(Model.objects.values_list("name", flat=True)) == {
        "broken",
        "claude-embed",
        "embed",
        "no-kinds",
        "sim-fast",
        "text",
    }


def test_the_demo_models_say_what_they_serve():
    kinds = {model["name"]: model.get("kinds", ["chat"]) for model in demo_config("http://127.0.0.1:9100")["models"]}
    assert kinds["sim-fast"] == ["chat", "vision", "completions"] and kinds["sim-embed"] == ["embeddings"]
    assert all(kinds[name] == ["chat"] for name in kinds if name not in ("sim-fast", "sim-embed"))
