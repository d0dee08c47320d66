"""Routing in the admin: the model's routing fields and the rules are validated as forms, and the
"Test routing" page answers exactly what route_decide decides, without a key's plaintext."""

import json

import pytest
from django.contrib.auth import get_user_model
from django.urls import reverse

from accounts.auth import key_context_build
from accounts.models import Tier
from accounts.services import api_key_issue
from providers.models import Deployment, Model, Provider, RouteRule
from providers.route_rules import request_facts, route_decide
from providers.routing import route_table_load

pytestmark = pytest.mark.django_db

TEST_URL = "/admin/providers/routerule/test/"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def routing():
    """main (aliases, a fallback, a small context window with a context fallback), the rule targets,
    and a key whose tier allows everything but 'reasoner'."""
    sim = Provider.objects.create(name="sim", base_url="http://127.0.0.1:9100/v1")
    spare = Provider.objects.create(name="spare", base_url="http://127.0.0.1:9101/v1")
    models = {}
    for name in ("backup", "long-context", "small", "reasoner", "main-next"):
        models[name] = Model.objects.create(name=name)
        Deployment.objects.create(model=models[name], provider=sim, upstream_model=f"{name}-up")
    models["main"] = Model.objects.create(
        name="main",
        aliases=["claude-*", "gpt-4o-mini"],
        fallbacks=["backup"],
        context_window=200,
        context_fallbacks=["long-context"],
    )
    Deployment.objects.create(model=models["main"], provider=sim, upstream_model="main-a", priority=0, weight=3)
    Deployment.objects.create(model=models["main"], provider=spare, upstream_model="main-b", priority=0, weight=1)
    Deployment.objects.create(model=models["main"], provider=spare, upstream_model="main-c", priority=5)
    RouteRule.objects.create(
        name="background", order=1, when={"header": {"x-gateway-route": "background"}}, target=models["small"]
    )
    RouteRule.objects.create(name="think", order=2, when={"thinking": True}, target=models["reasoner"])
    RouteRule.objects.create(name="canary", order=3, when={"model": "main"}, target=models["main-next"], share=0.1)

    tier = Tier.objects.create(name="team")
    tier.allowed_models.set([m for name, m in models.items() if name != "reasoner"])
    owner = get_user_model().objects.create_user("alice", password="pw")
    issued = api_key_issue(owner=owner, tier=tier, name="ci-bot")
    return {"models": models, "key": issued.api_key, "plaintext": issued.plaintext}


def chat(model: str, **extra) -> str:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], **extra})


def submit(client, routing, body: str, *, headers: str = "", dialect: str = "openai"):
    response = client.post(
        TEST_URL, {"api_key": routing["key"].pk, "dialect": dialect, "headers": headers, "body": body}
    )
    assert response.status_code == 200
    assert routing["plaintext"] not in response.content.decode()
    return response


def served(response) -> list[tuple[str, str, str]]:
    """(probability, model, route) of every outcome the page shows."""
    explanation = response.context["explanation"]
    assert explanation is not None, response.context["form"].errors
    return [
        (outcome.probability_percent, outcome.decision.model, outcome.decision.route)
        for outcome in explanation.outcomes
    ]


def form_errors(response) -> list[str]:
    assert response.context["explanation"] is None
    return [message for messages in response.context["form"].errors.values() for message in messages]


# Access and rendering


def test_page_renders_for_staff_with_keys_listed_without_plaintext(admin_client, routing):
    response = admin_client.get(TEST_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Test routing" in html
    assert f"ci-bot ({routing['key'].prefix}...), tier team" in html
    assert routing["plaintext"] not in html
    assert routing["key"].key_hash not in html
    assert json.loads(response.context["form"]["body"].value())["model"] == "backup"  # a real model, as an example


def test_page_lists_only_keys_the_gateway_would_accept(admin_client, routing):
    owner = routing["key"].owner
    disabled = api_key_issue(owner=owner, tier=routing["key"].tier, name="retired", enabled=False)
    html = admin_client.get(TEST_URL).content.decode()
    assert "retired" not in html
    response = admin_client.post(TEST_URL, {"api_key": disabled.api_key.pk, "dialect": "openai", "body": chat("main")})
    assert "api_key" in response.context["form"].errors


def test_page_is_refused_to_non_staff_and_anonymous(client, routing):
    anonymous = client.get(TEST_URL)
    assert anonymous.status_code == 302
    assert anonymous.headers["Location"].startswith("/admin/login/")

    client.login(username="alice", password="pw")
    member = client.post(TEST_URL, {"api_key": routing["key"].pk, "dialect": "openai", "body": chat("main")})
    assert member.status_code == 302
    assert member.headers["Location"].startswith("/admin/login/")


def test_page_is_linked_from_the_rule_list_and_the_admin_index(admin_client, routing):
    rules = admin_client.get(reverse("admin:providers_routerule_changelist")).content.decode()
    assert f'href="{TEST_URL}"' in rules
    assert "header x-gateway-route: background" in rules
    assert "model = main" in rules
    assert "10%" in rules
    index = admin_client.get(reverse("admin:index")).content.decode()
    assert f'href="{TEST_URL}"' in index


# Decisions


def test_an_alias_pattern_is_resolved_and_its_deployments_shown_in_order(admin_client, routing):
    response = submit(admin_client, routing, chat("claude-sonnet-4-5"))
    # The canary matches on the resolved name too, so an alias of main is drawn like main itself.
    assert served(response) == [("90%", "main", "alias:claude-*"), ("10%", "main-next", "rule:canary")]
    outcome = response.context["explanation"].outcomes[0]
    assert outcome.decision.fallbacks == ("backup",)
    assert [(d.upstream_model, d.priority, d.first_percent) for d in outcome.served.deployments] == [
        ("main-a", 0, "75%"),
        ("main-b", 0, "25%"),
        ("main-c", 5, ""),
    ]
    html = response.content.decode()
    assert "alias:claude-*" in html
    assert "&#x27;claude-sonnet-4-5&#x27; is alias claude-*" in html
    assert "allows main" in html
    assert "backup-up" in html  # the fallback's deployment


def test_an_exact_alias(admin_client, routing):
    assert served(submit(admin_client, routing, chat("gpt-4o-mini"))) == [
        ("90%", "main", "alias:gpt-4o-mini"),
        ("10%", "main-next", "rule:canary"),
    ]


def test_a_header_rule_matches_whatever_the_header_case(admin_client, routing):
    response = submit(admin_client, routing, chat("main"), headers="X-Gateway-Route: background\nx-trace: 1")
    assert served(response) == [("100%", "small", "rule:background")]
    explanation = response.context["explanation"]
    # As at the edge, only the headers a rule names are gathered.
    assert (dict(explanation.facts.headers), explanation.unread_headers) == (
        {"x-gateway-route": "background"},
        ("x-trace",),
    )
    html = response.content.decode()
    assert "rule background matched: served by small" in html
    assert "<code>x-gateway-route: background</code>" in html
    assert "No rule reads x-trace." in html


def test_a_credential_header_a_rule_reads_is_not_shown(admin_client, routing):
    RouteRule.objects.create(
        name="odd", order=0, when={"header": {"x-api-key": "sk-typed"}}, target=routing["models"]["backup"]
    )
    response = submit(admin_client, routing, chat("main"), headers="X-Api-Key: sk-typed")
    assert served(response) == [("100%", "backup", "rule:odd")]
    html = response.content.decode()
    assert "<code>x-api-key: (hidden)</code>" in html
    assert "x-api-key: sk-typed</code>" not in html


def test_a_partial_share_rule_shows_both_outcomes_with_their_probability(admin_client, routing):
    response = submit(admin_client, routing, chat("main"))
    assert served(response) == [("90%", "main", "default"), ("10%", "main-next", "rule:canary")]
    html = response.content.decode()
    assert "takes 10% of the requests it matches" in html
    assert "outside its 10% share" in html


def test_a_prompt_over_the_context_window_moves_to_the_context_fallback(admin_client, routing):
    body = chat("main", messages=[{"role": "user", "content": "x" * 1000}])
    response = submit(admin_client, routing, body)
    outcomes = response.context["explanation"].outcomes
    assert [(o.decision.model, o.decision.route) for o in outcomes] == [
        ("long-context", "context-fallback:long-context"),
        ("main-next", "rule:canary"),
    ]
    assert response.context["explanation"].facts.prompt_tokens == len(body.encode()) // 4
    assert "exceed the 200-token window of main: served by long-context" in response.content.decode()


def test_a_model_outside_the_keys_tier_is_shown_as_the_403_the_client_gets(admin_client, routing):
    response = submit(admin_client, routing, chat("main", reasoning_effort="high"))
    assert served(response) == [("100%", "reasoner", "rule:think")]
    assert response.context["explanation"].outcomes[0].served.allowed is False
    assert "403 model_not_allowed" in response.content.decode()


def test_facts_are_shown(admin_client, routing):
    body = chat("small", tools=[{"type": "function"}], stream=True, metadata={"user_id": "u-7"})
    html = submit(admin_client, routing, body, dialect="anthropic").content.decode()
    facts = {
        "Prompt tokens (estimate)": str(len(body.encode()) // 4),
        "Tools": "yes",
        "Stream": "yes",
        "Thinking": "no",
        "Dialect": "anthropic",
        "Tier": "team",
        "Metadata user": "u-7",
    }
    for label, value in facts.items():
        assert f'<th scope="row">{label}</th><td>{value}</td>' in html


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (chat("claude-opus"), {}),
        (chat("main"), {"x-gateway-route": "background"}),
        (chat("main", thinking={"type": "enabled", "budget_tokens": 1024}), {}),
        (chat("main", messages=[{"role": "user", "content": "y" * 2000}]), {}),
        (chat("backup"), {}),
    ],
)
def test_the_page_answers_what_route_decide_decides(admin_client, routing, body, headers):
    typed = "\n".join(f"{name}: {value}" for name, value in headers.items())
    response = submit(admin_client, routing, body, headers=typed)
    page = {outcome.decision for outcome in response.context["explanation"].outcomes}

    table = route_table_load()
    tier = key_context_build(routing["key"]).tier_name
    facts = request_facts(json.loads(body), dialect="openai", tier=tier, headers=headers, body_size=len(body.encode()))
    assert set(headers) <= set(table.routing.header_names)
    assert response.context["explanation"].facts == facts
    # Draws just inside and just outside every share: between them, every outcome route_decide can give.
    expected = {route_decide(table.routing, table.models, facts, draw=lambda d=d: d) for d in (0.0, 0.999)}
    assert page == expected


# Errors are form errors, never a decision


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('{"model": "main", "messages": [', "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"messages": []}', "'model' is required"),
        ('{"model": ""}', "'model' is required"),
        (chat("no-such-model"), "no model or alias matches 'no-such-model': the client would get 404"),
        (
            chat("long-context", messages=[{"role": "user", "content": "z" * 100}]),
            "exceeds the context window of 'long-context'",
        ),
    ],
)
def test_bad_requests_are_form_errors(admin_client, routing, body, fragment):
    Model.objects.filter(name="long-context").update(context_window=10)
    response = submit(admin_client, routing, body)
    assert any(fragment in message for message in form_errors(response)), form_errors(response)
    assert 'data-testid="routing-result"' not in response.content.decode()


def test_a_malformed_header_line_is_a_form_error(admin_client, routing):
    response = submit(admin_client, routing, chat("main"), headers="x-ok: 1\nnot a header")
    assert form_errors(response) == ["line 2 is not 'name: value'"]


# The model admin's routing fields


def model_post_data(**overrides) -> dict:
    data = {
        "name": "fresh",
        "enabled": "on",
        "description": "",
        "input_price_per_million": "",
        "output_price_per_million": "",
        "cached_input_price_per_million": "",
        "context_window": "",
        "aliases": "",
        "alias_order": "",
        "fallbacks": "",
        "context_fallbacks": "",
        "deployments-TOTAL_FORMS": "0",
        "deployments-INITIAL_FORMS": "0",
        "deployments-MIN_NUM_FORMS": "0",
        "deployments-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def test_model_routing_fields_are_edited_in_the_admin(admin_client, routing):
    page = admin_client.get(reverse("admin:providers_model_change", args=[routing["models"]["main"].pk]))
    html = page.content.decode()
    assert "Routing" in html
    for name in ("aliases", "alias_order", "fallbacks", "context_fallbacks", "context_window"):
        assert f'name="{name}"' in html

    response = admin_client.post(
        reverse("admin:providers_model_add"),
        model_post_data(
            aliases='["fresh-*", "fresh-latest"]',
            alias_order="-1",
            fallbacks='["backup", "main"]',
            context_window="8000",
            context_fallbacks='["long-context"]',
        ),
    )
    assert response.status_code == 302, response.content.decode()[:3000]
    fresh = Model.objects.get(name="fresh")
    assert (fresh.aliases, fresh.alias_order, fresh.fallbacks, fresh.context_fallbacks) == (
        ["fresh-*", "fresh-latest"],
        -1,
        ["backup", "main"],
        ["long-context"],
    )


def test_empty_routing_boxes_save_as_empty_lists(admin_client, routing):
    response = admin_client.post(reverse("admin:providers_model_add"), model_post_data())
    assert response.status_code == 302, response.content.decode()[:3000]
    fresh = Model.objects.get(name="fresh")
    assert (fresh.aliases, fresh.alias_order, fresh.fallbacks, fresh.context_fallbacks) == ([], 0, [], [])


def test_fallbacks_naming_unknown_models_are_refused_naming_them(admin_client, routing):
    response = admin_client.post(
        reverse("admin:providers_model_add"),
        model_post_data(fallbacks='["backup", "ghost", "phantom"]', context_fallbacks='["nowhere"]'),
    )
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors["fallbacks"] == ["no model is named 'ghost', 'phantom'"]
    assert errors["context_fallbacks"] == ["no model is named 'nowhere'"]
    assert not Model.objects.filter(name="fresh").exists()


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("fallbacks", '["back*"]', "must be a model name, not a pattern"),
        ("fallbacks", '["fresh"]', "must not name the model itself"),
        ("aliases", '"claude-*"', "must be a list of model names"),
        ("context_fallbacks", "[1]", "must be a non-empty name"),
    ],
)
def test_badly_shaped_routing_fields_are_form_errors(admin_client, routing, field, value, fragment):
    response = admin_client.post(reverse("admin:providers_model_add"), model_post_data(**{field: value}))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors[field]
    assert any(fragment in message for message in errors), errors
    assert not Model.objects.filter(name="fresh").exists()


# The rule admin


def rule_post_data(routing, **overrides) -> dict:
    data = {
        "name": "eu",
        "order": "5",
        "enabled": "on",
        "when": '{"tier": "team", "max_prompt_tokens": 1000}',
        "target": str(routing["models"]["small"].pk),
        "share": "0.5",
        "_save": "Save",
    }
    data.update(overrides)
    return data


def test_a_rule_is_added_in_the_admin(admin_client, routing):
    assert admin_client.get(reverse("admin:providers_routerule_add")).status_code == 200
    response = admin_client.post(reverse("admin:providers_routerule_add"), rule_post_data(routing))
    assert response.status_code == 302, response.content.decode()[:3000]
    rule = RouteRule.objects.get(name="eu")
    assert (rule.order, rule.when, rule.target.name, rule.share) == (
        5,
        {"tier": "team", "max_prompt_tokens": 1000},
        "small",
        0.5,
    )
    rules = admin_client.get(reverse("admin:providers_routerule_changelist")).content.decode()
    assert "tier = team and prompt &lt;= 1000 tokens" in rules


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"when": '{"colour": "blue"}'}, "when", "unknown condition 'colour'"),
        ({"when": '{"min_prompt_tokens": "lots"}'}, "when", "'min_prompt_tokens' must be a non-negative integer"),
        ({"when": '{"header": {"x-a": 1}}'}, "when", "'header' must be an object"),
        ({"when": "[1]"}, "when", "'when' must be an object of conditions"),
        ({"when": "{not json"}, "when", "Enter a valid JSON"),
        ({"share": "1.5"}, "share", "less than or equal to 1.0"),
        ({"share": "-0.1"}, "share", "greater than or equal to 0.0"),
        ({"name": "has spaces"}, "name", "letters, numbers, underscores or hyphens"),
    ],
)
def test_a_bad_rule_is_a_form_error(admin_client, routing, overrides, field, fragment):
    response = admin_client.post(reverse("admin:providers_routerule_add"), rule_post_data(routing, **overrides))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors[field]
    assert any(fragment in message for message in errors), errors
    assert not RouteRule.objects.filter(name="eu").exists()


def test_an_empty_when_is_saved_as_match_everything(admin_client, routing):
    response = admin_client.post(reverse("admin:providers_routerule_add"), rule_post_data(routing, when=""))
    assert response.status_code == 302, response.content.decode()[:3000]
    assert RouteRule.objects.get(name="eu").when == {}
    assert "every request" in admin_client.get(reverse("admin:providers_routerule_changelist")).content.decode()


def test_rule_order_and_enabled_are_edited_in_the_list(admin_client, routing):
    rules = list(RouteRule.objects.order_by("order"))
    data = {
        "form-TOTAL_FORMS": str(len(rules)),
        "form-INITIAL_FORMS": str(len(rules)),
        "form-MIN_NUM_FORMS": "0",
        "form-MAX_NUM_FORMS": "1000",
        "_save": "Save",
    }
    for index, rule in enumerate(rules):
        data[f"form-{index}-id"] = str(rule.pk)
        data[f"form-{index}-order"] = str(10 - index)
        if rule.name != "canary":
            data[f"form-{index}-enabled"] = "on"
    response = admin_client.post(reverse("admin:providers_routerule_changelist"), data)
    assert response.status_code == 302, response.content.decode()[:3000]
    assert list(RouteRule.objects.values_list("name", "order", "enabled")) == [
        ("canary", 8, False),
        ("think", 9, True),
        ("background", 10, True),
    ]
