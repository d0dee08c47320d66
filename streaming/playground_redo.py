"""Regenerating one model's answer in a saved playground run: the page's "Regenerate" runs the run's last turn again
for that model alone (a chat frame with `"regenerate": true`), and the new answer takes the old one's place in that
turn, so the saved run, reopened, shows the new answer once, not the prompt twice."""

from django.db import transaction
from django.utils import timezone

from accounts.models import PlaygroundRun
from aigateway.errors import GatewayError, bad_request
from streaming.playground_runs import run_not_found


def _refused(message: str, param: str = "regenerate") -> GatewayError:
    return bad_request(message, param=param)


@transaction.atomic
def playground_run_turn_redo(
    *,
    user_id: int,
    team_id: int | None,
    run_id: int | None,
    models: list[str],
    prompt: str,
    system: str,
    options: dict,
    stream_id: str,
) -> tuple[PlaygroundRun, int]:
    """Start the last turn of the user's run `run_id` again for its one model (`models`): that model's answer is
    running again under `stream_id`, the others stay as they were (playground_run_turn_save merges answers).
    Returns the run and the turn's index; a 400 for anything but one model of a finished last turn."""
    if run_id is None:
        raise _refused("'regenerate' needs the 'run_id' of the run whose last turn to run again", param="run_id")
    if len(models) != 1:
        raise _refused("'regenerate' runs one model's answer again: send exactly one model", param="models")
    run = PlaygroundRun.objects.select_for_update().filter(user_id=user_id, pk=run_id).first()
    if run is None:
        raise run_not_found(run_id)
    if (run.options or {}).get("arena"):
        raise _refused("an arena run's answers cannot be regenerated")
    if not run.turns:
        raise _refused(f"run {run_id} has no turn to run again")
    if run.active_stream_id:
        raise GatewayError(409, "run_in_progress", f"run {run_id}'s last turn is still running", param="run_id")
    [model] = models
    turns = list(run.turns)
    last = dict(turns[-1])
    if model not in (last.get("models") or []):
        raise _refused(f"'{model}' did not answer the last turn of run {run_id}", param="models")
    last.update(
        status="running",
        stream_id=stream_id,
        rerun=[model],
        started_at=timezone.now().isoformat(),
        answers={**(last.get("answers") or {}), model: {"status": "running", "text": ""}},
    )
    turns[-1] = last
    run.turns = turns
    run.options = {**(run.options or {}), **options}
    run.active_stream_id = stream_id
    run.save(update_fields=["turns", "options", "active_stream_id", "updated_at"])
    return run, len(turns) - 1
