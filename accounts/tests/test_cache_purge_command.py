"""`manage.py cache_purge`: a model's answers in every scope, a team's, a user's, a model's within a scope, or
every one, counted in its output and checked against what is left in the real Redis; nothing selected, an
unknown team or user, and --all with a selection are refused with a clear error."""

from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from accounts.models import Team
from aigateway.redis import redis_sync
from tests.support.response_cache import cache_entries_put, cache_keys_left

pytestmark = pytest.mark.django_db


@pytest.fixture
def cached():
    """Entries of two models (one whose name holds a colon) in two teams and a user's scope."""
    research, ops = Team.objects.create(name="research"), Team.objects.create(name="ops")
    pat = get_user_model().objects.create_user("pat")
    entries = {}
    scopes = {"research": f"team:{research.pk}", "ops": f"team:{ops.pk}", "pat": f"user:{pat.pk}"}
    for scope_name, scope in scopes.items():
        for model in ("sim-a", "sim-a:8k"):
            entries[(scope_name, model)] = set(cache_entries_put(scope=scope, model=model, count=2))
    return entries


def purge(*args) -> str:
    out = StringIO()
    call_command("cache_purge", *args, stdout=out)
    return out.getvalue().strip()


def left_of(entries: dict, *gone: tuple[str, str]) -> set[str]:
    return set().union(*(keys for where, keys in entries.items() if where not in gone))


def test_model_purges_that_model_in_every_scope(cached):
    assert purge("--model", "sim-a") == "Deleted 6 cached answer(s) (model 'sim-a')."
    assert cache_keys_left() == left_of(cached, ("research", "sim-a"), ("ops", "sim-a"), ("pat", "sim-a"))


def test_team_purges_the_teams_scope(cached):
    assert purge("--team", "research") == "Deleted 4 cached answer(s) (team 'research')."
    assert cache_keys_left() == left_of(cached, ("research", "sim-a"), ("research", "sim-a:8k"))


def test_user_purges_the_users_scope(cached):
    assert purge("--user", "pat") == "Deleted 4 cached answer(s) (user 'pat')."
    assert cache_keys_left() == left_of(cached, ("pat", "sim-a"), ("pat", "sim-a:8k"))


def test_model_within_a_team(cached):
    assert purge("--model", "sim-a:8k", "--team", "ops") == "Deleted 2 cached answer(s) (model 'sim-a:8k', team 'ops')."
    assert cache_keys_left() == left_of(cached, ("ops", "sim-a:8k"))


def test_all_purges_every_answer_and_nothing_else(cached):
    redis_sync().set("gw:config:version", "v1")
    assert purge("--all") == "Deleted 12 cached answer(s) (all)."
    assert cache_keys_left() == set()
    assert redis_sync().get("gw:config:version") == b"v1"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "say what to purge: --model NAME, --team NAME, --user USERNAME, or --all"),
        (("--all", "--model", "sim-a"), "--all deletes every cached answer; give it without --model, --team or --user"),
        (("--team", "nobody"), "no team named 'nobody'"),
        (("--user", "nobody"), "no user named 'nobody'"),
    ],
)
def test_refused_without_a_clear_selection(cached, args, message):
    with pytest.raises(CommandError) as refused:
        purge(*args)
    assert str(refused.value) == message
    assert cache_keys_left() == left_of(cached)
