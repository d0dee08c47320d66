"""Tiers, teams, API keys (stored as SHA-256 hashes only), budgets in money, and usage records with daily
aggregates. History is never deleted with what it belongs to: usage records keep their rows when a key, user
or team goes (their links are nulled), and a key with usage cannot be deleted at all (it is revoked)."""

from decimal import Decimal

from django.conf import settings
from django.db import models

LIMIT_FIELDS = ("rpm", "tpm", "max_concurrent", "daily_tokens", "max_output_tokens")
# What the request log keeps of a key's calls: nothing, the request's parameters without message content,
# or the request and the answer in full (redacted). Team and key settings may be empty: the next one's.
LOG_LEVELS = [("off", "off"), ("metadata", "metadata"), ("full", "full")]


class Tier(models.Model):
    """Limits sold to a key; a null limit means unlimited."""

    name = models.SlugField(max_length=64, unique=True)
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests / minute")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens / minute")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, verbose_name="max concurrent requests")
    daily_tokens = models.PositiveBigIntegerField(null=True, blank=True, verbose_name="daily token quota")
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_compare_models = models.PositiveIntegerField(default=4)
    allowed_models = models.ManyToManyField(
        "providers.Model", blank=True, related_name="tiers", help_text="Allowed models; none selected = all."
    )
    cache_ttl_seconds = models.PositiveIntegerField(
        default=0,
        db_default=0,
        verbose_name="response cache TTL (s)",
        help_text="Answer identical requests from the response cache for this long; 0 = off.",
    )
    log_bodies = models.CharField(
        max_length=8,
        choices=LOG_LEVELS,
        default="off",
        db_default="off",
        verbose_name="request log",
        help_text="What the request log keeps of calls: off, metadata (parameters, no content) or full bodies.",
    )
    resumable_streams = models.BooleanField(
        default=False,
        db_default=False,
        help_text=(
            "Every stream of the tier's keys is resumable (an SSE id on each event; a client that drops can "
            "reconnect with GET /v1/streams/{id}); otherwise only requests sending x-gateway-resumable: true."
        ),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


def soft_thresholds_default() -> list[float]:
    return [0.5, 0.8, 1.0]


class Team(models.Model):
    """A group of users and the keys they spend with; its budgets cap the spend of all its keys."""

    name = models.CharField(max_length=128, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="teams")
    allowed_models = models.ManyToManyField(
        "providers.Model",
        blank=True,
        related_name="teams",
        help_text="Narrows the tier's models for the team's keys; none selected = the tier's.",
    )
    alert_webhook = models.URLField(
        max_length=500, blank=True, default="", help_text="Budget threshold alerts are POSTed here (JSON)."
    )
    cache_ttl_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        verbose_name="response cache TTL (s)",
        help_text="Overrides the tier's response cache TTL for the team's keys; empty = the tier's, 0 = off.",
    )
    log_bodies = models.CharField(
        max_length=8,
        choices=LOG_LEVELS,
        blank=True,
        default="",
        db_default="",
        verbose_name="request log",
        help_text="Overrides the tier's request log setting for the team's keys; empty = the tier's.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    # A user with keys cannot be deleted (their keys' history would lose its owner): revoke the keys first.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="api_keys")
    team = models.ForeignKey(
        Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="api_keys", help_text="Optional."
    )
    name = models.CharField(max_length=128)
    tier = models.ForeignKey(Tier, on_delete=models.PROTECT, related_name="api_keys")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False, help_text="Display prefix of the key.")
    enabled = models.BooleanField(default=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    playground = models.BooleanField(
        default=False,
        db_default=False,
        editable=False,
        help_text="Created for a staff user's browser playground; never shown.",
    )
    # Per-key overrides of the tier's limits; null = use the tier's value.
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests / minute override")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens / minute override")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, verbose_name="max concurrent override")
    daily_tokens = models.PositiveBigIntegerField(null=True, blank=True, verbose_name="daily tokens override")
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True, verbose_name="max output tokens override")
    cache_ttl_seconds = models.PositiveIntegerField(
        null=True,
        blank=True,
        verbose_name="response cache TTL override (s)",
        help_text="Overrides the team's and the tier's response cache TTL; empty = theirs, 0 = off.",
    )
    log_bodies = models.CharField(
        max_length=8,
        choices=LOG_LEVELS,
        blank=True,
        default="",
        db_default="",
        verbose_name="request log override",
        help_text="Overrides the team's and the tier's request log setting; empty = theirs.",
    )
    resumable_streams = models.BooleanField(
        null=True,
        blank=True,
        verbose_name="resumable streams override",
        help_text="Overrides the tier's resumable streams setting; empty = the tier's.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}...)"


class Budget(models.Model):
    """A cap on spend in money (GATEWAY_CURRENCY) over a period, for one key, user, team, or everything.
    Every budget that applies to a request is checked at admission; the tightest refuses."""

    SCOPES = [("key", "API key"), ("user", "user"), ("team", "team"), ("global", "global")]
    PERIODS = [("day", "day"), ("week", "week"), ("month", "month"), ("total", "total")]

    scope = models.CharField(max_length=8, choices=SCOPES)
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets"
    )
    team = models.ForeignKey(Team, on_delete=models.CASCADE, null=True, blank=True, related_name="budgets")
    period = models.CharField(max_length=8, choices=PERIODS, default="month")
    amount = models.DecimalField(max_digits=16, decimal_places=8, help_text="In GATEWAY_CURRENCY.")
    soft_thresholds = models.JSONField(
        default=soft_thresholds_default,
        blank=True,
        help_text="Fractions of the amount at which an alert is sent once per period, e.g. [0.5, 0.8, 1.0].",
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["scope", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(scope="key", api_key__isnull=False, user__isnull=True, team__isnull=True)
                    | models.Q(scope="user", api_key__isnull=True, user__isnull=False, team__isnull=True)
                    | models.Q(scope="team", api_key__isnull=True, user__isnull=True, team__isnull=False)
                    | models.Q(scope="global", api_key__isnull=True, user__isnull=True, team__isnull=True)
                ),
                name="budget_scope_target",
            ),
            models.CheckConstraint(condition=models.Q(amount__gte=Decimal(0)), name="budget_amount_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.scope} {self.scope_name} {self.amount} / {self.period}"

    @property
    def scope_name(self) -> str:
        if self.scope == "key":
            return self.api_key.name if self.api_key_id else ""
        if self.scope == "user":
            return self.user.get_username() if self.user_id else ""
        if self.scope == "team":
            return self.team.name if self.team_id else ""
        return "global"


class BudgetAlert(models.Model):
    """One soft threshold crossed in one period of one budget: the row is what makes the alert go out once,
    whichever process notices the crossing first."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="alerts")
    period_start = models.DateTimeField()
    threshold = models.DecimalField(max_digits=6, decimal_places=4)
    spent = models.DecimalField(max_digits=16, decimal_places=8)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    last_error = models.CharField(max_length=255, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["budget", "period_start", "threshold"], name="unique_budget_alert")
        ]

    def __str__(self) -> str:
        return f"{self.budget} {self.threshold} @ {self.period_start:%Y-%m-%d}"


class UsageRecord(models.Model):
    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage")
    # Who the key belonged to when the call ran (kept when the key later moves or goes).
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="usage")
    model = models.CharField(max_length=128, db_index=True)
    provider = models.CharField(max_length=64, blank=True, default="", db_index=True)
    deployment = models.ForeignKey(
        "providers.Deployment", on_delete=models.SET_NULL, null=True, blank=True, related_name="usage"
    )
    endpoint = models.CharField(max_length=64)
    # The model the client asked for, when routing served another one (alias, rule or fallback).
    requested_model = models.CharField(max_length=128, blank=True, default="", db_default="")
    # How routing decided: "default", "alias:<name>", "rule:<name>", "context-fallback:<m>", "fallback:<m>".
    route = models.CharField(max_length=128, blank=True, default="", db_default="")
    # The compare run (one per /v1/compare request or playground turn) this record belongs to.
    run_id = models.CharField(max_length=64, blank=True, default="", db_default="", db_index=True)
    stream = models.BooleanField(default=False)
    status_code = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=64, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    # The part of prompt_tokens read from the provider's prompt cache (priced apart).
    cached_tokens = models.PositiveIntegerField(default=0, db_default=0)
    # Prompt tokens written to the provider's prompt cache (priced apart; part of prompt_tokens).
    cache_write_tokens = models.PositiveIntegerField(default=0, db_default=0)
    # The part of completion_tokens the model spent reasoning (billed as output).
    reasoning_tokens = models.PositiveIntegerField(default=0, db_default=0)
    tokens_estimated = models.BooleanField(default=False)
    # In GATEWAY_CURRENCY, at the prices in force when the call ran.
    cost = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    # Answered from the response cache: no provider was called, `cost` is 0 and `cost_saved` what the
    # original answer cost.
    cache_hit = models.BooleanField(default=False, db_default=False)
    cost_saved = models.DecimalField(max_digits=14, decimal_places=8, default=0, db_default=0)
    ttfb_upstream_ms = models.FloatField(null=True, blank=True, verbose_name="upstream time to first byte (ms)")
    ttfb_ms = models.FloatField(null=True, blank=True, verbose_name="time to first byte (ms)")
    duration_ms = models.FloatField(null=True, blank=True)
    chunk_count = models.PositiveIntegerField(default=0)
    interval_mean_ms = models.FloatField(null=True, blank=True)
    interval_p50_ms = models.FloatField(null=True, blank=True)
    interval_p95_ms = models.FloatField(null=True, blank=True)
    interval_max_ms = models.FloatField(null=True, blank=True)
    zero_interval_share = models.FloatField(null=True, blank=True, help_text="Share of chunk intervals under 1 ms.")
    attempts = models.PositiveSmallIntegerField(default=1)
    created_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["model", "created_at"]),
            models.Index(fields=["provider", "created_at"]),
            models.Index(fields=["team", "created_at"]),
            models.Index(fields=["user", "created_at"]),
        ]

    def __str__(self) -> str:
        return self.request_id


class UsageDaily(models.Model):
    """Per key, per model, per UTC day totals, maintained by the usage flush."""

    date = models.DateField()
    # PROTECT: a key with rollups is revoked, never deleted.
    api_key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="daily_usage")
    model = models.CharField(max_length=128)
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    cost = models.DecimalField(max_digits=16, decimal_places=8, default=0)

    class Meta:
        ordering = ["-date", "model"]
        verbose_name_plural = "usage daily"
        constraints = [models.UniqueConstraint(fields=["date", "api_key", "model"], name="unique_usage_daily")]
        indexes = [models.Index(fields=["api_key", "date"])]

    def __str__(self) -> str:
        return f"{self.date} {self.model}"


class RequestLog(models.Model):
    """What the request log kept of one call (opt-in: `log_bodies` of its key, team or tier), redacted before it
    was stored: its parameters (`metadata`), or its request and assembled answer (`full`), compressed and capped
    at GATEWAY_LOG_MAX_BYTES. Its usage record has the same request id. Written by the usage flush, never on the
    request path; deleted after GATEWAY_LOG_RETENTION_DAYS."""

    request_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=128)
    endpoint = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField()
    level = models.CharField(max_length=8, choices=LOG_LEVELS)
    # zlib-compressed JSON: {"request": ..., "response": ...} (see accounts.request_log).
    body = models.BinaryField()
    # Bytes as stored (compressed), and the JSON's size before the cap.
    stored_bytes = models.PositiveIntegerField(default=0)
    original_bytes = models.PositiveIntegerField(default=0)
    # The JSON was larger than GATEWAY_LOG_MAX_BYTES and was cut (the stored body says where).
    truncated = models.BooleanField(default=False)
    # Secrets, addresses and numbers replaced before storing.
    redactions = models.PositiveIntegerField(default=0)
    # The conversation's text (redacted, capped), for the viewer's search.
    search_text = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "logged request"
        indexes = [
            models.Index(fields=["api_key", "created_at"]),
            models.Index(fields=["team", "created_at"]),
            models.Index(fields=["model", "created_at"]),
            models.Index(fields=["status_code", "created_at"]),
        ]

    def __str__(self) -> str:
        return self.request_id


class StoredResponse(models.Model):
    """A Responses API answer kept for its key's owner (`store`, the API's default): the response object as
    the client got it, its own input items, and the whole conversation up to and including its output (what
    `previous_response_id` continues), each zlib-compressed JSON. Written by the usage flush, never on the
    request path; deleted after GATEWAY_RESPONSES_RETENTION_DAYS or by its owner (DELETE)."""

    response_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    api_key = models.ForeignKey(ApiKey, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # Whose it is: only keys of the same owner may read, continue or delete it.
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    model = models.CharField(max_length=128)
    status = models.CharField(max_length=16)
    previous_response_id = models.CharField(max_length=64, blank=True, default="")
    response = models.BinaryField()
    input_items = models.BinaryField()
    conversation = models.BinaryField()
    stored_bytes = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.response_id


def nul_free(value):
    """`value` (text, or JSON-like data) with each NUL character replaced by U+FFFD: PostgreSQL's text and jsonb
    refuse NUL, and a prompt or a model's answer may hold one."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list):
        return [nul_free(item) for item in value]
    if isinstance(value, dict):
        return {nul_free(key): nul_free(item) for key, item in value.items()}
    return value


class PlaygroundRun(models.Model):
    """One conversation of the browser playground, kept per user so a reload (or another device) reopens it:
    its models, its turns (each prompt and every model's answer with its stats), and the stream id of a turn
    still running, which the page resumes."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="playground_runs")
    # The owner's team when it was saved: who a shared link is visible to.
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    title = models.CharField(max_length=200, blank=True, default="")
    model_names = models.JSONField(default=list, blank=True)
    turns = models.JSONField(default=list, blank=True)
    options = models.JSONField(default=dict, blank=True)
    active_stream_id = models.CharField(max_length=64, blank=True, default="")
    share_token = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [models.Index(fields=["user", "-updated_at"])]

    def __str__(self) -> str:
        return self.title or f"run {self.pk}"

    def save(self, *args, **kwargs) -> None:
        # What users typed and models wrote, storable on every database (see nul_free).
        self.title, self.model_names = nul_free(self.title), nul_free(self.model_names)
        self.turns, self.options = nul_free(self.turns), nul_free(self.options)
        super().save(*args, **kwargs)


class ArenaVote(models.Model):
    """One vote of the playground's blind arena: two models answered the same prompt as "Model A" and "Model B",
    and the user said which was better (or a tie, or both bad) before their names were shown. The prompt is kept
    as its hash; the answers only in the request log (when it keeps bodies), under the two request ids."""

    OUTCOMES = [("a", "model A"), ("b", "model B"), ("tie", "tie"), ("bad", "both bad")]

    # The battle (one turn of one arena run): at most one vote each.
    battle_id = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    team = models.ForeignKey(Team, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    run = models.ForeignKey(PlaygroundRun, on_delete=models.SET_NULL, null=True, blank=True, related_name="votes")
    turn = models.PositiveIntegerField(default=0)
    prompt_hash = models.CharField(max_length=64)
    model_a = models.CharField(max_length=128)
    model_b = models.CharField(max_length=128)
    outcome = models.CharField(max_length=4, choices=OUTCOMES)
    request_id_a = models.CharField(max_length=64, blank=True, default="")
    request_id_b = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "created_at"])]

    def __str__(self) -> str:
        return f"{self.model_a} vs {self.model_b}: {self.outcome}"
