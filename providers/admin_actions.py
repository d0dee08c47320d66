"""Admin actions for providers (wired into ProviderAdmin.actions)."""

from django.contrib import admin, messages

from providers.health import providers_health_check


@admin.action(description="Check health now")
def check_health_now(modeladmin, request, queryset):
    results = providers_health_check(provider_ids=queryset.values_list("pk", flat=True))
    if not results:
        modeladmin.message_user(request, "No providers selected.", messages.WARNING)
        return
    up = [r for r in results if r.ok]
    down = [r for r in results if not r.ok]
    summary = f"Checked {len(results)} provider(s): {len(up)} up, {len(down)} down."
    if down:
        details = "; ".join(f"{r.provider_name}: {r.error}" for r in down)
        modeladmin.message_user(request, f"{summary} {details}", messages.WARNING)
    else:
        timings = ", ".join(f"{r.provider_name} {r.latency_ms:.0f} ms" for r in up)
        modeladmin.message_user(request, f"{summary} {timings}", messages.SUCCESS)
