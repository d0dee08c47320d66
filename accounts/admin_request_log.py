"""Admin of the request log: the logged requests, filtered by key, team, model, status and date and searched in
their (redacted) conversation text; a detail page that draws the conversation the way the playground does, beside
the call's usage, cost, timing and routing (its usage record, same request id); and the conversation as JSON for
the playground's "open a logged request".

Read-only: records are written by the usage flush and deleted by retention, never by hand. The table may hold
millions of rows, so the list never counts all of them (at most COUNT_CAP matching rows are counted; older ones are
reached by narrowing the date), sorts only by time, and reads neither bodies nor search text.
"""

import re
from datetime import datetime, time, timedelta
from functools import cached_property

import orjson
from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import JsonResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.text import smart_split, unescape_string_literal
from django.views.decorators.cache import never_cache

from accounts.models import RequestLog, UsageRecord
from accounts.request_log import request_log_body
from accounts.request_log_conversation import (
    conversation_playground_messages,
    conversation_playground_settings,
    request_log_conversation,
)
from accounts.spend import money
from providers.models import Model

# Rows counted for the list's pages: past this many matches the list says "more than" and offers no later pages.
COUNT_CAP = 10_000
# A search term that is a request id finds that one record through the unique index.
REQUEST_ID_RE = re.compile(r"req_[0-9a-f]{32}")


def _admin_url(model, view: str, *args) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}", args=args)


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP + 1 rows (a LIMITed subquery) instead of the whole filtered table; unordered, so
    the database may stop at the first rows it finds."""

    cap = COUNT_CAP

    @cached_property
    def count(self) -> int:
        return self.object_list.order_by()[: self.cap + 1].count()

    @property
    def capped(self) -> bool:
        return self.count > self.cap


class StatusFilter(admin.SimpleListFilter):
    """Outcome classes, and the statuses worth telling apart; another exact status goes in the URL
    (`?status_code=418`)."""

    title = "status"
    parameter_name = "status"
    CLASSES = {
        "2xx": ("succeeded (2xx)", {"status_code__lt": 300}),
        "4xx": ("refused (4xx)", {"status_code__gte": 400, "status_code__lt": 500}),
        "5xx": ("failed (5xx)", {"status_code__gte": 500}),
    }
    EXACT = (400, 401, 403, 404, 413, 429, 499, 500, 502, 503, 504)

    def lookups(self, request, model_admin):
        return [(value, label) for value, (label, _lookup) in self.CLASSES.items()] + [
            (str(code), str(code)) for code in self.EXACT
        ]

    def queryset(self, request, queryset):
        value = self.value() or ""
        if value in self.CLASSES:
            return queryset.filter(**self.CLASSES[value][1])
        if value.isdigit():
            return queryset.filter(status_code=int(value))
        return queryset


class KeyFilter(admin.RelatedFieldListFilter):
    """The keys (their own small table), titled as ops say it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.title = "key"


class LevelFilter(admin.SimpleListFilter):
    title = "level"
    parameter_name = "level"

    def lookups(self, request, model_admin):
        return [("full", "full"), ("metadata", "metadata")]

    def queryset(self, request, queryset):
        return queryset.filter(level=self.value()) if self.value() else queryset


class ModelFilter(admin.SimpleListFilter):
    """The models configured now (a small table), rather than the distinct names of the whole log."""

    title = "model"
    parameter_name = "model"

    def lookups(self, request, model_admin):
        return [(name, name) for name in Model.objects.order_by("name").values_list("name", flat=True)]

    def queryset(self, request, queryset):
        return queryset.filter(model=self.value()) if self.value() else queryset


class PeriodFilter(admin.SimpleListFilter):
    title = "time"
    parameter_name = "period"
    PERIODS = {
        "1h": ("last hour", timedelta(hours=1)),
        "24h": ("last 24 hours", timedelta(days=1)),
        "7d": ("last 7 days", timedelta(days=7)),
        "30d": ("last 30 days", timedelta(days=30)),
    }

    def lookups(self, request, model_admin):
        return [(value, label) for value, (label, _span) in self.PERIODS.items()]

    def queryset(self, request, queryset):
        period = self.PERIODS.get(self.value() or "")
        return queryset.filter(created_at__gte=timezone.now() - period[1]) if period else queryset


class DateRangeFilter(admin.ListFilter):
    """From and to dates (inclusive, in the site's time zone) typed into a small form in the filter column."""

    title = "date range"
    template = "admin/accounts/requestlog/date_range_filter.html"
    parameters = ("since", "until")

    def __init__(self, request, params, model, model_admin):
        super().__init__(request, params, model, model_admin)
        for name in self.parameters:
            if name in params:
                self.used_parameters[name] = params.pop(name)[-1].strip()

    def has_output(self) -> bool:
        return True

    def expected_parameters(self):
        return list(self.parameters)

    def _day(self, name: str) -> datetime | None:
        value = self.used_parameters.get(name)
        if not value:
            return None
        try:
            day = datetime.strptime(value, "%Y-%m-%d").date()
        except ValueError:
            raise admin.options.IncorrectLookupParameters(f"{name}: a date as YYYY-MM-DD") from None
        return timezone.make_aware(datetime.combine(day, time.min))

    def queryset(self, request, queryset):
        since, until = self._day("since"), self._day("until")
        if since is not None:
            queryset = queryset.filter(created_at__gte=since)
        if until is not None:
            queryset = queryset.filter(created_at__lt=until + timedelta(days=1))
        return queryset

    def choices(self, changelist):
        yield {
            "since": self.used_parameters.get("since", ""),
            "until": self.used_parameters.get("until", ""),
            # The list's other parameters ride along with the form, as they do with the search box.
            "kept": [(name, value) for name, value in changelist.params.items() if name not in self.parameters],
            "clear": changelist.get_query_string(remove=list(self.parameters)),
        }


@admin.register(RequestLog)
class RequestLogAdmin(admin.ModelAdmin):
    list_display = [
        "time",
        "request_id",
        "key",
        "team",
        "model",
        "endpoint",
        "status_code",
        "level",
        "size",
        "redactions",
    ]
    list_display_links = ["request_id"]
    list_filter = [
        ("api_key", KeyFilter),
        "team",
        ModelFilter,
        StatusFilter,
        LevelFilter,
        PeriodFilter,
        DateRangeFilter,
    ]
    list_select_related = ["api_key", "team"]
    list_per_page = 50
    sortable_by = ["time"]
    # The search box, read by get_search_results: words of the conversation, or a request id.
    search_fields = ["search_text"]
    search_help_text = (
        "Words of the logged conversations (case-insensitive; as stored, so secrets read [redacted]), or a request id."
    )
    paginator = CappedCountPaginator
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER

    class Media:
        css = {"all": ["accounts/request_log.css"]}

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        # Deleted by retention (GATEWAY_LOG_RETENTION_DAYS) only.
        return False

    def get_queryset(self, request):
        # The list never shows bodies or search text: up to GATEWAY_LOG_MAX_BYTES and 16 KiB a row.
        return super().get_queryset(request).defer("body", "search_text")

    def get_search_results(self, request, queryset, search_term):
        terms = [unescape_string_literal(t) if t[:1] in "\"'" else t for t in smart_split(search_term.strip())]
        terms = [term for term in terms if term]
        if len(terms) == 1 and REQUEST_ID_RE.fullmatch(terms[0]):
            return queryset.filter(request_id=terms[0]), False
        for term in terms:
            queryset = queryset.filter(search_text__icontains=term)
        return queryset, False

    def get_urls(self):
        opts = self.opts
        conversation = path(
            "conversation/<str:request_id>.json",
            self.conversation_json,
            name=f"{opts.app_label}_{opts.model_name}_conversation",
        )
        return [conversation, *super().get_urls()]

    @admin.display(description="time", ordering="created_at")
    def time(self, record: RequestLog) -> str:
        return f"{timezone.localtime(record.created_at):%Y-%m-%d %H:%M:%S}"

    @admin.display(description="key")
    def key(self, record: RequestLog) -> str:
        if record.api_key is None:
            return "-"
        return format_html('<span title="{}">{}…</span>', record.api_key.name, record.api_key.prefix)

    @admin.display(description="size (stored / original)")
    def size(self, record: RequestLog) -> str:
        return format_html(
            "{} / {}{}",
            filesizeformat(record.stored_bytes),
            filesizeformat(record.original_bytes),
            format_html(' <strong title="{}">cut</strong>', "Over the size cap: the longest strings were cut")
            if record.truncated
            else "",
        )

    # The detail page --------------------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        if request.method not in ("GET", "HEAD"):
            raise PermissionDenied
        record = self._record(request, object_id)
        if record is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        body = request_log_body(record.body)
        conversation = request_log_conversation(endpoint=record.endpoint, level=record.level, body=body)
        usage = UsageRecord.objects.select_related("deployment").filter(request_id=record.request_id).first()
        context = {
            **self.admin_site.each_context(request),
            "title": f"Logged request {record.request_id}",
            "subtitle": None,
            "opts": self.opts,
            "original": record,
            "preserved_filters": self.get_preserved_filters(request),
            "record": record,
            "body": body,
            "stored_json": _json_text(body),
            "conversation": conversation,
            "parameters": [(name, _parameter_text(value)) for name, value in conversation.parameters.items()],
            "usage": usage,
            "usage_facts": _usage_facts(usage) if usage is not None else None,
            "usage_url": _admin_url(UsageRecord, "change", usage.pk) if usage is not None else "",
            "playground_url": (
                f"{reverse('playground')}?{urlencode({'log': record.request_id})}"
                if record.level == "full" and conversation.has_content
                else ""
            ),
            "key_url": _admin_url(record.api_key, "change", record.api_key_id) if record.api_key else "",
            "team_url": _admin_url(record.team, "change", record.team_id) if record.team else "",
            **(extra_context or {}),
        }
        return TemplateResponse(request, "admin/accounts/requestlog/detail.html", context)

    def _record(self, request, object_id) -> RequestLog | None:
        queryset = self.get_queryset(request).defer(None).select_related("api_key", "team", "user")
        record = queryset.filter(pk=unquote(object_id)).first() if str(object_id).isdigit() else None
        if record is not None and not self.has_view_permission(request, record):
            raise PermissionDenied
        return record

    @method_decorator(never_cache)
    def conversation_json(self, request, request_id: str):
        """The logged conversation for the playground: text messages, system prompt, model and settings. Staff with
        access to the request log only; JSON errors rather than the admin's login redirect, as a script asks."""
        user = request.user
        if not (user.is_active and user.is_staff and self.has_view_permission(request)):
            return _json_error(403, "forbidden", "Only staff with access to the request log may open logged requests.")
        if request.method != "GET":
            return _json_error(405, "method_not_allowed", "GET only.")
        record = self.get_queryset(request).defer(None).filter(request_id=request_id).first()
        if record is None:
            return _json_error(404, "not_found", f"No logged request has the id {request_id!r}.")
        if record.level != "full":
            return _json_error(
                409, "no_content", "This request was logged at the metadata level: it kept no conversation to open."
            )
        body = request_log_body(record.body)
        conversation = request_log_conversation(endpoint=record.endpoint, level=record.level, body=body)
        request_body = body.get("request") if isinstance(body.get("request"), dict) else {}
        return JsonResponse(
            {
                "request_id": record.request_id,
                "model": record.model,
                "endpoint": record.endpoint,
                "api_key_id": record.api_key_id,
                "truncated": record.truncated,
                "system": "\n\n".join(conversation.system),
                "messages": conversation_playground_messages(conversation),
                **conversation_playground_settings(request_body),
            }
        )


def _json_error(status: int, code: str, message: str) -> JsonResponse:
    return JsonResponse({"error": {"code": code, "message": message}}, status=status)


def _json_text(value) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2, default=repr).decode()


def _parameter_text(value) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} ms"


def _usage_facts(usage: UsageRecord) -> list[tuple[str, str, str]]:
    """(label, value, testid) rows of the usage record beside the conversation."""
    tokens = f"{usage.prompt_tokens:,} in / {usage.completion_tokens:,} out"
    if usage.tokens_estimated:
        tokens += " (estimated)"
    served = usage.model
    if usage.requested_model and usage.requested_model != usage.model:
        served = f"{usage.requested_model} → {usage.model}"
    facts = [
        ("status", f"{usage.status_code}" + (f" ({usage.error_type})" if usage.error_type else ""), "usage-status"),
        ("tokens", tokens, "usage-tokens"),
        ("cached prompt tokens", f"{usage.cached_tokens:,}", "usage-cached"),
        ("prompt cache writes", f"{usage.cache_write_tokens:,}", "usage-cache-writes"),
        ("reasoning tokens", f"{usage.reasoning_tokens:,}", "usage-reasoning"),
        ("cost", money(usage.cost), "usage-cost"),
        ("time to first byte", _ms(usage.ttfb_ms), "usage-ttfb"),
        ("upstream time to first byte", _ms(usage.ttfb_upstream_ms), "usage-ttfb-upstream"),
        ("duration", _ms(usage.duration_ms), "usage-duration"),
        ("streamed", "yes" if usage.stream else "no", "usage-stream"),
        ("model (asked → served)", served, "usage-model"),
        ("route", usage.route or "default", "usage-route"),
        ("provider", usage.provider or "-", "usage-provider"),
        ("deployment", usage.deployment.upstream_model if usage.deployment else "-", "usage-deployment"),
        ("attempts", str(usage.attempts), "usage-attempts"),
        ("response cache", "hit" if usage.cache_hit else "miss", "usage-cache"),
    ]
    if usage.cache_hit:
        facts.append(("saved by the cache", money(usage.cost_saved), "usage-cost-saved"))
    if usage.run_id:
        facts.append(("compare run", usage.run_id, "usage-run"))
    return facts
