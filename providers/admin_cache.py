"""Purging the response cache from admin: an action on the model list (every scope's answers of each selected
model) and a page that purges every answer, reached from the model list or the dashboard and confirmed first.
Each says how many entries it deleted."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse
from redis.exceptions import RedisError

from providers.response_cache import cache_entry_count, cache_purge

# Where the purge page goes back to: the dashboard (its button) or the model list.
RETURN_TO = {"dashboard": "admin-dashboard", "models": "admin:providers_model_changelist"}
REDIS_DOWN = "The response cache's Redis did not answer ({}); nothing was purged."


@admin.action(description="Purge cached answers of the selected models", permissions=["change"])
def purge_cached_answers(modeladmin, request, queryset):
    names = list(queryset.values_list("name", flat=True))
    try:
        deleted = sum(cache_purge(model=name) for name in names)
    except RedisError as exc:
        modeladmin.message_user(request, REDIS_DOWN.format(type(exc).__name__), messages.ERROR)
        return
    modeladmin.message_user(request, f"{deleted} cached answer(s) of {len(names)} model(s) deleted.", messages.SUCCESS)


def cache_purge_all_view(request, *, model_admin):
    """GET or an unconfirmed POST: the confirmation page with the number of answers cached; a POST with
    confirm=yes: every answer deleted, then back where the operator came from."""
    if not model_admin.has_change_permission(request):
        raise PermissionDenied
    source = request.POST.get("return_to") or request.GET.get("return_to")
    return_to = source if source in RETURN_TO else "models"
    if request.method == "POST" and request.POST.get("confirm") == "yes":
        try:
            deleted = cache_purge()
        except RedisError as exc:
            model_admin.message_user(request, REDIS_DOWN.format(type(exc).__name__), messages.ERROR)
        else:
            model_admin.message_user(
                request, f"{deleted} cached answer(s) deleted (every model, team and user).", messages.SUCCESS
            )
        return HttpResponseRedirect(reverse(RETURN_TO[return_to]))
    try:
        entries = cache_entry_count()
    except RedisError:
        entries = None
    opts = model_admin.opts
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Purge every cached answer",
        "subtitle": None,
        "opts": opts,
        "changelist_url": reverse("admin:providers_model_changelist"),
        "entries": entries,
        "return_to": return_to,
        "cancel_url": reverse(RETURN_TO[return_to]),
    }
    return TemplateResponse(request, f"admin/{opts.app_label}/{opts.model_name}/cache_purge.html", context)
