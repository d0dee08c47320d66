"""Admin for tiers, teams, API keys, budgets and usage.

Adding an API key issues it through `api_key_issue` and redirects to a page that shows the plaintext once
(accounts.key_handoff carries it across the redirect, encrypted, for that one page): reloading the page
issues nothing and shows nothing. The plaintext is never stored, put in the session or in a message. The
rotate action answers with the successors' plaintexts; revoke stops keys for good. Keys are revoked, never
deleted: their usage history would lose its key.

Tiers, teams and keys each take a response cache TTL (the key's, else the team's, else the tier's is in force);
team and key pages show their cache figures this month, and a team's cached answers can be purged from the list.
They also say what the request log keeps of their calls (`log_bodies`, the most specific wins); the logged
requests themselves are in accounts.admin_request_log.
"""

import importlib.util

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db.models import Count
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join

from accounts.auth import cache_ttl_for, log_level_for
from accounts.budget_rules import (
    budget_amount_problem,
    budget_target_problems,
    budget_thresholds_normalize,
    budget_thresholds_problem,
)
from accounts.budgets import budgets_applying
from accounts.cache_report import CacheFigures, cache_key_figures, cache_team_figures, cache_team_scope
from accounts.key_handoff import key_handoff_put, key_handoff_take
from accounts.models import (
    LIMIT_FIELDS,
    ApiKey,
    Budget,
    RequestLog,
    StoredResponse,
    Team,
    Tier,
    UsageDaily,
    UsageRecord,
)
from accounts.services import (
    KeyRotationError,
    api_key_issue,
    api_key_revoke,
    api_key_rotate,
    api_key_set_enabled,
    rotation_grace_default,
)
from accounts.spend import budget_statuses, key_spend, money, team_spend
from aigateway.admin import AuditHistoryAdminMixin
from providers.response_cache import cache_purge
from providers.upstream_policy import base_url_problem

# The plaintext of a key issued while handling one add request lives only on that request object.
ISSUED_PLAINTEXT_ATTR = "_gateway_issued_key_plaintext"
ISSUE_OPTION_FIELDS = (
    "team",
    "enabled",
    "expires_at",
    "rpm",
    "tpm",
    "max_concurrent",
    "daily_tokens",
    "max_output_tokens",
    "cache_ttl_seconds",
    "log_bodies",
)
# The request log's setting, as the tier, team and key pages explain it.
LOG_BODIES_HELP = (
    "What the request log keeps of each call: off; metadata (the parameters, no content); or full (the request and "
    "the answer, redacted). The key's own setting wins, then the team's, then the tier's. Logged requests are under "
    "Accounts, Logged requests."
)


def _admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


class TierForm(forms.ModelForm):
    class Meta:
        model = Tier
        fields = ["name", *LIMIT_FIELDS, "max_compare_models", "allowed_models", "cache_ttl_seconds", "log_bodies"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Left empty (or missing from an older form), the cache is off rather than the form refused.
        self.fields["cache_ttl_seconds"].required = False
        self.fields["log_bodies"].required = False

    def clean_cache_ttl_seconds(self):
        value = self.cleaned_data.get("cache_ttl_seconds")
        return 0 if value is None else value

    def clean_log_bodies(self):
        return self.cleaned_data.get("log_bodies") or "off"


RESUMABLE_HELP = (
    "A resumable stream carries an SSE id on each event and outlives a dropped client for "
    "GATEWAY_RESUME_GRACE_SECONDS, so the client can reconnect (GET /v1/streams/{id}) and get the rest. A request "
    "may always ask for it with the header x-gateway-resumable: true."
)


@admin.register(Tier)
class TierAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    form = TierForm
    list_display = [
        "name",
        *LIMIT_FIELDS,
        "max_compare_models",
        "cache_ttl_shown",
        "log_bodies",
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
        (
            "Response cache",
            {
                "fields": ["cache_ttl_seconds"],
                "description": (
                    "Seconds an identical request is answered from the response cache; 0 = off. A team's or a "
                    "key's own TTL, when set, overrides the tier's."
                ),
            },
        ),
        ("Request log", {"fields": ["log_bodies"], "description": LOG_BODIES_HELP}),
        ("Streams", {"fields": ["resumable_streams"], "description": RESUMABLE_HELP}),
        ("History", {"fields": ["created_at", "updated_at"], "classes": ["collapse"]}),
    ]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(key_count=Count("api_keys")).prefetch_related("allowed_models")

    @admin.display(description="response cache", ordering="cache_ttl_seconds")
    def cache_ttl_shown(self, obj: Tier) -> str:
        return f"{obj.cache_ttl_seconds} s" if obj.cache_ttl_seconds else "off"

    @admin.display(description="allowed models")
    def models_allowed(self, obj: Tier) -> str:
        names = [model.name for model in obj.allowed_models.all()]
        return ", ".join(names) if names else "all"

    @admin.display(description="keys", ordering="key_count")
    def key_count(self, obj: Tier) -> int:
        return obj.key_count


# Budgets


class BudgetFormMixin:
    """The checks every budget form makes, each problem named on its field."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["amount"].label = f"Amount ({settings.GATEWAY_CURRENCY})"
        self.fields["soft_thresholds"].help_text = "Fractions of the amount that send an alert, e.g. [0.5, 0.8, 1.0]."

    def clean_amount(self):
        amount = self.cleaned_data.get("amount")
        if amount is not None:
            problem = budget_amount_problem(amount)
            if problem:
                raise forms.ValidationError(f"The amount {problem}.")
        return amount

    def clean_soft_thresholds(self):
        value = self.cleaned_data.get("soft_thresholds")
        if value is None or value == "":
            return []  # no alerts
        problem = budget_thresholds_problem(value)
        if problem:
            raise forms.ValidationError(f"Soft thresholds {problem}.")
        return budget_thresholds_normalize(value)


THRESHOLDS_WIDGET = forms.TextInput(attrs={"size": 18})


class BudgetForm(BudgetFormMixin, forms.ModelForm):
    class Meta:
        model = Budget
        fields = ["scope", "api_key", "user", "team", "period", "amount", "soft_thresholds", "enabled"]
        widgets = {"soft_thresholds": THRESHOLDS_WIDGET}

    def clean(self):
        cleaned = super().clean()
        scope = cleaned.get("scope")
        if scope:
            problems = budget_target_problems(
                scope=scope,
                api_key_id=getattr(cleaned.get("api_key"), "pk", None),
                user_id=getattr(cleaned.get("user"), "pk", None),
                team_id=getattr(cleaned.get("team"), "pk", None),
            )
            for field_name, problem in problems.items():
                self.add_error(field_name, problem)
        return cleaned


class ScopedBudgetForm(BudgetFormMixin, forms.ModelForm):
    """A budget edited inline on its key's or team's page: the scope is the page's."""

    budget_scope = ""

    class Meta:
        model = Budget
        fields = ["period", "amount", "soft_thresholds", "enabled"]
        widgets = {"soft_thresholds": THRESHOLDS_WIDGET}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.instance.scope = self.budget_scope


class TeamBudgetForm(ScopedBudgetForm):
    budget_scope = "team"


class KeyBudgetForm(ScopedBudgetForm):
    budget_scope = "key"


class BudgetInline(admin.TabularInline):
    model = Budget
    fields = ["period", "amount", "soft_thresholds", "enabled", "spent"]
    readonly_fields = ["spent"]

    def get_extra(self, request, obj=None, **kwargs):
        # A blank budget row to fill on a new page; on an existing one, "Add another" adds it.
        return 1 if obj is None else 0

    @admin.display(description="spent this period")
    def spent(self, budget: Budget) -> str:
        if budget.pk is None:
            return "-"
        [status] = budget_statuses([budget])
        return money(status.spent)


class TeamBudgetInline(BudgetInline):
    form = TeamBudgetForm
    fk_name = "team"
    verbose_name = "team budget"
    verbose_name_plural = "team budgets"


class KeyBudgetInline(BudgetInline):
    form = KeyBudgetForm
    fk_name = "api_key"
    verbose_name = "key budget"
    verbose_name_plural = "key budgets"


@admin.register(Budget)
class BudgetAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    form = BudgetForm
    list_display = ["__str__", "scope", "target", "period", "amount_shown", "soft_thresholds", "enabled"]
    list_filter = ["scope", "period", "enabled"]
    list_select_related = ["api_key", "user", "team"]
    search_fields = ["team__name", "api_key__name", "api_key__prefix", "user__username"]
    autocomplete_fields = ["api_key", "user", "team"]
    readonly_fields = ["spent", "created_at", "updated_at"]
    fieldsets = [
        (
            None,
            {
                "fields": ["scope", "api_key", "user", "team"],
                "description": "A key, user or team budget names its key, user or team; a global budget none.",
            },
        ),
        (None, {"fields": ["period", "amount", "soft_thresholds", "enabled"]}),
        ("Spend", {"fields": ["spent", "created_at", "updated_at"]}),
    ]

    @admin.display(description="applies to")
    def target(self, budget: Budget) -> str:
        return budget.scope_name

    @admin.display(description="amount", ordering="amount")
    def amount_shown(self, budget: Budget) -> str:
        return money(budget.amount)

    @admin.display(description="spent this period")
    def spent(self, budget: Budget) -> str:
        if budget.pk is None:
            return "-"
        [status] = budget_statuses([budget])
        return format_html('<span data-testid="budget-spent">{}</span>', money(status.spent))


# Teams


class TeamForm(forms.ModelForm):
    alert_webhook = forms.URLField(
        max_length=500,
        required=False,
        assume_scheme="https",
        help_text=Team._meta.get_field("alert_webhook").help_text,
    )

    class Meta:
        model = Team
        fields = ["name", "members", "allowed_models", "alert_webhook", "cache_ttl_seconds", "log_bodies"]

    def clean_alert_webhook(self):
        url = self.cleaned_data.get("alert_webhook", "")
        # The upstream address policy, as for a provider's base URL: alerts leave through the upstream client.
        problem = base_url_problem(url) if url else None
        if problem:
            raise forms.ValidationError(f"The alert webhook {problem}.")
        return url


class TeamApiKeyInline(admin.TabularInline):
    """The team's keys, read-only: a key joins or leaves a team on its own page."""

    model = ApiKey
    fk_name = "team"
    fields = ["key_link", "prefix", "owner", "tier", "enabled", "last_used_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name = "API key"
    verbose_name_plural = "API keys"

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("owner", "tier")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="key")
    def key_link(self, api_key: ApiKey) -> str:
        return format_html('<a href="{}">{}</a>', _admin_url(ApiKey, "change", api_key.pk), api_key.name)


@admin.register(Team)
class TeamAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    form = TeamForm
    list_display = ["name", "member_count", "key_count", "models_allowed", "alert_webhook"]
    search_fields = ["name"]
    filter_horizontal = ["members", "allowed_models"]
    inlines = [TeamBudgetInline, TeamApiKeyInline]
    actions = ["purge_cached_answers"]
    fieldsets = [
        (None, {"fields": ["name", "members", "alert_webhook"]}),
        ("Models", {"fields": ["allowed_models"]}),
        ("Request log", {"fields": ["log_bodies"], "description": LOG_BODIES_HELP}),
        (
            "Response cache",
            {
                "fields": ["cache_ttl_seconds"],
                "description": "Empty = each key's tier decides; a key's own TTL, when set, overrides the team's.",
            },
        ),
    ]

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(member_count=Count("members", distinct=True), key_count=Count("api_keys", distinct=True))
            .prefetch_related("allowed_models")
        )

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets
        *head, (cache_title, cache_options) = self.fieldsets
        cache = (cache_title, {**cache_options, "fields": [*cache_options["fields"], "cache_figures"]})
        return [*head, cache, ("Spend this month", {"fields": ["spend"]})]

    def get_readonly_fields(self, request, obj=None):
        return ["spend", "cache_figures"] if obj is not None else []

    @admin.display(description="this month")
    def cache_figures(self, team: Team) -> str:
        return _cache_figures_html(cache_team_figures(team_id=team.pk))

    @admin.action(description="Purge cached answers of the selected teams", permissions=["change"])
    def purge_cached_answers(self, request, queryset):
        team_ids = list(queryset.values_list("pk", flat=True))
        deleted = sum(cache_purge(scope=cache_team_scope(team_id=team_id)) for team_id in team_ids)
        self.message_user(request, f"{deleted} cached answer(s) of {len(team_ids)} team(s) deleted.", messages.SUCCESS)

    @admin.display(description="members", ordering="member_count")
    def member_count(self, team: Team) -> int:
        return team.member_count

    @admin.display(description="keys", ordering="key_count")
    def key_count(self, team: Team) -> int:
        return team.key_count

    @admin.display(description="allowed models")
    def models_allowed(self, team: Team) -> str:
        names = [model.name for model in team.allowed_models.all()]
        return ", ".join(names) if names else "the tier's"

    @admin.display(description="spend")
    def spend(self, team: Team) -> str:
        report = team_spend(team_id=team.pk)
        return format_html(
            '<p>Since {} UTC: <strong data-testid="team-spend-total">{}</strong></p>{}{}',
            f"{report.start:%Y-%m-%d}",
            money(report.total),
            _spend_table("By key", "team-spend-by-key", report.by_key, link_keys=True),
            _spend_table("By model", "team-spend-by-model", report.by_model),
        )


def _cache_figures_html(figures: CacheFigures) -> str:
    """A scope's cache figures as a small table: hits, calls, ratio, money saved, entries held now."""
    ratio = f"{figures.ratio}%" if figures.ratio is not None else "-"
    entries = figures.entries if figures.entries is not None else "unknown (the cache's Redis did not answer)"
    rows = [
        ("cache hits", "cache-hits", figures.hits),
        ("calls", "cache-calls", figures.calls),
        ("hit ratio", "cache-ratio", ratio),
        ("saved", "cache-saved", money(figures.saved)),
        (f"answers cached now ({figures.scope})", "cache-entries", entries),
    ]
    return format_html(
        '<p>Since {} UTC</p><table data-testid="cache-figures"><tbody>{}</tbody></table>',
        f"{figures.start:%Y-%m-%d}",
        format_html_join("", '<tr><th>{}</th><td data-testid="{}">{}</td></tr>', rows),
    )


def _spend_table(title: str, testid: str, rows, *, link_keys: bool = False) -> str:
    if not rows:
        return format_html('<p data-testid="{}">{}: no usage.</p>', testid, title)
    body = format_html_join(
        "",
        '<tr data-testid="{}-row"><td>{}</td><td>{}</td><td data-testid="spend-cost">{}</td></tr>',
        (
            (
                testid,
                format_html('<a href="{}">{}</a>', _admin_url(ApiKey, "change", row.api_key_id), row.label)
                if link_keys and row.api_key_id is not None
                else row.label,
                row.requests,
                money(row.cost),
            )
            for row in rows
        ),
    )
    return format_html(
        '<table data-testid="{}"><caption>{}</caption><thead><tr><th>{}</th><th>requests</th><th>cost</th></tr>'
        "</thead><tbody>{}</tbody></table>",
        testid,
        title,
        "key" if link_keys else "model",
        body,
    )


# API keys


@admin.register(ApiKey)
class ApiKeyAdmin(AuditHistoryAdminMixin, admin.ModelAdmin):
    list_display = [
        "name",
        "prefix",
        "owner",
        "team",
        "tier",
        "enabled",
        "playground",
        "expires_at",
        "created_at",
        "last_used_at",
    ]
    list_filter = ["tier", "team", "enabled", "playground"]
    search_fields = ["name", "prefix", "owner__username", "team__name"]
    list_select_related = ["owner", "tier", "team"]
    actions = ["enable_keys", "disable_keys", "rotate_keys", "revoke_keys"]
    inlines = [KeyBudgetInline]
    fieldsets = [
        (None, {"fields": ["name", "owner", "team", "tier", "enabled", "expires_at"]}),
        (
            "Limit overrides",
            {
                "fields": ["rpm", "tpm", "max_concurrent", "daily_tokens", "max_output_tokens"],
                "description": "Leave blank to use the tier's limits.",
            },
        ),
        ("Request log", {"fields": ["log_bodies"], "description": LOG_BODIES_HELP}),
        (
            "Response cache",
            {
                "fields": ["cache_ttl_seconds"],
                "description": "Leave blank to use the team's TTL, or the tier's; 0 turns the cache off for this key.",
            },
        ),
        ("Streams", {"fields": ["resumable_streams"], "description": RESUMABLE_HELP}),
    ]
    change_readonly_fields = [
        "prefix",
        "owner",
        "created_at",
        "last_used_at",
        "spend_today",
        "spend_month",
        "other_budgets",
        "usage_link",
        "cache_ttl_in_force",
        "cache_figures",
        "log_bodies_in_force",
    ]

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets
        identity = ("Key", {"fields": ["prefix", "created_at", "last_used_at"]})
        spend = (
            "Spend",
            {
                "fields": ["spend_today", "spend_month", "other_budgets", "usage_link"],
                "description": "From the flushed daily totals (UTC days).",
            },
        )
        *head, (log_title, log_options), (cache_title, cache_options) = self.fieldsets
        log = (log_title, {**log_options, "fields": [*log_options["fields"], "log_bodies_in_force"]})
        cache = (
            cache_title,
            {**cache_options, "fields": [*cache_options["fields"], "cache_ttl_in_force", "cache_figures"]},
        )
        return [identity, *head, log, cache, spend]

    def get_readonly_fields(self, request, obj=None):
        return self.change_readonly_fields if obj is not None else []

    def get_inlines(self, request, obj):
        # Budgets are added to a key once it exists, on its change page.
        return self.inlines if obj is not None else []

    def get_changeform_initial_data(self, request):
        initial = super().get_changeform_initial_data(request)
        initial.setdefault("owner", request.user.pk)
        return initial

    def has_delete_permission(self, request, obj=None):
        # Revoked, never deleted: a key's usage records and daily totals keep pointing at it.
        return False

    def get_urls(self):
        opts = self.opts
        issued = path(
            "<path:object_id>/issued/<str:token>/",
            self.admin_site.admin_view(self.issued_view),
            name=f"{opts.app_label}_{opts.model_name}_issued",
        )
        return [issued, *super().get_urls()]

    @admin.display(description="spent today")
    def spend_today(self, api_key: ApiKey) -> str:
        return format_html('<span data-testid="key-spend-today">{}</span>', money(self._spend(api_key).today))

    @admin.display(description="spent this month")
    def spend_month(self, api_key: ApiKey) -> str:
        return format_html('<span data-testid="key-spend-month">{}</span>', money(self._spend(api_key).month))

    @staticmethod
    def _spend(api_key: ApiKey):
        # Both fields of one page from one query.
        if not hasattr(api_key, "_admin_spend"):
            api_key._admin_spend = key_spend(api_key_id=api_key.pk)
        return api_key._admin_spend

    @admin.display(description="budgets of its owner, team and everyone")
    def other_budgets(self, api_key: ApiKey) -> str:
        budgets = budgets_applying(key_id=api_key.pk, owner_id=api_key.owner_id, team_id=api_key.team_id).exclude(
            scope="key"
        )
        statuses = budget_statuses(budgets)
        if not statuses:
            return "none (the key's own budgets are below)"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                '<li><a href="{}">{} {}</a>: {} per {}, spent {}</li>',
                (
                    (
                        _admin_url(Budget, "change", status.budget.pk),
                        status.budget.scope,
                        status.budget.scope_name,
                        money(status.budget.amount),
                        status.budget.period,
                        money(status.spent),
                    )
                    for status in statuses
                ),
            ),
        )

    @admin.display(description="TTL in force")
    def cache_ttl_in_force(self, api_key: ApiKey) -> str:
        if api_key.cache_ttl_seconds is not None:
            source = "the key's own"
        elif api_key.team is not None and api_key.team.cache_ttl_seconds is not None:
            source = f"team {api_key.team}'s"
        else:
            source = f"tier {api_key.tier}'s"
        ttl = cache_ttl_for(api_key)
        return format_html(
            '<span data-testid="cache-ttl-in-force">{}</span> ({})', f"{ttl} s" if ttl else "off", source
        )

    @admin.display(description="request log in force")
    def log_bodies_in_force(self, api_key: ApiKey) -> str:
        if api_key.log_bodies:
            source = "the key's own"
        elif api_key.team is not None and api_key.team.log_bodies:
            source = f"team {api_key.team}'s"
        else:
            source = f"tier {api_key.tier}'s"
        return format_html('<span data-testid="log-bodies-in-force">{}</span> ({})', log_level_for(api_key), source)

    @admin.display(description="this month (this key)")
    def cache_figures(self, api_key: ApiKey) -> str:
        return _cache_figures_html(cache_key_figures(api_key=api_key))

    @admin.display(description="usage")
    def usage_link(self, api_key: ApiKey) -> str:
        url = f"{_admin_url(UsageRecord, 'changelist')}?api_key__id__exact={api_key.pk}"
        return format_html('<a href="{}" data-testid="key-usage-link">Usage records of this key</a>', url)

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        options = {field: getattr(obj, field) for field in ISSUE_OPTION_FIELDS}
        issued = api_key_issue(owner=obj.owner, tier=obj.tier, name=obj.name, **options)
        # The admin carries on with `obj` (its inlines, logging, the response): make it the row just issued.
        for field in ApiKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(issued.api_key, field.attname))
        obj._state.adding = False
        obj._state.db = issued.api_key._state.db
        setattr(request, ISSUED_PLAINTEXT_ATTR, issued.plaintext)

    def response_add(self, request, obj, post_url_continue=None):
        plaintext = getattr(request, ISSUED_PLAINTEXT_ATTR, None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        token = key_handoff_put(user_id=request.user.pk, api_key_id=obj.pk, plaintext=plaintext)
        return HttpResponseRedirect(_admin_url(ApiKey, "issued", obj.pk, token))

    def issued_view(self, request, object_id, token):
        """The one page that shows a key just issued; opened again, it says the key was shown already."""
        api_key = self.get_object(request, object_id)
        if api_key is None or not self.has_view_or_change_permission(request, api_key):
            raise Http404("no such API key")
        plaintext = key_handoff_take(user_id=request.user.pk, api_key_id=api_key.pk, token=token)
        response = self._plaintext_page(
            request,
            "issued",
            "API key issued",
            api_key=api_key,
            plaintext=plaintext,
            change_url=_admin_url(ApiKey, "change", api_key.pk),
            add_url=_admin_url(ApiKey, "add"),
        )
        if plaintext is None:
            response.status_code = 410
        return response

    def _plaintext_page(self, request, template: str, title: str, **extra) -> TemplateResponse:
        """A page showing new plaintext keys, once: never cached."""
        opts = self.opts
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": opts,
            "changelist_url": _admin_url(ApiKey, "changelist"),
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

    @admin.action(description="Revoke selected API keys (for good; their usage history stays)")
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


# Users


class GatewayUserAdmin(AuditHistoryAdminMixin, type(admin.site.get_model_admin(get_user_model()))):
    """The project's user admin, saying why a user with API keys is not deleted (and what to do instead)
    rather than that nobody may delete keys."""

    def get_deleted_objects(self, objs, request):
        deleted, model_count, perms_needed, protected = super().get_deleted_objects(objs, request)
        if protected:
            # Protected rows are the reason; the "no permission to delete API keys" that comes with them is not.
            perms_needed = set()
            self.message_user(
                request,
                "A user with API keys cannot be deleted: the keys' usage history would lose its owner, and keys "
                "are revoked, never deleted. Deactivate the user instead (untick Active): their keys stop working "
                "at once and their history stays.",
                messages.WARNING,
            )
        return deleted, model_count, perms_needed, protected


admin.site.unregister(get_user_model())
admin.site.register(get_user_model(), GatewayUserAdmin)


# Usage


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the usage pipeline: viewable, never edited by hand."""

    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class StatusFilter(admin.SimpleListFilter):
    """Outcome classes rather than every status code seen (that would scan the whole table per page)."""

    title = "status"
    parameter_name = "status"
    CLASSES = {
        "ok": ("succeeded (< 400)", {"status_code__lt": 400}),
        "client": ("refused (4xx but 429, 499)", {"status_code__gte": 400, "status_code__lt": 500}),
        "429": ("limited (429)", {"status_code": 429}),
        "499": ("client went away (499)", {"status_code": 499}),
        "upstream": ("failed (5xx)", {"status_code__gte": 500}),
    }

    def lookups(self, request, model_admin):
        return [(value, label) for value, (label, _lookup) in self.CLASSES.items()]

    def queryset(self, request, queryset):
        chosen = self.CLASSES.get(self.value() or "")
        if chosen is None:
            return queryset
        queryset = queryset.filter(**chosen[1])
        if self.value() == "client":
            queryset = queryset.exclude(status_code__in=(429, 499))
        return queryset


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "request_id",
        "created_at",
        "api_key",
        "team",
        "user",
        "model",
        "requested_model",
        "route",
        "provider",
        "endpoint",
        "status_code",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "ttfb_ms",
        "duration_ms",
        "stream",
    ]
    # Key, team and user choices come from their own (small) tables; model and endpoint from the records.
    list_filter = ["api_key", "team", "user", "model", "endpoint", StatusFilter, "provider", "stream"]
    date_hierarchy = "created_at"
    search_fields = ["request_id", "run_id", "requested_model", "route"]
    list_select_related = ["api_key", "team", "user"]
    readonly_fields = ["logged_request"]

    @admin.display(description="logged request")
    def logged_request(self, record: UsageRecord) -> str:
        logged = RequestLog.objects.filter(request_id=record.request_id).values_list("pk", flat=True).first()
        if logged is None:
            return "not logged"
        url = _admin_url(RequestLog, "change", logged)
        return format_html('<a href="{}" data-testid="usage-logged-request">the logged request</a>', url)


USAGE_DAILY_ACTIONS = []
# The spend export ships beside this module; looked up rather than assumed so the admin loads without it.
if importlib.util.find_spec("accounts.spend_export") is not None:
    from accounts.spend_export import export_spend_csv

    USAGE_DAILY_ACTIONS.append(export_spend_csv)


@admin.register(UsageDaily)
class UsageDailyAdmin(ReadOnlyAdmin):
    list_display = ["date", "api_key", "model", "requests", "errors", "prompt_tokens", "completion_tokens", "cost"]
    list_filter = ["model", "api_key__team"]
    date_hierarchy = "date"
    search_fields = ["model", "api_key__name", "api_key__prefix"]
    list_select_related = ["api_key"]
    actions = USAGE_DAILY_ACTIONS


@admin.register(StoredResponse)
class StoredResponseAdmin(ReadOnlyAdmin):
    """Stored Responses API answers: who owns them, their model, status and size. Their bodies (the conversation,
    which may hold anything a client sent) are not shown; their owners read them through the API."""

    list_display = [
        "response_id",
        "created_at",
        "user",
        "team",
        "api_key",
        "model",
        "status",
        "previous_response_id",
        "stored_bytes",
    ]
    fields = list_display
    list_filter = ["status", "team"]
    date_hierarchy = "created_at"
    search_fields = ["response_id", "previous_response_id"]
    list_select_related = ["api_key", "team", "user"]

    def get_queryset(self, request):
        # The compressed bodies are never shown: not read either.
        return super().get_queryset(request).defer("response", "input_items", "conversation")


# The request log's and the arena votes' admins live beside this module and register themselves.
from accounts import admin_arena, admin_request_log  # noqa: E402,F401
