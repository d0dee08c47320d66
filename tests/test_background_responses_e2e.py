"""Background responses end to end with the official `openai` SDK, two real gateway processes sharing Redis and the
simulator over loopback: `background: true` answers at once and the call runs to completion without a client;
GET polls it; a cancel from the other process stops it (upstream closed, booked as cancelled with the tokens so
far); a streamed background response resumes after sequence number N on the other process with exactly the rest;
and every deployment dialect serves it."""

import time

import openai
import pytest
from django.contrib.auth import get_user_model

from tests.support.data import key_create, model_create, provider_create
from tests.support.usage import usage_events, wait_usage
from tests.support.waiting import eventually

DIALECTS = ("openai", "anthropic", "responses")


@pytest.fixture
def two_gateways(gateway, gateway_factory):
    return gateway, gateway_factory()


@pytest.fixture
def models(fresh_simulator):
    providers = {
        "openai": provider_create("bg-openai", fresh_simulator.openai_base),
        "anthropic": provider_create("bg-anthropic", fresh_simulator.anthropic_base, dialect="anthropic"),
        "responses": provider_create("bg-responses", fresh_simulator.openai_base, dialect="responses"),
    }
    for dialect, provider in providers.items():
        model_create(f"bg-{dialect}", [(provider, "sim-echo?tokens=30&interval_ms=20", 0)])
    model_create("bg-long", [(providers["openai"], "sim-echo?tokens=400&interval_ms=25", 0)])
    return providers


def _client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.openai_base, api_key=key, max_retries=0, timeout=30)


def _settled(client: openai.OpenAI, response_id: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert time.monotonic() < deadline, f"still {response.status}"
        time.sleep(0.1)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_background_response_runs_without_its_client_and_is_polled_from_the_other_process(
    two_gateways, models, dialect
):
    first, second = two_gateways
    key = key_create("background")
    created = _client(first, key).responses.create(model=f"bg-{dialect}", input="hello there", background=True)
    assert created.status in ("queued", "in_progress") and created.background is True
    assert created.id.startswith("resp_") and created.output == []
    done = _settled(_client(second, key), created.id)
    assert done.status == "completed" and done.id == created.id
    assert done.output_text.strip()
    (event,) = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 200 and event["completion_tokens"] >= 30 and event["endpoint"] == "responses"
    # The same answer a foreground call gets.
    foreground = _client(first, key).responses.create(model=f"bg-{dialect}", input="hello there")
    assert done.output_text == foreground.output_text


@pytest.mark.django_db(transaction=True)
def test_cancel_from_the_other_process_stops_the_upstream_and_books_the_tokens_so_far(two_gateways, models):
    first, second = two_gateways
    key = key_create("background-cancel")
    created = _client(first, key).responses.create(model="bg-long", input="go on", background=True)
    eventually(
        lambda: _client(second, key).responses.retrieve(created.id).status == "in_progress", timeout=5,
        what="the response in progress",
    )  # fmt: skip
    time.sleep(0.5)
    cancelled = _client(second, key).responses.cancel(created.id)
    assert cancelled.status == "cancelled" and cancelled.id == created.id
    (event,) = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 499 and event["error_type"] == "cancelled"
    assert 5 < event["completion_tokens"] < 400, event
    assert _client(first, key).responses.retrieve(created.id).status == "cancelled"
    # Cancelling again returns it as it is; nothing more is booked.
    assert _client(first, key).responses.cancel(created.id).status == "cancelled"
    time.sleep(0.5)
    assert len(usage_events()) == 1


@pytest.mark.django_db(transaction=True)
def test_a_streamed_background_response_resumes_after_sequence_number_n_on_the_other_process(two_gateways, models):
    first, second = two_gateways
    key = key_create("background-stream")
    seen = []
    with _client(first, key).responses.create(
        model="bg-anthropic", input="stream it", background=True, stream=True
    ) as stream:
        for event in stream:
            seen.append(event)
            if len(seen) == 6:
                break
    response_id = seen[0].response.id
    assert [event.sequence_number for event in seen] == list(range(6))
    rest = list(_client(second, key).responses.retrieve(response_id, stream=True, starting_after=5))
    assert [event.sequence_number for event in rest] == list(range(6, 6 + len(rest)))
    assert rest[-1].type == "response.completed"
    text = "".join(event.delta for event in seen + rest if event.type == "response.output_text.delta")
    assert text == rest[-1].response.output_text
    # From the start, all of it again; the call was booked once.
    again = list(_client(first, key).responses.retrieve(response_id, stream=True))
    assert [event.sequence_number for event in again] == list(range(len(seen) + len(rest)))
    (event,) = wait_usage(lambda events: len(events) == 1)
    assert event["status_code"] == 200


@pytest.mark.django_db(transaction=True)
def test_background_refusals_and_another_owners_id(gateway, models):
    key = key_create("background-owner")
    stranger = key_create("background-stranger", user=get_user_model().objects.create(username="stranger"))
    client = _client(gateway, key)
    with pytest.raises(openai.BadRequestError, match="store: false"):
        client.responses.create(model="bg-openai", input="x", background=True, store=False)
    created = client.responses.create(model="bg-long", input="x", background=True)
    for call in (
        lambda: _client(gateway, stranger).responses.retrieve(created.id),
        lambda: _client(gateway, stranger).responses.cancel(created.id),
        lambda: list(_client(gateway, stranger).responses.retrieve(created.id, stream=True)),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    for bad in ("x", "²"):
        with pytest.raises(openai.BadRequestError, match="starting_after"):
            list(client.responses.retrieve(created.id, stream=True, extra_query={"starting_after": bad}))
    client.responses.cancel(created.id)
    foreground = client.responses.create(model="bg-openai", input="x")
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(foreground.id)
