"""Reads over routing for operators: what the gateway would do with a request, without sending it.

`route_explain` runs the relay's own `route_decide` over the route table loaded from the database, so
the answer is the decision, not a second opinion. A rule that takes a share of its requests makes the
decision random; the explanation then lists every outcome with its probability.
"""

import math
from dataclasses import dataclass
from functools import partial

from accounts.context import KeyContext
from providers.route_rules import (
    CompiledRule,
    PromptTooLong,
    RequestFacts,
    RouteDecision,
    RoutingConfig,
    alias_resolve,
    request_facts,
    route_decide,
)
from providers.routing import Route, order_routes, route_table_load

# route_decide takes a rule with share s when draw() < s: 0.0 takes any share above zero, 1.0 none below one.
_DRAW_TAKE = 0.0
_DRAW_SKIP = 1.0
# Shown as typed would put a credential on the page; rules may still match on them.
CREDENTIAL_HEADERS = frozenset({"authorization", "x-api-key", "cookie", "proxy-authorization"})


@dataclass(frozen=True, slots=True)
class DeploymentPreview:
    provider: str
    upstream_model: str
    priority: int
    weight: int
    # How often it is tried first among the deployments of its priority; None when it is alone there.
    first_share: float | None

    @property
    def first_percent(self) -> str:
        return "" if self.first_share is None else percent(self.first_share)


@dataclass(frozen=True, slots=True)
class ModelPreview:
    name: str
    allowed: bool  # by the key's tier
    deployments: tuple[DeploymentPreview, ...]


def percent(share: float) -> str:
    return f"{round(share * 100, 2):g}%"


@dataclass(frozen=True, slots=True)
class RuleDraw:
    """One partial-share rule on the way to an outcome, and whether it took the request."""

    rule: str
    share: float
    taken: bool

    @property
    def share_percent(self) -> str:
        return percent(self.share)


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    probability: float
    draws: tuple[RuleDraw, ...]
    decision: RouteDecision | None
    # Set when this outcome is a refusal (the prompt fits no model on this path).
    error: str = ""
    served: ModelPreview | None = None
    fallbacks: tuple[ModelPreview, ...] = ()

    @property
    def probability_percent(self) -> str:
        return percent(self.probability)


@dataclass(frozen=True, slots=True)
class RouteExplanation:
    facts: RequestFacts
    outcomes: tuple[RouteOutcome, ...]
    # Headers given that no rule looks at (the gateway does not even read them).
    unread_headers: tuple[str, ...] = ()

    @property
    def is_random(self) -> bool:
        return len(self.outcomes) > 1

    @property
    def headers_shown(self) -> list[tuple[str, str]]:
        return [
            (name, "(hidden)" if name in CREDENTIAL_HEADERS else value) for name, value in self.facts.headers.items()
        ]


def route_explain(
    *, ctx: KeyContext, dialect: str, headers: dict[str, str], body: dict, body_size: int
) -> RouteExplanation:
    """Every way the gateway may route `body` sent with the key of `ctx`, most likely first.

    Raises UnknownModel when the name resolves to nothing, and PromptTooLong when no outcome fits the
    prompt; the caller shows these as the client's 404 and 400."""
    table = route_table_load()
    # As at the edge: only the headers some rule names are gathered.
    read = {name: value for name, value in headers.items() if name in table.routing.header_names}
    facts = request_facts(body, dialect=dialect, tier=ctx.tier_name, headers=read, body_size=body_size)
    outcomes = []
    first_refusal: PromptTooLong | None = None
    for draws in _draw_paths(table.routing, table.models, facts):
        probability = math.prod(draw.share if draw.taken else 1.0 - draw.share for draw in draws)
        if probability <= 0.0:
            continue
        script = iter([_DRAW_TAKE if draw.taken else _DRAW_SKIP for draw in draws])
        try:
            decision = route_decide(table.routing, table.models, facts, draw=partial(next, script, _DRAW_SKIP))
        except PromptTooLong as exc:
            first_refusal = first_refusal or exc
            outcomes.append(RouteOutcome(probability=probability, draws=draws, decision=None, error=str(exc)))
            continue
        outcomes.append(
            RouteOutcome(
                probability=probability,
                draws=draws,
                decision=decision,
                served=_model_preview(decision.model, table.routes, ctx),
                fallbacks=tuple(_model_preview(name, table.routes, ctx) for name in decision.fallbacks),
            )
        )
    if first_refusal is not None and all(outcome.decision is None for outcome in outcomes):
        raise first_refusal
    outcomes.sort(key=lambda outcome: -outcome.probability)
    unread = tuple(name for name in headers if name not in read)
    return RouteExplanation(facts=facts, outcomes=tuple(outcomes), unread_headers=unread)


def _draw_paths(config: RoutingConfig, models, facts: RequestFacts) -> list[tuple[RuleDraw, ...]]:
    """The draw sequences route_decide can see: the matching partial-share rules are drawn in order
    until one takes the request or a matching full-share rule ends the drawing."""
    resolved = alias_resolve(config, models, facts.model)
    if resolved is None:
        return [()]  # route_decide raises UnknownModel before any draw
    drawn: list[CompiledRule] = []
    for rule in config.rules:
        if not rule.matches(facts, resolved[0]):
            continue
        if rule.share >= 1.0:
            break
        drawn.append(rule)
    paths = []
    for taken_at in range(len(drawn)):
        skipped = tuple(RuleDraw(rule.name, rule.share, False) for rule in drawn[:taken_at])
        paths.append((*skipped, RuleDraw(drawn[taken_at].name, drawn[taken_at].share, True)))
    paths.append(tuple(RuleDraw(rule.name, rule.share, False) for rule in drawn))
    return paths


class _HeaviestFirst:
    """Stands in for order_routes' random source: the most likely order (heaviest weight first)."""

    @staticmethod
    def choices(population, weights):
        best = max(range(len(population)), key=lambda index: weights[index])
        return [population[best]]


def _model_preview(name: str, routes: dict[str, tuple[Route, ...]], ctx: KeyContext) -> ModelPreview:
    ordered = order_routes(routes.get(name, ()), rng=_HeaviestFirst())
    totals: dict[int, list[int]] = {}
    for route in ordered:
        totals.setdefault(route.priority, []).append(max(route.weight, 0))
    deployments = []
    for route in ordered:
        weights = totals[route.priority]
        shared = len(weights) > 1
        deployments.append(
            DeploymentPreview(
                provider=route.provider.name,
                upstream_model=route.upstream_model,
                priority=route.priority,
                weight=route.weight,
                first_share=(max(route.weight, 0) / sum(weights) if sum(weights) else None) if shared else None,
            )
        )
    return ModelPreview(name=name, allowed=ctx.may_use(name), deployments=tuple(deployments))
