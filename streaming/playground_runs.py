"""The playground's saved conversations (accounts.models.PlaygroundRun): each run of the page is kept per user,
with its models and its turns (each prompt and every model's answer with its done stats or error), so a reload or
another device reopens it, continues it, or resumes the turn still streaming (its `active_stream_id`).

A turn is written twice: when it starts (the prompt, its models, the stream it runs as) and when it ends (the
answers), from the run's own path, so a turn ends saved whether or not anyone is still watching it. A user keeps
at most GATEWAY_PLAYGROUND_HISTORY_MAX runs: the least recently used go when a new one is made.

A blind arena run (options["arena"]) is one battle of accounts.arena per turn, its two models the same on every
turn under the same sides; the page and shared links see its turns blind (streaming.playground_arena) until each
turn's vote saves the reveal beside it. A run may be shared as a read-only link (`share_token`) that its owner
and the members of its team can open.
"""

import secrets
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from accounts.arena import Battle, arena_battle_start, arena_vote_cast
from accounts.budgets import money
from accounts.models import ArenaVote, PlaygroundRun, Team
from aigateway.errors import GatewayError
from streaming.playground_arena import LABELS, SIDES, arena_run_models, arena_turn_view

TITLE_MAX = 80
# A saved answer (or its reasoning) keeps at most this many characters; past it the text is cut and marked, so
# one endless answer cannot make a run's row grow without bound.
ANSWER_TEXT_MAX = 1_000_000
# What a done event says about a model's answer that is worth keeping with it.
DONE_FIELDS = (
    "served_model",
    "route",
    "request_id",
    "provider",
    "finish_reason",
    "usage",
    "tokens_estimated",
    "ttft_ms",
    "duration_ms",
    "tokens_per_s",
    "cost",
    "cached",
    "tool_calls",
)
# What a model's error event says of what its unfinished call bills, kept with its answer.
ERROR_BILLED_FIELDS = ("usage", "tokens_estimated", "cost", "ttft_ms")


def run_not_found(run_id) -> GatewayError:
    return GatewayError(404, "run_not_found", f"you have no saved playground run {run_id!r}", param="run_id")


def _text(content) -> str:
    """A message's text: a string, or the text parts of a content list joined."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            part["text"]
            for part in content
            if isinstance(part, dict)
            and part.get("type") in ("text", "input_text")
            and isinstance(part.get("text"), str)
        )
    return ""


def playground_turn_prompt(body: dict) -> tuple[str, str]:
    """The prompt and the system prompt of a chat frame: its last user message and its first system message (of
    the first model's messages, when each model has its own history; the page sends the same prompt to all)."""
    messages = body.get("messages")
    by_model = body.get("messages_by_model")
    if messages is None and isinstance(by_model, dict) and by_model:
        messages = next(iter(by_model.values()))
    if not isinstance(messages, list):
        return "", ""
    entries = [message for message in messages if isinstance(message, dict)]
    # A turn that only sends tool results back (streaming.playground_tools) has no prompt of its own.
    last = next((m for m in reversed(entries) if m.get("role") not in ("system", "developer")), {})
    prompt = (
        ""
        if last.get("role") == "tool"
        else next((_text(m.get("content")) for m in reversed(entries) if m.get("role") == "user"), "")
    )
    system = next((_text(m.get("content")) for m in entries if m.get("role") in ("system", "developer")), "")
    return prompt, system


def _title(prompt: str) -> str:
    title = " ".join(prompt.split())
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1].rstrip() + "…"


def _capped(text: str) -> tuple[str, bool]:
    return (text, False) if len(text) <= ANSWER_TEXT_MAX else (text[:ANSWER_TEXT_MAX], True)


@dataclass
class TurnRecorder:
    """Collects a turn's answers from the compare events that go by (pure: no I/O), for playground_run_turn_save."""

    models: list[str]
    texts: dict[str, list[str]] = field(default_factory=dict)
    reasoning: dict[str, list[str]] = field(default_factory=dict)
    answers: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.models:
            self.texts[name] = []
            self.reasoning[name] = []
            self.answers[name] = {"status": "running"}

    def observe(self, event: dict) -> None:
        kind, model = event.get("type"), event.get("model")
        if kind == "complete":
            for name, result in (event.get("results") or {}).items():
                answer = self.answers.get(name)
                if answer is not None and answer["status"] == "running":
                    answer["status"] = result.get("status", "error")
                    if "error" in result:
                        answer["error"] = result["error"]
            return
        if model not in self.answers:
            return
        answer = self.answers[model]
        if kind == "chunk":
            self.texts[model].append(event.get("content") or "")
        elif kind == "reasoning":
            self.reasoning[model].append(event.get("content") or "")
        elif kind == "start":
            answer["request_id"] = event.get("request_id")
            answer["cache"] = event.get("cache")
        elif kind == "done":
            answer["status"] = "done"
            answer["done"] = {name: event.get(name) for name in DONE_FIELDS}
        elif kind == "error" and answer["status"] in ("running", "done"):
            answer["status"] = "cancelled" if event.get("status") == 499 else "error"
            answer["error"] = {name: event.get(name) for name in ("status", "code", "message")}
            # With what the unfinished call bills (usage, cost), when the event says.
            answer["error"].update({name: event[name] for name in ERROR_BILLED_FIELDS if name in event})

    def result(self, *, unfinished: str = "") -> dict[str, dict]:
        """Every model's answer so far; with `unfinished` ("interrupted", "cancelled"), one still running is marked
        as ended that way."""
        out = {}
        for name in self.models:
            answer = dict(self.answers[name])
            if unfinished and answer["status"] == "running":
                answer["status"] = unfinished
            text, cut = _capped("".join(self.texts[name]))
            reasoning, reasoning_cut = _capped("".join(self.reasoning[name]))
            answer["text"] = text
            if reasoning:
                answer["reasoning"] = reasoning
            if cut or reasoning_cut:
                answer["truncated"] = True
            out[name] = answer
        return out


def playground_run_get(*, user_id: int, run_id) -> PlaygroundRun | None:
    """One of the user's own runs, or None (another user's run is as unknown as one that never existed)."""
    if isinstance(run_id, bool) or not isinstance(run_id, int):
        return None
    return PlaygroundRun.objects.filter(user_id=user_id, pk=run_id).first()


def playground_run_is_arena(run: PlaygroundRun) -> bool:
    return bool((run.options or {}).get("arena"))


def playground_run_sides(run: PlaygroundRun) -> dict[str, str]:
    """An arena run's models by side ("a", "b"), as every turn of it keeps them."""
    return dict(((run.options or {}).get("arena") or {}).get("sides") or {})


def _models_shown(model_names: list[str], options: dict) -> list[str]:
    return arena_run_models(model_names, options) if (options or {}).get("arena") else model_names


def playground_runs_list(*, user_id: int, limit: int | None = None) -> list[dict]:
    """The user's runs, most recently used first, without their turns (an arena run's models under their labels
    until it has a vote)."""
    runs = (
        PlaygroundRun.objects.filter(user_id=user_id)
        .order_by("-updated_at", "-pk")
        .values("pk", "title", "model_names", "options", "active_stream_id", "created_at", "updated_at")
    )
    return [
        {
            "id": run["pk"],
            "title": run["title"],
            "models": _models_shown(run["model_names"], run["options"]),
            "arena": bool((run["options"] or {}).get("arena")),
            "running": bool(run["active_stream_id"]),
            "created_at": run["created_at"].isoformat(),
            "updated_at": run["updated_at"].isoformat(),
        }
        for run in (runs[:limit] if limit else runs)
    ]


def _turns_shown(run: PlaygroundRun) -> list[dict]:
    return [arena_turn_view(turn) if turn.get("arena") else turn for turn in run.turns]


def playground_run_payload(*, run: PlaygroundRun) -> dict:
    """A run as the page reopens it: its models, options and every turn; an arena run's turns blind until voted
    on, its options without the sides."""
    options = {name: value for name, value in (run.options or {}).items() if name != "arena"}
    return {
        "id": run.pk,
        "title": run.title,
        "models": _models_shown(run.model_names, run.options),
        "options": options,
        "arena": playground_run_is_arena(run),
        "turns": _turns_shown(run),
        "active_stream_id": run.active_stream_id or None,
        "share_token": run.share_token or None,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
    }


@transaction.atomic
def playground_run_turn_start(
    *,
    user_id: int,
    team_id: int | None,
    run_id: int | None,
    models: list[str],
    prompt: str,
    system: str,
    options: dict,
    stream_id: str,
    results: dict[str, list[dict]] | None = None,
) -> tuple[PlaygroundRun, int]:
    """Start a turn: a new run (the user's oldest beyond GATEWAY_PLAYGROUND_HISTORY_MAX deleted), or the next turn
    of the user's run `run_id` (404 for any other). Returns the run and the turn's index in it. `results`: the tool
    results each model got with this turn (streaming.playground_tools)."""
    turn = {
        "prompt": prompt,
        "system": system,
        "models": list(models),
        "status": "running",
        "stream_id": stream_id,
        "started_at": timezone.now().isoformat(),
        "answers": {name: {"status": "running", "text": ""} for name in models},
    }
    if results:
        turn["results"] = results
    if run_id is None:
        run = PlaygroundRun.objects.create(
            user_id=user_id,
            team_id=team_id,
            title=_title(prompt),
            model_names=list(models),
            turns=[turn],
            options=options,
            active_stream_id=stream_id,
        )
        _history_trim(user_id=user_id, keep=run.pk)
        return run, 0
    run = PlaygroundRun.objects.select_for_update().filter(user_id=user_id, pk=run_id).first()
    if run is None:
        raise run_not_found(run_id)
    run.turns = [*run.turns, turn]
    run.model_names = [*run.model_names, *(name for name in models if name not in run.model_names)]
    run.options = options
    run.active_stream_id = stream_id
    if not run.title:
        run.title = _title(prompt)
    run.save(update_fields=["turns", "model_names", "options", "active_stream_id", "title", "updated_at"])
    return run, len(run.turns) - 1


def _history_trim(*, user_id: int, keep: int) -> None:
    cap = max(settings.GATEWAY_PLAYGROUND_HISTORY_MAX, 1)
    newest_first = PlaygroundRun.objects.filter(user_id=user_id).exclude(pk=keep).order_by("-updated_at", "-pk")
    stale = list(newest_first.values_list("pk", flat=True)[cap - 1 :])
    if stale:
        PlaygroundRun.objects.filter(pk__in=stale).delete()


@transaction.atomic
def playground_run_turn_save(
    *, run_id: int, turn_index: int, stream_id: str, answers: dict[str, dict], status: str = "complete"
) -> bool:
    """Store a turn's answers and end it; the run's stream is cleared unless a later turn runs by now. False when
    the run (or the turn) is gone: deleted meanwhile, by its owner or by the history cap."""
    run = PlaygroundRun.objects.select_for_update().filter(pk=run_id).first()
    if run is None or turn_index >= len(run.turns):
        return False
    turns = list(run.turns)
    turns[turn_index] = {
        **turns[turn_index],
        "status": status,
        # Merged: a regenerated answer (streaming.playground_redo) replaces its model's alone.
        "answers": {**turns[turn_index].get("answers", {}), **answers},
        "ended_at": timezone.now().isoformat(),
    }
    run.turns = turns
    fields = ["turns", "updated_at"]
    if run.active_stream_id == stream_id:
        run.active_stream_id = ""
        fields.append("active_stream_id")
    run.save(update_fields=fields)
    return True


@transaction.atomic
def playground_run_stream_lost(*, user_id: int, run_id: int, stream_id: str) -> None:
    """A turn whose stream can no longer be resumed (its process ended, or its buffer expired) ends as
    interrupted, keeping whatever it had saved."""
    run = PlaygroundRun.objects.select_for_update().filter(user_id=user_id, pk=run_id).first()
    if run is None:
        return
    turns = [
        {
            **turn,
            "status": "interrupted",
            "answers": {
                name: {**answer, "status": "interrupted"} if answer.get("status") == "running" else answer
                for name, answer in turn.get("answers", {}).items()
            },
        }
        if turn.get("stream_id") == stream_id and turn.get("status") == "running"
        else turn
        for turn in run.turns
    ]
    run.turns = turns
    if run.active_stream_id == stream_id:
        run.active_stream_id = ""
    run.save(update_fields=["turns", "active_stream_id", "updated_at"])


# The blind arena


def arena_run_mismatch(run_id: int, *, arena: bool) -> GatewayError:
    if arena:
        return GatewayError(
            400, "not_an_arena_run", f"run {run_id} is not a blind arena run: start a new one", param="run_id"
        )
    return GatewayError(
        400,
        "arena_run",
        f"run {run_id} is a blind arena run: it keeps its two models, so send no 'models'",
        param="models",
    )


@transaction.atomic
def playground_arena_turn_start(
    *,
    user_id: int,
    team_id: int | None,
    run_id: int | None,
    models: list[str],
    prompt: str,
    system: str,
    options: dict,
    stream_id: str,
    shuffle: bool,
) -> tuple[PlaygroundRun, int, Battle]:
    """Start a turn of a blind arena run and its battle (accounts.arena): a new run's two models get their sides at
    random; a later turn keeps them (`shuffle=False`, `models` in side order). The turn and the run keep the sides;
    nothing is saved when the battle cannot be started (503 without Redis)."""
    run, turn_index = playground_run_turn_start(
        user_id=user_id,
        team_id=team_id,
        run_id=run_id,
        models=models,
        prompt=prompt,
        system=system,
        options=options,
        stream_id=stream_id,
    )
    battle = arena_battle_start(
        user_id=user_id, team_id=team_id, models=models, run_id=run.pk, turn=turn_index, prompt=prompt, shuffle=shuffle
    )
    sides = {"a": battle.model_a, "b": battle.model_b}
    turns = list(run.turns)
    turns[turn_index] = {**turns[turn_index], "arena": {"battle_id": battle.battle_id, "sides": sides}}
    revealed = any((turn.get("arena") or {}).get("reveal") for turn in turns)
    run.turns = turns
    run.options = {**run.options, "arena": {"sides": sides, "revealed": revealed}}
    run.save(update_fields=["turns", "options", "updated_at"])
    return run, turn_index, battle


def _money(value) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return money(Decimal(str(value)))
    except (InvalidOperation, ValueError):
        return None


@transaction.atomic
def playground_arena_vote(*, user_id: int, battle_id: str, outcome: str) -> dict:
    """Cast the user's vote on a battle (accounts.arena.arena_vote_cast, with its refusals) and keep the reveal
    with the saved turn the battle was, so the page and shared links show that turn's names from then on. A side
    whose usage record is not written yet is priced (and its provider named) from the saved answer."""
    reveal = arena_vote_cast(user_id=user_id, battle_id=battle_id, outcome=outcome)
    vote = ArenaVote.objects.filter(battle_id=battle_id).values("run_id", "turn").first()
    run = None
    if vote and vote["run_id"] is not None:
        run = PlaygroundRun.objects.select_for_update().filter(pk=vote["run_id"], user_id=user_id).first()
    if run is None or vote["turn"] >= len(run.turns):
        return reveal
    turns = list(run.turns)
    turn = turns[vote["turn"]]
    arena = turn.get("arena") or {}
    if arena.get("battle_id") != battle_id:
        return reveal
    for side in SIDES:
        done = (turn.get("answers") or {}).get(reveal[side]["model"], {}).get("done") or {}
        if reveal[side]["cost"] is None:
            reveal[side]["cost"] = _money(done.get("cost"))
        if not reveal[side]["provider"]:
            reveal[side]["provider"] = done.get("provider")
    kept = {side: {name: reveal[side][name] for name in ("model", "provider", "cost")} for side in SIDES}
    turns[vote["turn"]] = {
        **turn,
        "arena": {**arena, "vote": outcome, "reveal": {**kept, "currency": reveal["currency"]}},
    }
    run.turns = turns
    run.options = {**run.options, "arena": {**(run.options.get("arena") or {}), "revealed": True}}
    run.save(update_fields=["turns", "options", "updated_at"])
    return reveal


# Read-only links


def playground_run_share(*, user_id: int, run_id: int) -> PlaygroundRun | None:
    """Share one of the user's runs: its unguessable token, made once (sharing again keeps the same link); None
    for a run that is not the user's."""
    with transaction.atomic():
        run = PlaygroundRun.objects.select_for_update().filter(user_id=user_id, pk=run_id).first()
        if run is not None and not run.share_token:
            run.share_token = secrets.token_urlsafe(24)
            run.save(update_fields=["share_token"])
    return run


def playground_run_unshare(*, user_id: int, run_id: int) -> PlaygroundRun | None:
    """Stop sharing one of the user's runs: its link answers 404 from now on (sharing again makes a new one)."""
    run = PlaygroundRun.objects.filter(user_id=user_id, pk=run_id).first()
    if run is not None and run.share_token:
        run.share_token = None
        run.save(update_fields=["share_token"])
    return run


def playground_run_shared_get(*, token: str, user_id: int) -> PlaygroundRun | None:
    """The run a share link names, for its owner or a member of the run's team; None for anyone else, as for a
    link that does not exist (or no longer does)."""
    if not isinstance(token, str) or not token:
        return None
    run = PlaygroundRun.objects.select_related("user", "team").filter(share_token=token).first()
    if run is None:
        return None
    if run.user_id == user_id:
        return run
    if run.team_id is not None and Team.objects.filter(pk=run.team_id, members__id=user_id).exists():
        return run
    return None


def playground_run_shared_payload(*, run: PlaygroundRun) -> dict:
    """A shared run as its read-only page shows it: title, owner, team, models and turns (an arena run's turns
    blind until voted on); nothing about the key it ran as."""
    return {
        "title": run.title,
        "owner": run.user.get_username(),
        "team": run.team.name if run.team_id else None,
        "arena": playground_run_is_arena(run),
        "labels": LABELS,
        # An arena run's names show only on its voted turns, never for the run as a whole.
        "models": [LABELS[side] for side in SIDES] if playground_run_is_arena(run) else run.model_names,
        "turns": _turns_shown(run),
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
    }
