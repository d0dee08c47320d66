"""The playground's blind arena: battles, votes and the leaderboards made from them.

A battle is one prompt answered by two models shown only as "Model A" and "Model B". It lives in Redis for a day
(`gw:arena:battle:<id>`, a hash): who started it, under which team, the prompt's SHA-256 and which model is which
side, then each side's answer (its request id, and whether it finished without an error or a stop). Its user may
vote once (`a`, `b`, `tie` or `bad`) on a battle whose two answers both finished; the vote becomes an `ArenaVote`
row and the answer names the models, with their providers and costs.

Ratings are a Bradley-Terry model fitted by the `choix` library over the votes of a team (or all of them), on an
Elo-like scale, with bootstrap confidence intervals (accounts.arena_ratings).
"""

import csv
import hashlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import orjson
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone
from redis.exceptions import RedisError

from accounts.budgets import money
from accounts.models import ApiKey, ArenaVote, PlaygroundRun, Team, UsageRecord
from aigateway.errors import GatewayError
from aigateway.redis import redis_async, redis_sync
from aigateway.retention import Expiry, rows_expire

BATTLE_KEY_PREFIX = "gw:arena:battle:"
BOARD_KEY_PREFIX = "gw:arena:board:"
# A battle not voted on within a day is forgotten (its vote would be refused as unknown).
BATTLE_TTL_SECONDS = 86400
BATTLE_ID_MAX = 64  # ArenaVote.battle_id
REQUEST_ID_MAX = 64  # ArenaVote.request_id_a/b
MODEL_NAME_MAX = 128  # ArenaVote.model_a/b
SIDES = ("a", "b")
OUTCOMES = tuple(value for value, _label in ArenaVote.OUTCOMES)

# A computed leaderboard is kept this long under a hash of the votes it was computed from: an unchanged set of
# votes is never bootstrapped twice, a new vote gives a new hash at once.
BOARD_CACHE_SECONDS = 3600
CSV_COLUMNS = (
    "battle_id",
    "created_at",
    "user",
    "team",
    "run_id",
    "turn",
    "prompt_hash",
    "model_a",
    "model_b",
    "outcome",
    "request_id_a",
    "request_id_b",
)
# Cells a spreadsheet would run as a formula (OWASP "CSV injection"): model and team names are typed by people.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

# Notes one side's answer, only on a battle that still exists (a late answer must not recreate an expired one
# without its models). KEYS[1] battle; ARGV: side, request id, ok ("1"/"0"), provider.
_ANSWER_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'request_id_' .. ARGV[1], ARGV[2], 'ok_' .. ARGV[1], ARGV[3],
           'provider_' .. ARGV[1], ARGV[4])
return 1
"""


@dataclass(frozen=True)
class Battle:
    """One blind battle: `model_a` answers as "Model A", `model_b` as "Model B"."""

    battle_id: str
    user_id: int
    team_id: int | None
    run_id: int | None
    turn: int
    prompt_hash: str
    model_a: str
    model_b: str
    created_at: float

    def model_of(self, side: str) -> str:
        return self.model_a if side == "a" else self.model_b


# Battles


def _battle_key(battle_id: str) -> str:
    return BATTLE_KEY_PREFIX + battle_id


def battle_not_found(battle_id: str) -> GatewayError:
    return GatewayError(
        404,
        "battle_not_found",
        f"there is no arena battle {battle_id!r} of yours (battles can be voted on for a day)",
        param="battle_id",
    )


def arena_unavailable() -> GatewayError:
    return GatewayError(503, "arena_unavailable", "the arena cannot be reached right now; try again shortly")


def _battle_new(
    *,
    user_id: int,
    team_id: int | None,
    models: list[str],
    run_id: int | None,
    turn: int,
    prompt: str,
    shuffle: bool = True,
) -> Battle:
    """The battle to store: two distinct models of `models` (all of them when there are two), A and B at random;
    without `shuffle`, exactly two models, the first as A."""
    if not isinstance(models, list | tuple) or not all(isinstance(name, str) and name for name in models):
        raise GatewayError(400, "invalid_models", "models must be a list of model names", param="models")
    distinct = list(dict.fromkeys(models))
    if len(distinct) < 2:
        raise GatewayError(400, "arena_needs_two_models", "an arena battle needs two different models", param="models")
    if any(len(name) > MODEL_NAME_MAX for name in distinct):
        raise GatewayError(
            400, "invalid_models", f"a model name is at most {MODEL_NAME_MAX} characters", param="models"
        )
    if not isinstance(prompt, str):
        raise GatewayError(400, "invalid_prompt", "prompt must be a string", param="prompt")
    if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
        raise GatewayError(400, "invalid_turn", "turn must be a whole number from 0", param="turn")
    if shuffle:
        # secrets' generator: which side a model gets must not be predictable from earlier battles.
        model_a, model_b = secrets.SystemRandom().sample(distinct, 2)
    elif len(distinct) == 2:
        model_a, model_b = distinct
    else:
        raise GatewayError(
            400, "arena_needs_two_models", "a battle in a fixed order takes exactly two models", param="models"
        )
    return Battle(
        battle_id="bat_" + secrets.token_hex(16),
        user_id=int(user_id),
        team_id=None if team_id is None else int(team_id),
        run_id=None if run_id is None else int(run_id),
        turn=turn,
        prompt_hash=hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest(),
        model_a=model_a,
        model_b=model_b,
        created_at=time.time(),
    )


def _battle_fields(battle: Battle) -> dict[str, str]:
    return {
        "user_id": str(battle.user_id),
        "team_id": "" if battle.team_id is None else str(battle.team_id),
        "run_id": "" if battle.run_id is None else str(battle.run_id),
        "turn": str(battle.turn),
        "prompt_hash": battle.prompt_hash,
        "model_a": battle.model_a,
        "model_b": battle.model_b,
        "created_at": repr(battle.created_at),
    }


def arena_battle_start(
    *,
    user_id: int,
    team_id: int | None,
    models: list[str],
    run_id: int | None = None,
    turn: int = 0,
    prompt: str,
    shuffle: bool = True,
) -> Battle:
    """Start a blind battle for `user_id` (running under `team_id`, the key's team): two distinct models of
    `models` (the two given, or two picked at random from more) in random order as A and B, kept in Redis for a
    day with the SHA-256 of `prompt`. `run_id` and `turn` tie it to a saved playground run. 400 for fewer than
    two distinct models, 503 when Redis cannot be reached. `shuffle=False` keeps the order given (the first of
    exactly two models as A): the next turn of a multi-turn battle keeps its two models under the same labels."""
    battle = _battle_new(
        user_id=user_id, team_id=team_id, models=models, run_id=run_id, turn=turn, prompt=prompt, shuffle=shuffle
    )
    try:
        with redis_sync().pipeline(transaction=True) as pipe:
            pipe.hset(_battle_key(battle.battle_id), mapping=_battle_fields(battle))
            pipe.expire(_battle_key(battle.battle_id), BATTLE_TTL_SECONDS)
            pipe.execute()
    except (RedisError, OSError):
        raise arena_unavailable() from None
    return battle


async def arena_battle_start_async(
    *,
    user_id: int,
    team_id: int | None,
    models: list[str],
    run_id: int | None = None,
    turn: int = 0,
    prompt: str,
    shuffle: bool = True,
) -> Battle:
    """`arena_battle_start` for async callers (the playground's websocket consumer)."""
    battle = _battle_new(
        user_id=user_id, team_id=team_id, models=models, run_id=run_id, turn=turn, prompt=prompt, shuffle=shuffle
    )
    try:
        async with redis_async().pipeline(transaction=True) as pipe:
            pipe.hset(_battle_key(battle.battle_id), mapping=_battle_fields(battle))
            pipe.expire(_battle_key(battle.battle_id), BATTLE_TTL_SECONDS)
            await pipe.execute()
    except (RedisError, OSError):
        raise arena_unavailable() from None
    return battle


def _answer_args(*, battle_id, side, request_id, ok, provider) -> list[str]:
    if not isinstance(battle_id, str) or not battle_id or len(battle_id) > BATTLE_ID_MAX:
        raise GatewayError(400, "invalid_battle_id", "battle_id must be a battle's id", param="battle_id")
    if side not in SIDES:
        raise GatewayError(400, "invalid_side", "side must be 'a' or 'b'", param="side")
    if not isinstance(request_id, str) or len(request_id) > REQUEST_ID_MAX:
        raise GatewayError(400, "invalid_request_id", "request_id must be a request id", param="request_id")
    return [side, request_id, "1" if ok else "0", str(provider or "")[:64]]


def arena_answer_record(*, battle_id: str, side: str, request_id: str, ok: bool, provider: str = "") -> None:
    """Note one side's answer: its request id (the usage record that prices it) and whether it finished without
    an error or a stop (`ok`); `provider` (optional) names who served it until its usage record is written. A
    second call for the same side replaces the first. 404 when the battle is unknown or expired, 503 when Redis
    cannot be reached."""
    args = _answer_args(battle_id=battle_id, side=side, request_id=request_id, ok=ok, provider=provider)
    try:
        noted = redis_sync().register_script(_ANSWER_SCRIPT)(keys=[_battle_key(battle_id)], args=args)
    except (RedisError, OSError):
        raise arena_unavailable() from None
    if not noted:
        raise battle_not_found(battle_id)


async def arena_answer_record_async(
    *, battle_id: str, side: str, request_id: str, ok: bool, provider: str = ""
) -> None:
    """`arena_answer_record` for async callers (the playground's websocket consumer)."""
    args = _answer_args(battle_id=battle_id, side=side, request_id=request_id, ok=ok, provider=provider)
    try:
        noted = await redis_async().register_script(_ANSWER_SCRIPT)(keys=[_battle_key(battle_id)], args=args)
    except (RedisError, OSError):
        raise arena_unavailable() from None
    if not noted:
        raise battle_not_found(battle_id)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def _battle_read(battle_id: str) -> tuple[Battle, dict[str, str]] | None:
    """The stored battle and its raw fields (the answers among them), or None when unknown or expired."""
    raw = redis_sync().hgetall(_battle_key(battle_id))
    if not raw or b"model_a" not in raw:
        return None
    fields = {_text(name): _text(value) for name, value in raw.items()}
    battle = Battle(
        battle_id=battle_id,
        user_id=int(fields["user_id"]),
        team_id=int(fields["team_id"]) if fields.get("team_id") else None,
        run_id=int(fields["run_id"]) if fields.get("run_id") else None,
        turn=int(fields.get("turn") or 0),
        prompt_hash=fields["prompt_hash"],
        model_a=fields["model_a"],
        model_b=fields["model_b"],
        created_at=float(fields.get("created_at") or 0),
    )
    return battle, fields


def already_voted() -> GatewayError:
    return GatewayError(409, "already_voted", "this battle has a vote already: one vote per battle")


def _existing(model, pk: int | None) -> int | None:
    return pk if pk is not None and model.objects.filter(pk=pk).exists() else None


def arena_vote_cast(*, user_id: int, battle_id: str, outcome: str) -> dict:
    """Cast `user_id`'s vote on their own battle: `outcome` is `a` or `b` (that side was better), `tie`, or `bad`
    (both were bad). Refused with 400 for another outcome, 404 for a battle that is not the user's (or unknown, or
    expired), 409 for a second vote, for an answer not finished yet, and for a stopped or failed answer.

    Writes the ArenaVote row and returns the reveal: for each side its model, the provider that served it and its
    cost (a decimal string in `currency`, from the answer's usage record; null while that is not written yet)."""
    if outcome not in OUTCOMES:
        raise GatewayError(400, "invalid_outcome", "outcome must be 'a', 'b', 'tie' or 'bad'", param="outcome")
    if not isinstance(battle_id, str) or not battle_id or len(battle_id) > BATTLE_ID_MAX:
        raise GatewayError(400, "invalid_battle_id", "battle_id must be a battle's id", param="battle_id")
    try:
        stored = _battle_read(battle_id)
    except (RedisError, OSError):
        raise arena_unavailable() from None
    if stored is None:
        if ArenaVote.objects.filter(battle_id=battle_id, user_id=user_id).exists():
            raise already_voted()
        raise battle_not_found(battle_id)
    battle, fields = stored
    if battle.user_id != user_id:
        raise battle_not_found(battle_id)
    if ArenaVote.objects.filter(battle_id=battle_id).exists():
        raise already_voted()
    if any(f"ok_{side}" not in fields for side in SIDES):
        raise GatewayError(409, "answers_pending", "both answers must finish before a vote")
    if any(fields[f"ok_{side}"] != "1" for side in SIDES):
        raise GatewayError(409, "answer_not_ok", "a stopped or failed answer cannot be voted on")
    request_ids = {side: fields.get(f"request_id_{side}", "") for side in SIDES}
    try:
        with transaction.atomic():
            ArenaVote.objects.create(
                battle_id=battle_id,
                created_at=timezone.now(),
                user_id=user_id,
                # The team or run may have been deleted since the battle started: the vote keeps what still is.
                team_id=_existing(Team, battle.team_id),
                run_id=_existing(PlaygroundRun, battle.run_id),
                turn=battle.turn,
                prompt_hash=battle.prompt_hash,
                model_a=battle.model_a,
                model_b=battle.model_b,
                outcome=outcome,
                request_id_a=request_ids["a"],
                request_id_b=request_ids["b"],
            )
    except IntegrityError:
        raise already_voted() from None
    return arena_reveal(battle=battle, outcome=outcome, request_ids=request_ids, fields=fields)


def arena_reveal(*, battle: Battle, outcome: str, request_ids: dict[str, str], fields: dict[str, str]) -> dict:
    """What a vote shows: each side's model, provider and cost (from its usage record when written)."""
    records = {
        row["request_id"]: row
        for row in UsageRecord.objects.filter(request_id__in=[rid for rid in request_ids.values() if rid]).values(
            "request_id", "provider", "cost"
        )
    }
    sides = {}
    for side in SIDES:
        record = records.get(request_ids[side])
        provider = (record or {}).get("provider") or fields.get(f"provider_{side}") or None
        sides[side] = {
            "model": battle.model_of(side),
            "provider": provider,
            "cost": money(record["cost"]) if record is not None else None,
            "request_id": request_ids[side] or None,
        }
    return {
        "battle_id": battle.battle_id,
        "outcome": outcome,
        "currency": settings.GATEWAY_CURRENCY,
        **sides,
    }


def _vote_counts(team_id: int | None) -> list[tuple[str, str, str, int]]:
    votes = ArenaVote.objects.all() if team_id is None else ArenaVote.objects.filter(team_id=team_id)
    return [
        (row["model_a"], row["model_b"], row["outcome"], row["votes"])
        for row in votes.order_by()
        .values("model_a", "model_b", "outcome")
        .annotate(votes=Count("id"))
        .order_by("model_a", "model_b", "outcome")
    ]


def arena_leaderboard(*, team_id: int | None) -> dict:
    """The leaderboard of one team's votes (the votes cast under that team), or of every vote (`team_id` None):
    `{"team": name | None, "models": [{"model", "battles", "wins", "ties", "bad", "rating", "ci_low",
    "ci_high"}, ...], "matrix": {row: {column: share | None}}}`, best rating first (see
    accounts.arena_ratings.arena_standings). 404 for an unknown team."""
    team_name = None
    if team_id is not None:
        team_name = Team.objects.filter(pk=team_id).values_list("name", flat=True).first()
        if team_name is None:
            raise GatewayError(404, "team_not_found", f"there is no team {team_id!r}", param="team")
    # Here, not at the top: the rating libraries stay out of the processes that never compute a leaderboard.
    from accounts.arena_ratings import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, arena_standings

    counts = _vote_counts(team_id)
    # The bootstrap is the costly part: computed once per distinct set of votes (the cache key is their digest).
    digest = hashlib.sha256(orjson.dumps([BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, counts])).hexdigest()
    cache_key = BOARD_KEY_PREFIX + digest
    try:
        cached = redis_sync().get(cache_key)
    except (RedisError, OSError):
        cached = None
    if cached is not None:
        standings, matrix = orjson.loads(cached)
    else:
        standings, matrix = arena_standings(counts=counts)
        try:
            redis_sync().set(cache_key, orjson.dumps([standings, matrix]), ex=BOARD_CACHE_SECONDS)
        except (RedisError, OSError):
            pass  # only a cache: the next call computes it again
    return {"team": team_name, "models": standings, "matrix": matrix}


# Who sees which leaderboard


def arena_teams_visible(*, user_id: int, is_staff: bool) -> list[Team]:
    """The teams whose leaderboards a user may see, by name: every team for staff, else the teams the user is a
    member of and the teams of the user's own keys (the overall board is everyone's)."""
    teams = Team.objects.all()
    if not is_staff:
        key_teams = ApiKey.objects.filter(owner_id=user_id, team__isnull=False).values("team_id")
        teams = teams.filter(Q(members__id=user_id) | Q(pk__in=key_teams)).distinct()
    return list(teams.order_by("name"))


def arena_team_resolve(*, value: str | None, user_id: int, is_staff: bool) -> Team | None:
    """The team a `team` parameter names (its id, else its name) among those the user may see; None (overall)
    for no value. 404 for a team that does not exist or is not the user's, the same answer for both."""
    if value is None or value == "":
        return None
    visible = arena_teams_visible(user_id=user_id, is_staff=is_staff)
    text = str(value).strip()
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if text.isascii() and text.isdigit():
        for team in visible:
            if team.pk == int(text):
                return team
    for team in visible:
        if team.name == text:
            return team
    raise GatewayError(404, "team_not_found", f"there is no team {text!r} of yours", param="team")


# Retention and export


def arena_votes_expire(*, older_than, batch_size: int, deadline: float | None = None) -> Expiry:
    """Delete the votes cast before `older_than`, in batches through the `created_at` index."""
    return rows_expire(ArenaVote, field="created_at", older_than=older_than, batch_size=batch_size, deadline=deadline)


def _cell(value) -> str:
    text = "" if value is None else str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def arena_votes_csv(votes, out) -> None:
    """Write the votes of a queryset as CSV to `out` (a text stream), one row each, oldest first."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in arena_vote_rows(votes):
        writer.writerow([_cell(row[column]) for column in CSV_COLUMNS])


def arena_vote_rows(votes) -> Iterator[dict]:
    rows = votes.order_by("created_at", "pk").values(
        "battle_id",
        "created_at",
        "user__username",
        "team__name",
        "run_id",
        "turn",
        "prompt_hash",
        "model_a",
        "model_b",
        "outcome",
        "request_id_a",
        "request_id_b",
    )
    for row in rows.iterator(chunk_size=2000):
        row["user"] = row.pop("user__username") or ""
        row["team"] = row.pop("team__name") or ""
        row["created_at"] = row["created_at"].isoformat()
        yield row
