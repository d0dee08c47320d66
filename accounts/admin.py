"""Admin for tiers, API keys and usage.

Adding an API key issues it through `api_key_issue` and answers the add request with a page that
shows the plaintext once; the plaintext is never stored, redirected through, or put in a message.
The rotate action answers the same way with the successors' plaintexts; revoke stops keys for good.
"""

from django.contrib import admin, messages
from django.db.models import Count
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from accounts.models import LIMIT_FIELDS, ApiKey, Tier, UsageDaily, UsageRecord
from accounts.services import (
    KeyRotationError,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    api_key_set_enabled,
    rotation_grace_default,
)

# The plaintext of a key issued while handling one add request lives only on that request object.
ISSUED_PLAINTEXT_ATTR = "_gateway_issued_key_plaintext"
ISSUE_OPTION_FIELDS = ("enabled", "expires_at", "rpm", "tpm", "max_concurrent", "daily_tokens", "max_output_tokens")


@admin.register(Tier)
class TierAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        *LIMIT_FIELDS,
        "max_compare_models",
        "models_allowed",
        "key_count",
    ]
    search_fields = ["name"]
    empty_value_display = "unlimited"
    filter_horizontal = ["allowed_models"]
    readonly_fields = ["created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name"]}),
        (
            "Limits",
            {
                "fields": ["rpm", "tpm", "max_concurrent", "daily_tokens", "max_output_tokens", "max_compare_models"],
                "description": "Leave a limit blank for unlimited.",
            },
        ),
        ("Models", {"fields": ["allowed_models"]}),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(key_count=Count("api_keys")).prefetch_related("allowed_models")

    @admin.display(description="allowed models")
    def models_allowed(self, obj: Tier) -> str:
        names = [model.name for model in obj.allowed_models.all()]
        return ", ".join(names) if names else "all"

    @admin.display(description="keys", ordering="key_count")
    def key_count(self, obj: Tier) -> int:
        return obj.key_count


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "owner",
        "tier",
        "enabled",
        "playground",
        "expires_at",
        "created_at",
        "last_used_at",
    ]
    list_filter = ["tier", "enabled", "playground"]
    search_fields = ["name", "prefix", "owner__username"]
    list_select_related = ["owner", "tier"]
    actions = ["enable_keys", "disable_keys", "rotate_keys", "revoke_keys"]
    fieldsets = [
        (None, {"fields": ["name", "owner", "tier", "enabled", "expires_at"]}),
        (
            "Limit overrides",
            {
                "fields": ["rpm", "tpm", "max_concurrent", "daily_tokens", "max_output_tokens"],
                "description": "Leave blank to use the tier's limits.",
            },
        ),
    ]
    change_readonly_fields = ["prefix", "owner", "created_at", "last_used_at"]

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets
        identity = ("Key", {"fields": ["prefix", "created_at", "last_used_at"]})
        return [identity, *self.fieldsets]

    def get_readonly_fields(self, request, obj=None):
        return self.change_readonly_fields if obj is not None else []

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("owner", request.user.pk)
        return initial

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        options = {field: getattr(obj, field) for field in ISSUE_OPTION_FIELDS}
        issued = api_key_issue(owner=obj.owner, tier=obj.tier, name=obj.name, **options)
        # The admin carries on with `obj` (logging, the response): make it the row just issued.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.api_key, field.attname))
        obj._state.adding = False
        obj._state.db = issued.api_key._state.db
        setattr(request, ISSUED_PLAINTEXT_ATTR, issued.plaintext)

    def response_add(self, request, obj, post_url_continue=None):
        plaintext = getattr(request, ISSUED_PLAINTEXT_ATTR, None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        opts = self.opts
        return self._plaintext_page(
            request,
            "issued",
            "API key issued",
            api_key=obj,
            plaintext=plaintext,
            change_url=reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk]),
            add_url=reverse(f"admin:{opts.app_label}_{opts.model_name}_add"),
        )

    def _plaintext_page(self, request, template: str, title: str, **extra) -> TemplateResponse:
        """A page showing new plaintext keys, once: never cached."""
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": opts,
            "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
            **extra,
        }
        response = TemplateResponse(request, f"admin/accounts/apikey/{template}.html", context)
        add_never_cache_headers(response)
        return response

    @admin.action(description="Enable selected API keys")
    def enable_keys(self, request, queryset):
        self._set_enabled(request, queryset, enabled=True)

    @admin.action(description="Disable selected API keys")
    def disable_keys(self, request, queryset):
        self._set_enabled(request, queryset, enabled=False)

    @admin.action(description="Rotate selected API keys (new keys shown once; old ones run out after the grace period)")
    def rotate_keys(self, request, queryset):
        grace = rotation_grace_default()
        rotations, refused = [], []
        for api_key in queryset.order_by("pk"):
            try:
                rotations.append(api_key_rotate(api_key=api_key, grace=grace))
            except KeyRotationError as exc:
                refused.append(str(exc))
        return self._plaintext_page(request, "rotated", "API keys rotated", rotations=rotations, refused=refused)

    @admin.action(description="Revoke selected API keys (for good)")
    def revoke_keys(self, request, queryset):
        revoked = 0
        for api_key in queryset:
            api_key_revoke(api_key=api_key)
            revoked += 1
        self.message_user(request, f"{revoked} API key(s) revoked.", messages.SUCCESS)

    def _set_enabled(self, request, queryset, *, enabled: bool) -> None:
        changed = 0
        for api_key in queryset.exclude(enabled=enabled):
            api_key_set_enabled(api_key=api_key, enabled=enabled)
            changed += 1
        verb = "enabled" if enabled else "disabled"
        self.message_user(request, f"{changed} API key(s) {verb}.", messages.SUCCESS)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the usage pipeline: viewable, never edited by hand."""

    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "request_id",
        "created_at",
        "api_key",
        "model",
        "requested_model",
        "route",
        "provider",
        "status_code",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "ttfb_ms",
        "duration_ms",
        "stream",
    ]
    list_filter = ["model", "provider", "endpoint", "status_code", "stream"]
    date_hierarchy = "created_at"
    search_fields = ["request_id", "run_id", "requested_model", "route"]
    list_select_related = ["api_key"]


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ["date", "api_key", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "cost"]
    list_filter = ["model"]
    date_hierarchy = "date"
    search_fields = ["model", "api_key__name", "api_key__prefix"]
    list_select_related = ["api_key"]
