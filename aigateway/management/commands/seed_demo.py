"""`manage.py seed_demo`: a working demo against the upstream simulator, safe to run again.

Imports the demo providers, models and tiers through the config import (Claude Code's own model names
reach the demo through an alias, so it needs no model settings), makes sure a superuser `admin` exists,
and prints the API key named "demo". The key is issued once; its plaintext is kept in `var/demo-key`
(local, not in git, readable by its owner only) and printed again on every run, so clients set up
against the demo keep working and its usage history stays. Only when that file is gone, or its key was
revoked, is a new demo key issued (the unusable old one is revoked, never deleted).
"""

import os
import secrets
from pathlib import Path

import yaml
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.keys import key_hash, key_looks_valid
from accounts.models import ApiKey, Tier
from accounts.services import api_key_issue, api_key_revoke
from aigateway.audit import audit_command
from providers.config_import import ConfigImportError, gateway_config_import

DEFAULT_SIMULATOR_URL = "http://127.0.0.1:9100"
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"
ADMIN_USERNAME = "admin"
DEMO_KEY_NAME = "demo"
DEMO_KEY_TIER = "pro"
DEMO_KEY_FILE = "demo-key"
# Claude Code asks for its own model names (claude-opus-..., claude-haiku-...) when none is configured;
# the demo serves them all with its Anthropic-dialect model. Patterns of lower-numbered models are tried
# first and a real model's own name always wins, so a high number keeps this a last resort: a model named
# claude-... or another model's claude-* pattern (alias_order 0 unless set) is chosen before it.
CLAUDE_CODE_MODEL = "sim-claude"
CLAUDE_CODE_ALIASES = ["claude-*"]
CLAUDE_CODE_ALIAS_ORDER = 1000


def demo_key_path() -> Path:
    return Path(settings.VAR_DIR) / DEMO_KEY_FILE


def demo_key_read() -> str | None:
    try:
        plaintext = demo_key_path().read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return plaintext if key_looks_valid(plaintext) else None


def demo_key_write(plaintext: str) -> None:
    """Write the file whole (a crash leaves the old one or the new one), readable by its owner only."""
    path = demo_key_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(plaintext + "\n")
    os.replace(partial, path)


def demo_key_usable(owner, plaintext: str | None) -> ApiKey | None:
    """The demo key the kept plaintext opens, if it still works."""
    if plaintext is None:
        return None
    api_key = ApiKey.objects.filter(key_hash=key_hash(plaintext), owner=owner, enabled=True).first()
    if api_key is None or (api_key.expires_at is not None and api_key.expires_at <= timezone.now()):
        return None
    return api_key


def demo_config(simulator_url: str) -> dict:
    return {
        "providers": [
            {
                "name": "sim",
                "dialect": "openai",
                "base_url": f"{simulator_url}/v1",
                "api_key": "sk-simulator-demo",
                "timeout_connect": 5,
                "timeout_read": 60,
            },
            {
                "name": "sim-anthropic",
                "dialect": "anthropic",
                "base_url": simulator_url,
                "api_key": "sk-simulator-demo",
                "timeout_connect": 5,
                "timeout_read": 60,
            },
        ],
        "models": [
            {
                "name": "sim-fast",
                "description": "Simulator, fast deterministic echo.",
                "kinds": ["chat", "vision", "completions"],
                "deployments": [{"provider": "sim", "upstream_model": "sim-echo"}],
            },
            {
                "name": "sim-embed",
                "description": "Simulator embeddings: deterministic vectors of the input.",
                "kinds": ["embeddings"],
                "deployments": [{"provider": "sim", "upstream_model": "sim-embed"}],
            },
            {
                "name": "sim-slow",
                "description": "Simulator, 60 tokens at one every 50 ms.",
                "deployments": [{"provider": "sim", "upstream_model": "sim-echo?tokens=60&interval_ms=50"}],
            },
            {
                "name": CLAUDE_CODE_MODEL,
                "description": "Simulator behind the Anthropic dialect; serves Claude Code's own claude-* names.",
                "aliases": CLAUDE_CODE_ALIASES,
                "alias_order": CLAUDE_CODE_ALIAS_ORDER,
                "deployments": [{"provider": "sim-anthropic", "upstream_model": "sim-echo"}],
            },
            {
                "name": "sim-thinker",
                "description": "Simulator that reasons (8 thinking tokens) before a 40-token answer.",
                "deployments": [{"provider": "sim", "upstream_model": "sim-echo?reasoning=8&tokens=40&interval_ms=40"}],
            },
            {
                "name": "sim-failover",
                "description": "First deployment always answers 500; the gateway fails over to the second.",
                "deployments": [
                    {"provider": "sim", "upstream_model": "sim-echo?fail=500", "priority": 0},
                    {"provider": "sim", "upstream_model": "sim-echo", "priority": 1},
                ],
            },
        ],
        "tiers": [
            {
                "name": "free",
                "rpm": 60,
                "tpm": 100000,
                "max_concurrent": 5,
                "daily_tokens": 1000000,
                "max_output_tokens": 4096,
            },
            {"name": "pro", "rpm": 600, "max_concurrent": 50},
            {"name": "playground", "rpm": 120, "max_concurrent": 16, "daily_tokens": 2000000, "max_compare_models": 4},
        ],
    }


class Command(BaseCommand):
    help = (
        "Set up the demo against the upstream simulator (GATEWAY_SIMULATOR_URL, default "
        f"{DEFAULT_SIMULATOR_URL}): providers, models, tiers, a superuser '{ADMIN_USERNAME}' and an "
        f"API key named '{DEMO_KEY_NAME}'. Safe to run again: the demo key is kept (its plaintext in "
        f"var/{DEMO_KEY_FILE}) and printed on every run."
    )

    @audit_command("seed_demo")
    def handle(self, *args, **options):
        simulator_url = os.environ.get("GATEWAY_SIMULATOR_URL", DEFAULT_SIMULATOR_URL).rstrip("/")
        public_url = os.environ.get("GATEWAY_PUBLIC_URL", DEFAULT_PUBLIC_URL).rstrip("/")

        config_text = yaml.safe_dump(demo_config(simulator_url), sort_keys=False)
        try:
            summary = gateway_config_import(data_text=config_text, source_name="seed_demo")
        except ConfigImportError as exc:
            raise CommandError("demo configuration was rejected:\n" + "\n".join(exc.problems)) from None
        self.stdout.write(f"Demo configuration for the simulator at {simulator_url}:")
        for line in summary.lines():
            self.stdout.write(f"  {line}")

        with transaction.atomic():
            User = get_user_model()
            admin_user = User.objects.filter(username=ADMIN_USERNAME).first()
            password = None
            if admin_user is None:
                password = secrets.token_urlsafe(12)
                admin_user = User.objects.create_superuser(
                    username=ADMIN_USERNAME, email="admin@example.com", password=password
                )
            plaintext = demo_key_read()
            demo_key = demo_key_usable(admin_user, plaintext)
            revoked = 0
            if demo_key is None:
                # Keys whose plaintext is lost cannot be handed out again: revoked, their usage history kept.
                for stale in ApiKey.objects.filter(owner=admin_user, name=DEMO_KEY_NAME, enabled=True):
                    api_key_revoke(api_key=stale)
                    revoked += 1
                issued = api_key_issue(owner=admin_user, tier=Tier.objects.get(name=DEMO_KEY_TIER), name=DEMO_KEY_NAME)
                plaintext = issued.plaintext
                # Inside the transaction: a key that could not be kept is not issued either.
                demo_key_write(plaintext)

        if password is None:
            self.stdout.write(
                f"User '{ADMIN_USERNAME}' already exists; its password is unchanged "
                f"(set a new one with `python manage.py changepassword {ADMIN_USERNAME}`)."
            )
            password_note = "password unchanged"
        else:
            self.stdout.write(f"Created superuser '{ADMIN_USERNAME}'; the password is shown only now.")
            password_note = f"password {password}"
        if demo_key is not None:
            self.stdout.write(f"API key '{DEMO_KEY_NAME}' is the one issued before (kept in var/{DEMO_KEY_FILE}).")
        else:
            revoked_note = " (the previous one, whose plaintext was lost, is revoked)" if revoked else ""
            self.stdout.write(
                f"Issued API key '{DEMO_KEY_NAME}' on tier {DEMO_KEY_TIER}{revoked_note}; kept in var/{DEMO_KEY_FILE}."
            )
        self.stdout.write("")
        # No model settings needed: the CLI's own claude-* names reach CLAUDE_CODE_MODEL through its alias.
        self.stdout.write(f"Claude Code: ANTHROPIC_BASE_URL={public_url} ANTHROPIC_API_KEY={plaintext} claude")
        self.stdout.write(f"Playground: {public_url}/playground/  (log in as the admin user below)")
        self.stdout.write(f"Admin:      {public_url}/admin/  (user {ADMIN_USERNAME}, {password_note})")
        self.stdout.write(f"API key:    {plaintext}")
