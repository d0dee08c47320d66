from django.apps import AppConfig


class ProvidersConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "providers"

    def ready(self) -> None:
        from providers.models import Deployment, Model, Provider, RouteRule
        from providers.signals import connect_config_signals

        connect_config_signals(Provider, Model, Deployment, RouteRule)
