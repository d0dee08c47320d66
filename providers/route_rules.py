"""Routing that ops steer: model aliases, routing rules and their conditions, and the decision itself.

Pure functions over the in-process route table: the decision for a request costs no query and no I/O.
`route_decide` is what the relay uses and what the admin's "test routing" form shows, so the
explanation is the decision.
"""

import fnmatch
import random
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

CONDITION_KEYS = (
    "min_prompt_tokens",
    "max_prompt_tokens",
    "thinking",
    "tools",
    "stream",
    "model",
    "dialect",
    "tier",
    "header",
    "metadata_user",
)
_INT_KEYS = ("min_prompt_tokens", "max_prompt_tokens")
_BOOL_KEYS = ("thinking", "tools", "stream")
_TEXT_KEYS = ("model", "dialect", "tier", "metadata_user")
DIALECT_NAMES = ("openai", "anthropic", "responses")


def is_pattern(name: str) -> bool:
    return any(char in name for char in "*?[")


def _names_problems(field_name: str, value, *, patterns: bool) -> list[str]:
    if not isinstance(value, list):
        return [f"{field_name} must be a list of model names"]
    problems = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            problems.append(f"{field_name}[{index}] must be a non-empty name")
        elif not patterns and is_pattern(item):
            problems.append(f"{field_name}[{index}] must be a model name, not a pattern")
    return problems


def model_routing_problems(*, name: str, aliases, fallbacks, context_fallbacks) -> dict[str, list[str]]:
    """Shape problems of a model's routing fields, by field (model existence is checked by the caller)."""
    problems: dict[str, list[str]] = {}
    for field_name, value, patterns in (
        ("aliases", aliases, True),
        ("fallbacks", fallbacks, False),
        ("context_fallbacks", context_fallbacks, False),
    ):
        found = _names_problems(field_name, value, patterns=patterns)
        if not found and name in value:
            found = [f"{field_name} must not name the model itself"]
        if found:
            problems[field_name] = found
    return problems


def conditions_problems(when) -> list[str]:
    """Problems of a rule's `when`, each naming the key; an empty `when` matches every request."""
    if not isinstance(when, dict):
        return ["'when' must be an object of conditions"]
    problems = []
    for key, value in when.items():
        if key not in CONDITION_KEYS:
            problems.append(f"unknown condition {key!r}; known: {', '.join(CONDITION_KEYS)}")
        elif key in _INT_KEYS and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            problems.append(f"{key!r} must be a non-negative integer")
        elif key in _BOOL_KEYS and not isinstance(value, bool):
            problems.append(f"{key!r} must be true or false")
        elif key in _TEXT_KEYS and (not isinstance(value, str) or not value):
            problems.append(f"{key!r} must be a non-empty string")
        elif key == "dialect" and value not in DIALECT_NAMES:
            problems.append(f"'dialect' must be one of {', '.join(DIALECT_NAMES)}")
        elif key == "header" and (
            not isinstance(value, dict)
            or not value
            or not all(isinstance(k, str) and k and isinstance(v, str) for k, v in value.items())
        ):
            problems.append("'header' must be an object of header name -> value")
    return problems


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What routing may look at in a request; cheap to gather, computed once."""

    model: str
    prompt_tokens: int = 0
    thinking: bool = False
    tools: bool = False
    stream: bool = False
    dialect: str = "openai"
    tier: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    metadata_user: str | None = None


def _glob(pattern: str) -> Callable[[str], object]:
    return re.compile(fnmatch.translate(pattern)).match


def _condition(key: str, value) -> Callable[[RequestFacts, str], bool]:
    """One condition as a predicate, built once when the route table loads: a request only calls it."""
    if key == "min_prompt_tokens":
        return lambda facts, resolved: facts.prompt_tokens >= value
    if key == "max_prompt_tokens":
        return lambda facts, resolved: facts.prompt_tokens <= value
    if key in ("thinking", "tools", "stream"):
        return lambda facts, resolved: getattr(facts, key) is value
    if key == "model":
        match = _glob(value)
        return lambda facts, resolved: match(facts.model) is not None or match(resolved) is not None
    if key in ("dialect", "tier"):
        return lambda facts, resolved: getattr(facts, key) == value
    if key == "header":
        expected = tuple((str(name).lower(), str(text)) for name, text in sorted(value.items()))
        return lambda facts, resolved: all(facts.headers.get(name) == text for name, text in expected)
    match = _glob(value)  # metadata_user
    return lambda facts, resolved: facts.metadata_user is not None and match(facts.metadata_user) is not None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    target: str
    share: float
    when: tuple[tuple[str, object], ...]
    tests: tuple[Callable[[RequestFacts, str], bool], ...] = ()

    def matches(self, facts: RequestFacts, resolved: str) -> bool:
        for test in self.tests:
            if not test(facts, resolved):
                return False
        return True


def rule_header_names(rules) -> tuple[str, ...]:
    return tuple(
        sorted({str(n).lower() for rule in rules for key, value in rule.when if key == "header" for n in value})
    )


def rule_compile(*, name: str, target: str, share: float, when: dict) -> CompiledRule:
    return CompiledRule(
        name=name,
        target=target,
        share=float(share),
        when=tuple(when.items()),
        tests=tuple(_condition(key, value) for key, value in when.items()),
    )


@dataclass(frozen=True, slots=True)
class RoutingConfig:
    """The routing part of the route table: aliases, fallbacks, context windows, rules."""

    exact_aliases: Mapping[str, str] = field(default_factory=dict)
    # (pattern, model) in the order they are tried.
    alias_patterns: tuple[tuple[str, str], ...] = ()
    fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    context_windows: Mapping[str, int] = field(default_factory=dict)
    context_fallbacks: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    rules: tuple[CompiledRule, ...] = ()
    # The request headers any rule looks at (lowercase): the only ones gathered per request.
    header_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RouteDecision:
    requested: str
    model: str  # the model whose deployments serve first
    route: str  # "default", "alias:<name>", "rule:<name>", "context-fallback:<model>"
    fallbacks: tuple[str, ...]  # models to try when every deployment of `model` failed before the first byte
    reasons: tuple[str, ...]


class UnknownModel(LookupError):
    pass


class PromptTooLong(ValueError):
    def __init__(self, model: str, prompt_tokens: int, window: int) -> None:
        super().__init__(
            f"the prompt (about {prompt_tokens} tokens) exceeds the context window of '{model}' ({window} tokens)"
            " and no context fallback fits"
        )


def alias_resolve(config: RoutingConfig, models: Mapping[str, object], name: str) -> tuple[str, str] | None:
    """(model, route label) for a requested name: a real model, an exact alias, or the first pattern."""
    if name in models:
        return name, "default"
    target = config.exact_aliases.get(name)
    if target is not None:
        return target, f"alias:{name}"
    for pattern, target in config.alias_patterns:
        if fnmatch.fnmatchcase(name, pattern):
            return target, f"alias:{pattern}"
    return None


def route_decide(
    config: RoutingConfig,
    models: Mapping[str, object],
    facts: RequestFacts,
    *,
    draw: Callable[[], float] = random.random,
) -> RouteDecision:
    """The model that serves a request and why: alias, then the first matching rule, then the context
    window check. Raises UnknownModel or PromptTooLong."""
    resolved = alias_resolve(config, models, facts.model)
    if resolved is None:
        raise UnknownModel(facts.model)
    model, route = resolved
    reasons = [f"'{facts.model}' is {'a model' if route == 'default' else route.replace(':', ' ', 1)}"]
    for rule in config.rules:
        if not rule.matches(facts, model):
            continue
        if rule.share < 1.0 and draw() >= rule.share:
            reasons.append(f"rule {rule.name} matched, but this request is outside its {rule.share:.0%} share")
            continue
        reasons.append(f"rule {rule.name} matched: served by {rule.target}")
        model, route = rule.target, f"rule:{rule.name}"
        break
    window = config.context_windows.get(model)
    if window is not None and facts.prompt_tokens > window:
        for candidate in config.context_fallbacks.get(model, ()):
            candidate_window = config.context_windows.get(candidate)
            if candidate_window is None or facts.prompt_tokens <= candidate_window:
                reasons.append(
                    f"about {facts.prompt_tokens} prompt tokens exceed the {window}-token window of {model}: "
                    f"served by {candidate}"
                )
                model, route = candidate, f"context-fallback:{candidate}"
                break
        else:
            raise PromptTooLong(model, facts.prompt_tokens, window)
    return RouteDecision(
        requested=facts.model,
        model=model,
        route=route,
        fallbacks=tuple(config.fallbacks.get(model, ())),
        reasons=tuple(reasons),
    )


def request_facts(body: dict, *, dialect: str, tier: str, headers: Mapping[str, str], body_size: int) -> RequestFacts:
    """The facts routing looks at, from a checked chat body. The prompt estimate is the admission
    one (about four bytes per token): free, and what the limits use too."""
    thinking = body.get("thinking")
    reasoning = body.get("reasoning")
    effort = reasoning.get("effort") if isinstance(reasoning, dict) else body.get("reasoning_effort")
    wants_thinking = (isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive")) or effort not in (
        None,
        "none",
    )
    metadata = body.get("metadata")
    user = metadata.get("user_id") if isinstance(metadata, dict) else body.get("user")
    return RequestFacts(
        model=body["model"],
        prompt_tokens=body_size // 4,
        thinking=wants_thinking,
        tools=bool(body.get("tools") or body.get("functions")),
        stream=body.get("stream") is True,
        dialect=dialect,
        tier=tier,
        headers=headers,
        metadata_user=user if isinstance(user, str) else None,
    )
