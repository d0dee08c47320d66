"""Admin for providers, public models (with their routing), routing rules, deployments and health history.

A provider's API key is write-only here: the form takes a new key or a request to clear it,
and neither the plaintext nor the stored ciphertext is ever rendered back.
"""

from urllib.parse import urlsplit

from django import forms
from django.contrib import admin
from django.db import models
from django.db.models import Count
from django.urls import path
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from aigateway.admin import AuditHistoryAdminMixin
from providers.admin_actions import check_health_now
from providers.admin_cache import cache_purge_all_view, purge_cached_answers
from providers.admin_routing import routing_test_view, when_summary
from providers.admin_widgets import KindsField, NameListField, StructuredFormMixin, TransformsField
from providers.egress import ca_bundle_problem, client_certificate_problem, proxy_url_problem
from providers.models import Deployment, HealthCheck, Model, Provider, RouteRule
from providers.route_rules import is_pattern

admin.site.site_header = "AI Gateway"
admin.site.site_title = "AI Gateway admin"
admin.site.index_title = "Gateway administration"


def _provider_formfield(db_field, **kwargs):
    # A base URL typed without a scheme is meant as https (the default from Django 6 on).
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class ProviderAdminForm(StructuredFormMixin, forms.ModelForm):
    request_transforms = TransformsField(
        help_text="Edits to every request sent to this provider, applied in order after translation: drop a "
        "field, set a default or force a value, cap a number, rename a field, or set a header. A field is a "
        'dotted path (metadata.user_id); a default or forced value is JSON: 0.7, true, "text", {"a": 1}.',
    )
    api_key = forms.CharField(
        label="API key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only. Leave blank to keep the current key.",
    )
    clear_api_key = forms.BooleanField(
        label="Clear API key",
        required=False,
        help_text="Remove the stored key; the provider is then called without one.",
    )
    proxy_url = forms.CharField(
        label="Proxy URL",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only (it may carry credentials): http://[user:password@]host:port, for this provider "
        "only. Blank keeps the current one; without one, HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply.",
    )
    clear_proxy_url = forms.BooleanField(label="Clear proxy URL", required=False)
    client_key = forms.CharField(
        label="Client private key",
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Write-only PEM private key of the client certificate (mTLS). Blank keeps the current one.",
    )
    clear_client_certificate = forms.BooleanField(
        label="Clear client certificate", required=False, help_text="Remove the client certificate and its key."
    )

    class Meta:
        model = Provider
        formfield_callback = _provider_formfield
        fields = [
            "name",
            "dialect",
            "base_url",
            "enabled",
            "extra_headers",
            "timeout_connect",
            "timeout_read",
            "max_connections",
            "request_transforms",
            "ca_bundle",
            "client_cert",
        ]
        help_texts = {
            "extra_headers": 'Headers sent with every request to this provider, e.g. {"anthropic-beta": '
            '"prompt-caching-2024-07-31"}. Names are HTTP tokens (no spaces or colons); values are printable '
            "ASCII without line breaks. Headers that frame the request (Content-Length, ...) are refused."
        }

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("api_key") and cleaned.get("clear_api_key"):
            raise forms.ValidationError("Either enter a new API key or clear it, not both.")
        if cleaned.get("proxy_url"):
            problem = proxy_url_problem(cleaned["proxy_url"])
            if problem:
                self.add_error("proxy_url", f"The proxy URL {problem}.")
        if cleaned.get("ca_bundle"):
            problem = ca_bundle_problem(cleaned["ca_bundle"])
            if problem:
                self.add_error("ca_bundle", f"The CA bundle {problem}.")
        if not cleaned.get("clear_client_certificate"):
            stored = self.instance.client_key if self.instance.pk else ""
            problem = client_certificate_problem(cleaned.get("client_cert") or "", cleaned.get("client_key") or stored)
            if problem:
                self.add_error("client_cert", problem[0].upper() + problem[1:] + ".")
        return cleaned

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            provider.api_key = self.cleaned_data["api_key"]
        elif self.cleaned_data.get("clear_api_key"):
            provider.api_key = ""
        if self.cleaned_data.get("proxy_url"):
            provider.proxy_url = self.cleaned_data["proxy_url"]
        elif self.cleaned_data.get("clear_proxy_url"):
            provider.proxy_url = ""
        if self.cleaned_data.get("clear_client_certificate"):
            provider.client_cert, provider.client_key = "", ""
        elif self.cleaned_data.get("client_key"):
            provider.client_key = self.cleaned_data["client_key"]
        if commit:
            provider.save()
            self._save_m2m()
        return provider


class ProviderDeploymentInline(admin.TabularInline):
    """Where a provider is used; deployments are edited under their model."""

    model = Deployment
    fields = ["model", "upstream_model", "priority", "weight", "enabled"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    verbose_name_plural = "deployments using this provider"

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Provider)
class ProviderAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    form = ProviderAdminForm
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}
    list_display = [
        "name",
        "dialect",
        "base_url",
        "enabled",
        "health_status",
        "health_checked_at",
        "health_latency_ms",
        "api_key_set",
    ]
    list_filter = ["dialect", "enabled", "health_status"]
    search_fields = ["name", "base_url"]
    readonly_fields = [
        "api_key_set",
        "proxy_shown",
        "client_key_set",
        "health_status",
        "health_checked_at",
        "health_latency_ms",
        "health_consecutive_failures",
        "health_last_error",
        "created_at",
        "updated_at",
    ]
    fieldsets = [
        (None, {"fields": ["name", "dialect", "base_url", "enabled"]}),
        ("Credentials", {"fields": ["api_key_set", "api_key", "clear_api_key", "extra_headers"]}),
        ("Connection", {"fields": ["timeout_connect", "timeout_read", "max_connections"]}),
        (
            "Egress and TLS",
            {
                "fields": [
                    "proxy_shown",
                    "proxy_url",
                    "clear_proxy_url",
                    "ca_bundle",
                    "client_cert",
                    "client_key_set",
                    "client_key",
                    "clear_client_certificate",
                ]
            },
        ),
        ("Request transforms", {"fields": ["request_transforms"]}),
        (
            "Health",
            {
                "fields": [
                    "health_status",
                    "health_checked_at",
                    "health_latency_ms",
                    "health_consecutive_failures",
                    "health_last_error",
                ]
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    inlines = [ProviderDeploymentInline]
    actions = [check_health_now]

    @admin.display(boolean=True, description="API key set")
    def api_key_set(self, obj: Provider) -> bool:
        return obj.has_api_key

    @admin.display(description="proxy")
    def proxy_shown(self, obj: Provider) -> str:
        """The proxy's scheme, host and port: never its credentials."""
        url = obj.proxy_url
        if not url:
            return "none (HTTPS_PROXY / HTTP_PROXY / NO_PROXY apply)"
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")

    @admin.display(boolean=True, description="client key set")
    def client_key_set(self, obj: Provider) -> bool:
        return bool(obj.client_key_encrypted)

    @method_decorator(sensitive_post_parameters("api_key", "proxy_url", "client_key"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)


class DeploymentInline(admin.TabularInline):
    model = Deployment
    fields = [
        "provider",
        "upstream_model",
        "priority",
        "weight",
        "enabled",
        "timeout_total",
        "input_price_per_million",
        "output_price_per_million",
        "cached_input_price_per_million",
        "cache_write_price_per_million",
    ]

    def get_extra(self, request, obj=None, **kwargs):
        # One blank row when adding a model; existing models add rows on demand.
        return 1 if obj is None else 0


def _none_as_empty(value):
    # An emptied JSON box arrives as null; for a list of names it means "none".
    return [] if value is None else value


class PublicModelAdminForm(StructuredFormMixin, forms.ModelForm):
    kinds = KindsField(help_text="What the model is for, shown in /v1/models; none checked = chat.")
    aliases = NameListField(
        patterns=True,
        noun="alias",
        help_text="Other names clients may send: exact names or glob patterns (claude-*, gpt-4o-?).",
    )
    fallbacks = NameListField(patterns=False, noun="fallback", help_text=Model._meta.get_field("fallbacks").help_text)
    context_fallbacks = NameListField(
        patterns=False, noun="context fallback", help_text=Model._meta.get_field("context_fallbacks").help_text
    )
    alias_order = forms.IntegerField(
        required=False,
        initial=0,
        help_text=Model._meta.get_field("alias_order").help_text + " Blank = 0.",
    )

    class Meta:
        model = Model
        fields = [
            "name",
            "enabled",
            "description",
            "input_price_per_million",
            "output_price_per_million",
            "cached_input_price_per_million",
            "cache_write_price_per_million",
            "max_output_tokens",
            "kinds",
            "unsupported_tools",
            "context_window",
            "aliases",
            "alias_order",
            "fallbacks",
            "context_fallbacks",
        ]

    def clean_aliases(self):
        return _none_as_empty(self.cleaned_data["aliases"])

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Left out of a posted form (an older page, a script): the default.
        self.fields["unsupported_tools"].required = False

    def clean_kinds(self):
        # An emptied box means the default, a chat model.
        return self.cleaned_data["kinds"] or ["chat"]

    def clean_unsupported_tools(self):
        return self.cleaned_data["unsupported_tools"] or "drop"

    def clean_fallbacks(self):
        return _none_as_empty(self.cleaned_data["fallbacks"])

    def clean_context_fallbacks(self):
        return _none_as_empty(self.cleaned_data["context_fallbacks"])

    def clean_alias_order(self):
        value = self.cleaned_data["alias_order"]
        return 0 if value is None else value

    def clean(self):
        cleaned = super().clean()
        own_name = cleaned.get("name")
        # Model.clean() checks the shape; whether the named models exist needs the database.
        for field_name in ("fallbacks", "context_fallbacks"):
            names = cleaned.get(field_name)
            if not isinstance(names, list):
                continue
            # Patterns and the model's own name are shape errors, which Model.clean() names.
            wanted = {
                name
                for name in names
                if isinstance(name, str) and name.strip() and not is_pattern(name) and name != own_name
            }
            unknown = sorted(wanted - set(Model.objects.filter(name__in=wanted).values_list("name", flat=True)))
            if unknown:
                listed = ", ".join(f"'{name}'" for name in unknown)
                self.add_error(field_name, f"no model is named {listed}")
        return cleaned


@admin.register(Model)
class PublicModelAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    form = PublicModelAdminForm
    list_display = [
        "name",
        "enabled",
        "input_price_per_million",
        "output_price_per_million",
        "context_window",
        "aliases_shown",
        "deployment_count",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "enabled", "description", "kinds", "unsupported_tools"]}),
        (
            "Prices",
            {"fields": ["input_price_per_million", "output_price_per_million", "cached_input_price_per_million"]},
        ),
        (
            "Routing",
            {
                "fields": ["context_window", "aliases", "alias_order", "fallbacks", "context_fallbacks"],
                "description": (
                    "A name a client sends is matched first against the models themselves, then against exact "
                    "aliases, then against alias patterns (by alias order, then model name). Lists take one name "
                    "per row; fallbacks are tried from the top. Test the result on the routing rules' "
                    '"Test routing" page.'
                ),
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    inlines = [DeploymentInline]
    actions = [purge_cached_answers]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(deployment_count=Count("deployments"))

    def get_urls(self):
        # Ahead of the default URLs, whose "<object_id>/" would otherwise take "cache-purge/".
        purge = path(
            "cache-purge/",
            self.admin_site.admin_view(self.cache_purge_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_cache_purge",
        )
        return [purge, *super().get_urls()]

    def cache_purge_view(self, request):
        return cache_purge_all_view(request, model_admin=self)

    @admin.display(description="deployments", ordering="deployment_count")
    def deployment_count(self, obj: Model) -> int:
        return obj.deployment_count

    @admin.display(description="aliases")
    def aliases_shown(self, obj: Model) -> str:
        aliases = obj.aliases if isinstance(obj.aliases, list) else []
        return ", ".join(str(alias) for alias in aliases) or "-"


class RouteRuleAdminForm(forms.ModelForm):
    class Meta:
        model = RouteRule
        fields = ["name", "order", "enabled", "when", "target", "share"]

    def clean_when(self):
        # An emptied box arrives as null; RouteRule.clean() judges the rest.
        value = self.cleaned_data["when"]
        return {} if value is None else value


@admin.register(RouteRule)
class RouteRuleAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    form = RouteRuleAdminForm
    list_display = ["order", "name", "enabled", "target", "share_shown", "conditions"]
    list_display_links = ["name"]
    list_editable = ["order", "enabled"]
    list_filter = ["enabled", "target"]
    list_select_related = ["target"]
    search_fields = ["name", "target__name"]
    ordering = ["order", "name"]
    fieldsets = [
        (
            None,
            {
                "fields": ["name", "order", "enabled", "when", "target", "share"],
                "description": (
                    "Rules are tried by ascending order after aliases are resolved; the first rule whose "
                    "conditions all match (and whose share draws the request) picks the serving model. A prompt "
                    "too long for that model then moves to its context fallbacks."
                ),
            },
        ),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]
    readonly_fields = ["created_at", "updated_at"]

    def get_urls(self):
        # Ahead of the default URLs, whose "<object_id>/" would otherwise take "test/".
        test = path(
            "test/",
            self.admin_site.admin_view(self.test_routing_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_test",
        )
        return [test, *super().get_urls()]

    def test_routing_view(self, request):
        return routing_test_view(request, model_admin=self)

    @admin.display(description="share", ordering="share")
    def share_shown(self, obj: RouteRule) -> str:
        return f"{obj.share * 100:g}%"

    @admin.display(description="when")
    def conditions(self, obj: RouteRule) -> str:
        return when_summary(obj.when)


@admin.register(Deployment)
class DeploymentAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    list_display = ["__str__", "model", "provider", "upstream_model", "priority", "weight", "enabled"]
    list_filter = ["provider", "enabled"]
    search_fields = ["model__name", "provider__name", "upstream_model"]
    list_select_related = ["model", "provider"]
    list_editable = ["priority", "weight", "enabled"]
    fields = ["model", "provider", "upstream_model", "priority", "weight", "enabled"]


@admin.register(HealthCheck)
class HealthCheckAdmin(admin.ModelAdmin):
    list_display = ["provider", "checked_at", "ok", "status_code", "latency_ms", "error"]
    list_filter = ["provider", "ok"]
    list_select_related = ["provider"]
    date_hierarchy = "checked_at"
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
