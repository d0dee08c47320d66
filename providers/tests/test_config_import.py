"""Config import: upsert semantics, idempotence, and a clear, line-numbered error for every bad input
with nothing written."""

import textwrap
from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from accounts.models import Tier
from providers import config_import
from providers.config_import import ConfigImportError, gateway_config_import
from providers.management.commands.import_gateway_config import Command as ImportCommand
from providers.models import Deployment, Model, Provider, RouteRule
from providers.route_rules import RequestFacts, route_decide
from providers.routing import route_table_load

pytestmark = pytest.mark.django_db

UPSTREAM_KEY = "sk-up-0f9e8d7c6b5a"

EXAMPLE = f"""\
providers:
  - {{name: sim, dialect: openai, base_url: "http://127.0.0.1:9100/v1", api_key: "{UPSTREAM_KEY}",
     timeout_connect: 5, timeout_read: 60}}
  - name: claude
    dialect: anthropic
    base_url: https://api.anthropic.example.com
    extra_headers: {{anthropic-beta: tools-2024}}
    max_connections: 50
    enabled: false
models:
  - name: sim-fast
    input_price_per_million: 0.15
    output_price_per_million: 0.6
    context_window: 128000
    description: Fast echo
    deployments:
      - {{provider: sim, upstream_model: sim-echo, priority: 0, weight: 1}}
      - {{provider: claude, upstream_model: claude-echo, priority: 1, weight: 2, enabled: false}}
  - name: sim-slow
    deployments:
      - {{provider: sim, upstream_model: "sim-echo?tokens=60"}}
tiers:
  - {{name: free, rpm: 60, tpm: 100000, max_concurrent: 5, daily_tokens: 1000000,
     max_output_tokens: 4096, max_compare_models: 4, models: [sim-fast]}}
  - name: pro
"""


def run_import(text: str):
    return gateway_config_import(data_text=textwrap.dedent(text), source_name="gateway.yaml")


def db_snapshot() -> dict:
    """Everything the import can write, as comparable plain values."""
    return {
        "providers": [
            {**row, "api_key_encrypted": bool(row["api_key_encrypted"])}
            for row in Provider.objects.order_by("name").values()
        ],
        "models": list(Model.objects.order_by("name").values()),
        "deployments": list(Deployment.objects.order_by("id").values()),
        "tiers": list(Tier.objects.order_by("name").values()),
        "allowed": sorted(Tier.allowed_models.through.objects.values_list("tier__name", "model__name")),
        "api_keys": {p.name: p.api_key for p in Provider.objects.all()},
    }


@pytest.fixture
def imported():
    run_import(EXAMPLE)
    return db_snapshot()


# Happy path and idempotence


def test_import_creates_everything_in_the_file():
    summary = run_import(EXAMPLE)

    assert (summary.providers.created, summary.models.created, summary.deployments.created, summary.tiers.created) == (
        2,
        2,
        3,
        2,
    )
    sim = Provider.objects.get(name="sim")
    assert (sim.dialect, sim.base_url, sim.timeout_connect, sim.timeout_read) == (
        "openai",
        "http://127.0.0.1:9100/v1",
        5.0,
        60.0,
    )
    assert sim.api_key == UPSTREAM_KEY
    assert UPSTREAM_KEY not in sim.api_key_encrypted
    claude = Provider.objects.get(name="claude")
    assert (claude.dialect, claude.extra_headers, claude.max_connections, claude.enabled) == (
        "anthropic",
        {"anthropic-beta": "tools-2024"},
        50,
        False,
    )
    assert not claude.has_api_key

    fast = Model.objects.get(name="sim-fast")
    assert (fast.input_price_per_million, fast.output_price_per_million, fast.context_window, fast.description) == (
        Decimal("0.15"),
        Decimal("0.6"),
        128000,
        "Fast echo",
    )
    deployments = [
        (d.provider.name, d.upstream_model, d.priority, d.weight, d.enabled)
        for d in fast.deployments.order_by("priority")
    ]
    assert deployments == [("sim", "sim-echo", 0, 1, True), ("claude", "claude-echo", 1, 2, False)]
    assert Model.objects.get(name="sim-slow").deployments.get().upstream_model == "sim-echo?tokens=60"

    free = Tier.objects.get(name="free")
    assert (free.rpm, free.tpm, free.max_concurrent, free.daily_tokens, free.max_output_tokens) == (
        60,
        100000,
        5,
        1000000,
        4096,
    )
    assert list(free.allowed_models.values_list("name", flat=True)) == ["sim-fast"]
    pro = Tier.objects.get(name="pro")
    assert (pro.rpm, pro.tpm, pro.max_concurrent, pro.daily_tokens, pro.max_output_tokens) == (None,) * 5
    assert pro.max_compare_models == 4
    assert not pro.allowed_models.exists()


def test_second_import_changes_nothing_and_reports_it(imported):
    summary = run_import(EXAMPLE)
    assert db_snapshot() == imported
    for counts, total in [
        (summary.providers, 2),
        (summary.models, 2),
        (summary.deployments, 3),
        (summary.tiers, 2),
    ]:
        assert (counts.created, counts.updated, counts.deleted, counts.unchanged) == (0, 0, 0, total)
    assert Provider.objects.count() == 2
    assert Deployment.objects.count() == 3


def test_changed_values_are_updated_in_place(imported):
    ids = dict(Provider.objects.values_list("name", "id"))
    changed = EXAMPLE.replace("timeout_read: 60", "timeout_read: 30").replace("rpm: 60", "rpm: 10")
    summary = run_import(changed)
    assert (summary.providers.updated, summary.providers.unchanged) == (1, 1)
    assert (summary.tiers.updated, summary.tiers.unchanged) == (1, 1)
    assert Provider.objects.get(name="sim").timeout_read == 30
    assert Provider.objects.get(name="sim").id == ids["sim"]
    assert Tier.objects.get(name="free").rpm == 10


def test_listed_models_deployments_are_exactly_the_files(imported):
    kept = Deployment.objects.get(upstream_model="sim-echo", model__name="sim-fast")
    text = EXAMPLE.replace(
        "      - {provider: claude, upstream_model: claude-echo, priority: 1, weight: 2, enabled: false}\n", ""
    ).replace(
        "{provider: sim, upstream_model: sim-echo, priority: 0, weight: 1}",
        "{provider: sim, upstream_model: sim-echo, weight: 5}",
    )
    summary = run_import(text)
    assert (summary.deployments.deleted, summary.deployments.updated, summary.deployments.unchanged) == (1, 1, 1)
    fast = Model.objects.get(name="sim-fast")
    assert list(fast.deployments.values_list("id", "weight")) == [(kept.id, 5)]


def test_rows_not_in_the_file_are_left_alone(imported):
    Provider.objects.create(name="manual", base_url="https://manual.example.com")
    run_import("models:\n  - name: sim-slow\n    deployments: [{provider: manual, upstream_model: m}]\n")
    assert Provider.objects.filter(name__in=["sim", "claude", "manual"]).count() == 3
    assert Model.objects.get(name="sim-fast").deployments.count() == 2
    assert list(Model.objects.get(name="sim-slow").deployments.values_list("provider__name", flat=True)) == ["manual"]
    assert Tier.objects.count() == 2


def test_tier_may_reference_a_model_already_in_the_database(imported):
    run_import("tiers:\n  - {name: slow-only, models: [sim-slow]}\n")
    assert list(Tier.objects.get(name="slow-only").allowed_models.values_list("name", flat=True)) == ["sim-slow"]


def test_omitted_api_key_keeps_the_stored_one_and_empty_clears_it(imported):
    run_import('providers:\n  - {name: sim, base_url: "http://127.0.0.1:9100/v1"}\n')
    assert Provider.objects.get(name="sim").api_key == UPSTREAM_KEY
    run_import('providers:\n  - {name: sim, base_url: "http://127.0.0.1:9100/v1", api_key: ""}\n')
    assert not Provider.objects.get(name="sim").has_api_key


def test_omitted_tier_limits_reset_to_unlimited(imported):
    summary = run_import("tiers:\n  - name: free\n")
    free = Tier.objects.get(name="free")
    assert summary.tiers.updated == 1
    assert (free.rpm, free.tpm, free.max_concurrent, free.daily_tokens, free.max_output_tokens) == (None,) * 5
    assert not free.allowed_models.exists()


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("SIM_UPSTREAM_KEY", "sk-from-env-123456")
    run_import("providers:\n  - {name: sim, base_url: 'http://127.0.0.1:9100/v1', api_key_env: SIM_UPSTREAM_KEY}\n")
    assert Provider.objects.get(name="sim").api_key == "sk-from-env-123456"


def test_a_failure_while_writing_rolls_everything_back(monkeypatch):
    real_full_clean = config_import._full_clean

    def failing_for_tiers(instance, *, source, line, label):
        if label.startswith("tier"):
            raise ConfigImportError([f"{source} line {line}: {label}: rejected"])
        real_full_clean(instance, source=source, line=line, label=label)

    monkeypatch.setattr(config_import, "_full_clean", failing_for_tiers)
    with pytest.raises(ConfigImportError, match="tier 'free': rejected"):
        run_import(EXAMPLE)
    assert not Provider.objects.exists()
    assert not Model.objects.exists()
    assert not Deployment.objects.exists()


# Every bad input: message names the problem and its line; nothing is written

PROVIDER_OK = '{name: sim, base_url: "http://127.0.0.1:9100/v1"}'

BAD_INPUTS = {
    "unknown top-level key": ("provders:\n  - " + PROVIDER_OK + "\n", 1, ["unknown key 'provders'", "providers"]),
    "unknown provider key": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    api_kye: x\n",
        4,
        ["unknown key 'api_kye'", "provider 'sim'", "did you mean 'api_key'"],
    ),
    "unknown model key": ("models:\n  - name: m\n    context: 5\n", 3, ["unknown key 'context'", "model 'm'"]),
    "unknown deployment key": (
        "models:\n  - name: m\n    deployments:\n      - {provider: sim, upstream_model: x, prio: 1}\n",
        4,
        ["unknown key 'prio'", "deployment #1 of model 'm'"],
    ),
    "unknown tier key": ("tiers:\n  - name: free\n    rpn: 5\n", 3, ["unknown key 'rpn'", "tier 'free'"]),
    "section not a list": ("providers:\n  name: sim\n", 1, ["providers must be a list"]),
    "entry not a mapping": ("models:\n  - sim-fast\n", 2, ["each item of models must be a mapping"]),
    "document not a mapping": ("- sim\n", 1, ["document must be a mapping"]),
    "timeout not a number": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    timeout_read: fast\n",
        4,
        ["timeout_read must be a number"],
    ),
    "enabled not a boolean": (
        "models:\n  - name: m\n    enabled: sometimes\n",
        3,
        ["enabled must be true or false"],
    ),
    "max_connections not an integer": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    max_connections: 2.5\n",
        4,
        ["max_connections must be an integer"],
    ),
    "extra_headers not a mapping": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    extra_headers: [a, b]\n",
        4,
        ["extra_headers must be a mapping"],
    ),
    "extra_headers value not a string": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    extra_headers:\n      X-Version: 2\n",
        5,
        ["header 'X-Version' must have a string value"],
    ),
    "tier models not a list": ("tiers:\n  - {name: free, models: sim-fast}\n", 2, ["models must be a list"]),
    "name not a string": ("tiers:\n  - name: 42\n", 2, ["name must be a string"]),
    "bad slug name": ("tiers:\n  - name: free tier\n", 2, ["'free tier' may contain only letters, digits"]),
    "bad dialect": (
        "providers:\n  - name: sim\n    dialect: gemini\n    base_url: http://127.0.0.1:9100/v1\n",
        3,
        ["dialect 'gemini' is not one of: openai, anthropic"],
    ),
    "bad url": (
        "providers:\n  - name: sim\n    base_url: ftp//nowhere\n",
        3,
        ["base_url must be an http:// or https:// URL"],
    ),
    "negative timeout": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    timeout_connect: -1\n",
        4,
        ["timeout_connect must be at least 0.1, got -1"],
    ),
    "zero max_connections": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    max_connections: 0\n",
        4,
        ["max_connections must be at least 1, got 0"],
    ),
    "negative price": ("models:\n  - name: m\n    input_price_per_million: -0.5\n", 3, ["must not be negative"]),
    "price too precise": (
        "models:\n  - name: m\n    output_price_per_million: 0.0000001\n",
        3,
        ["output_price_per_million must have at most 6 digits before and 6 after the point"],
    ),
    "negative context window": (
        "models:\n  - name: m\n    context_window: -5\n",
        3,
        ["context_window must be at least 1"],
    ),
    "zero weight": (
        "providers:\n  - " + PROVIDER_OK + "\nmodels:\n  - name: m\n    deployments:\n"
        "      - {provider: sim, upstream_model: x, weight: 0}\n",
        6,
        ["weight must be at least 1, got 0"],
    ),
    "negative tier limit": (
        "tiers:\n  - name: free\n    rpm: -1\n",
        3,
        ["tier 'free': rpm must be at least 0, got -1"],
    ),
    "limit too large": ("tiers:\n  - name: free\n    tpm: 99999999999\n", 3, ["tpm must be at most 2147483647"]),
    "zero compare models": (
        "tiers:\n  - {name: free, max_compare_models: 0}\n",
        2,
        ["max_compare_models must be at least 1"],
    ),
    "unknown provider in deployment": (
        "models:\n  - name: m\n    deployments:\n      - {provider: ghost, upstream_model: x}\n",
        4,
        ["refers to unknown provider 'ghost'"],
    ),
    "unknown model in tier": (
        "tiers:\n  - name: free\n    models:\n      - sim-fast\n      - ghost\n",
        5,
        ["unknown model 'ghost'"],
    ),
    "duplicate provider": (
        "providers:\n  - " + PROVIDER_OK + "\n  - " + PROVIDER_OK + "\n",
        3,
        ["provider 'sim' is defined twice (first at line 2)"],
    ),
    "duplicate model": ("models:\n  - name: m\n  - name: m\n", 3, ["model 'm' is defined twice (first at line 2)"]),
    "duplicate tier": ("tiers:\n  - name: free\n  - name: free\n", 3, ["tier 'free' is defined twice"]),
    "duplicate deployment": (
        "providers:\n  - " + PROVIDER_OK + "\nmodels:\n  - name: m\n    deployments:\n"
        "      - {provider: sim, upstream_model: x}\n      - {provider: sim, upstream_model: x, priority: 2}\n",
        7,
        ["repeats provider 'sim' with upstream_model 'x' (first at line 6)"],
    ),
    "duplicate model in tier list": ("tiers:\n  - {name: free, models: [m, m]}\n", 2, ["lists 'm' twice"]),
    "duplicate yaml key": ("tiers:\n  - name: free\n    rpm: 1\n    rpm: 2\n", 4, ["duplicate key 'rpm'"]),
    "yaml syntax error": ("tiers:\n  - name: free\n   rpm: [1, 2\n", 3, ["YAML syntax error"]),
    "yaml bad indentation": ("tiers:\n  - name: free\n rpm: 1\n", 3, ["YAML syntax error"]),
    "missing provider name": (
        "providers:\n  - base_url: http://127.0.0.1:9100/v1\n",
        2,
        ["provider #1 is missing required key 'name'"],
    ),
    "missing base_url": ("providers:\n  - name: sim\n", 2, ["provider 'sim' is missing required key 'base_url'"]),
    "missing upstream_model": (
        "providers:\n  - " + PROVIDER_OK + "\nmodels:\n  - name: m\n    deployments:\n      - provider: sim\n",
        6,
        ["deployment #1 of model 'm' is missing required key 'upstream_model'"],
    ),
    "missing tier name": ("tiers:\n  - rpm: 5\n", 2, ["tier #1 is missing required key 'name'"]),
    "api_key_env unset": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    api_key_env: GW_TEST_SURELY_UNSET\n",
        4,
        ["GW_TEST_SURELY_UNSET", "not set"],
    ),
    "api_key and api_key_env": (
        "providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    api_key: abc\n    api_key_env: HOME\n",
        5,
        ["cannot be combined with api_key"],
    ),
}


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_is_rejected_with_line_and_nothing_is_written(imported, monkeypatch, text, line, fragments):
    monkeypatch.delenv("GW_TEST_SURELY_UNSET", raising=False)
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    message = str(excinfo.value)
    assert f"gateway.yaml line {line}" in message
    for fragment in fragments:
        assert fragment in message
    assert db_snapshot() == imported


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_empty_document_is_rejected(text):
    with pytest.raises(ConfigImportError, match="the document is empty"):
        run_import(text)


def test_all_problems_are_reported_at_once_in_line_order(imported):
    text = "tiers:\n  - name: a\n    rpm: -1\n  - name: b\n    bogus: 1\n  - name: c\n    tpm: x\n"
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    lines = [problem.split(":")[0] for problem in excinfo.value.problems]
    assert lines == ["gateway.yaml line 3", "gateway.yaml line 5", "gateway.yaml line 7"]
    assert db_snapshot() == imported


def test_errors_never_contain_the_api_key(imported):
    secret = "sk-live-DO-NOT-PRINT-4242"
    cases = [
        f"providers:\n  - name: sim\n    base_url: nope\n    api_key: {secret}\n",
        f'providers:\n  - {{name: sim, base_url: "http://x.example.com", api_key: "{secret}\n',
        f"providers:\n  - name: sim\n    base_url: http://x.example.com\n    api_key: {secret}\n    api_key: again\n",
        f"providers:\n  - name: sim\n    base_url: http://x.example.com\n    api_key: {secret}\n  bad indent: 1\n",
        f"providers:\n  - name: sim\n    base_url: http://x.example.com\n    api_key: [{secret}]\n",
        # The key pasted into a field whose value an error would quote.
        f"providers:\n  - {{name: sim, base_url: 'http://x.example.com', api_key: {secret}}}\n"
        f"models:\n  - name: m\n    deployments: [{{provider: {secret}, upstream_model: x}}]\n",
    ]
    for text in cases:
        with pytest.raises(ConfigImportError) as excinfo:
            run_import(text)
        assert secret not in str(excinfo.value)
        assert "gateway.yaml" in str(excinfo.value)
    assert db_snapshot() == imported


def test_env_key_value_is_never_echoed(monkeypatch):
    monkeypatch.setenv("SIM_KEY", "sk-env-secret-777777")
    text = "providers:\n  - {name: sim, base_url: 'http://x.example.com', api_key_env: SIM_KEY, timeout_read: 0}\n"
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    assert "timeout_read" in str(excinfo.value)
    assert "sk-env-secret-777777" not in str(excinfo.value)


# The command


def test_command_prints_a_summary(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(EXAMPLE)
    out = StringIO()
    call_command("import_gateway_config", str(path), stdout=out)
    output = out.getvalue()
    assert "providers:    2 created, 0 updated, 0 unchanged" in output
    assert "deployments:  3 created" in output
    assert UPSTREAM_KEY not in output

    out = StringIO()
    call_command("import_gateway_config", str(path), stdout=out)
    assert "providers:    0 created, 0 updated, 2 unchanged" in out.getvalue()


def test_command_fails_with_the_problems_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("providers:\n  - name: sim\n    dialect: gemini\n    base_url: http://x.example.com\n")
    with pytest.raises(CommandError) as excinfo:
        call_command("import_gateway_config", str(path))
    assert f"{path} line 3" in str(excinfo.value)
    assert "nothing was changed" in str(excinfo.value)
    assert not Provider.objects.exists()


def test_command_reports_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="missing.yaml: file not found"):
        call_command("import_gateway_config", str(tmp_path / "missing.yaml"))


def test_command_help_explains_deployment_replacement():
    parser = ImportCommand().create_parser("manage.py", "import_gateway_config")
    help_text = " ".join(parser.format_help().split())
    assert "the model's other deployments are deleted" in help_text


# Request transforms

TRANSFORMS = """\
providers:
  - name: deepseek
    base_url: https://api.deepseek.example.com/v1
    request_transforms:
      - {op: cap, path: max_tokens, max: 8192}
      - {op: drop, path: metadata.user_id}
      - op: force
        path: stream_options.include_usage
        value: true
      - {op: header, name: HTTP-Referer, value: "https://app.example.com"}
"""


def test_request_transforms_are_imported_and_a_second_import_changes_nothing():
    run_import(TRANSFORMS)
    assert Provider.objects.get(name="deepseek").request_transforms == [
        {"op": "cap", "path": "max_tokens", "max": 8192},
        {"op": "drop", "path": "metadata.user_id"},
        {"op": "force", "path": "stream_options.include_usage", "value": True},
        {"op": "header", "name": "HTTP-Referer", "value": "https://app.example.com"},
    ]
    summary = run_import(TRANSFORMS)
    assert (summary.providers.unchanged, summary.providers.updated) == (1, 0)


def test_omitted_request_transforms_reset_to_none():
    run_import(TRANSFORMS)
    run_import("providers:\n  - {name: deepseek, base_url: https://api.deepseek.example.com/v1}\n")
    assert Provider.objects.get(name="deepseek").request_transforms == []


def test_bad_request_transforms_are_reported_at_their_lines_and_nothing_is_written(imported):
    text = """\
        providers:
          - name: sim
            base_url: http://127.0.0.1:9100/v1
            timeout_read: 5
            request_transforms:
              - {op: drop, path: user}
              - {op: cap, path: max_tokens}
              - op: header
                name: x-api-key
                value: other
              - {op: squash, path: a}
        """
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    assert excinfo.value.problems == [
        "gateway.yaml line 7: provider 'sim': request_transforms transform 2: 'cap' needs a numeric 'max'",
        "gateway.yaml line 8: provider 'sim': request_transforms transform 3: "
        "header 'x-api-key' is set by the gateway and cannot be overridden",
        "gateway.yaml line 11: provider 'sim': request_transforms transform 4: "
        "unknown op 'squash'; expected one of: drop, default, force, cap, rename, header",
    ]
    assert db_snapshot() == imported


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("{op: drop, path: user}", "request_transforms must be a list of transforms, not a mapping"),
        ("[{op: force, path: day, value: 2024-01-01}]", "transform 1: 'value' must be a JSON value, not a date"),
        ("[{op: force, path: t, value: .nan}]", "transform 1: 'value' must be a finite number"),
    ],
)
def test_request_transforms_that_are_not_json_rules_are_rejected(imported, value, fragment):
    text = f"providers:\n  - name: sim\n    base_url: http://127.0.0.1:9100/v1\n    request_transforms: {value}\n"
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    assert str(excinfo.value).startswith("gateway.yaml line 4: provider 'sim': ")
    assert fragment in str(excinfo.value)
    assert db_snapshot() == imported


def test_cached_input_price_is_imported_and_validated():
    run_import(
        """
        models:
          - name: cached-model
            input_price_per_million: 3
            output_price_per_million: 15
            cached_input_price_per_million: 0.3
        """
    )
    assert Model.objects.get(name="cached-model").cached_input_price_per_million == Decimal("0.3")
    with pytest.raises(ConfigImportError) as raised:
        run_import(
            """
            models:
              - name: cached-model
                cached_input_price_per_million: cheap
            """
        )
    assert any("cached_input_price_per_million" in problem for problem in raised.value.problems)


# Routing: model aliases and fallbacks, and routing rules

ROUTING = """\
providers:
  - {name: sim, base_url: "http://127.0.0.1:9100/v1"}
models:
  - name: main
    aliases: ["claude-*", "gpt-4o-mini"]
    alias_order: 2
    fallbacks: [backup]
    context_window: 128000
    context_fallbacks: [long-context]
    deployments:
      - {provider: sim, upstream_model: main-up}
  - {name: backup, deployments: [{provider: sim, upstream_model: backup-up}]}
  - {name: long-context, context_window: 1000000}
  - {name: small}
  - {name: reasoner}
  - {name: main-next}
routes:
  - {name: background, when: {header: {x-gateway-route: background}}, use: small}
  - {name: long, when: {min_prompt_tokens: 60000}, use: long-context}
  - {name: think, when: {thinking: true}, use: reasoner}
  - {name: canary, when: {model: main}, use: main-next, share: 0.1}
  - {name: parked, when: {}, use: small, order: 99, enabled: false}
"""


def routing_snapshot() -> dict:
    return {
        **db_snapshot(),
        "routes": list(RouteRule.objects.order_by("name").values()),
    }


@pytest.fixture
def routed():
    run_import(ROUTING)
    return routing_snapshot()


def test_routing_is_imported():
    summary = run_import(ROUTING)
    assert (summary.models.created, summary.routes.created) == (6, 5)

    main = Model.objects.get(name="main")
    assert (main.aliases, main.alias_order, main.fallbacks, main.context_window, main.context_fallbacks) == (
        ["claude-*", "gpt-4o-mini"],
        2,
        ["backup"],
        128000,
        ["long-context"],
    )
    small = Model.objects.get(name="small")
    assert (small.aliases, small.alias_order, small.fallbacks, small.context_fallbacks) == ([], 0, [], [])

    rules = [(r.name, r.order, r.enabled, r.when, r.target.name, r.share) for r in RouteRule.objects.all()]
    assert rules == [
        ("background", 1, True, {"header": {"x-gateway-route": "background"}}, "small", 1.0),
        ("long", 2, True, {"min_prompt_tokens": 60000}, "long-context", 1.0),
        ("think", 3, True, {"thinking": True}, "reasoner", 1.0),
        ("canary", 4, True, {"model": "main"}, "main-next", 0.1),
        ("parked", 99, False, {}, "small", 1.0),
    ]


def test_imported_routing_is_what_the_route_table_decides_with():
    run_import(ROUTING)
    table = route_table_load()
    facts = RequestFacts(model="claude-sonnet-4-5", headers={"x-gateway-route": "background"})
    decision = route_decide(table.routing, table.models, facts)
    assert (decision.model, decision.route) == ("small", "rule:background")
    # The draw decides the canary's 10% share: outside it, the alias serves; inside, the canary takes over.
    facts = RequestFacts(model="claude-x", prompt_tokens=10)
    alias = route_decide(table.routing, table.models, facts, draw=lambda: 0.5)
    assert (alias.model, alias.route, alias.fallbacks) == ("main", "alias:claude-*", ("backup",))
    canary = route_decide(table.routing, table.models, facts, draw=lambda: 0.05)
    assert (canary.model, canary.route) == ("main-next", "rule:canary")


def test_second_routing_import_changes_nothing(routed):
    summary = run_import(ROUTING)
    assert routing_snapshot() == routed
    assert (summary.models.unchanged, summary.routes.unchanged) == (6, 5)
    assert (summary.routes.created, summary.routes.updated) == (0, 0)
    assert "routes:       0 created, 0 updated, 5 unchanged" in summary.lines()


def test_routes_are_upserted_by_name_and_others_left_alone(routed):
    manual = RouteRule.objects.create(
        name="manual", order=50, when={"tier": "free"}, target=Model.objects.get(name="small")
    )
    kept_id = RouteRule.objects.get(name="canary").id
    summary = run_import("routes:\n  - {name: canary, when: {model: main}, use: main-next, share: 0.25}\n")
    assert (summary.routes.updated, summary.routes.created) == (1, 0)
    canary = RouteRule.objects.get(name="canary")
    # The id is kept; the order is the rule's position in this file.
    assert (canary.id, canary.share, canary.order) == (kept_id, 0.25, 1)
    assert RouteRule.objects.filter(name__in=["background", "long", "think", "parked"]).count() == 4
    assert RouteRule.objects.get(pk=manual.pk).when == {"tier": "free"}


def test_omitted_model_routing_keys_reset_to_none(routed):
    run_import("models:\n  - name: main\n")
    main = Model.objects.get(name="main")
    assert (main.aliases, main.alias_order, main.fallbacks, main.context_window, main.context_fallbacks) == (
        [],
        0,
        [],
        None,
        [],
    )


def test_routing_may_name_models_already_in_the_database(routed):
    run_import(
        "models:\n  - {name: fresh, fallbacks: [backup], context_fallbacks: [long-context]}\n"
        "routes:\n  - {name: to-small, when: {tier: free}, use: small}\n"
    )
    assert Model.objects.get(name="fresh").fallbacks == ["backup"]
    assert RouteRule.objects.get(name="to-small").target.name == "small"


BAD_ROUTING = {
    "unknown route key": (
        "routes:\n  - name: r\n    when: {}\n    use: small\n    target: small\n",
        5,
        ["unknown key 'target' in route 'r'", "allowed keys: name, when, use, share, order, enabled"],
    ),
    "unknown condition": (
        "routes:\n  - name: r\n    use: small\n    when:\n      stream: true\n      colour: blue\n",
        6,
        ["route 'r': when: unknown condition 'colour'; known: min_prompt_tokens"],
    ),
    "condition of the wrong type": (
        "routes:\n  - name: r\n    use: small\n    when:\n      min_prompt_tokens: lots\n",
        5,
        ["route 'r': when: 'min_prompt_tokens' must be a non-negative integer"],
    ),
    "header condition not a mapping": (
        "routes:\n  - {name: r, use: small, when: {header: x-gateway-route}}\n",
        2,
        ["'header' must be an object of header name -> value"],
    ),
    "when not a mapping": (
        "routes:\n  - name: r\n    use: small\n    when: [stream]\n",
        4,
        ["route 'r': when must be a mapping of conditions, not a list"],
    ),
    "when missing": ("routes:\n  - {name: r, use: small}\n", 2, ["route 'r' is missing required key 'when'"]),
    "use missing": ("routes:\n  - {name: r, when: {}}\n", 2, ["route 'r' is missing required key 'use'"]),
    "route to an unknown model": (
        "routes:\n  - name: r\n    when: {}\n    use: ghost\n",
        4,
        ["route 'r' refers to unknown model 'ghost' (not in this file or the database)"],
    ),
    "share above one": (
        "routes:\n  - name: r\n    when: {}\n    use: small\n    share: 10\n",
        5,
        ["route 'r': share must be at most 1"],
    ),
    "negative share": (
        "routes:\n  - {name: r, when: {}, use: small, share: -0.5}\n",
        2,
        ["share must be at least 0.0"],
    ),
    "order not an integer": (
        "routes:\n  - {name: r, when: {}, use: small, order: first}\n",
        2,
        ["order must be an integer"],
    ),
    "duplicate route": (
        "routes:\n  - {name: r, when: {}, use: small}\n  - {name: r, when: {}, use: backup}\n",
        3,
        ["route 'r' is defined twice (first at line 2)"],
    ),
    "route name not a slug": ("routes:\n  - {name: my rule, when: {}, use: small}\n", 2, ["may contain only"]),
    "fallback to an unknown model": (
        "models:\n  - name: main\n    fallbacks:\n      - backup\n      - ghost\n",
        5,
        ["model 'main' fallbacks refers to unknown model 'ghost'"],
    ),
    "context fallback to an unknown model": (
        "models:\n  - {name: main, context_fallbacks: [nowhere]}\n",
        2,
        ["model 'main' context_fallbacks refers to unknown model 'nowhere'"],
    ),
    "fallback is a pattern": (
        "models:\n  - name: main\n    fallbacks:\n      - backup\n      - back*\n",
        5,
        ["model 'main': fallbacks[1] must be a model name, not a pattern"],
    ),
    "fallback to itself": (
        "models:\n  - name: main\n    context_fallbacks:\n      - long-context\n      - main\n",
        5,
        ["model 'main': context_fallbacks must not name the model itself"],
    ),
    "alias not a string": (
        "models:\n  - name: main\n    aliases:\n      - gpt-4o\n      - 4\n",
        5,
        ["model 'main': aliases items must be names, not an integer"],
    ),
    "aliases not a list": (
        "models:\n  - name: main\n    aliases: claude-*\n",
        3,
        ["model 'main': aliases must be a list of names"],
    ),
    "alias_order not an integer": (
        "models:\n  - {name: main, alias_order: high}\n",
        2,
        ["alias_order must be an integer"],
    ),
}


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_ROUTING.values(), ids=BAD_ROUTING.keys())
def test_bad_routing_is_rejected_with_line_and_nothing_is_written(routed, text, line, fragments):
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    message = str(excinfo.value)
    assert f"gateway.yaml line {line}:" in message
    for fragment in fragments:
        assert fragment in message
    assert routing_snapshot() == routed


def test_a_route_to_a_model_rejected_in_the_same_file_writes_nothing(routed):
    text = "models:\n  - {name: fresh, fallbacks: [ghost]}\nroutes:\n  - {name: fresh-route, when: {}, use: fresh}\n"
    with pytest.raises(ConfigImportError) as excinfo:
        run_import(text)
    assert "gateway.yaml line 2: model 'fresh' fallbacks refers to unknown model 'ghost'" in str(excinfo.value)
    assert routing_snapshot() == routed


def test_model_kinds_are_imported_and_checked():
    run_import(
        """
        models:
          - name: embedder
            kinds: [embeddings]
          - name: plain
        """
    )
    assert Model.objects.get(name="embedder").kinds == ["embeddings"]
    assert Model.objects.get(name="plain").kinds == ["chat"]
    with pytest.raises(ConfigImportError) as raised:
        run_import(
            """
            models:
              - name: embedder
                kinds: [embeddings, images]
            """
        )
    assert any("line 4" in p and "unknown kind 'images'" in p for p in raised.value.problems), raised.value.problems


def test_unsupported_tools_is_imported_and_checked():
    run_import(
        """
        models:
          - name: strict
            unsupported_tools: refuse
          - name: lenient
        """
    )
    assert Model.objects.get(name="strict").unsupported_tools == "refuse"
    assert Model.objects.get(name="lenient").unsupported_tools == "drop"
    with pytest.raises(ConfigImportError) as raised:
        run_import(
            """
            models:
              - name: strict
                unsupported_tools: ignore
            """
        )
    assert any("line 4" in p and "unsupported_tools" in p for p in raised.value.problems), raised.value.problems
    assert Model.objects.get(name="strict").unsupported_tools == "refuse"
