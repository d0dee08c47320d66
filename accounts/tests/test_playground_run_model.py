"""A playground run keeps what users typed and models wrote, NUL characters included (PostgreSQL's jsonb and
text refuse NUL: it is stored as U+FFFD)."""

import pytest
from django.contrib.auth import get_user_model

from accounts.models import PlaygroundRun, nul_free


def test_nul_free_replaces_nul_in_text_keys_and_nested_values():
    assert nul_free({"a\x00": ["x\x00y", {"k": "\x00"}, 3, None]}) == {
        "a\ufffd": ["x\ufffdy", {"k": "\ufffd"}, 3, None]
    }
    assert nul_free("plain") == "plain"


@pytest.mark.django_db
def test_a_run_with_nul_characters_is_saved_and_read_back():
    user = get_user_model().objects.create(username="nul-user")
    turn = {"prompt": "tool said \x00", "answers": {"m": {"text": "a\x00b"}}, "results": [{"content": "\x00"}]}
    run = PlaygroundRun.objects.create(user=user, title="t\x00", model_names=["m"], turns=[turn], options={"s": "\x00"})
    run.turns = [*run.turns, {"prompt": "again \x00"}]
    run.save(update_fields=["turns"])
    stored = PlaygroundRun.objects.get(pk=run.pk)
    assert stored.title == "t\ufffd"
    assert stored.turns[0]["answers"]["m"]["text"] == "a\ufffdb" and stored.turns[1]["prompt"] == "again \ufffd"
    assert stored.options == {"s": "\ufffd"}
