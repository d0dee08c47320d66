"""Run the upstream LLM simulator (OpenAI and Anthropic wire formats) as a real HTTP server."""

from django.core.management.base import BaseCommand

from providers.simulator import simulator_serve


class Command(BaseCommand):
    help = "Run the upstream simulator; --port 0 picks a free port. Prints 'simulator listening on URL' when ready."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=9100)
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--api-key", default=None, help="require this key as a Bearer token or x-api-key")

    def handle(self, *args, port, host, api_key, **options):
        def announce(url: str) -> None:
            self.stdout.write(f"simulator listening on {url}")
            self.stdout.flush()

        simulator_serve(host=host, port=port, api_key=api_key, on_ready=announce)
