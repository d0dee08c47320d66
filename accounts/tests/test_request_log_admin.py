"""The request log in admin: the list (columns, filters by key, team, model, status and date, search in the redacted
conversation text, no count of the whole table, no N+1), the detail page of each wire format (OpenAI chat,
Anthropic messages, OpenAI Responses) and of a metadata record beside its usage record, the conversation JSON the
playground opens, the links between logged requests and usage records, who may see them (staff with the view
permission; nobody may add, change or delete), and `log_bodies` on the tier, team and key pages."""

import html
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from accounts.auth import log_level_for
from accounts.models import ApiKey, RequestLog, Team, Tier, UsageRecord
from accounts.request_log import request_log_entry, request_log_record_fields
from accounts.services import api_key_issue
from providers.dialects.anthropic import anthropic
from providers.dialects.canonical import ChatResponse, Text, Thinking, ToolCall, Usage
from providers.dialects.openai import openai
from providers.dialects.responses import responses
from providers.models import Model

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
EMAIL = "jane.doe@example.org"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def url(name: str, *args) -> str:
    return reverse(f"admin:accounts_{name}", args=args)


@pytest.fixture
def keys(admin_user):
    tier = Tier.objects.create(name="logged", log_bodies="full")
    team = Team.objects.create(name="research")
    research = api_key_issue(owner=admin_user, tier=tier, name="research-bot", team=team).api_key
    support = api_key_issue(owner=admin_user, tier=tier, name="support-bot").api_key
    return {"research": research, "support": support, "team": team}


def logged(
    request_id: str,
    *,
    api_key: ApiKey,
    request: dict,
    answer: dict | None = None,
    level: str = "full",
    endpoint: str = "chat.completions",
    status: int = 200,
    model: str = "gpt",
    when: datetime = NOW,
) -> RequestLog:
    """A record made the way the usage flush makes one from a call's usage event."""
    entry = request_log_entry(level=level, request=request, answer=answer)
    fields = {
        "api_key_id": api_key.pk,
        "user_id": api_key.owner_id,
        "team_id": api_key.team_id,
        "model": model,
        "endpoint": endpoint,
        "status_code": status,
    }
    values = request_log_record_fields(entry, request_id=request_id, created_at=when, fields=fields)
    return RequestLog.objects.create(**values)


def usage_of(record: RequestLog, **fields) -> UsageRecord:
    values = {
        "request_id": record.request_id,
        "api_key_id": record.api_key_id,
        "team_id": record.team_id,
        "user_id": record.user_id,
        "model": record.model,
        "endpoint": record.endpoint,
        "status_code": record.status_code,
        "created_at": record.created_at,
        **fields,
    }
    return UsageRecord.objects.create(**values)


def chat(text: str, **extra) -> dict:
    return {"model": "gpt", "messages": [{"role": "user", "content": text}], **extra}


def openai_answer(*parts) -> dict:
    response = ChatResponse(id="chatcmpl-1", parts=list(parts), finish_reason="stop", usage=Usage(12, 30))
    return openai.render_response(response, model="gpt")


def listed(client, query: str = "") -> list[str]:
    """The request ids the list shows for `query`."""
    response = client.get(url("requestlog_changelist") + query)
    assert response.status_code == 200, response.content.decode()[:2000]
    return re.findall(r">(req_[0-9a-f]{32}|req-[\w-]+)</a>", response.content.decode())


def page(client, record: RequestLog) -> str:
    response = client.get(url("requestlog_change", record.pk))
    assert response.status_code == 200, response.content.decode()[:2000]
    return response.content.decode()


def blocks(content: str, testid: str) -> list[str]:
    """The inner HTML of each element with this data-testid (elements that do not nest their own kind)."""
    found = []
    for match in re.finditer(rf'<(\w+)[^>]*data-testid="{testid}"[^>]*>', content):
        tag = match.group(1)
        end = content.index(f"</{tag}>", match.end())
        found.append(content[match.end() : end])
    return found


def markdown_texts(fragment: str) -> list[str]:
    """The logged texts a fragment hands to the Markdown renderer (as the page's script reads them)."""
    return [
        html.unescape(text) for text in re.findall(r"<div class=\"gw-text\" data-markdown>(.*?)</div>", fragment, re.S)
    ]


# The list ---------------------------------------------------------------------------------------------


def test_the_list_shows_each_record_with_its_key_team_model_status_level_and_size(admin_client, keys, settings):
    settings.GATEWAY_LOG_MAX_BYTES = 600
    short = logged("req-short", api_key=keys["research"], request=chat("hello"), answer=openai_answer(Text("hi")))
    long = logged("req-long", api_key=keys["support"], request=chat("word " * 400), status=502, model="claude")
    assert long.truncated and not short.truncated
    content = admin_client.get(url("requestlog_changelist")).content.decode()
    rows = {rid: row for row in re.findall(r"<tr>(.*?)</tr>", content, re.S) for rid in re.findall(r"req-\w+", row)}
    assert set(rows) == {"req-short", "req-long"}
    assert keys["research"].prefix in rows["req-short"] and "research" in rows["req-short"]
    assert keys["support"].prefix in rows["req-long"]
    assert "chat.completions" in rows["req-short"] and ">full<" in rows["req-short"]
    assert ">502<" in rows["req-long"] and ">claude<" in rows["req-long"]
    assert ">cut</strong>" in rows["req-long"] and "cut</strong>" not in rows["req-short"]
    # One link per row, to the detail page.
    assert f'href="{url("requestlog_change", short.pk)}"' in content


def test_the_list_reads_no_bodies_counts_no_more_than_the_cap_and_makes_no_query_per_row(admin_client, keys):
    for index in range(3):
        logged(f"req-a{index}", api_key=keys["research"], request=chat(f"few {index}"))

    def list_queries() -> list[str]:
        with CaptureQueriesContext(connection) as queries:
            assert admin_client.get(url("requestlog_changelist")).status_code == 200
        return [query["sql"] for query in queries.captured_queries]

    few = list_queries()
    for index in range(40):
        api_key = keys["research"] if index % 2 else keys["support"]
        logged(f"req-b{index}", api_key=api_key, request=chat(f"many {index}"), when=NOW - timedelta(minutes=index))
    many = list_queries()
    assert len(many) == len(few), many
    on_the_log = [sql for sql in many if 'FROM "accounts_requestlog"' in sql]
    counts = [sql for sql in on_the_log if "COUNT(" in sql]
    assert counts and all("LIMIT" in sql for sql in counts), counts
    rows = [sql for sql in on_the_log if "COUNT(" not in sql]
    assert rows and all('"accounts_requestlog"."body"' not in sql for sql in rows)
    assert all('"accounts_requestlog"."search_text"' not in sql for sql in rows)


def test_past_the_count_cap_the_list_says_more_than(admin_client, keys, monkeypatch):
    from accounts.admin_request_log import CappedCountPaginator

    monkeypatch.setattr(CappedCountPaginator, "cap", 5)
    for index in range(8):
        logged(f"req-c{index}", api_key=keys["research"], request=chat("x"), when=NOW - timedelta(minutes=index))
    content = admin_client.get(url("requestlog_changelist")).content.decode()
    assert "more than 5 logged requests" in content
    assert "narrow by date" in content
    assert "8 logged requests" not in content


def test_filters_by_key_team_model_status_level_and_date(admin_client, keys):
    Model.objects.create(name="gpt")
    Model.objects.create(name="claude")
    research, support = keys["research"], keys["support"]
    logged("req-ok", api_key=research, request=chat("a"), when=NOW)
    logged("req-limited", api_key=support, request=chat("b"), status=429, model="claude", when=NOW - timedelta(days=1))
    logged("req-failed", api_key=support, request=chat("c"), status=502, when=NOW - timedelta(days=3))
    logged("req-meta", api_key=research, request=chat("d"), level="metadata", status=499, when=NOW - timedelta(days=9))

    assert listed(admin_client, f"?api_key__id__exact={research.pk}") == ["req-ok", "req-meta"]
    assert listed(admin_client, f"?team__id__exact={keys['team'].pk}") == ["req-ok", "req-meta"]
    assert listed(admin_client, "?model=claude") == ["req-limited"]
    assert listed(admin_client, "?status=2xx") == ["req-ok"]
    assert listed(admin_client, "?status=4xx") == ["req-limited", "req-meta"]
    assert listed(admin_client, "?status=5xx") == ["req-failed"]
    assert listed(admin_client, "?status=429") == ["req-limited"]
    assert listed(admin_client, "?status_code=499") == ["req-meta"]
    assert listed(admin_client, "?level=metadata") == ["req-meta"]
    day = NOW.date()
    assert listed(admin_client, f"?since={day - timedelta(days=1)}&until={day - timedelta(days=1)}") == ["req-limited"]
    assert listed(admin_client, f"?since={day - timedelta(days=3)}") == ["req-ok", "req-limited", "req-failed"]
    assert listed(admin_client, f"?until={day - timedelta(days=4)}") == ["req-meta"]
    assert listed(admin_client, f"?since={day - timedelta(days=3)}&status=5xx&model=gpt") == ["req-failed"]
    # The filter column offers the choices; a bad date is the admin's "wrong parameters" answer, not an error page.
    content = admin_client.get(url("requestlog_changelist")).content.decode()
    assert 'data-testid="log-date-range"' in content and "?model=claude" in content and "?status=4xx" in content
    # The date form keeps the list's other filters and its search.
    content = admin_client.get(url("requestlog_changelist") + "?model=claude&q=b").content.decode()
    [form] = blocks(content, "log-date-range")
    assert '<input type="hidden" name="model" value="claude">' in form and 'name="q" value="b"' in form
    bad = admin_client.get(url("requestlog_changelist") + "?since=yesterday")
    assert bad.status_code == 302 and bad["Location"].endswith("?e=1")


def test_the_period_filter_counts_back_from_now(admin_client, keys):
    now = datetime.now(UTC)
    logged("req-recent", api_key=keys["research"], request=chat("a"), when=now - timedelta(minutes=10))
    logged("req-yesterday", api_key=keys["research"], request=chat("b"), when=now - timedelta(hours=30))
    logged("req-old", api_key=keys["research"], request=chat("c"), when=now - timedelta(days=40))
    assert listed(admin_client, "?period=1h") == ["req-recent"]
    assert listed(admin_client, "?period=7d") == ["req-recent", "req-yesterday"]
    assert listed(admin_client, "") == ["req-recent", "req-yesterday", "req-old"]


def test_search_finds_words_of_the_redacted_conversation_or_a_request_id(admin_client, keys):
    logged(
        "req-quarterly",
        api_key=keys["research"],
        request=chat(f"Summarise the Quarterly figures and mail them to {EMAIL}"),
        answer=openai_answer(Text("The northern region grew by 4%.")),
    )
    logged("req-weather", api_key=keys["support"], request=chat("What is the weather like?"))
    by_id = logged("req_" + "ab" * 16, api_key=keys["support"], request=chat("unrelated"))

    assert listed(admin_client, "?q=quarterly") == ["req-quarterly"]  # any case
    assert listed(admin_client, "?q=NORTHERN+region") == ["req-quarterly"]  # the answer's words too, every word
    assert listed(admin_client, "?q=northern+weather") == []
    assert listed(admin_client, '?q="the+weather+like"') == ["req-weather"]  # a quoted phrase
    assert listed(admin_client, f"?q={by_id.request_id}") == [by_id.request_id]
    # The log keeps what was stored: the address was redacted before, so it cannot be found, its mark can.
    assert listed(admin_client, f"?q={EMAIL}") == []
    assert listed(admin_client, "?q=%5Bredacted+email%5D") == ["req-quarterly"]
    # Filters and search together.
    assert listed(admin_client, f"?q=weather&api_key__id__exact={keys['research'].pk}") == []


def test_search_by_request_id_uses_an_exact_match(admin_client, keys):
    record = logged("req_" + "cd" * 16, api_key=keys["research"], request=chat("x"))
    with CaptureQueriesContext(connection) as queries:
        assert listed(admin_client, f"?q={record.request_id}") == [record.request_id]
    searches = [q["sql"] for q in queries.captured_queries if record.request_id in q["sql"]]
    assert searches and all("LIKE" not in sql.upper() for sql in searches), searches


# The detail page ------------------------------------------------------------------------------------


def test_an_openai_chat_record_reads_as_its_conversation_beside_its_usage_and_routing(admin_client, keys):
    request = {
        "model": "gpt-latest",
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "You answer in **Markdown**."},
            {"role": "user", "content": [{"type": "text", "text": "Look up the <b>order</b> 42"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"order":42}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"status": "shipped"}'},
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}],
    }
    answer = openai_answer(Thinking("The tool said shipped."), Text("Order 42 is **shipped**."))
    record = logged("req-openai", api_key=keys["research"], request=request, answer=answer)
    usage = usage_of(
        record,
        model="gpt-4o",
        requested_model="gpt-latest",
        route="alias:gpt-latest",
        provider="acme",
        prompt_tokens=1200,
        completion_tokens=345,
        cached_tokens=1000,
        reasoning_tokens=40,
        cost=Decimal("0.00123450"),
        ttfb_ms=212.4,
        duration_ms=1834.0,
        attempts=2,
        stream=True,
    )
    with CaptureQueriesContext(connection) as queries:
        content = page(admin_client, record)
    # The record with its key, team and user in one query; its usage record with its deployment in one more.
    tables = [q["sql"].split(" FROM ", 1)[-1].split()[0] for q in queries.captured_queries]
    assert tables.count('"accounts_requestlog"') == 1 and tables.count('"accounts_usagerecord"') == 1, tables

    [system] = blocks(content, "log-system")
    assert markdown_texts(system) == ["You answer in **Markdown**."]
    messages = re.findall(r'data-testid="log-message" data-role="(\w+)"', content)
    assert messages == ["user", "assistant", "tool"]
    user, assistant, tool = blocks(content, "log-message")
    # Logged text reaches the page escaped, for the script to render through the sanitizer.
    assert markdown_texts(user) == ["Look up the <b>order</b> 42"] and "<b>order</b>" not in user
    assert "lookup" in assistant and html.unescape(assistant).count('"order": 42') == 1  # arguments indented
    assert "Result of <code>lookup</code>" in tool and "shipped" in tool
    [answer_html] = blocks(content, "log-answer")
    assert markdown_texts(answer_html) == ["Order 42 is **shipped**."]
    # Reasoning folded: a <details> without `open`.
    assert re.search(r'<details class="gw-reasoning" data-testid="log-reasoning"><summary>', answer_html)
    assert "The tool said shipped." in answer_html
    assert blocks(content, "log-finish") == ["finished: stop"]
    assert 'src="/static/accounts/request_log.js"' in content and 'type="module"' in content

    facts = {
        testid: html.unescape(text)
        for testid, text in re.findall(r'<dd data-testid="(usage-[\w-]+)">(.*?)</dd>', content)
    }
    assert facts["usage-status"] == "200"
    assert facts["usage-tokens"] == "1,200 in / 345 out"
    assert facts["usage-cached"] == "1,000" and facts["usage-reasoning"] == "40"
    assert facts["usage-cost"] == "0.0012345 USD"
    assert facts["usage-ttfb"] == "212 ms" and facts["usage-duration"] == "1,834 ms"
    assert facts["usage-model"] == "gpt-latest → gpt-4o" and facts["usage-route"] == "alias:gpt-latest"
    assert facts["usage-provider"] == "acme" and facts["usage-attempts"] == "2" and facts["usage-cache"] == "miss"
    assert f'href="{url("usagerecord_change", usage.pk)}" data-testid="log-usage-link"' in content
    [parameters] = blocks(content, "log-parameters")
    assert "temperature" in parameters and "0.3" in parameters and "[&quot;lookup&quot;]" in parameters
    [link] = re.findall(r'href="([^"]+)" data-testid="open-in-playground"', content)
    assert link == "/playground/?log=req-openai"


def test_an_anthropic_messages_record_reads_as_its_conversation(admin_client, keys):
    request = {
        "model": "claude",
        "max_tokens": 256,
        "system": [{"type": "text", "text": "Be brief."}],
        "messages": [
            {"role": "user", "content": "What is 6 x 7?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Multiply.", "signature": "sig"},
                    {"type": "tool_use", "id": "toolu_1", "name": "calculator", "input": {"expression": "6*7"}},
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "42", "is_error": False}],
            },
        ],
    }
    response = ChatResponse(id="msg_1", parts=[Thinking("Easy."), Text("It is *42*.")], finish_reason="stop")
    record = logged(
        "req-anthropic",
        api_key=keys["research"],
        request=request,
        answer=anthropic.render_response(response, model="claude"),
        endpoint="messages",
        model="claude",
    )
    content = page(admin_client, record)
    assert "Anthropic messages" in content
    assert markdown_texts(blocks(content, "log-system")[0]) == ["Be brief."]
    assert re.findall(r'data-testid="log-message" data-role="(\w+)"', content) == ["user", "assistant", "tool"]
    user, assistant, tool = blocks(content, "log-message")
    assert markdown_texts(user) == ["What is 6 x 7?"]
    assert "Multiply." in assistant and "gw-reasoning" in assistant
    assert "calculator" in assistant and "6*7" in assistant
    assert "Result of <code>calculator</code>" in tool and "42" in tool
    [answer_html] = blocks(content, "log-answer")
    assert markdown_texts(answer_html) == ["It is *42*."] and "Easy." in answer_html
    assert blocks(content, "log-no-usage")  # no usage record with this id


def test_a_responses_record_reads_as_its_conversation(admin_client, keys):
    request = {
        "model": "gpt",
        "instructions": "Answer with a table.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Weather in Oslo?"}]},
            {"type": "function_call", "call_id": "call_9", "name": "weather", "arguments": '{"city":"Oslo"}'},
            {"type": "function_call_output", "call_id": "call_9", "output": "-3 C, snow"},
        ],
        "tools": [{"type": "web_search"}],  # a built-in tool: shown by name, and no obstacle to reading the rest
    }
    response = ChatResponse(
        id="resp_1",
        parts=[
            Thinking("Cold."),
            Text("| city | weather |\n|---|---|\n| Oslo | snow |"),
            ToolCall("c2", "alert", "{}"),
        ],
        finish_reason="tool_calls",
    )
    record = logged(
        "req-responses",
        api_key=keys["support"],
        request=request,
        answer=responses.render_response(response, model="gpt"),
        endpoint="responses",
    )
    content = page(admin_client, record)
    assert "OpenAI Responses" in content and not blocks(content, "log-problem")
    assert markdown_texts(blocks(content, "log-system")[0]) == ["Answer with a table."]
    assert re.findall(r'data-testid="log-message" data-role="(\w+)"', content) == ["user", "assistant", "tool"]
    user, assistant, tool = blocks(content, "log-message")
    assert markdown_texts(user) == ["Weather in Oslo?"]
    assert "weather" in assistant and "Oslo" in assistant
    assert "Result of <code>weather</code>" in tool and "-3 C, snow" in tool
    [answer_html] = blocks(content, "log-answer")
    assert markdown_texts(answer_html) == ["| city | weather |\n|---|---|\n| Oslo | snow |"]
    assert "Cold." in answer_html and "alert" in answer_html
    assert "web_search" in blocks(content, "log-parameters")[0]


def test_a_metadata_record_shows_its_parameters_and_no_conversation(admin_client, keys):
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}
    record = logged(
        "req-meta",
        api_key=keys["research"],
        request=chat("private words", temperature=0.7, max_tokens=30, tools=[tool]),
        level="metadata",
    )
    usage_of(record, prompt_tokens=5, completion_tokens=6, cost=Decimal("0.5"))
    content = page(admin_client, record)
    assert blocks(content, "log-metadata-only")
    assert not blocks(content, "log-message") and not blocks(content, "log-answer")
    rows = dict(re.findall(r"<tr><th scope=\"row\">(\w+)</th><td><code>(.*?)</code></td></tr>", content))
    assert rows == {
        "model": "gpt",
        "temperature": "0.7",
        "max_tokens": "30",
        "messages_count": "1",
        "tools": "[&quot;lookup&quot;]",
    }
    assert "private" not in content
    assert 'data-testid="open-in-playground"' not in content
    assert re.search(r'<dd data-testid="usage-cost">0.50 USD</dd>', content)


def test_a_truncated_record_says_so_and_an_unreadable_body_is_shown_as_stored(admin_client, keys, settings):
    settings.GATEWAY_LOG_MAX_BYTES = 900
    cut = logged("req-cut", api_key=keys["research"], request=chat("long " * 500))
    content = page(admin_client, cut)
    assert blocks(content, "log-truncated")
    [user] = blocks(content, "log-message")
    assert "…[cut " in html.unescape(user)

    settings.GATEWAY_LOG_MAX_BYTES = 256 * 1024
    odd = {
        "model": "gpt",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Listen:"}, {"type": "input_audio", "data": "AAA"}]}
        ],
    }
    record = logged("req-odd", api_key=keys["research"], request=odd)
    content = page(admin_client, record)
    [problem] = blocks(content, "log-problem")
    assert "could not be read as OpenAI chat completions" in problem and "input_audio" in problem
    [user] = blocks(content, "log-message")
    assert markdown_texts(user) == ["Listen:"] and "input_audio" in user  # the part it could not read, as JSON


def test_a_record_of_a_failed_call_says_no_answer_was_recorded(admin_client, keys):
    record = logged("req-502", api_key=keys["research"], request=chat("hello"), status=502)
    usage_of(record, status_code=502, error_type="upstream_error", attempts=3)
    content = page(admin_client, record)
    assert blocks(content, "log-no-answer")
    assert blocks(content, "usage-status") == ["502 (upstream_error)"]
    assert blocks(content, "log-status") == ["502"]


# Links between usage records and logged requests --------------------------------------------------------


def test_a_usage_record_links_to_its_logged_request_and_back(admin_client, keys):
    record = logged("req-linked", api_key=keys["research"], request=chat("hi"))
    usage = usage_of(record)
    unlogged = UsageRecord.objects.create(
        request_id="req-unlogged", model="gpt", endpoint="chat.completions", status_code=200, created_at=NOW
    )
    content = admin_client.get(url("usagerecord_change", usage.pk)).content.decode()
    [link] = re.findall(r'href="([^"]+)" data-testid="usage-logged-request"', content)
    assert link == url("requestlog_change", record.pk)
    assert f'href="{url("usagerecord_change", usage.pk)}"' in page(admin_client, record)
    content = admin_client.get(url("usagerecord_change", unlogged.pk)).content.decode()
    assert "not logged" in content and "usage-logged-request" not in content


# The conversation the playground opens ------------------------------------------------------------------


def conversation(client, request_id: str):
    return client.get(url("requestlog_conversation", request_id))


def test_the_conversation_json_is_the_logged_conversation_as_text_messages(admin_client, keys):
    request = {
        "model": "claude",
        "max_tokens": 200,
        "temperature": 0.5,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": f"Mail {EMAIL} the **plan**"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "hidden", "signature": "s"},
                    {"type": "text", "text": "Looking it up."},
                    {"type": "tool_use", "id": "toolu_1", "name": "plan", "input": {"q": 1}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]},
        ],
    }
    response = ChatResponse(id="msg_1", parts=[Thinking("more hidden"), Text("Sent.")], finish_reason="stop")
    logged(
        "req-conv",
        api_key=keys["research"],
        request=request,
        answer=anthropic.render_response(response, model="claude"),
        endpoint="messages",
        model="claude",
    )
    answer = conversation(admin_client, "req-conv")
    assert answer.status_code == 200 and answer["Content-Type"] == "application/json"
    assert "no-cache" in answer["Cache-Control"]
    assert answer.json() == {
        "request_id": "req-conv",
        "model": "claude",
        "endpoint": "messages",
        "api_key_id": keys["research"].pk,
        "truncated": False,
        "system": "Be brief.",
        "messages": [
            {"role": "user", "content": "Mail [redacted email] the **plan**"},
            {"role": "assistant", "content": 'Looking it up.\n\n[tool call plan: {\n  "q": 1\n}]'},
            {"role": "user", "content": "[tool result of plan: ok]"},
            {"role": "assistant", "content": "Sent."},
        ],
        "temperature": 0.5,
        "max_tokens": 200,
    }


def test_the_conversation_json_is_for_staff_with_access_and_full_records_only(client, admin_client, keys):
    logged("req-full", api_key=keys["research"], request=chat("secret plans"))
    logged("req-meta", api_key=keys["research"], request=chat("x"), level="metadata")
    for who in ("anonymous", "member", "staff without the permission"):
        if who == "member":
            get_user_model().objects.create_user("member", password="pw-member-1")
            client.login(username="member", password="pw-member-1")
        elif who == "staff without the permission":
            get_user_model().objects.create_user("clerk", password="pw-clerk-1", is_staff=True)
            client.login(username="clerk", password="pw-clerk-1")
        answer = conversation(client, "req-full")
        assert answer.status_code == 403, who
        assert answer.json()["error"]["code"] == "forbidden" and "secret" not in answer.content.decode()
    assert conversation(admin_client, "req-meta").status_code == 409
    assert conversation(admin_client, "req-meta").json()["error"]["code"] == "no_content"
    assert conversation(admin_client, "req-nothing").status_code == 404
    assert admin_client.post(url("requestlog_conversation", "req-full")).status_code == 405


# Who may see and change the log -------------------------------------------------------------------------


def test_only_staff_with_the_view_permission_see_the_log_and_nobody_edits_it(client, admin_client, keys):
    record = logged("req-guarded", api_key=keys["research"], request=chat("guarded words"))
    detail, changelist = url("requestlog_change", record.pk), url("requestlog_changelist")
    # Not staff: admin's login page.
    get_user_model().objects.create_user("member", password="pw-member-1")
    client.login(username="member", password="pw-member-1")
    for path in (detail, changelist):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
    # Staff without the permission: refused.
    clerk = get_user_model().objects.create_user("clerk", password="pw-clerk-1", is_staff=True)
    client.login(username="clerk", password="pw-clerk-1")
    assert client.get(detail).status_code == 403 and client.get(changelist).status_code == 403
    # With it: read, never written.
    clerk.user_permissions.add(Permission.objects.get(codename="view_requestlog"))
    assert "guarded words" in client.get(detail).content.decode()
    for staff in (client, admin_client):
        assert staff.post(detail, {"request_id": "req-changed", "status_code": "200"}).status_code == 403
        assert staff.get(url("requestlog_add")).status_code == 403
        assert staff.post(url("requestlog_delete", record.pk), {"post": "yes"}).status_code == 403
        bulk = staff.post(changelist, {"action": "delete_selected", "_selected_action": [record.pk], "post": "yes"})
        assert bulk.status_code in (200, 302)
    record.refresh_from_db()
    assert record.request_id == "req-guarded" and RequestLog.objects.count() == 1
    assert 'value="delete_selected"' not in admin_client.get(changelist).content.decode()


# log_bodies on the tier, team and key pages ------------------------------------------------------------


def test_log_bodies_is_edited_on_the_tier_team_and_key_pages(admin_client, admin_user):
    tier = Tier.objects.create(name="plain")
    team = Team.objects.create(name="ops")
    api_key = api_key_issue(owner=admin_user, tier=tier, name="bot", team=team).api_key
    tier_form = {"name": "plain", "max_compare_models": "4", "cache_ttl_seconds": "0", "_save": "Save"}
    for form, expected in ((tier_form, "off"), ({**tier_form, "log_bodies": "metadata"}, "metadata")):
        assert admin_client.post(url("tier_change", tier.pk), form).status_code == 302
        tier.refresh_from_db()
        assert tier.log_bodies == expected
    team_form = {
        "name": "ops",
        "alert_webhook": "",
        "cache_ttl_seconds": "",
        "log_bodies": "full",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "api_keys-TOTAL_FORMS": "0",
        "api_keys-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    assert admin_client.post(url("team_change", team.pk), team_form).status_code == 302
    team.refresh_from_db()
    assert team.log_bodies == "full"
    api_key.refresh_from_db()
    assert log_level_for(api_key) == "full"
    content = admin_client.get(url("apikey_change", api_key.pk)).content.decode()
    assert 'name="log_bodies"' in content
    assert '<span data-testid="log-bodies-in-force">full</span> (team ops&#x27;s)' in content
    key_form = {
        "name": "bot",
        "tier": str(tier.pk),
        "team": str(team.pk),
        "enabled": "on",
        "cache_ttl_seconds": "",
        "log_bodies": "off",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    assert admin_client.post(url("apikey_change", api_key.pk), key_form).status_code == 302
    api_key.refresh_from_db()
    assert api_key.log_bodies == "off" and log_level_for(api_key) == "off"
    assert 'name="log_bodies"' in admin_client.get(url("tier_change", tier.pk)).content.decode()
    assert 'name="log_bodies"' in admin_client.get(url("team_change", team.pk)).content.decode()


def test_a_key_issued_from_the_add_form_keeps_its_log_setting(admin_client, admin_user):
    tier = Tier.objects.create(name="plain")
    form = {
        "name": "auditor",
        "owner": str(admin_user.pk),
        "tier": str(tier.pk),
        "enabled": "on",
        "expires_at_0": "",
        "expires_at_1": "",
        "log_bodies": "metadata",
        "budgets-TOTAL_FORMS": "0",
        "budgets-INITIAL_FORMS": "0",
        "_save": "Save",
    }
    response = admin_client.post(url("apikey_add"), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    api_key = ApiKey.objects.get(name="auditor")
    assert api_key.log_bodies == "metadata" and log_level_for(api_key) == "metadata"
