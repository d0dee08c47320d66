"""The gateway's kernel app: settings, wiring and shared services; ready() registers the audit trail."""

from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "aigateway"

    def ready(self) -> None:
        from aigateway.audit import audit_register

        audit_register()
