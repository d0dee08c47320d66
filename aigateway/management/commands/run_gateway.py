"""`manage.py run_gateway`: the gateway under uvicorn with the production server settings.

uvloop, the header and body read timeouts of aigateway.server, no access log, and a graceful-shutdown
wait of GATEWAY_SHUTDOWN_GRACE_SECONDS plus a margin: on SIGTERM the server stops accepting connections,
streams get the grace period to finish, the rest end with an error event, then the process exits.
"""

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand

from aigateway.server import uvicorn_options


class Command(BaseCommand):
    help = "Run the gateway's ASGI app under uvicorn with the production protocol, timeouts and graceful stop."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--workers", type=int, default=1, help="processes sharing the port")
        parser.add_argument("--log-level", default="info")

    def handle(self, *args, **options):
        server_options = uvicorn_options(settings)
        self.stdout.write(
            f"gateway on http://{options['host']}:{options['port']} "
            f"(header timeout {settings.GATEWAY_HEADER_TIMEOUT_SECONDS:g}s, "
            f"body timeout {settings.GATEWAY_BODY_TIMEOUT_SECONDS:g}s, "
            f"shutdown grace {settings.GATEWAY_SHUTDOWN_GRACE_SECONDS:g}s)"
        )
        self.stdout.flush()
        uvicorn.run(
            "aigateway.asgi:application",
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            log_level=options["log_level"],
            **server_options,
        )
