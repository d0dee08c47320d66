from django.apps import AppConfig


class StreamingConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "streaming"

    def ready(self) -> None:
        from streaming.session_sockets import session_sockets_connect

        session_sockets_connect()
