"""The audit trail of operational changes (django-auditlog): which rows are audited and how, and who made a
change. Every create, update and delete of a provider, public model, deployment, routing rule, tier, team, budget,
API key or user becomes one `auditlog.LogEntry` with its before and after values; secrets never enter it: their
fields read "changed", not their value, ciphertext or hash.

Who: in admin the logged-in user (AuditActorMiddleware, admin paths only), for a management command the command
(`audit_command`, remarks such as the key operation), for the YAML import its source (`audit_context`). Rows the
request path and the background tasks write (a key's last use, a provider's health) are left out: they are not
changes anyone made, and they are written with queryset updates, which send no signals anyway.
"""

import ipaddress
import os
import sys
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from uuid import uuid4

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.apps import apps
from django.conf import settings
from django.db.models.signals import pre_save
from django.urls import reverse

SECRET_SHOWN = "changed"
TIMESTAMPS = ["created_at", "updated_at"]
PROVIDER_HEALTH = [
    "health_status",
    "health_checked_at",
    "health_latency_ms",
    "health_consecutive_failures",
    "health_last_error",
]

# Model label -> django-auditlog registration options. `mask_fields` are secrets (shown as "changed" via
# `secret_shown`); `exclude_fields` are not operational changes; `m2m_fields` are logged as added/removed rows.
AUDITED_MODELS = {
    "providers.Provider": {
        "exclude_fields": [*TIMESTAMPS, *PROVIDER_HEALTH],
        "mask_fields": ["api_key_encrypted", "proxy_url_encrypted", "client_key_encrypted"],
        "mapping_fields": {
            "api_key_encrypted": "API key",
            "proxy_url_encrypted": "proxy URL",
            "client_key_encrypted": "client private key",
        },
    },
    "providers.Model": {"exclude_fields": TIMESTAMPS},
    "providers.Deployment": {},
    "providers.RouteRule": {"exclude_fields": TIMESTAMPS},
    "accounts.Tier": {"exclude_fields": TIMESTAMPS, "m2m_fields": ["allowed_models"]},
    "accounts.Team": {"exclude_fields": TIMESTAMPS, "m2m_fields": ["members", "allowed_models"]},
    "accounts.Budget": {"exclude_fields": TIMESTAMPS},
    # last_used_at moves with traffic (the usage flush): not a change anyone made.
    "accounts.ApiKey": {
        "exclude_fields": [*TIMESTAMPS, "last_used_at"],
        "mask_fields": ["key_hash"],
        "mapping_fields": {"key_hash": "key hash"},
    },
    # last_login moves with every sign-in.
    settings.AUTH_USER_MODEL: {
        "exclude_fields": ["last_login"],
        "mask_fields": ["password"],
        "m2m_fields": ["groups", "user_permissions"],
    },
}

# The remarks of the innermost audit context: {"via": ..., "action": ..., "source": ...}.
_remarks: ContextVar[dict | None] = ContextVar("gateway_audit_remarks", default=None)


def secret_shown(value: str) -> str:
    """django-auditlog's mask for a secret field: "changed" for any stored value, "" for none (the value, its
    ciphertext or hash is never kept; the library calls this only when the stored value did change)."""
    return SECRET_SHOWN if value and value != "None" else ""


def audit_register() -> None:
    """Register AUDITED_MODELS with django-auditlog and complete every entry as it is saved (AppConfig.ready)."""
    from auditlog import get_logentry_model
    from auditlog.registry import auditlog

    for label, options in AUDITED_MODELS.items():
        model = apps.get_model(label)
        # Other tables' links to the row ("deployments", "health_checks") are their rows' changes, not this one's
        # (the library would list them on a create as "providers.Deployment.None").
        reverse = [field.name for field in model._meta.get_fields() if field.auto_created and not field.concrete]
        options = {**options, "exclude_fields": [*options.get("exclude_fields", []), *reverse]}
        auditlog.unregister(model)
        auditlog.register(model, mask_callable="aigateway.audit.secret_shown", **options)
    pre_save.connect(_entry_complete, sender=get_logentry_model(), dispatch_uid="gateway_audit_entry_complete")


def _entry_complete(sender, instance, **kwargs) -> None:
    # Runs before the audit context's own receiver (connected later), which overwrites the remarks it sets.
    if instance.actor_id is None and not instance.additional_data:
        command = _running_command()
        if command:
            instance.additional_data = {"via": f"manage.py {command}"}
    if isinstance(instance.changes, dict):
        # A secret that was empty before and after (a new row without one) is no change at all.
        instance.changes = {
            field: change
            for field, change in instance.changes.items()
            if not (isinstance(change, list | tuple) and list(change) == ["", ""])
        }


def _running_command() -> str | None:
    """The management command this process runs (`manage.py createsuperuser`, `manage.py shell`), if any."""
    argv = sys.argv
    if len(argv) > 1 and os.path.basename(argv[0]) in ("manage.py", "django-admin"):
        return argv[1]
    return None


@contextmanager
def audit_context(*, actor=None, remote_addr: str | None = None, **remarks):
    """Attribute every audited change made inside to `actor` (a user, or None for a command) with `remarks`
    (`via=` says through what). Nested, the outer context stays in force and only gains the inner's remarks
    (the YAML import run by its command says the command, and the file)."""
    from auditlog.context import set_extra_data

    outer = _remarks.get()
    token = _remarks.set({**remarks, **(outer or {})})
    try:
        if outer is not None:
            yield
            return
        context = {
            "actor": actor,
            "remote_addr": remote_addr,
            # Read when each entry is saved, so a nested context's remarks are in it.
            "additional_data": _remarks_now,
            # One correlation id per admin request or command run: the admin list filters a whole save by it.
            "cid": uuid4().hex[:16],
        }
        with set_extra_data(context_data=context):
            yield
    finally:
        _remarks.reset(token)


def audit_content_types_fresh() -> None:
    """Look content types up afresh for the entries about to be written. An entry names its object's content type
    by id, which a process caches for its lifetime; a database recreated under a running process (a restore, a
    test flush) gives them new ids, and an entry with a stale one fails its foreign key and the change with it.
    Called where a process writes entries (an admin request, a playground key): cheap, and rare."""
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()


def _remarks_now() -> dict:
    """The remarks in force, a remark given as a function read now (None and "" left out)."""
    remarks = {key: value() if callable(value) else value for key, value in (_remarks.get() or {}).items()}
    return {key: value for key, value in remarks.items() if value not in (None, "")}


def audit_command(name: str, **remarks):
    """The audit context of `manage.py <name>`; usable as a decorator of a command's `handle`."""
    return audit_context(actor=None, via=f"manage.py {name}", **remarks)


def audit_secrets_rewritten(instance, fields: list[str], **remarks) -> None:
    """Record that secret columns of `instance` were rewritten by a queryset update (which sends no signal),
    e.g. re-encrypted under a new key: each field reads "changed"."""
    from auditlog import get_logentry_model

    LogEntry = get_logentry_model()
    changes = {field: [SECRET_SHOWN, SECRET_SHOWN] for field in fields}
    with audit_context(**remarks):
        LogEntry.objects.log_create(instance, action=LogEntry.Action.UPDATE, changes=changes)


def audit_who(entry) -> str:
    """Who made an audited change: the user, else the command or channel, else "system"."""
    if entry.actor_id is not None and entry.actor is not None:
        return entry.actor.get_username()
    remarks = entry.additional_data if isinstance(entry.additional_data, dict) else {}
    return str(remarks.get("via") or "system")


def audit_remarks(entry) -> str:
    """The remarks besides `via` (the key operation, the admin action, the imported file), one line."""
    remarks = entry.additional_data if isinstance(entry.additional_data, dict) else {}
    shown = [f"{key}: {value}" for key, value in remarks.items() if key != "via" and value not in (None, "")]
    if entry.remote_addr:
        shown.append(f"from {entry.remote_addr}")
    return ", ".join(shown)


@lru_cache(maxsize=1)
def _admin_prefix() -> str:
    return reverse("admin:index")


def _client_address(request) -> str | None:
    address = request.META.get("REMOTE_ADDR") or ""
    try:
        return str(ipaddress.ip_address(address))
    except ValueError:
        return None


def _admin_action(request):
    """A function naming the admin action a changelist POST ran (rotate_keys, revoke_keys, ...), else None."""

    def action() -> str | None:
        return request.POST.get("action") if request.method == "POST" else None

    return action


class AuditActorMiddleware:
    """Admin requests run in an audit context naming the logged-in user (and the admin action, if one was
    run). Other paths pass straight through: the API never writes audited rows, and pays one prefix test.

    Sync and async capable (django-auditlog's own middleware is sync only and would cost every request a
    thread hop). The user is not loaded here: `request.user` stays lazy until an entry is saved, in the
    admin's sync view."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.__acall__(request)
        if not request.path.startswith(_admin_prefix()):
            return self.get_response(request)
        with self._context(request):
            return self.get_response(request)

    async def __acall__(self, request):
        if not request.path.startswith(_admin_prefix()):
            return await self.get_response(request)
        with self._context(request):
            return await self.get_response(request)

    @staticmethod
    def _context(request):
        audit_content_types_fresh()
        return audit_context(
            actor=request.user, remote_addr=_client_address(request), via="admin", action=_admin_action(request)
        )
