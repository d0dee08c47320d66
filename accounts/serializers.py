"""Serializers of the key self-service API: query parameters in, the usage report out.

Money is a decimal string with 8 decimal places (e.g. "0.00123400", in the currency of the model
prices) so clients never see float rounding; parse it with a decimal type.
"""

from datetime import date, timedelta

from django.utils import timezone
from rest_framework import serializers

USAGE_DEFAULT_DAYS = 30
USAGE_MAX_DAYS = 366
USAGE_FIRST_DAY = date(1970, 1, 1)
USAGE_LAST_DAY = date(9999, 12, 30)


def _cost_field(**kwargs) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=20,
        decimal_places=8,
        coerce_to_string=True,
        help_text="Cost as a decimal string with 8 decimal places.",
        **kwargs,
    )


class UsageQuerySerializer(serializers.Serializer):
    start = serializers.DateField(
        required=False,
        input_formats=["%Y-%m-%d"],
        help_text="First UTC day, inclusive (YYYY-MM-DD); default 29 days before end (30 days in all).",
    )
    end = serializers.DateField(
        required=False, input_formats=["%Y-%m-%d"], help_text="Last UTC day, inclusive (YYYY-MM-DD); default today."
    )

    def to_internal_value(self, data):
        # DRF reads an empty optional query parameter as an absent one; `?start=` is a mistake, not a default.
        for name in ("start", "end"):
            if name in data and data.get(name) == "":
                raise serializers.ValidationError({name: "must be a date (YYYY-MM-DD), not empty."}, code="invalid")
        return super().to_internal_value(data)

    def _in_range(self, value: date) -> date:
        if not USAGE_FIRST_DAY <= value <= USAGE_LAST_DAY:
            # Date arithmetic on the range (its default start, the day after its end) must not overflow.
            raise serializers.ValidationError(
                f"must be between {USAGE_FIRST_DAY} and {USAGE_LAST_DAY}; got {value}.", code="out_of_range"
            )
        return value

    def validate_start(self, value: date) -> date:
        return self._in_range(value)

    def validate_end(self, value: date) -> date:
        return self._in_range(value)

    def validate(self, attrs):
        end = attrs.get("end") or timezone.now().date()
        start = attrs.get("start") or end - timedelta(days=USAGE_DEFAULT_DAYS - 1)
        if start > end:
            raise serializers.ValidationError(
                {"start": f"must not be after end ({end}); got {start}."}, code="invalid_range"
            )
        days = (end - start).days + 1
        if days > USAGE_MAX_DAYS:
            raise serializers.ValidationError(
                {"start": f"the range {start}..{end} spans {days} days; at most {USAGE_MAX_DAYS} are allowed."},
                code="range_too_long",
            )
        return {"start": start, "end": end}


class UsageKeySerializer(serializers.Serializer):
    name = serializers.CharField()
    prefix = serializers.CharField(help_text="Display prefix of the key; the key itself is never returned.")
    tier = serializers.CharField()


class UsageTierSerializer(serializers.Serializer):
    """Limits in force for the key: the tier's values with the key's own overrides applied; null = unlimited."""

    name = serializers.CharField()
    rpm = serializers.IntegerField(allow_null=True, help_text="Requests per minute.")
    tpm = serializers.IntegerField(allow_null=True, help_text="Tokens per minute.")
    max_concurrent = serializers.IntegerField(allow_null=True)
    daily_tokens = serializers.IntegerField(allow_null=True, help_text="Token quota per UTC day.")
    max_output_tokens = serializers.IntegerField(allow_null=True)
    max_compare_models = serializers.IntegerField()
    models = serializers.ListField(
        child=serializers.CharField(), allow_null=True, help_text="Models the key may call; null = every model."
    )


class UsageTotalsSerializer(serializers.Serializer):
    requests = serializers.IntegerField()
    errors = serializers.IntegerField(
        help_text=(
            "Admitted requests that ended with an HTTP status of 400 or more: upstream errors, failures "
            "mid-stream, clients that left (499), gateway failures (500, including requests recorded as "
            "'lost' because their process died). Requests refused before admission (401 bad key, 403/404 "
            "model, 400 invalid body, 429 over a limit) are not recorded, so not counted here."
        )
    )
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    cost = _cost_field()


class UsageRowSerializer(UsageTotalsSerializer):
    date = serializers.DateField(help_text="UTC day.")
    model = serializers.CharField()

    field_order = ["date", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "cost"]

    def to_representation(self, instance):
        data = super().to_representation(instance)
        return {name: data[name] for name in self.field_order}


class RateBucketSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    remaining = serializers.IntegerField(help_text="Left right now; refills continuously over 60 seconds.")
    reset_seconds = serializers.FloatField(help_text="Seconds until the bucket is full again.")


class DailyTokensSerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    used = serializers.IntegerField()
    remaining = serializers.IntegerField()
    reset_seconds = serializers.FloatField(help_text="Seconds until the quota resets at 00:00 UTC.")


class ConcurrencySerializer(serializers.Serializer):
    limit = serializers.IntegerField()
    in_flight = serializers.IntegerField()


class RemainingSerializer(serializers.Serializer):
    """What the key may still use right now; a limit that is not set (unlimited) is null."""

    requests = RateBucketSerializer(allow_null=True, help_text="Requests per minute.")
    tokens = RateBucketSerializer(allow_null=True, help_text="Tokens per minute.")
    daily_tokens = DailyTokensSerializer(allow_null=True)
    concurrent = ConcurrencySerializer(allow_null=True)


class UsageReportSerializer(serializers.Serializer):
    key = UsageKeySerializer()
    tier = UsageTierSerializer()
    remaining_today = RemainingSerializer()
    start = serializers.DateField(help_text="First UTC day of the report, inclusive.")
    end = serializers.DateField(help_text="Last UTC day of the report, inclusive.")
    totals = UsageTotalsSerializer()
    rows = UsageRowSerializer(many=True, help_text="One row per UTC day and model, oldest first.")


class ApiErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="invalid_request_error, rate_limit_error or server_error.")
    param = serializers.CharField(allow_null=True, help_text="The query parameter at fault, if any.")
    code = serializers.CharField(allow_null=True, help_text="Stable machine-readable code, e.g. invalid_api_key.")


class BudgetSerializer(serializers.Serializer):
    scope = serializers.ChoiceField(choices=["key", "user", "team", "global"])
    name = serializers.CharField(help_text="The key's, user's or team's name; \"global\" for a global budget.")
    period = serializers.ChoiceField(choices=["day", "week", "month", "total"])
    limit = serializers.CharField(help_text="Decimal string.")
    spent = serializers.CharField(help_text="Settled calls of the current period; decimal string.")
    reserved = serializers.CharField(help_text="The maximum cost of calls still in flight; decimal string.")
    remaining = serializers.CharField(help_text="limit - spent - reserved, at least 0; decimal string.")
    resets_at = serializers.CharField(allow_null=True, help_text="ISO-8601 UTC; null for a total budget.")


class BudgetReportSerializer(serializers.Serializer):
    currency = serializers.CharField()
    budgets = BudgetSerializer(many=True)


class ApiErrorSerializer(serializers.Serializer):
    """Every error of this API, in the OpenAI error shape."""

    error = ApiErrorDetailSerializer()
