"""Management API views (DRF) for key holders: their own usage and limits."""

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import key_usage_report
from accounts.serializers import ApiErrorSerializer, UsageQuerySerializer, UsageReportSerializer


class UsageView(APIView):
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
        },
        tags=["usage"],
    )
    def get(self, request):
        query = UsageQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        report = key_usage_report(ctx=request.auth, **query.validated_data)
        return Response(UsageReportSerializer(report).data)
