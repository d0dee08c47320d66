"""Import providers, models with their deployments and routing, tiers, routing rules and teams with their
budgets from a YAML document (idempotent upsert).

Rows are matched by name. The whole document is validated before anything is written, every
problem is reported with its line, and the write is one transaction. Provider API keys are never
echoed: not in errors, not in the summary.

Semantics of a listed row: keys omitted from the file take their default (an omitted tier limit
means unlimited, an omitted `models` list means every model), except a provider's API key, which is
kept when neither `api_key` nor `api_key_env` is given (`api_key: ""` clears it). A listed model's
deployments are exactly the ones in the file: listed ones are upserted by (provider, upstream_model),
the model's other deployments are deleted. Rows not mentioned in the file are left alone: that holds
for routing rules too (`routes:`), which are upserted by name, so a rule dropped from the file stays
until it is deleted in admin or listed with `enabled: false`. A rule's `order` defaults to its position
in the list. Models named by fallbacks, context fallbacks and rules must be in the file or the database.
A listed team's members (usernames) must exist already; its budgets are exactly the file's: matched by
period (one budget per period), updated in place (so alerts already sent this period are not sent again),
and the team's other budgets deleted.
"""

import difflib
import os
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction

from accounts.budget_rules import budget_amount_parse, budget_thresholds_normalize, budget_thresholds_problem
from accounts.budgets import PERIODS
from accounts.models import LIMIT_FIELDS, LOG_LEVELS, Budget, Team, Tier, soft_thresholds_default
from aigateway.audit import audit_context
from providers.egress import proxy_url_problem
from providers.extra_headers import extra_header_problem
from providers.models import MODEL_KINDS, Deployment, Dialect, Model, Provider, RouteRule
from providers.route_rules import conditions_problems, model_routing_problems
from providers.transforms import shown, transforms_problems, type_name
from providers.upstream_policy import base_url_problem

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
SLUG_RE = re.compile(r"^[-a-zA-Z0-9_]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Values that look like API keys in the raw text, redacted from messages even when the YAML is broken.
RAW_SECRET_RE = re.compile(r"""api_key\s*:\s*["']?([^\s"'#,}\]]+)""")
MIN_REDACTED_LENGTH = 6

TOP_LEVEL_KEYS = ("providers", "models", "tiers", "routes", "teams")
PROVIDER_KEYS = (
    "name",
    "dialect",
    "base_url",
    "api_key",
    "api_key_env",
    "extra_headers",
    "timeout_connect",
    "timeout_read",
    "max_connections",
    "enabled",
    "request_transforms",
    "proxy_url",
    "ca_bundle_file",
    "client_cert_file",
    "client_key_file",
)
MODEL_KEYS = (
    "name",
    "enabled",
    "input_price_per_million",
    "output_price_per_million",
    "cached_input_price_per_million",
    "cache_write_price_per_million",
    "max_output_tokens",
    "context_window",
    "description",
    "kinds",
    "unsupported_tools",
    "aliases",
    "alias_order",
    "fallbacks",
    "context_fallbacks",
    "deployments",
)
PRICE_KEYS = (
    "input_price_per_million",
    "output_price_per_million",
    "cached_input_price_per_million",
    "cache_write_price_per_million",
)
DEPLOYMENT_KEYS = ("provider", "upstream_model", "priority", "weight", "enabled", "timeout_total", *PRICE_KEYS)
TIER_KEYS = (
    "name", *LIMIT_FIELDS, "max_compare_models", "cache_ttl_seconds", "log_bodies", "resumable_streams", "models"
)  # fmt: skip
ROUTE_KEYS = ("name", "when", "use", "share", "order", "enabled")
TEAM_KEYS = ("name", "members", "models", "alert_webhook", "cache_ttl_seconds", "log_bodies", "budgets")
BUDGET_KEYS = ("period", "amount", "soft", "enabled")
# "fallbacks[2] must be ..." from model_routing_problems: the index of the item, to report its line.
ITEM_INDEX_RE = re.compile(r"^\w+\[(\d+)\]")


class ConfigImportError(Exception):
    """The document cannot be imported; `problems` lists each one with its line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class ImportCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0

    def record(self, *, created: bool, changed: bool) -> None:
        if created:
            self.created += 1
        elif changed:
            self.updated += 1
        else:
            self.unchanged += 1

    def __str__(self) -> str:
        text = f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"
        return text + (f", {self.deleted} deleted" if self.deleted else "")


@dataclass
class ImportSummary:
    providers: ImportCounts = field(default_factory=ImportCounts)
    models: ImportCounts = field(default_factory=ImportCounts)
    deployments: ImportCounts = field(default_factory=ImportCounts)
    tiers: ImportCounts = field(default_factory=ImportCounts)
    routes: ImportCounts = field(default_factory=ImportCounts)
    teams: ImportCounts = field(default_factory=ImportCounts)
    budgets: ImportCounts = field(default_factory=ImportCounts)

    def lines(self) -> list[str]:
        kinds = ("providers", "models", "deployments", "tiers", "routes", "teams", "budgets")
        return [f"{kind + ':':13} {getattr(self, kind)}" for kind in kinds]


def gateway_config_import(*, data_text: str, source_name: str) -> ImportSummary:
    """Validate the whole document, then upsert it in one transaction; raises ConfigImportError."""
    secrets = _raw_secret_candidates(data_text)
    try:
        document = _yaml_load(data_text, source_name)
        plan = _plan_build(document, source_name, secrets)
        # Audited as the YAML import of this source (inside a command: as that command's, naming the source).
        with audit_context(via="YAML import", source=source_name):
            return _plan_write(plan, source_name)
    except ConfigImportError as exc:
        raise ConfigImportError([_redact(problem, secrets) for problem in exc.problems]) from None


# YAML with line numbers


class _Mapping(dict):
    """A YAML mapping that remembers its own line and the line of each key (1-based)."""

    line: int = 0
    key_lines: dict


class _Sequence(list):
    line: int = 0
    item_lines: list


class _LineLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> _Mapping:
    loader.flatten_mapping(node)
    mapping = _Mapping()
    mapping.line = node.start_mark.line + 1
    mapping.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if key in mapping:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {shown(key)}", key_node.start_mark)
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.key_lines[key] = key_node.start_mark.line + 1
    return mapping


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> _Sequence:
    sequence = _Sequence(loader.construct_object(child, deep=True) for child in node.value)
    sequence.line = node.start_mark.line + 1
    sequence.item_lines = [child.start_mark.line + 1 for child in node.value]
    return sequence


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _yaml_load(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_LineLoader)
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, never str(exc): that quotes the offending source line, which may hold a key.
        mark = exc.problem_mark or exc.context_mark
        where = f"{source} line {mark.line + 1}, column {mark.column + 1}" if mark else source
        detail = exc.problem or exc.context or "unreadable document"
        if exc.context and exc.problem:
            detail = f"{exc.problem} ({exc.context})"
        raise ConfigImportError([f"{where}: YAML syntax error: {detail}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigImportError([f"{source}: YAML error: {type(exc).__name__}"]) from None


# Validation


class _Invalid:
    """Marks a value that failed validation (its problem is already recorded)."""


INVALID = _Invalid()


@dataclass
class _ProviderSpec:
    line: int
    name: str
    fields: dict
    # None = keep the stored key.
    api_key: str | None = field(default=None, repr=False)
    egress: dict = field(default_factory=dict, repr=False)


@dataclass
class _DeploymentSpec:
    line: int
    provider: str
    upstream_model: str
    fields: dict


@dataclass
class _ModelSpec:
    line: int
    name: str
    fields: dict
    deployments: list[_DeploymentSpec]


@dataclass
class _TierSpec:
    line: int
    name: str
    fields: dict
    models: list[str]


@dataclass
class _RouteSpec:
    line: int
    name: str
    fields: dict
    target: str


@dataclass
class _BudgetSpec:
    line: int
    period: str
    fields: dict


@dataclass
class _TeamSpec:
    line: int
    name: str
    fields: dict
    members: list[str]
    models: list[str]
    budgets: list[_BudgetSpec]


@dataclass
class _Plan:
    providers: list[_ProviderSpec]
    models: list[_ModelSpec]
    tiers: list[_TierSpec]
    routes: list[_RouteSpec]
    teams: list[_TeamSpec] = field(default_factory=list)


class _Problems:
    def __init__(self, source: str):
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, line: int | None, message: str) -> None:
        where = f"{self.source} line {line}" if line else self.source
        self.items.append((line or 0, f"{where}: {message}"))

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigImportError([message for _line, message in sorted(self.items, key=lambda item: item[0])])


class _Entry:
    """Typed reads from one mapping of the document; each bad value records a problem with its line."""

    def __init__(self, mapping: _Mapping, *, kind: str, label: str, allowed: tuple[str, ...], problems: _Problems):
        self.mapping = mapping
        self.kind = kind
        self.label = label
        self.allowed = allowed
        self.problems = problems

    def reject_unknown_keys(self) -> None:
        for key in self.mapping:
            if key not in self.allowed:
                hint = difflib.get_close_matches(str(key), self.allowed, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                self.problems.add(
                    self.line_of(key),
                    f"unknown key {shown(key)} in {self.label}{suggestion}; allowed keys: {', '.join(self.allowed)}",
                )

    def line_of(self, key: str) -> int:
        return self.mapping.key_lines.get(key, self.mapping.line)

    def problem(self, key: str, message: str) -> _Invalid:
        self.problems.add(self.line_of(key), f"{self.label}: {key} {message}")
        return INVALID

    def missing(self, key: str) -> _Invalid:
        self.problems.add(self.mapping.line, f"{self.label} is missing required key '{key}'")
        return INVALID

    def name(self, key: str, *, slug: bool, max_length: int) -> str | _Invalid:
        value = self.string(key, required=True, max_length=max_length)
        if isinstance(value, str):
            if not value.strip() or value != value.strip():
                return self.problem(key, "must not be blank or start or end with spaces")
            if slug and not SLUG_RE.match(value):
                return self.problem(key, f"{shown(value)} may contain only letters, digits, '-' and '_'")
            self.label = f"{self.kind} '{value}'"
        return value

    def string(self, key: str, *, required=False, default="", max_length=None, secret=False) -> str | _Invalid:
        if key not in self.mapping:
            return self.missing(key) if required else default
        value = self.mapping[key]
        if not isinstance(value, str):
            hint = "" if secret or value is None else " (quote it)"
            return self.problem(key, f"must be a string, not {_type_name(value)}{hint}")
        if required and not value:
            return self.problem(key, "must not be empty")
        if max_length is not None and len(value) > max_length:
            return self.problem(key, f"must be at most {max_length} characters long")
        return value

    def url(self, key: str, *, max_length: int) -> str | _Invalid:
        value = self.string(key, required=True, max_length=max_length)
        if isinstance(value, str):
            try:
                URLValidator(schemes=["http", "https"])(value)
            except ValidationError:
                return self.problem(key, "must be an http:// or https:// URL")
        return value

    def choice(self, key: str, choices: list[str], *, default: str) -> str | _Invalid:
        value = self.string(key, default=default)
        if isinstance(value, str) and value not in choices:
            return self.problem(key, f"{shown(value)} is not one of: {', '.join(choices)}")
        return value

    def boolean(self, key: str, *, default: bool) -> bool | _Invalid:
        value = self.mapping.get(key, default)
        if not isinstance(value, bool):
            return self.problem(key, f"must be true or false, not {_type_name(value)}")
        return value

    def integer(self, key: str, *, default, minimum: int, maximum: int = INT32_MAX, nullable=False):
        value = self.mapping.get(key, default)
        if value is None and nullable:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            expected = "an integer or null" if nullable else "an integer"
            return self.problem(key, f"must be {expected}, not {_type_name(value)}")
        if value < minimum:
            return self.problem(key, f"must be at least {minimum}, got {value}")
        if value > maximum:
            return self.problem(key, f"must be at most {maximum}, got {value}")
        return value

    def number(self, key: str, *, default: float, minimum: float) -> float | _Invalid:
        value = self.mapping.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.problem(key, f"must be a number, not {_type_name(value)}")
        if value != value or value in (float("inf"), float("-inf")):
            return self.problem(key, "must be a finite number")
        if value < minimum:
            return self.problem(key, f"must be at least {minimum}, got {value}")
        return float(value)

    def decimal(self, key: str, *, max_digits: int, decimal_places: int) -> Decimal | None | _Invalid:
        value = self.mapping.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return self.problem(key, f"must be a number or null, not {_type_name(value)}")
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            return self.problem(key, "must be a finite number")
        if not number.is_finite():
            return self.problem(key, "must be a finite number")
        if number < 0:
            return self.problem(key, f"must not be negative, got {value}")
        sign, digits, exponent = number.normalize().as_tuple()
        places = max(0, -exponent)
        whole_digits = max(0, len(digits) + exponent)
        if places > decimal_places or whole_digits > max_digits - decimal_places:
            return self.problem(
                key,
                f"must have at most {max_digits - decimal_places} digits before and {decimal_places} after the point",
            )
        return number

    def string_map(self, key: str) -> dict[str, str] | _Invalid:
        value = self.mapping.get(key, {})
        if value is None:
            return {}
        if not isinstance(value, dict):
            return self.problem(key, f"must be a mapping of header name to value, not {_type_name(value)}")
        result = {}
        for name, header_value in value.items():
            line = value.key_lines.get(name, self.line_of(key)) if isinstance(value, _Mapping) else self.line_of(key)
            if isinstance(name, str) and not isinstance(header_value, str):
                self.problems.add(
                    line,
                    f"{self.label}: {key} header {shown(name)} must have a string value, not "
                    f"{_type_name(header_value)} (quote it)",
                )
                return INVALID
            # Provider.clean's rules (providers.extra_headers), reported at the header's line.
            problem = extra_header_problem(name, header_value)
            if problem:
                self.problems.add(line, f"{self.label}: {key}: {problem}")
                return INVALID
            result[name] = header_value
        return result

    def transforms(self, key: str) -> list | _Invalid:
        """Request transforms under the admin form's rules, each problem at the line of its transform."""
        value = self.mapping.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            return self.problem(key, f"must be a list of transforms, not {_type_name(value)}")
        found = transforms_problems(value)
        if not found:
            return _plain(value)
        lines = value.item_lines if isinstance(value, _Sequence) else [self.line_of(key)] * len(value)
        for index, message in found:
            self.problems.add(lines[index - 1], f"{self.label}: {key} transform {index}: {message}")
        return INVALID

    def mappings(self, key: str) -> list[_Mapping] | _Invalid:
        """A list whose items must all be mappings (the entries of a section)."""
        value = self.mapping.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            return self.problem(key, f"must be a list, not {_type_name(value)}")
        items = []
        for index, item in enumerate(value):
            if not isinstance(item, _Mapping):
                line = value.item_lines[index] if isinstance(value, _Sequence) else self.line_of(key)
                self.problems.add(line, f"{self.label}: each item of {key} must be a mapping, not {_type_name(item)}")
                continue
            items.append(item)
        return items

    def names(self, key: str) -> list[tuple[str, int]] | _Invalid:
        """A list of names with the line of each."""
        value = self.mapping.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            return self.problem(key, f"must be a list of names, not {_type_name(value)}")
        lines = value.item_lines if isinstance(value, _Sequence) else [self.line_of(key)] * len(value)
        result, seen = [], {}
        for item, line in zip(value, lines, strict=True):
            if not isinstance(item, str) or not item:
                self.problems.add(line, f"{self.label}: {key} items must be names, not {_type_name(item)}")
                return INVALID
            if item in seen:
                self.problems.add(line, f"{self.label}: {key} lists '{item}' twice (first at line {seen[item]})")
                return INVALID
            seen[item] = line
            result.append((item, line))
        return result

    def money(self, key: str) -> Decimal | _Invalid:
        """A required amount of money: a number, or a numeric string (quoted, it is read exactly)."""
        if key not in self.mapping:
            return self.missing(key)
        try:
            return budget_amount_parse(self.mapping[key])
        except ValueError as exc:
            return self.problem(key, str(exc))

    def thresholds(self, key: str) -> list[float] | _Invalid:
        """Soft alert thresholds: fractions of a budget's amount; omitted = the model's default."""
        if key not in self.mapping:
            return soft_thresholds_default()
        value = self.mapping[key]
        if value is None:
            return []
        problem = budget_thresholds_problem(value)
        if problem:
            return self.problem(key, problem)
        return budget_thresholds_normalize(value)

    def share(self, key: str) -> float | _Invalid:
        value = self.number(key, default=1.0, minimum=0.0)
        if isinstance(value, float) and value > 1.0:
            return self.problem(key, f"must be at most 1 (a share of the matching requests), got {value:g}")
        return value

    def conditions(self, key: str) -> dict | _Invalid:
        """A routing rule's conditions under the admin's rules, each problem at the line of its condition."""
        if key not in self.mapping:
            return self.missing(key)
        value = self.mapping[key]
        if value is None:
            return self.problem(key, "must be a mapping of conditions ({} matches every request)")
        if not isinstance(value, dict):
            return self.problem(key, f"must be a mapping of conditions, not {_type_name(value)}")
        plain = _plain(value)
        key_lines = value.key_lines if isinstance(value, _Mapping) else {}
        valid = True
        for condition, condition_value in plain.items():
            for message in conditions_problems({condition: condition_value}):
                self.problems.add(key_lines.get(condition, self.line_of(key)), f"{self.label}: {key}: {message}")
                valid = False
        return plain if valid else INVALID


def _plan_build(document: Any, source: str, secrets: set[str]) -> _Plan:
    problems = _Problems(source)
    if document is None:
        problems.add(
            None, "the document is empty; expected a mapping with providers, models, tiers, routes and/or teams"
        )
        problems.raise_if_any()
    if not isinstance(document, _Mapping):
        problems.add(
            1,
            f"the document must be a mapping with providers, models, tiers, routes and/or teams, "
            f"not {_type_name(document)}",
        )
        problems.raise_if_any()
    top = _Entry(document, kind="document", label="the document", allowed=TOP_LEVEL_KEYS, problems=problems)
    top.reject_unknown_keys()

    providers = _providers_validate(top.mappings("providers"), problems, secrets)
    file_providers = {spec.name for spec in providers}
    model_entries = top.mappings("models")
    models = _models_validate(model_entries, problems, file_providers)
    file_models = {spec.name for spec in models}
    tiers = _tiers_validate(top.mappings("tiers"), problems, file_models)
    # A rule naming a model that the file defines but gets wrong is reported once, at that model.
    named = set() if isinstance(model_entries, _Invalid) else {entry.get("name") for entry in model_entries}
    routes = _routes_validate(top.mappings("routes"), problems, file_models | named)
    teams = _teams_validate(top.mappings("teams"), problems, file_models)
    problems.raise_if_any()
    return _Plan(providers=providers, models=models, tiers=tiers, routes=routes, teams=teams)


def _prices(entry: _Entry) -> dict:
    """A model's prices, or a deployment's overrides of them (per million tokens; unset = None)."""
    return {key: entry.decimal(key, max_digits=12, decimal_places=6) for key in PRICE_KEYS}


def _pem_file(entry: _Entry, key: str, marker: str) -> str | None | _Invalid:
    """The PEM text of the file `key` names (read at import time), or None when not given."""
    path = entry.string(key, max_length=4096)
    if not isinstance(path, str) or not path:
        return None if isinstance(path, str) else path
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        return entry.problem(key, f"cannot read {shown(path)}: {type(exc).__name__}")
    if f"-----BEGIN {marker}" not in text and not (marker == "PRIVATE KEY" and "PRIVATE KEY-----" in text):
        return entry.problem(key, f"{shown(path)} holds no PEM {marker.lower()}")
    return text


def _provider_egress(entry: _Entry, secrets: set[str]) -> dict | _Invalid:
    """proxy_url (a secret: it may carry credentials) and the TLS files of a provider; absent = unchanged."""
    out: dict = {}
    if "proxy_url" in entry.mapping:
        value = entry.string("proxy_url", secret=True, max_length=2048)
        if isinstance(value, _Invalid):
            return value
        problem = proxy_url_problem(value) if value else None
        if problem:
            return entry.problem("proxy_url", problem)
        secrets.add(value)
        out["proxy_url"] = value
    for key, field_name, marker in (
        ("ca_bundle_file", "ca_bundle", "CERTIFICATE"),
        ("client_cert_file", "client_cert", "CERTIFICATE"),
        ("client_key_file", "client_key", "PRIVATE KEY"),
    ):
        if key in entry.mapping:
            text = _pem_file(entry, key, marker)
            if isinstance(text, _Invalid):
                return text
            out[field_name] = text or ""
    return out


def _providers_validate(entries, problems: _Problems, secrets: set[str]) -> list[_ProviderSpec]:
    if isinstance(entries, _Invalid):
        return []
    specs, seen = [], {}
    for position, mapping in enumerate(entries, start=1):
        entry = _Entry(
            mapping, kind="provider", label=f"provider #{position}", allowed=PROVIDER_KEYS, problems=problems
        )
        name = entry.name("name", slug=True, max_length=64)
        entry.reject_unknown_keys()
        fields = {
            "dialect": entry.choice("dialect", Dialect.values, default=Dialect.OPENAI),
            "base_url": entry.url("base_url", max_length=500),
            "extra_headers": entry.string_map("extra_headers"),
            "timeout_connect": entry.number("timeout_connect", default=5.0, minimum=0.1),
            "timeout_read": entry.number("timeout_read", default=120.0, minimum=0.1),
            "max_connections": entry.integer(
                "max_connections", default=Provider._meta.get_field("max_connections").default, minimum=1
            ),
            "enabled": entry.boolean("enabled", default=True),
            "request_transforms": entry.transforms("request_transforms"),
        }
        api_key = _provider_api_key(entry, secrets)
        egress = _provider_egress(entry, secrets)
        _note_duplicate(problems, seen, "provider", name, mapping.line)
        if _all_valid(name, api_key, egress, *fields.values()):
            specs.append(_ProviderSpec(line=mapping.line, name=name, fields=fields, api_key=api_key, egress=egress))
    return specs


def _provider_api_key(entry: _Entry, secrets: set[str]) -> str | None | _Invalid:
    has_inline, has_env = "api_key" in entry.mapping, "api_key_env" in entry.mapping
    if has_inline and has_env:
        return entry.problem("api_key_env", "cannot be combined with api_key; give one of them")
    if has_inline:
        value = entry.string("api_key", secret=True)
        if isinstance(value, str):
            secrets.add(value)
        return value
    if has_env:
        env_name = entry.string("api_key_env", required=True)
        if not isinstance(env_name, str):
            return env_name
        if not ENV_NAME_RE.match(env_name):
            return entry.problem("api_key_env", f"{shown(env_name)} is not a valid environment variable name")
        value = os.environ.get(env_name, "")
        if not value:
            return entry.problem("api_key_env", f"names the environment variable {env_name}, which is not set or empty")
        secrets.add(value)
        return value
    return None


def _note_duplicate(problems: _Problems, seen: dict, kind: str, name, line: int) -> None:
    """A name defined twice in one file is reported at its second definition."""
    if not isinstance(name, str):
        return
    if name in seen:
        problems.add(line, f"{kind} '{name}' is defined twice (first at line {seen[name]})")
    seen.setdefault(name, line)


def _note_unknown(problems: _Problems, referenced: list, model_class, kind: str, *, defined_here: set[str]) -> None:
    """References (name, line, label) to rows neither in this file nor in the database."""
    names = {name for name, _line, _label in referenced}
    known = defined_here | set(model_class.objects.filter(name__in=names).values_list("name", flat=True))
    for name, line, label in referenced:
        if name not in known:
            problems.add(line, f"{label} refers to unknown {kind} '{name}' (not in this file or the database)")


def _models_validate(entries, problems: _Problems, file_providers: set[str]) -> list[_ModelSpec]:
    if isinstance(entries, _Invalid):
        return []
    specs, seen = [], {}
    referenced: list[tuple[str, int, str]] = []
    referenced_models: list[tuple[str, int, str]] = []
    for position, mapping in enumerate(entries, start=1):
        entry = _Entry(mapping, kind="model", label=f"model #{position}", allowed=MODEL_KEYS, problems=problems)
        name = entry.name("name", slug=False, max_length=128)
        entry.reject_unknown_keys()
        fields = {
            "enabled": entry.boolean("enabled", default=True),
            **_prices(entry),
            "max_output_tokens": entry.integer("max_output_tokens", default=None, minimum=1, nullable=True),
            "context_window": entry.integer("context_window", default=None, minimum=1, nullable=True),
            "description": entry.string("description"),
            "alias_order": entry.integer("alias_order", default=0, minimum=-INT32_MAX),
            "unsupported_tools": entry.choice("unsupported_tools", ["drop", "refuse"], default="drop"),
        }
        routing = _model_routing_validate(entry, name, problems, referenced_models)
        if not isinstance(routing, _Invalid):
            fields.update(routing)
        _note_duplicate(problems, seen, "model", name, mapping.line)
        deployments = _deployments_validate(entry, problems, referenced)
        if _all_valid(name, deployments, routing, *fields.values()):
            specs.append(_ModelSpec(line=mapping.line, name=name, fields=fields, deployments=deployments))

    _note_unknown(problems, referenced, Provider, "provider", defined_here=file_providers)
    _note_unknown(problems, referenced_models, Model, "model", defined_here=set(seen))
    return specs


def _model_routing_validate(entry: _Entry, name, problems: _Problems, referenced: list) -> dict | _Invalid:
    """aliases, fallbacks and context_fallbacks under Model.clean()'s rules, each problem at its item's line;
    the models that fallbacks name are added to `referenced`."""
    lists = {key: entry.names(key) for key in ("aliases", "fallbacks", "context_fallbacks")}
    kinds = entry.names("kinds")
    if not isinstance(kinds, _Invalid):
        for item, line in kinds:
            if item not in MODEL_KINDS:
                problems.add(line, f"{entry.label}: unknown kind {item!r}; known: {', '.join(MODEL_KINDS)}")
                kinds = INVALID
            elif item == "vision" and "chat" not in {kind for kind, _line in entry.names("kinds")}:
                problems.add(line, f'{entry.label}: "vision" is image input for chat: list "chat" too')
                kinds = INVALID
    if not _all_valid(name, *lists.values()):
        return INVALID
    found = model_routing_problems(name=name, **{key: [item for item, _line in items] for key, items in lists.items()})
    for key, messages in found.items():
        for message in messages:
            index = ITEM_INDEX_RE.match(message)
            if index is not None:
                line = lists[key][int(index.group(1))][1]
            else:
                line = next((line for item, line in lists[key] if item == name), entry.line_of(key))
            problems.add(line, f"{entry.label}: {message}")
    if found or isinstance(kinds, _Invalid):
        return INVALID
    for key in ("fallbacks", "context_fallbacks"):
        referenced.extend((item, line, f"{entry.label} {key}") for item, line in lists[key])
    fields = {key: [item for item, _line in items] for key, items in lists.items()}
    fields["kinds"] = [item for item, _line in kinds] or ["chat"]
    return fields


def _deployments_validate(
    model_entry: _Entry, problems: _Problems, referenced: list
) -> list[_DeploymentSpec] | _Invalid:
    entries = model_entry.mappings("deployments")
    if isinstance(entries, _Invalid):
        return entries
    specs, seen, valid = [], {}, True
    for position, mapping in enumerate(entries, start=1):
        label = f"deployment #{position} of {model_entry.label}"
        entry = _Entry(mapping, kind="deployment", label=label, allowed=DEPLOYMENT_KEYS, problems=problems)
        entry.reject_unknown_keys()
        provider = entry.string("provider", required=True, max_length=64)
        upstream_model = entry.string("upstream_model", required=True, max_length=255)
        fields = {
            "priority": entry.integer("priority", default=0, minimum=-INT32_MAX),
            "weight": entry.integer("weight", default=1, minimum=1),
            "enabled": entry.boolean("enabled", default=True),
            "timeout_total": entry.number("timeout_total", default=None, minimum=0.1)
            if entry.mapping.get("timeout_total") is not None
            else None,
            **_prices(entry),
        }
        if isinstance(provider, str):
            referenced.append((provider, entry.line_of("provider"), entry.label))
        if isinstance(provider, str) and isinstance(upstream_model, str):
            key = (provider, upstream_model)
            if key in seen:
                problems.add(
                    mapping.line,
                    f"{entry.label} repeats provider '{provider}' with upstream_model '{upstream_model}' "
                    f"(first at line {seen[key]})",
                )
                valid = False
            seen.setdefault(key, mapping.line)
        if _all_valid(provider, upstream_model, *fields.values()):
            specs.append(_DeploymentSpec(mapping.line, provider, upstream_model, fields))
        else:
            valid = False
    return specs if valid else INVALID


def _tiers_validate(entries, problems: _Problems, file_models: set[str]) -> list[_TierSpec]:
    if isinstance(entries, _Invalid):
        return []
    specs, seen = [], {}
    referenced: list[tuple[str, int, str]] = []
    for position, mapping in enumerate(entries, start=1):
        entry = _Entry(mapping, kind="tier", label=f"tier #{position}", allowed=TIER_KEYS, problems=problems)
        name = entry.name("name", slug=True, max_length=64)
        entry.reject_unknown_keys()
        fields = {
            "rpm": entry.integer("rpm", default=None, minimum=0, nullable=True),
            "tpm": entry.integer("tpm", default=None, minimum=0, nullable=True),
            "max_concurrent": entry.integer("max_concurrent", default=None, minimum=0, nullable=True),
            "daily_tokens": entry.integer("daily_tokens", default=None, minimum=0, maximum=INT64_MAX, nullable=True),
            "max_output_tokens": entry.integer("max_output_tokens", default=None, minimum=0, nullable=True),
            "max_compare_models": entry.integer("max_compare_models", default=4, minimum=1),
            "cache_ttl_seconds": entry.integer("cache_ttl_seconds", default=0, minimum=0),
            "log_bodies": _log_level(entry, default="off"),
            "resumable_streams": entry.boolean("resumable_streams", default=False),
        }
        models = entry.names("models")
        _note_duplicate(problems, seen, "tier", name, mapping.line)
        if not isinstance(models, _Invalid):
            referenced.extend((model, line, entry.label) for model, line in models)
        if _all_valid(name, models, *fields.values()):
            specs.append(_TierSpec(mapping.line, name, fields, [model for model, _line in models]))

    _note_unknown(problems, referenced, Model, "model", defined_here=file_models)
    return specs


def _routes_validate(entries, problems: _Problems, file_models: set[str]) -> list[_RouteSpec]:
    if isinstance(entries, _Invalid):
        return []
    specs, seen = [], {}
    referenced: list[tuple[str, int, str]] = []
    for position, mapping in enumerate(entries, start=1):
        entry = _Entry(mapping, kind="route", label=f"route #{position}", allowed=ROUTE_KEYS, problems=problems)
        name = entry.name("name", slug=True, max_length=64)
        entry.reject_unknown_keys()
        target = entry.string("use", required=True, max_length=128)
        fields = {
            "when": entry.conditions("when"),
            "share": entry.share("share"),
            # The list is the order ops read; an explicit order is for rules kept in admin between them.
            "order": entry.integer("order", default=position, minimum=-INT32_MAX),
            "enabled": entry.boolean("enabled", default=True),
        }
        _note_duplicate(problems, seen, "route", name, mapping.line)
        if isinstance(target, str):
            referenced.append((target, entry.line_of("use"), entry.label))
        if _all_valid(name, target, *fields.values()):
            specs.append(_RouteSpec(line=mapping.line, name=name, fields=fields, target=target))

    _note_unknown(problems, referenced, Model, "model", defined_here=file_models)
    return specs


def _log_level(entry, *, default: str):
    """A tier's or team's `log_bodies`: off, metadata or full. YAML reads a bare `off` as false: that is "off"."""
    if "log_bodies" not in entry.mapping:
        return default
    if entry.mapping["log_bodies"] is False:
        return "off"
    return entry.choice("log_bodies", [level for level, _ in LOG_LEVELS], default=default)


def _teams_validate(entries, problems: _Problems, file_models: set[str]) -> list[_TeamSpec]:
    if isinstance(entries, _Invalid):
        return []
    specs, seen = [], {}
    referenced_models: list[tuple[str, int, str]] = []
    referenced_users: list[tuple[str, int, str]] = []
    for position, mapping in enumerate(entries, start=1):
        entry = _Entry(mapping, kind="team", label=f"team #{position}", allowed=TEAM_KEYS, problems=problems)
        name = entry.name("name", slug=False, max_length=Team._meta.get_field("name").max_length)
        entry.reject_unknown_keys()
        fields = {
            "alert_webhook": _team_webhook(entry),
            # Left out or null: the tier's TTL applies to the team's keys.
            "cache_ttl_seconds": entry.integer("cache_ttl_seconds", default=None, minimum=0, nullable=True),
            # Left out: the tier's setting applies to the team's keys.
            "log_bodies": _log_level(entry, default=""),
        }
        members = entry.names("members")
        models = entry.names("models")
        budgets = _budgets_validate(entry, problems)
        _note_duplicate(problems, seen, "team", name, mapping.line)
        if not isinstance(members, _Invalid):
            referenced_users.extend((user, line, f"{entry.label} members") for user, line in members)
        if not isinstance(models, _Invalid):
            referenced_models.extend((model, line, f"{entry.label} models") for model, line in models)
        if _all_valid(name, members, models, budgets, *fields.values()):
            specs.append(
                _TeamSpec(
                    line=mapping.line,
                    name=name,
                    fields=fields,
                    members=[user for user, _line in members],
                    models=[model for model, _line in models],
                    budgets=budgets,
                )
            )

    _note_unknown(problems, referenced_models, Model, "model", defined_here=file_models)
    User = get_user_model()
    usernames = {name for name, _line, _label in referenced_users}
    known = set(
        User.objects.filter(**{f"{User.USERNAME_FIELD}__in": usernames}).values_list(User.USERNAME_FIELD, flat=True)
    )
    for username, line, label in referenced_users:
        if username not in known:
            problems.add(line, f"{label} refers to unknown user '{username}' (not in the database)")
    return specs


def _team_webhook(entry: _Entry) -> str | _Invalid:
    if entry.mapping.get("alert_webhook") in (None, ""):
        return ""
    url = entry.url("alert_webhook", max_length=Team._meta.get_field("alert_webhook").max_length)
    if isinstance(url, str):
        # The upstream address policy, as for a provider's base URL: alerts leave through the upstream client.
        problem = base_url_problem(url)
        if problem:
            return entry.problem("alert_webhook", problem)
    return url


def _budgets_validate(owner: _Entry, problems: _Problems) -> list[_BudgetSpec] | _Invalid:
    entries = owner.mappings("budgets")
    if isinstance(entries, _Invalid):
        return entries
    specs, seen, valid = [], {}, True
    for position, mapping in enumerate(entries, start=1):
        label = f"budget #{position} of {owner.label}"
        entry = _Entry(mapping, kind="budget", label=label, allowed=BUDGET_KEYS, problems=problems)
        entry.reject_unknown_keys()
        period = entry.choice("period", list(PERIODS), default="month")
        fields = {
            "amount": entry.money("amount"),
            "soft_thresholds": entry.thresholds("soft"),
            "enabled": entry.boolean("enabled", default=True),
        }
        if isinstance(period, str):
            if period in seen:
                problems.add(
                    mapping.line,
                    f"{label} repeats period '{period}' (first at line {seen[period]}); one budget per period",
                )
                valid = False
            seen.setdefault(period, mapping.line)
        if _all_valid(period, *fields.values()):
            specs.append(_BudgetSpec(line=mapping.line, period=period, fields=fields))
        else:
            valid = False
    return specs if valid else INVALID


# Writing


@transaction.atomic
def _plan_write(plan: _Plan, source: str) -> ImportSummary:
    summary = ImportSummary()
    providers = {provider.name: provider for provider in Provider.objects.all()}
    for spec in plan.providers:
        provider = providers.get(spec.name) or Provider(name=spec.name)
        created = provider.pk is None
        changed = _assign(provider, spec.fields)
        if spec.api_key is not None and provider.api_key != spec.api_key:
            provider.api_key = spec.api_key
            changed = True
        for attribute, value in spec.egress.items():
            # Properties for the encrypted ones (proxy_url, client_key): compared in plaintext.
            if getattr(provider, attribute) != value:
                setattr(provider, attribute, value)
                changed = True
        if created or changed:
            _full_clean(provider, source=source, line=spec.line, label=f"provider '{spec.name}'")
            provider.save()
        summary.providers.record(created=created, changed=changed)
        providers[spec.name] = provider

    models = {model.name: model for model in Model.objects.all()}
    for spec in plan.models:
        model = models.get(spec.name) or Model(name=spec.name)
        created = model.pk is None
        changed = _assign(model, spec.fields)
        if created or changed:
            _full_clean(model, source=source, line=spec.line, label=f"model '{spec.name}'")
            model.save()
        summary.models.record(created=created, changed=changed)
        models[spec.name] = model
        _deployments_write(model, spec.deployments, providers, summary.deployments, created=created)

    for spec in plan.tiers:
        tier = Tier.objects.filter(name=spec.name).first() or Tier(name=spec.name)
        created = tier.pk is None
        changed = _assign(tier, spec.fields)
        if created or changed:
            _full_clean(tier, source=source, line=spec.line, label=f"tier '{spec.name}'")
            tier.save()
        wanted = {models[name].pk for name in spec.models}
        current = set() if created else set(tier.allowed_models.values_list("pk", flat=True))
        if wanted != current:
            tier.allowed_models.set(wanted)
            changed = True
        summary.tiers.record(created=created, changed=changed)

    rules = {rule.name: rule for rule in RouteRule.objects.all()}
    for spec in plan.routes:
        rule = rules.get(spec.name) or RouteRule(name=spec.name)
        created = rule.pk is None
        changed = _assign(rule, {**spec.fields, "target_id": models[spec.target].pk})
        if created or changed:
            _full_clean(rule, source=source, line=spec.line, label=f"route '{spec.name}'")
            rule.save()
        summary.routes.record(created=created, changed=changed)

    _teams_write(plan.teams, models, source, summary)
    return summary


def _teams_write(specs: list[_TeamSpec], models: dict, source: str, summary: ImportSummary) -> None:
    User = get_user_model()
    usernames = {username for spec in specs for username in spec.members}
    users = {
        getattr(user, User.USERNAME_FIELD): user.pk
        for user in User.objects.filter(**{f"{User.USERNAME_FIELD}__in": usernames})
    }
    teams = {team.name: team for team in Team.objects.filter(name__in=[spec.name for spec in specs])}
    for spec in specs:
        team = teams.get(spec.name) or Team(name=spec.name)
        created = team.pk is None
        changed = _assign(team, spec.fields)
        if created or changed:
            _full_clean(team, source=source, line=spec.line, label=f"team '{spec.name}'")
            team.save()
        for relation, wanted in (
            (team.members, {users[name] for name in spec.members}),
            (team.allowed_models, {models[name].pk for name in spec.models}),
        ):
            current = set() if created else set(relation.values_list("pk", flat=True))
            if wanted != current:
                relation.set(wanted)
                changed = True
        _team_budgets_write(team, spec.budgets, summary.budgets, created=created)
        summary.teams.record(created=created, changed=changed)


def _team_budgets_write(team: Team, specs: list[_BudgetSpec], counts: ImportCounts, *, created: bool) -> None:
    """The team's budgets become the file's, one per period; a kept budget keeps its id (and its alerts)."""
    by_period: dict[str, list[Budget]] = {}
    for budget in [] if created else team.budgets.order_by("id"):
        by_period.setdefault(budget.period, []).append(budget)
    for spec in specs:
        kept = by_period.get(spec.period, [])
        budget = kept.pop(0) if kept else None
        if budget is None:
            Budget.objects.create(scope="team", team=team, period=spec.period, **spec.fields)
            counts.record(created=True, changed=True)
            continue
        changed = _assign(budget, spec.fields)
        if changed:
            budget.save()
        counts.record(created=False, changed=changed)
    for budgets in by_period.values():
        for budget in budgets:
            budget.delete()
            counts.deleted += 1


def _deployments_write(model: Model, specs, providers: dict, counts: ImportCounts, *, created: bool) -> None:
    existing = {} if created else {(d.provider_id, d.upstream_model): d for d in model.deployments.all()}
    kept = set()
    for spec in specs:
        provider = providers[spec.provider]
        key = (provider.pk, spec.upstream_model)
        kept.add(key)
        deployment = existing.get(key)
        if deployment is None:
            deployment = Deployment(model=model, provider=provider, upstream_model=spec.upstream_model, **spec.fields)
            deployment.save()
            counts.record(created=True, changed=True)
            continue
        changed = _assign(deployment, spec.fields)
        if changed:
            deployment.save()
        counts.record(created=False, changed=changed)
    for key, deployment in existing.items():
        if key not in kept:
            deployment.delete()
            counts.deleted += 1


def _assign(instance, values: dict) -> bool:
    changed = False
    for name, value in values.items():
        if getattr(instance, name) != value:
            setattr(instance, name, value)
            changed = True
    return changed


def _full_clean(instance, *, source: str, line: int, label: str) -> None:
    """A last check against the model's own validators; a failure here rolls the import back."""
    try:
        instance.full_clean(validate_unique=False, validate_constraints=False)
    except ValidationError as exc:
        problems = _Problems(source)
        for field_name, messages in exc.message_dict.items():
            for message in messages:
                problems.add(line, f"{label}: {field_name}: {message}")
        problems.raise_if_any()


# Helpers


def _all_valid(*values) -> bool:
    return not any(isinstance(value, _Invalid) for value in values)


def _plain(value: Any) -> Any:
    """The document's line-tracking mappings and lists as plain JSON values."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _type_name(value: Any) -> str:
    return type_name(value, yaml=True)


def _raw_secret_candidates(text: str) -> set[str]:
    return {match.group(1) for match in RAW_SECRET_RE.finditer(text)}


def _redact(message: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= MIN_REDACTED_LENGTH:
            message = message.replace(secret, "[redacted]")
    return message
