"""`manage.py cache_purge [--model NAME] [--team NAME] [--user USERNAME] [--all]`: delete answers from the
response cache and print how many were deleted."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from redis.exceptions import RedisError

from accounts.cache_report import cache_team_scope
from accounts.models import Team
from providers.response_cache import cache_purge, cache_scope


class Command(BaseCommand):
    help = (
        "Delete cached answers: a model's (in every team and user), a team's or a user's (the cache of the "
        "user's keys without a team), a model's within a team or user, or with --all every one. Prints the "
        "number deleted."
    )

    def add_arguments(self, parser):
        parser.add_argument("--model", help="the public model name whose answers are deleted")
        parser.add_argument("--team", help="the team whose answers are deleted")
        parser.add_argument("--user", help="the username whose answers (of keys without a team) are deleted")
        parser.add_argument("--all", action="store_true", help="delete every cached answer")

    def handle(self, *args, **options):
        model, team_name, username = options["model"], options["team"], options["user"]
        if options["all"]:
            if model or team_name or username:
                raise CommandError("--all deletes every cached answer; give it without --model, --team or --user")
        elif not (model or team_name or username):
            raise CommandError("say what to purge: --model NAME, --team NAME, --user USERNAME, or --all")

        scopes: list[tuple[str, str]] = []  # (scope, how the output names it)
        if team_name:
            team = Team.objects.filter(name=team_name).first()
            if team is None:
                raise CommandError(f"no team named '{team_name}'")
            scopes.append((cache_team_scope(team_id=team.pk), f"team '{team.name}'"))
        if username:
            user = get_user_model().objects.filter(username=username).first()
            if user is None:
                raise CommandError(f"no user named '{username}'")
            scopes.append((cache_scope(team_id=None, owner_id=user.pk), f"user '{username}'"))

        try:
            if scopes:
                deleted = sum(cache_purge(model=model or None, scope=scope) for scope, _ in scopes)
            else:
                deleted = cache_purge(model=model or None)
        except RedisError as exc:
            raise CommandError(f"the response cache's Redis did not answer ({type(exc).__name__})") from None

        what = [f"model '{model}'"] if model else []
        what += [label for _, label in scopes]
        self.stdout.write(f"Deleted {deleted} cached answer(s) ({', '.join(what) or 'all'}).")
