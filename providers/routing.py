"""Route table (public model -> deployments), candidate ordering, and the passive circuit breaker.

The table lives in process and is rebuilt when the config version moves. Availability lives in Redis
so every gateway process agrees, read with one MGET and cached for a short moment: the health check
marks a provider down, and the passive breaker opens per deployment (provider + upstream model), so one
bad upstream model does not take every other model of its provider out of rotation.
"""

import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from django.conf import settings

from aigateway.config_watch import config_watch
from aigateway.db import db_read
from aigateway.redis import redis_async
from providers.health import HEALTH_DOWN_KEY
from providers.pricing import FREE, Prices, deployment_prices, prices_max
from providers.route_rules import RoutingConfig, conditions_problems, is_pattern, rule_compile, rule_header_names
from providers.transforms import Transform, TransformsInvalid, transforms_compile

logger = logging.getLogger(__name__)

BREAKER_FAILURES_KEY = "gw:breaker:failures:{deployment_id}"
BREAKER_OPEN_KEY = "gw:breaker:open:{deployment_id}"
_AVAILABILITY_CACHE_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class ProviderRoute:
    id: int
    name: str
    dialect: str
    base_url: str
    api_key: str
    extra_headers: tuple[tuple[str, str], ...]
    timeout_connect: float
    timeout_read: float
    max_connections: int
    request_transforms: tuple[Transform, ...] = ()
    # Egress and TLS (see providers.upstream): a forward proxy, CA certificates and a client certificate (PEM).
    proxy_url: str = ""
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""

    def __repr__(self) -> str:  # never print the key, the proxy's credentials or the client key
        return f"ProviderRoute({self.name!r}, {self.dialect}, {self.base_url!r})"


@dataclass(frozen=True, slots=True)
class Route:
    deployment_id: int
    model: str
    upstream_model: str
    priority: int
    weight: int
    provider: ProviderRoute
    # The deployment's prices (its overrides, the model's otherwise), as they stood when the table was loaded:
    # what a call served here costs when it finishes.
    prices: Prices = FREE
    # Seconds a call to this deployment may last from the moment it is opened, streams included (None: no cap).
    timeout_total: float | None = None
    # What a translated request does with built-in tools the provider does not offer: "drop" or "refuse".
    unsupported_tools: str = "drop"


@dataclass(frozen=True, slots=True)
class RouteTable:
    routes: dict[str, tuple[Route, ...]]
    # Every enabled model, including ones with no enabled deployment (they answer 503, not 404).
    models: dict[str, int]
    routing: RoutingConfig = RoutingConfig()
    # What each model is for ("chat", "embeddings", ...), as /v1/models shows it.
    kinds: dict[str, tuple[str, ...]] = field(default_factory=dict)

    # The documented output cap of each model that has one (what a budget reserves when a request sets none).
    max_output: dict[str, int] = field(default_factory=dict)

    def max_prices(self, model_names: Iterable[str]) -> Prices | None:
        """Field by field the highest prices over the enabled deployments of the named models; None when
        none of them has an enabled deployment."""
        return prices_max(route.prices for name in model_names for route in self.routes.get(name, ()))


def provider_route(p) -> ProviderRoute:
    """What the relay (and the health probe) needs of a Provider row, its secrets decrypted."""
    return ProviderRoute(
        id=p.id,
        name=p.name,
        dialect=p.dialect,
        base_url=p.base_url.rstrip("/"),
        api_key=p.api_key,
        extra_headers=tuple(sorted((str(k), str(v)) for k, v in (p.extra_headers or {}).items())),
        timeout_connect=p.timeout_connect,
        timeout_read=p.timeout_read,
        max_connections=p.max_connections,
        request_transforms=_provider_transforms(p),
        proxy_url=p.proxy_url,
        ca_bundle=p.ca_bundle,
        client_cert=p.client_cert,
        client_key=p.client_key,
    )


def route_table_load() -> RouteTable:
    from providers.models import Deployment, Model

    enabled = list(Model.objects.filter(enabled=True))
    models = {m.name: m.created_at.timestamp() for m in enabled}
    kinds = {m.name: tuple(m.kinds) if isinstance(m.kinds, list) else ("chat",) for m in enabled}
    max_output = {m.name: m.max_output_tokens for m in enabled if m.max_output_tokens}
    routes: dict[str, list[Route]] = {}
    deployments = Deployment.objects.filter(enabled=True, model__enabled=True, provider__enabled=True).select_related(
        "model", "provider"
    )
    for dep in deployments:
        provider = provider_route(dep.provider)
        routes.setdefault(dep.model.name, []).append(
            Route(
                deployment_id=dep.id,
                model=dep.model.name,
                upstream_model=dep.upstream_model,
                priority=dep.priority,
                weight=dep.weight,
                provider=provider,
                prices=deployment_prices(dep),
                timeout_total=dep.timeout_total,
                unsupported_tools=dep.model.unsupported_tools,
            )
        )
    return RouteTable(
        routes={k: tuple(v) for k, v in routes.items()},
        models=models,
        routing=_routing_load(models),
        kinds=kinds,
        max_output=max_output,
    )


def _routing_load(models: dict) -> RoutingConfig:
    """Aliases, fallbacks, context windows and rules of the enabled models, compiled for route_decide."""
    from providers.models import Model, RouteRule

    exact: dict[str, str] = {}
    patterns: list[tuple[int, str, int, str]] = []
    fallbacks, context_fallbacks, windows = {}, {}, {}
    for model in Model.objects.filter(enabled=True).order_by("name"):
        for index, alias in enumerate(model.aliases or ()):
            if not isinstance(alias, str) or not alias or alias in models:
                continue  # a real model's own name always wins over an alias
            if is_pattern(alias):
                patterns.append((model.alias_order, model.name, index, alias))
            else:
                exact.setdefault(alias, model.name)
        fallbacks[model.name] = tuple(m for m in model.fallbacks or () if m in models and m != model.name)
        context_fallbacks[model.name] = tuple(m for m in model.context_fallbacks or () if m in models)
        if model.context_window:
            windows[model.name] = model.context_window
    rules = []
    for rule in RouteRule.objects.filter(enabled=True, target__enabled=True).select_related("target"):
        if conditions_problems(rule.when):
            logger.error("routing rule %s ignored: %s", rule.name, "; ".join(conditions_problems(rule.when)))
            continue
        rules.append(rule_compile(name=rule.name, target=rule.target.name, share=rule.share, when=rule.when))
    return RoutingConfig(
        exact_aliases=exact,
        alias_patterns=tuple((alias, name) for _, name, _, alias in sorted(patterns)),
        fallbacks={k: v for k, v in fallbacks.items() if v},
        context_windows=windows,
        context_fallbacks={k: v for k, v in context_fallbacks.items() if v},
        rules=tuple(rules),
        header_names=rule_header_names(rules),
    )


def _provider_transforms(provider) -> tuple[Transform, ...]:
    # Rows written past the model's validation (a shell, raw SQL) must not break every request.
    try:
        return transforms_compile(provider.request_transforms)
    except TransformsInvalid as exc:
        logger.error("provider %s: request_transforms ignored: %s", provider.name, exc)
        return ()


class Router:
    def __init__(self) -> None:
        self._table: RouteTable | None = None
        self._availability: dict[int, tuple[float, bool]] = {}
        self._failed_locally: set[int] = set()
        config_watch.on_change(self.reset)

    def reset(self) -> None:
        self._table = None

    async def table(self) -> RouteTable:
        await config_watch.check()
        if self._table is None:
            self._table = await db_read(route_table_load)
        return self._table

    async def candidates(self, model: str) -> list[Route]:
        """Deployments to try, in order: priority ascending, weighted random within a priority,
        unavailable providers left out (unless every one is unavailable: then try them all)."""
        table = await self.table()
        routes = table.routes.get(model, ())
        if not routes:
            return []
        ordered = order_routes(routes)
        available = await self._available(ordered)
        healthy = [r for r in ordered if available.get(r.deployment_id, True)]
        return healthy or ordered

    async def max_prices(self, model_names: Iterable[str]) -> Prices | None:
        """Field by field the highest prices over the enabled deployments of the named models (whichever
        serves, a fallback included, costs no more), from the in-process table; None when none has one."""
        return (await self.table()).max_prices(model_names)

    async def _available(self, routes: list[Route]) -> dict[int, bool]:
        """Deployment id -> whether it may be tried: its breaker is closed and its provider is not down."""
        now = time.monotonic()
        result: dict[int, bool] = {}
        missing = []
        for route in routes:
            cached = self._availability.get(route.deployment_id)
            if cached and cached[0] > now:
                result[route.deployment_id] = cached[1]
            else:
                missing.append(route)
        if missing:
            keys = []
            for route in missing:
                keys += [
                    BREAKER_OPEN_KEY.format(deployment_id=route.deployment_id),
                    HEALTH_DOWN_KEY.format(provider_id=route.provider.id),
                ]
            try:
                values = await redis_async().mget(keys)
            except Exception as exc:
                logger.warning("availability lookup failed: %s", type(exc).__name__)
                values = [None] * len(keys)
            for index, route in enumerate(missing):
                up = values[2 * index] is None and values[2 * index + 1] is None
                result[route.deployment_id] = up
                self._availability[route.deployment_id] = (now + _AVAILABILITY_CACHE_SECONDS, up)
        return result

    async def availability_snapshot(self) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """For metrics: provider name -> 1 unless marked down, and (provider, upstream model) -> 1 while
        that deployment's breaker is open, for every enabled deployment; read fresh (one MGET)."""
        table = await self.table()
        deployments = {route.deployment_id: route for routes in table.routes.values() for route in routes}
        providers = {route.provider.id: route.provider.name for route in deployments.values()}
        keys = [BREAKER_OPEN_KEY.format(deployment_id=d) for d in deployments]
        keys += [HEALTH_DOWN_KEY.format(provider_id=p) for p in providers]
        values = await redis_async().mget(keys) if keys else []
        breakers: dict[tuple[str, str], int] = {}
        for route, value in zip(deployments.values(), values, strict=False):
            key = (route.provider.name, route.upstream_model)
            breakers[key] = max(breakers.get(key, 0), int(value is not None))
        down = values[len(deployments) :]
        return {name: int(value is None) for name, value in zip(providers.values(), down, strict=True)}, breakers

    async def record_failure(self, route: Route, reason: str) -> None:
        """Count a failure of one deployment; N in a row (within the cool-down window) opens its breaker
        in every gateway process. The provider's other deployments are not affected."""
        self._failed_locally.add(route.deployment_id)
        failures_key = BREAKER_FAILURES_KEY.format(deployment_id=route.deployment_id)
        cooldown = settings.GATEWAY_BREAKER_COOLDOWN_SECONDS
        try:
            redis = redis_async()
            pipe = redis.pipeline(transaction=False)
            pipe.incr(failures_key)
            pipe.expire(failures_key, max(int(cooldown * 2), 1))
            count, _ = await pipe.execute()
            if count >= settings.GATEWAY_BREAKER_FAILURES:
                open_key = BREAKER_OPEN_KEY.format(deployment_id=route.deployment_id)
                # NX: of several processes (or requests) failing at once, one opens it and says so.
                opened = await redis.set(open_key, reason[:200], px=int(cooldown * 1000), nx=True)
                await redis.delete(failures_key)
                self._availability[route.deployment_id] = (time.monotonic() + _AVAILABILITY_CACHE_SECONDS, False)
                if not opened:
                    return
                logger.warning(
                    "circuit opened for %s at provider %s for %.0fs after %d failures (%s)",
                    route.upstream_model,
                    route.provider.name,
                    cooldown,
                    count,
                    reason,
                )
        except Exception as exc:
            logger.warning("breaker update failed: %s", type(exc).__name__)

    async def record_success(self, route: Route) -> None:
        # Only a process that saw failures pays the round trip to clear the shared counter.
        if route.deployment_id in self._failed_locally:
            self._failed_locally.discard(route.deployment_id)
            try:
                await redis_async().delete(BREAKER_FAILURES_KEY.format(deployment_id=route.deployment_id))
            except Exception as exc:
                logger.warning("breaker reset failed: %s", type(exc).__name__)


def order_routes(routes, rng: random.Random | None = None) -> list:
    """Priority ascending; within one priority a weighted random order (weight 0 = last resort)."""
    if len(routes) == 1:
        return list(routes)
    rng = rng or random
    by_priority: dict[int, list] = {}
    for route in routes:
        by_priority.setdefault(route.priority, []).append(route)
    ordered = []
    for priority in sorted(by_priority):
        pool = list(by_priority[priority])
        while pool:
            weights = [max(r.weight, 0) for r in pool]
            if sum(weights) <= 0:
                ordered.extend(pool)
                break
            pick = rng.choices(range(len(pool)), weights=weights)[0]
            ordered.append(pool.pop(pick))
    return ordered


router = Router()
