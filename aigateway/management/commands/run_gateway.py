"""`manage.py run_gateway`: the gateway under uvicorn with the production server settings.

uvloop, the header and body read timeouts of aigateway.server, no access log, X-Forwarded-For believed from
FORWARDED_ALLOW_IPS only, and a graceful-shutdown wait of GATEWAY_SHUTDOWN_GRACE_SECONDS plus a margin: on
SIGTERM the process fails /ready and keeps serving for GATEWAY_DRAIN_SECONDS, then stops accepting
connections, streams get the grace period to finish, the rest end with an error event, and the process exits.

GATEWAY_WORKERS processes (every usable core by default; `--workers` overrides) share the port. With
more than one, this process is uvicorn's supervisor: it binds the socket, starts the workers with
multiprocessing's spawn (each imports the application afresh, so its caches, clients and background
tasks are its own), restarts one that dies, and on SIGTERM/SIGINT closes its own copy of the socket, passes
SIGTERM to every worker and waits for them, each draining (its copy still accepting) and then giving its own
streams the grace period. Settings are read here first, so the workers inherit the metrics folder
(PROMETHEUS_MULTIPROC_DIR) through the environment.
"""

import copy
import signal

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from uvicorn.supervisors import Multiprocess

from aigateway.server import uvicorn_options

APPLICATION = "aigateway.asgi:application"


class WorkerSupervisor(Multiprocess):
    """uvicorn's supervisor of worker processes, acting on SIGTERM/SIGINT inside the signal handler: it
    closes its own copy of the listening socket and passes SIGTERM to every worker at once. uvicorn's
    supervisor only looks at signals every 0.5 s; meanwhile its socket copy would keep the port taking
    connections no process serves (each reset when it finally closes) and the workers would start their
    grace period late. A second signal is not passed on: to a worker it would mean "stop now"."""

    def __init__(self, config, sockets) -> None:
        super().__init__(config, sockets)
        self.stopping = False
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop_at_once)

    def _stop_at_once(self, signum, frame) -> None:
        if not self.stopping:
            self.stopping = True
            for sock in self.sockets:
                sock.close()
            for process in self.processes:
                process.terminate()
        self.signal_queue.append(signum)

    def keep_subprocess_alive(self) -> None:
        if not self.stopping:  # workers told to stop are not pinged or replaced
            super().keep_subprocess_alive()

    def terminate_all(self) -> None:
        if not self.stopping:
            super().terminate_all()


def uvicorn_log_config() -> dict:
    """uvicorn's own log lines (startup, shutdown, errors) in the format of the gateway's: one JSON object
    per line when GATEWAY_LOG_FORMAT=json."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    if settings.GATEWAY_LOG_FORMAT == "json":
        config["formatters"] = {name: {"()": "aigateway.logs.JsonFormatter"} for name in config["formatters"]}
    return config


class Command(BaseCommand):
    help = "Run the gateway's ASGI app under uvicorn with the production protocol, timeouts and graceful stop."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers", type=int, default=None, help="processes sharing the port (default: GATEWAY_WORKERS)"
        )
        parser.add_argument("--log-level", default="info")

    def handle(self, *args, **options):
        workers = options["workers"] if options["workers"] is not None else settings.GATEWAY_WORKERS
        if workers < 1:
            raise CommandError(f"--workers must be at least 1, not {workers}")
        server_options = uvicorn_options(settings)
        self.stdout.write(
            f"gateway on http://{options['host']}:{options['port']} with {workers} worker process"
            f"{'es' if workers > 1 else ''} "
            f"(header timeout {settings.GATEWAY_HEADER_TIMEOUT_SECONDS:g}s, "
            f"body timeout {settings.GATEWAY_BODY_TIMEOUT_SECONDS:g}s, "
            f"drain {settings.GATEWAY_DRAIN_SECONDS:g}s, "
            f"shutdown grace {settings.GATEWAY_SHUTDOWN_GRACE_SECONDS:g}s, "
            f"proxies trusted {','.join(settings.FORWARDED_ALLOW_IPS) or 'none'})"
        )
        self.stdout.flush()
        listen = {
            "host": options["host"],
            "port": options["port"],
            "log_level": options["log_level"],
            "log_config": uvicorn_log_config(),
        }
        if workers == 1:
            uvicorn.run(APPLICATION, **listen, **server_options)
            return
        # What uvicorn.run does for workers > 1, with the supervisor above.
        config = uvicorn.Config(APPLICATION, workers=workers, **listen, **server_options)
        WorkerSupervisor(config, sockets=[config.bind_socket()]).run()
