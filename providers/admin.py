"""Admin for providers, public models, deployments and health history.

A provider's API key is write-only here: the form takes a new key or a request to clear it,
and neither the plaintext nor the stored ciphertext is ever rendered back.
"""

from django import forms
from django.contrib import admin
from django.db import models
from django.db.models import Count
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from providers.admin_actions import check_health_now
from providers.models import Deployment, HealthCheck, Model, Provider

admin.site.site_header = "AI Gateway"
admin.site.site_title = "AI Gateway admin"
admin.site.index_title = "Gateway administration"


def _provider_formfield(db_field, **kwargs):
    # A base URL typed without a scheme is meant as https (the default from Django 6 on).
    if isinstance(db_field, models.URLField):
        kwargs.setdefault("assume_scheme", "https")
    return db_field.formfield(**kwargs)


class ProviderAdminForm(forms.ModelForm):
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
        ]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("api_key") and cleaned.get("clear_api_key"):
            raise forms.ValidationError("Either enter a new API key or clear it, not both.")
        return cleaned

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("api_key"):
            provider.api_key = self.cleaned_data["api_key"]
        elif self.cleaned_data.get("clear_api_key"):
            provider.api_key = ""
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
class ProviderAdmin(admin.ModelAdmin):
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

    @method_decorator(sensitive_post_parameters("api_key"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)


class DeploymentInline(admin.TabularInline):
    model = Deployment
    fields = ["provider", "upstream_model", "priority", "weight", "enabled"]

    def get_extra(self, request, obj=None, **kwargs):
        # One blank row when adding a model; existing models add rows on demand.
        return 1 if obj is None else 0


@admin.register(Model)
class PublicModelAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "enabled",
        "input_price_per_million",
        "output_price_per_million",
        "context_window",
        "deployment_count",
    ]
    list_filter = ["enabled"]
    search_fields = ["name", "description"]
    readonly_fields = ["created_at", "updated_at"]
    fields = [
        "name",
        "enabled",
        "description",
        "input_price_per_million",
        "output_price_per_million",
        "cached_input_price_per_million",
        "context_window",
        "created_at",
        "updated_at",
    ]
    inlines = [DeploymentInline]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(deployment_count=Count("deployments"))

    @admin.display(description="deployments", ordering="deployment_count")
    def deployment_count(self, obj: Model) -> int:
        return obj.deployment_count


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
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
