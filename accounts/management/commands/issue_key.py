"""`manage.py issue_key --tier NAME --name LABEL [--team TEAM] [--budget AMOUNT --budget-period day]`: issue an
API key (optionally in a team, with a budget of its own) and print its plaintext once."""

import argparse
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from accounts.budget_rules import budget_amount_parse
from accounts.budgets import PERIODS
from accounts.management.commands._key_lookup import expires_days
from accounts.models import ApiKey, Budget, Team, Tier
from accounts.services import api_key_issue, service_user_get_or_create
from accounts.spend import money
from aigateway.audit import audit_command


def budget_amount(text: str):
    """argparse type of `--budget`: an amount of money in GATEWAY_CURRENCY, not negative."""
    try:
        return budget_amount_parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--budget {exc}") from None


class Command(BaseCommand):
    help = (
        "Issue a new API key. The plaintext key is printed alone on the last line of output; "
        "it is not stored and cannot be shown again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--tier", required=True, help="tier name, e.g. free")
        parser.add_argument("--name", required=True, help="label for the key, e.g. the consumer's name")
        parser.add_argument("--user", help="owner's username (default: the built-in service user)")
        parser.add_argument("--expires-days", type=expires_days, help="key expires after this many days")
        parser.add_argument("--team", help="the team the key spends for (its models and budgets apply)")
        parser.add_argument(
            "--budget", type=budget_amount, help="a budget of the key's own, in GATEWAY_CURRENCY, e.g. 5 or 12.50"
        )
        parser.add_argument(
            "--budget-period", choices=PERIODS, help="the period the --budget amount covers (default: month)"
        )

    @audit_command("issue_key", action="issue")
    def handle(self, *args, **options):
        tier = Tier.objects.filter(name=options["tier"]).first()
        if tier is None:
            known = ", ".join(Tier.objects.values_list("name", flat=True)) or "none defined"
            raise CommandError(f"unknown tier '{options['tier']}' (tiers: {known})")

        if options["user"]:
            User = get_user_model()
            owner = User.objects.filter(**{User.USERNAME_FIELD: options["user"]}).first()
            if owner is None:
                raise CommandError(f"unknown user '{options['user']}'")
        else:
            owner = service_user_get_or_create()

        team = None
        if options["team"]:
            team = Team.objects.filter(name=options["team"]).first()
            if team is None:
                known = ", ".join(Team.objects.values_list("name", flat=True)[:20]) or "none defined"
                raise CommandError(f"unknown team '{options['team']}' (teams: {known})")
        if options["budget_period"] and options["budget"] is None:
            raise CommandError("--budget-period needs --budget (the amount)")

        name = options["name"].strip()
        if not name:
            raise CommandError("--name must not be blank")
        if len(name) > ApiKey._meta.get_field("name").max_length:
            raise CommandError(f"--name must be at most {ApiKey._meta.get_field('name').max_length} characters")
        expires_at = None
        if options["expires_days"]:
            expires_at = timezone.now() + timedelta(days=options["expires_days"])

        with transaction.atomic():
            issued = api_key_issue(owner=owner, tier=tier, name=name, expires_at=expires_at, team=team)
            key = issued.api_key
            budget = None
            if options["budget"] is not None:
                budget = Budget.objects.create(
                    scope="key", api_key=key, period=options["budget_period"] or "month", amount=options["budget"]
                )
        expiry = f"expires {key.expires_at:%Y-%m-%d %H:%M} UTC" if key.expires_at else "no expiry"
        in_team = f", team {team.name}" if team else ""
        self.stdout.write(
            f"Issued API key '{key.name}' (id {key.pk}, tier {tier.name}, owner {owner.get_username()}{in_team}, "
            f"{expiry})."
        )
        if budget is not None:
            self.stdout.write(f"Budget: {money(budget.amount)} per {budget.period}.")
        self.stdout.write("Store it now; it cannot be shown again:")
        self.stdout.write(issued.plaintext)
