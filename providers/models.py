"""Providers (upstream endpoints), public models, and deployments mapping one onto the other."""

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from providers.extra_headers import extra_headers_problems
from providers.secrets import secret_decrypt, secret_encrypt
from providers.transforms import transforms_validate
from providers.upstream_policy import base_url_problem


class Dialect(models.TextChoices):
    OPENAI = "openai", "OpenAI-compatible"
    ANTHROPIC = "anthropic", "Anthropic"
    RESPONSES = "responses", "OpenAI Responses"


class HealthStatus(models.TextChoices):
    UNKNOWN = "unknown", "Unknown"
    UP = "up", "Up"
    DOWN = "down", "Down"


class Provider(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    dialect = models.CharField(max_length=16, choices=Dialect.choices, default=Dialect.OPENAI)
    base_url = models.URLField(
        max_length=500,
        help_text="SDK convention: https://api.openai.com/v1 for openai and responses, "
        "https://api.anthropic.com for anthropic.",
    )
    api_key_encrypted = models.TextField(blank=True, default="", editable=False)
    # Egress: a forward proxy for this provider only (http://[user:pass@]host:port; credentials encrypted like
    # the API key), else HTTPS_PROXY / HTTP_PROXY / NO_PROXY from the environment.
    proxy_url_encrypted = models.TextField(blank=True, default="", db_default="", editable=False)
    # TLS: PEM CA certificates to trust for this provider instead of the system store (SSL_CERT_FILE), and a
    # client certificate (mTLS) with its private key (encrypted at rest).
    ca_bundle = models.TextField(
        blank=True, default="", db_default="", help_text="PEM CA certificates; empty = the system store."
    )
    client_cert = models.TextField(
        blank=True, default="", db_default="", help_text="PEM client certificate (mTLS); optional."
    )
    client_key_encrypted = models.TextField(blank=True, default="", db_default="", editable=False)
    extra_headers = models.JSONField(default=dict, blank=True)
    timeout_connect = models.FloatField(default=5.0, validators=[MinValueValidator(0.1)])
    timeout_read = models.FloatField(default=120.0, validators=[MinValueValidator(0.1)])
    # A stream holds its connection for its whole length: size the pool for concurrent streams, not requests.
    max_connections = models.PositiveIntegerField(
        default=1000,
        validators=[MinValueValidator(1)],
        help_text="Connections to this provider at once; a request waits up to "
        "GATEWAY_UPSTREAM_POOL_TIMEOUT_SECONDS for a free one, then the next deployment is tried.",
    )
    enabled = models.BooleanField(default=True)
    request_transforms = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        help_text=(
            "Edits to every request sent to this provider, applied in order after translation. Ops: drop, default, "
            'force, cap, rename, header. Example: [{"op": "cap", "path": "max_tokens", "max": 8192}, '
            '{"op": "drop", "path": "metadata.user_id"}, '
            '{"op": "header", "name": "HTTP-Referer", "value": "https://example.com"}]'
        ),
    )

    health_status = models.CharField(max_length=16, choices=HealthStatus.choices, default=HealthStatus.UNKNOWN)
    health_checked_at = models.DateTimeField(null=True, blank=True)
    health_latency_ms = models.FloatField(null=True, blank=True)
    health_consecutive_failures = models.PositiveIntegerField(default=0)
    health_last_error = models.TextField(blank=True, default="")

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        # A rule that cannot run is refused here, where it is written, never at request time.
        if self.request_transforms is None:
            self.request_transforms = []
        errors = {}
        problems = transforms_validate(self.request_transforms)
        if problems:
            errors["request_transforms"] = problems
        header_problems = extra_headers_problems(self.extra_headers)
        if header_problems:
            errors["extra_headers"] = header_problems
        # The address policy (providers.upstream_policy); connections are checked again as they open.
        url_problem = base_url_problem(self.base_url) if self.base_url else None
        if url_problem:
            errors["base_url"] = [f"The base URL {url_problem}."]
        if errors:
            raise ValidationError(errors)

    @property
    def api_key(self) -> str:
        return secret_decrypt(self.api_key_encrypted)

    @api_key.setter
    def api_key(self, value: str) -> None:
        self.api_key_encrypted = secret_encrypt(value or "")

    @property
    def has_api_key(self) -> bool:
        return bool(self.api_key_encrypted)

    @property
    def proxy_url(self) -> str:
        return secret_decrypt(self.proxy_url_encrypted)

    @proxy_url.setter
    def proxy_url(self, value: str) -> None:
        self.proxy_url_encrypted = secret_encrypt(value or "")

    @property
    def client_key(self) -> str:
        return secret_decrypt(self.client_key_encrypted)

    @client_key.setter
    def client_key(self, value: str) -> None:
        self.client_key_encrypted = secret_encrypt(value or "")


# What a model serves: "chat" requests, "vision" (a chat model that reads images: the playground offers image input
# for it), "embeddings", legacy "completions".
MODEL_KINDS = ("chat", "vision", "embeddings", "completions")
# What a translated request does with built-in tools (web_search, file_search, ...) its provider does not offer.
UNSUPPORTED_TOOLS = (("drop", "drop them (named in x-gateway-dropped-tools)"), ("refuse", "refuse the request (400)"))


def model_kinds_default() -> list[str]:
    return ["chat"]


class Model(models.Model):
    name = models.CharField(max_length=128, unique=True, help_text="Public model name consumers send.")
    enabled = models.BooleanField(default=True)
    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cached_input_price_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Price of prompt tokens read from the provider's prompt cache; unset = the input price.",
    )
    cache_write_price_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=6,
        null=True,
        blank=True,
        help_text="Price of prompt tokens written to the provider's prompt cache; unset = the input price.",
    )
    context_window = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="The model's documented output cap: what a budget reserves for a request that sets no "
        "max_tokens (unset = GATEWAY_DEFAULT_MAX_OUTPUT_TOKENS).",
    )
    description = models.TextField(blank=True, default="")
    kinds = models.JSONField(
        default=model_kinds_default,
        db_default=model_kinds_default(),
        blank=True,
        help_text='What the model is for, shown in /v1/models: any of "chat", "vision" (chat with image input), '
        '"embeddings", "completions".',
    )
    aliases = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        help_text='Other names clients may send: exact names or glob patterns, e.g. ["gpt-4o-mini", "claude-*"].',
    )
    alias_order = models.IntegerField(
        default=0,
        db_default=0,
        help_text="Alias patterns of models with a lower number are tried first (exact names always win).",
    )
    fallbacks = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        help_text="Models to try, in order, when every deployment of this one failed before the first byte.",
    )
    context_fallbacks = models.JSONField(
        default=list,
        db_default=[],
        blank=True,
        help_text="Models to use, in order, when the prompt does not fit this model's context window.",
    )
    unsupported_tools = models.CharField(
        max_length=8,
        choices=UNSUPPORTED_TOOLS,
        default="drop",
        db_default="drop",
        help_text="Built-in tools (web_search, file_search, code_interpreter, ...) in a request this model's "
        "provider gets translated: dropped and named in the x-gateway-dropped-tools header, or refused with a 400.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from providers.route_rules import model_routing_problems

        problems = model_routing_problems(
            name=self.name, aliases=self.aliases, fallbacks=self.fallbacks, context_fallbacks=self.context_fallbacks
        )
        if not isinstance(self.kinds, list) or any(kind not in MODEL_KINDS for kind in self.kinds):
            problems["kinds"] = [f"kinds must be a list of: {', '.join(MODEL_KINDS)}"]
        elif "vision" in self.kinds and "chat" not in self.kinds:
            problems["kinds"] = ['"vision" is image input for chat: a vision model must be a chat model too']
        if problems:
            raise ValidationError(problems)


class RouteRule(models.Model):
    """An ordered routing rule: when a request matches `when`, it is served by `target` instead."""

    name = models.SlugField(max_length=64, unique=True)
    order = models.IntegerField(default=0, help_text="Rules are tried by ascending order; the first match wins.")
    enabled = models.BooleanField(default=True)
    when = models.JSONField(
        default=dict,
        blank=True,
        help_text='All given conditions must match, e.g. {"header": {"x-gateway-route": "background"}} or '
        '{"min_prompt_tokens": 60000}. Keys: min_prompt_tokens, max_prompt_tokens, thinking, tools, stream, '
        "model, dialect, tier, header, metadata_user.",
    )
    target = models.ForeignKey(Model, on_delete=models.PROTECT, related_name="route_rules")
    share = models.FloatField(
        default=1.0,
        validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Share of matching requests the rule takes (e.g. 0.1 for a 10% canary).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["order", "name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        from providers.route_rules import conditions_problems

        problems = conditions_problems(self.when)
        if problems:
            raise ValidationError({"when": problems})


class Deployment(models.Model):
    model = models.ForeignKey(Model, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="deployments")
    upstream_model = models.CharField(max_length=255)
    priority = models.IntegerField(default=0, help_text="Lower is tried first.")
    weight = models.PositiveIntegerField(default=1, help_text="Relative share within one priority.")
    enabled = models.BooleanField(default=True)
    timeout_total = models.FloatField(
        null=True,
        blank=True,
        validators=[MinValueValidator(0.1)],
        help_text="Seconds a whole call to this deployment may last, streams included; unset = no cap.",
    )
    # Prices at this provider, per million tokens, when they differ from the model's; unset = the model's.
    input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    output_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cached_input_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)
    cache_write_price_per_million = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True)

    class Meta:
        ordering = ["model", "priority", "id"]
        constraints = [
            models.UniqueConstraint(fields=["model", "provider", "upstream_model"], name="unique_deployment"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} -> {self.provider.name}/{self.upstream_model}"


class HealthCheck(models.Model):
    provider = models.ForeignKey(Provider, on_delete=models.CASCADE, related_name="health_checks")
    checked_at = models.DateTimeField(auto_now_add=True, db_index=True)
    ok = models.BooleanField()
    status_code = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.FloatField(null=True, blank=True)
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-checked_at"]
        indexes = [models.Index(fields=["provider", "-checked_at"])]

    def __str__(self) -> str:
        return f"{self.provider.name} {'ok' if self.ok else 'fail'} @ {self.checked_at:%Y-%m-%d %H:%M:%S}"
