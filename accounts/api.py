"""Management API views (DRF) for key holders: their own usage, limits and budgets."""

import logging

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from redis.exceptions import RedisError
from rest_framework.exceptions import APIException
from rest_framework.response import Response
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from accounts.budgets import budget_report, budgets_applying
from accounts.limits import limits_throttle
from accounts.selectors import key_usage_report
from accounts.serializers import (
    ApiErrorSerializer,
    BudgetReportSerializer,
    UsageQuerySerializer,
    UsageReportSerializer,
)

logger = logging.getLogger(__name__)


class UsageThrottle(BaseThrottle):
    """GATEWAY_USAGE_API_RPM calls a minute per key (0: no limit), in Redis so that every process counts
    against one bucket; a refusal is a 429 with Retry-After (DRF's Throttled, in the API's error shape)."""

    def __init__(self) -> None:
        self.retry_after: float | None = None

    def allow_request(self, request, view) -> bool:
        per_minute = settings.GATEWAY_USAGE_API_RPM
        if not per_minute or request.auth is None:
            return True
        try:
            self.retry_after = limits_throttle(key_id=request.auth.key_id, name="usage-api", per_minute=per_minute)
        except (RedisError, OSError) as exc:
            # The report itself needs Redis and says so; the throttle does not add a second failure.
            logger.warning("usage API throttle: redis unavailable, call let through: %s", type(exc).__name__)
            return True
        return self.retry_after is None

    def wait(self) -> float | None:
        return self.retry_after


class UsageView(APIView):
    throttle_classes = [UsageThrottle]

    @extend_schema(
        operation_id="usage_retrieve",
        summary="Usage and limits of the calling key",
        description="Totals and per-day, per-model rows over a UTC date range (inclusive; default the last 30 "
        "days ending today, at most 366 days), including requests not yet written to the database, plus "
        "the limits in force for the key and what remains today.",
        parameters=[UsageQuerySerializer],
        responses={
            200: UsageReportSerializer,
            400: OpenApiResponse(ApiErrorSerializer, description="A bad date or range; `param` names it."),
            401: OpenApiResponse(ApiErrorSerializer, description="Missing, unknown or disabled key."),
            429: OpenApiResponse(
                ApiErrorSerializer, description="More than GATEWAY_USAGE_API_RPM calls a minute; see Retry-After."
            ),
        },
        tags=["usage"],
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        report = key_usage_report(ctx=request.auth, **query.validated_data)
        return Response(UsageReportSerializer(report).data)


class BudgetView(APIView):
    throttle_classes = [UsageThrottle]

    @extend_schema(
        operation_id="budget_retrieve",
        summary="Budgets of the calling key",
        description="Every budget that applies to the key (its own, its owner's, its team's, the global ones): "
        "the limit, what the current period has spent (settled calls), what calls in flight hold, what "
        "remains and when the period resets (null for a total budget). Amounts are decimal strings in "
        "`currency`.",
        responses={
            200: BudgetReportSerializer,
            401: OpenApiResponse(ApiErrorSerializer, description="Missing, unknown or disabled key."),
            429: OpenApiResponse(
                ApiErrorSerializer, description="More than GATEWAY_USAGE_API_RPM calls a minute; see Retry-After."
            ),
            503: OpenApiResponse(ApiErrorSerializer, description="The budget counters cannot be read (Redis)."),
        },
        tags=["usage"],
    )
    def get(self, request):
        ctx = request.auth
        budgets = budgets_applying(key_id=ctx.key_id, owner_id=ctx.owner_id, team_id=ctx.team_id)
        try:
            rows = [budget_report(budget) for budget in budgets]
        except (RedisError, OSError) as exc:
            logger.warning("budget API: redis unavailable: %s", type(exc).__name__)
            raise BudgetsUnavailable from None
        report = {"currency": settings.GATEWAY_CURRENCY, "budgets": rows}
        return Response(BudgetReportSerializer(report).data)


class BudgetsUnavailable(APIException):
    status_code = 503
    default_detail = "The budget counters cannot be read right now (Redis unavailable); try again shortly."
    default_code = "budgets_unavailable"
