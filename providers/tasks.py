"""Celery tasks for provider health; the beat schedule in settings runs `check_health`. (Health-check history
past GATEWAY_HEALTH_RETENTION_DAYS is deleted by the retention task, accounts.tasks.expire_logs.)"""

from celery import shared_task

from providers.health import provider_health_check, providers_health_check_all


@shared_task(name="providers.tasks.check_health", ignore_result=True)
def check_health() -> dict:
    results = providers_health_check_all()
    return {"up": sum(r.ok for r in results), "down": sum(not r.ok for r in results)}


@shared_task(name="providers.tasks.check_provider_health", ignore_result=True)
def check_provider_health(provider_id: int) -> bool:
    return provider_health_check(provider_id=provider_id).ok
