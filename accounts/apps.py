from django.apps import AppConfig


class AccountsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "accounts"

    def ready(self) -> None:
        from accounts.models import ApiKey, Budget, Team, Tier
        from providers.signals import connect_config_signals, connect_m2m_signal

        connect_config_signals(Tier, ApiKey, Team, Budget)
        connect_m2m_signal(Tier.allowed_models.through)
        connect_m2m_signal(Team.allowed_models.through)
        connect_m2m_signal(Team.members.through)
