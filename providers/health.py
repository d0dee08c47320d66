"""Provider health checks: one cheap authenticated call per provider (list models), recorded on the
Provider row and in HealthCheck history, and mirrored to Redis so routing can skip providers that are down.

A probe goes out the way the relay's requests do (providers.upstream: the provider's proxy, CA bundle and
client certificate, the address policy), so "up" means the relay can reach the provider too.
"""

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import httpx
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from aigateway.redis import redis_sync
from aigateway.retention import Expiry, rows_expire
from providers.models import Dialect, HealthCheck, HealthStatus, Provider
from providers.upstream_policy import AddressRefused

if TYPE_CHECKING:
    from providers.routing import ProviderRoute

logger = logging.getLogger(__name__)

# Present while a provider is considered down; it expires on its own so a provider that stops
# being checked (worker down, provider disabled) is tried again after a cool-down.
HEALTH_DOWN_KEY = "gw:health:down:{provider_id}"
ANTHROPIC_VERSION = "2023-06-01"
_ERROR_MAX_CHARS = 200
_MAX_PARALLEL_PROBES = 16


def provider_down_keys(provider_ids: Iterable[int]) -> list[str]:
    return [HEALTH_DOWN_KEY.format(provider_id=provider_id) for provider_id in provider_ids]


def providers_enabled_ids() -> list[int]:
    return list(Provider.objects.filter(enabled=True).values_list("pk", flat=True))


def health_down_cooldown_seconds() -> int:
    return max(1, int(settings.GATEWAY_HEALTH_CHECK_SECONDS * 2))


@dataclass(frozen=True, slots=True)
class HealthResult:
    provider_id: int
    provider_name: str
    ok: bool
    status_code: int | None
    latency_ms: float | None
    error: str


@dataclass(frozen=True, slots=True)
class _ProbeTarget:
    """What a probe needs, read from the database up front so probes run in an event loop without ORM access."""

    provider_id: int
    provider_name: str
    dialect: str
    base_url: str
    api_key: str
    extra_headers: dict
    timeout_connect: float
    timeout_read: float
    # The provider as the relay sees it: its client (pool, proxy, TLS) is the probe's.
    route: "ProviderRoute"

    @classmethod
    def from_provider(cls, provider: Provider) -> "_ProbeTarget":
        # Imported here: routing imports this module (HEALTH_DOWN_KEY).
        from providers.routing import provider_route

        return cls(
            provider_id=provider.pk,
            provider_name=provider.name,
            dialect=provider.dialect,
            base_url=provider.base_url.rstrip("/"),
            api_key=provider.api_key,
            extra_headers={str(k): str(v) for k, v in (provider.extra_headers or {}).items()},
            timeout_connect=provider.timeout_connect,
            timeout_read=provider.timeout_read,
            route=provider_route(provider),
        )

    def request(self) -> tuple[str, dict[str, str]]:
        headers: dict[str, str] = {}
        if self.dialect == Dialect.ANTHROPIC:
            url = f"{self.base_url}/v1/models"
            headers["anthropic-version"] = ANTHROPIC_VERSION
            if self.api_key:
                headers["x-api-key"] = self.api_key
        else:
            url = f"{self.base_url}/models"
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
        headers.update(self.extra_headers)
        return url, headers

    def timeout(self) -> httpx.Timeout:
        # A probe slower than the check interval is useless and would pile up behind the next one.
        read = min(self.timeout_read, max(1.0, settings.GATEWAY_HEALTH_CHECK_SECONDS))
        return httpx.Timeout(read, connect=self.timeout_connect)

    def redact(self, text: str) -> str:
        """Drop secrets (key, header values) from an error text and keep it short."""
        for secret in [self.api_key, *self.extra_headers.values()]:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "[redacted]")
        return text[:_ERROR_MAX_CHARS]


async def _probe(target: _ProbeTarget) -> HealthResult:
    from providers.upstream import upstream_fetch

    url, headers = target.request()
    status_code = latency_ms = None
    try:
        started = time.perf_counter()
        answer = await upstream_fetch("GET", url, headers=headers, provider=target.route, timeout=target.timeout())
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        status_code = answer.status_code
        ok = answer.is_success
        error = "" if ok else f"HTTP {status_code} {answer.reason_phrase}".strip()
    except AddressRefused as exc:
        # The relay would refuse this address; the probe did not send the provider's key there either.
        logger.warning("health probe of %s refused: %s", target.provider_name, exc.problem)
        ok, error = False, f"upstream address refused: {exc.problem}"
    except httpx.HTTPError as exc:
        ok = False
        detail = str(exc)
        error = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    except Exception as exc:  # a malformed base URL or header must mark the provider down, not kill the sweep
        ok = False
        error = type(exc).__name__
    return HealthResult(
        provider_id=target.provider_id,
        provider_name=target.provider_name,
        ok=ok,
        status_code=status_code,
        latency_ms=latency_ms,
        error=target.redact(error),
    )


def _probe_all(targets: list[_ProbeTarget]) -> list[HealthResult]:
    """Every probe at once (at most _MAX_PARALLEL_PROBES in flight), in one event loop whose clients close after."""
    from providers.upstream import upstream_blocking

    async def run() -> list[HealthResult]:
        limit = asyncio.Semaphore(_MAX_PARALLEL_PROBES)

        async def one(target: _ProbeTarget) -> HealthResult:
            async with limit:
                return await _probe(target)

        return list(await asyncio.gather(*(one(target) for target in targets)))

    return upstream_blocking(run)


def _record(result: HealthResult) -> None:
    now = timezone.now()
    fields = {"health_checked_at": now, "health_latency_ms": result.latency_ms, "health_last_error": result.error}
    if result.ok:
        fields.update(health_status=HealthStatus.UP, health_consecutive_failures=0)
    else:
        fields.update(health_status=HealthStatus.DOWN, health_consecutive_failures=F("health_consecutive_failures") + 1)
    # One transaction: a reader sees the provider's new status and its history row together.
    with transaction.atomic():
        # update() rather than save(): health is not routing config and must not bump the config version.
        Provider.objects.filter(pk=result.provider_id).update(**fields)
        HealthCheck.objects.create(
            provider_id=result.provider_id,
            ok=result.ok,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
        )
    key = HEALTH_DOWN_KEY.format(provider_id=result.provider_id)
    try:
        if result.ok:
            redis_sync().delete(key)
        else:
            redis_sync().set(key, 1, ex=health_down_cooldown_seconds())
    except Exception as exc:  # the next sweep writes it again; the database record stands
        logger.warning("could not store health of provider %s in Redis: %s", result.provider_id, type(exc).__name__)


def provider_health_check(*, provider_id: int) -> HealthResult:
    """Probe one provider now and record the outcome."""
    provider = Provider.objects.get(pk=provider_id)
    [result] = _probe_all([_ProbeTarget.from_provider(provider)])
    _record(result)
    return result


def providers_health_check(*, provider_ids: Iterable[int] | None = None) -> list[HealthResult]:
    """Probe several providers concurrently (all enabled ones by default) and record every outcome.

    Only the HTTP calls run in an event loop; reads and writes stay on the calling thread's connection.
    """
    providers = Provider.objects.all() if provider_ids is not None else Provider.objects.filter(enabled=True)
    if provider_ids is not None:
        providers = providers.filter(pk__in=list(provider_ids))
    targets = [_ProbeTarget.from_provider(provider) for provider in providers.order_by("name")]
    if not targets:
        return []
    results = _probe_all(targets)
    for result in results:
        _record(result)
    return results


def providers_health_check_all() -> list[HealthResult]:
    return providers_health_check()


def health_history_expire(*, older_than: datetime, batch_size: int, deadline: float | None = None) -> Expiry:
    """Delete HealthCheck rows checked before `older_than` in batches through the `checked_at` index (the retention
    task's part for GATEWAY_HEALTH_RETENTION_DAYS)."""
    return rows_expire(HealthCheck, field="checked_at", older_than=older_than, batch_size=batch_size, deadline=deadline)


def providers_health_overview() -> list[dict]:
    """Every provider's last recorded health, for the ops dashboard."""
    return list(
        Provider.objects.order_by("name").values(
            "id",
            "name",
            "enabled",
            "health_status",
            "health_checked_at",
            "health_latency_ms",
            "health_consecutive_failures",
            "health_last_error",
        )
    )
