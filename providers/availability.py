"""Which models cannot answer now because every provider that serves them is marked down by the health checks
(providers.health) or disabled: the playground leaves them out of its default selection and says so."""

from providers.models import Deployment, HealthStatus


def model_names_down() -> set[str]:
    """Names of enabled models whose enabled deployments all sit on providers that are down or disabled. A model
    with no enabled deployment is not counted: nothing is known to be down (a routing rule may serve it)."""
    served: set[str] = set()
    up: set[str] = set()
    rows = Deployment.objects.filter(enabled=True, model__enabled=True).values_list(
        "model__name", "provider__enabled", "provider__health_status"
    )
    for name, provider_enabled, health in rows:
        served.add(name)
        if provider_enabled and health != HealthStatus.DOWN:
            up.add(name)
    return served - up
