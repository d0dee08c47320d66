"""Admin for the audit trail: the global list of every audited change (read-only for everyone, superusers
included), and the mixin that makes an audited object's "History" page its own trail, before and after."""

from urllib.parse import unquote

from auditlog import get_logentry_model
from auditlog.admin import LogEntryAdmin
from auditlog.mixins import AuditlogHistoryAdminMixin
from auditlog.render import render_logentry_changes_html
from django.contrib import admin
from django.contrib.admin.views.main import PAGE_VAR
from django.core.exceptions import PermissionDenied
from django.template.response import TemplateResponse
from django.utils.text import capfirst

from aigateway.audit import audit_remarks, audit_who

LogEntry = get_logentry_model()


class AuditEntryAdmin(LogEntryAdmin):
    """django-auditlog's list, saying which command or channel made a change that no user made."""

    list_display = ["created", "resource_url", "action", "msg_short", "user_url", "remarks", "cid_url"]
    readonly_fields = ["created", "resource_url", "action", "user_url", "remarks", "msg"]
    fieldsets = [
        (None, {"fields": ["created", "user_url", "remarks", "resource_url", "cid"]}),
        ("Changes", {"fields": ["action", "msg"]}),
    ]

    @admin.display(description="who")
    def user_url(self, entry):
        if entry.actor_id is not None:
            return super().user_url(entry)
        return audit_who(entry)

    @admin.display(description="remarks")
    def remarks(self, entry) -> str:
        return audit_remarks(entry)

    def has_delete_permission(self, request, obj=None):
        # Never from admin (the library's own answer lets a cascade through: nothing deletes entries here).
        return False


admin.site.unregister(LogEntry)
admin.site.register(LogEntry, AuditEntryAdmin)


class AuditHistoryAdminMixin(AuditlogHistoryAdminMixin):
    """An audited model's admin: the "History" button of its change page opens the object's audit trail
    (who, when, what, before and after; secrets read "changed")."""

    auditlog_history_template = "admin/audit_history.html"
    auditlog_history_per_page = 25

    def history_view(self, request, object_id, extra_context=None):
        return self.auditlog_history_view(request, object_id, extra_context)

    def auditlog_history_view(self, request, object_id, extra_context=None):
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        if not self.has_view_or_change_permission(request, obj):
            raise PermissionDenied
        entries = LogEntry.objects.get_for_object(obj).select_related("actor").order_by("-timestamp", "-pk")
        page = self.get_paginator(request, entries, self.auditlog_history_per_page).get_page(
            request.GET.get(PAGE_VAR, 1)
        )
        rows = [
            {
                "entry": entry,
                "who": audit_who(entry),
                "remarks": audit_remarks(entry),
                "changes": render_logentry_changes_html(entry),
            }
            for entry in page
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": f"History: {obj}",
            "subtitle": None,
            "module_name": str(capfirst(self.opts.verbose_name_plural)),
            "object": obj,
            "opts": self.opts,
            "page_obj": page,
            "page_var": PAGE_VAR,
            "rows": rows,
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.auditlog_history_template, context)
