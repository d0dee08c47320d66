"""The arena's ratings (accounts.arena_ratings) against cases worked out by hand: Bradley-Terry maximum-likelihood
strengths on the 1000 + 400 * log10 scale, ties and "both bad" as half wins, the regularized fit where no
maximum-likelihood estimate exists, and bootstrap intervals that bracket the ratings and never change for the same
votes."""

import math
import random

import pytest

from accounts.arena_ratings import arena_standings

LOG2 = 400 * math.log10(2)  # 120.41...: the gap between two models of which one wins 2 times in 3


def by_model(standings: list[dict]) -> dict[str, dict]:
    return {row["model"]: row for row in standings}


def test_three_models_get_the_strengths_that_solve_the_likelihood_equations():
    # Strengths 1 : 2 : 4 for a, b, c. Each pair's wins are exactly what those strengths expect (b beats a 2 in 3,
    # c beats b 2 in 3, c beats a 4 in 5), so they satisfy the likelihood equations (observed wins = expected
    # wins for every model), whose solution is unique: a, b, c sit 400*log10(2) apart around the mean 1000.
    counts = [
        ("b", "a", "a", 2), ("b", "a", "b", 1),
        ("c", "b", "a", 2), ("c", "b", "b", 1),
        ("a", "c", "b", 4), ("a", "c", "a", 1),
    ]  # fmt: skip
    standings, matrix = arena_standings(counts=counts, resamples=0)

    rows = by_model(standings)
    assert [row["model"] for row in standings] == ["c", "b", "a"]
    assert rows["b"]["rating"] == pytest.approx(1000.0, abs=0.05)
    assert rows["c"]["rating"] == pytest.approx(1000 + LOG2, abs=0.05)
    assert rows["a"]["rating"] == pytest.approx(1000 - LOG2, abs=0.05)
    assert {name: (row["battles"], row["wins"]) for name, row in rows.items()} == {
        "a": (8, 2),
        "b": (6, 3),
        "c": (8, 6),
    }
    assert matrix["c"]["a"] == 0.8 and matrix["a"]["c"] == 0.2
    assert matrix["b"]["a"] == pytest.approx(0.6667, abs=1e-4) and matrix["a"]["b"] == pytest.approx(0.3333, abs=1e-4)


def test_two_models_differ_by_the_log_odds_of_the_win_share():
    # p = 30 / 40 = 0.75: x is 400 * log10(0.75 / 0.25) = 190.85 above y, the mean stays at 1000.
    standings, matrix = arena_standings(counts=[("x", "y", "a", 30), ("x", "y", "b", 10)], resamples=0)

    rows = by_model(standings)
    gap = 400 * math.log10(3)
    assert rows["x"]["rating"] == pytest.approx(1000 + gap / 2, abs=0.05)
    assert rows["y"]["rating"] == pytest.approx(1000 - gap / 2, abs=0.05)
    assert matrix == {"x": {"y": 0.75}, "y": {"x": 0.25}}


def test_a_tie_is_half_a_win_each_way_and_bad_counts_as_a_tie_but_apart():
    # 2 wins for x, 0 for y, 2 ties: x has 3 of 4 (p = 0.75), the same as 3 wins and 1 loss.
    with_ties, _ = arena_standings(counts=[("x", "y", "a", 2), ("x", "y", "tie", 2)], resamples=0)
    with_bad, _ = arena_standings(counts=[("x", "y", "a", 2), ("y", "x", "bad", 2)], resamples=0)
    plain, _ = arena_standings(counts=[("x", "y", "a", 3), ("x", "y", "b", 1)], resamples=0)

    assert [r["rating"] for r in with_ties] == [r["rating"] for r in plain] == [r["rating"] for r in with_bad]
    assert by_model(with_ties)["x"]["rating"] == pytest.approx(1000 + 200 * math.log10(3), abs=0.05)
    ties, bad = by_model(with_ties), by_model(with_bad)
    assert (ties["x"]["wins"], ties["x"]["ties"], ties["x"]["bad"], ties["x"]["battles"]) == (2, 2, 0, 4)
    assert (ties["y"]["wins"], ties["y"]["ties"], ties["y"]["bad"]) == (0, 2, 0)
    assert (bad["x"]["wins"], bad["x"]["ties"], bad["x"]["bad"], bad["y"]["bad"]) == (2, 0, 2, 2)


def test_a_model_that_never_lost_gets_the_add_one_estimate_not_an_infinite_one():
    # No maximum-likelihood estimate exists for 10 wins and no loss; the regularized fit is Laplace's
    # (10 + 1) / (0 + 1) for two models: 400 * log10(11) apart.
    standings, _ = arena_standings(counts=[("x", "y", "a", 10)], resamples=50)

    rows = by_model(standings)
    assert rows["x"]["rating"] - rows["y"]["rating"] == pytest.approx(400 * math.log10(11), abs=0.1)
    assert all(math.isfinite(row["ci_low"]) and math.isfinite(row["ci_high"]) for row in standings)


def test_models_that_never_met_still_get_finite_ratings_around_the_mean():
    standings, matrix = arena_standings(counts=[("a", "b", "a", 3), ("a", "b", "b", 1), ("c", "d", "a", 2)])

    ratings = [row["rating"] for row in standings]
    assert all(math.isfinite(rating) for rating in ratings)
    assert sum(ratings) / len(ratings) == pytest.approx(1000, abs=0.1)
    assert matrix["a"]["c"] is None and matrix["a"]["b"] == 0.75


def _random_votes(seed: int, models: list[str], strengths: list[float], n: int) -> list[tuple[str, str, str, int]]:
    rng = random.Random(seed)
    votes = []
    for _ in range(n):
        i, j = rng.sample(range(len(models)), 2)
        roll = rng.random()
        if roll < 0.1:
            outcome = "tie"
        elif roll < 0.15:
            outcome = "bad"
        else:
            outcome = "a" if rng.random() < strengths[i] / (strengths[i] + strengths[j]) else "b"
        votes.append((models[i], models[j], outcome, 1))
    return votes


def test_bootstrap_intervals_bracket_the_ratings_and_are_the_same_for_the_same_votes():
    models = ["m1", "m2", "m3", "m4"]
    votes = _random_votes(7, models, [1.0, 1.5, 3.0, 6.0], 400)

    first, _ = arena_standings(counts=votes)
    shuffled = votes[:]
    random.Random(3).shuffle(shuffled)
    again, _ = arena_standings(counts=shuffled)  # same votes read in another order
    other_seed, _ = arena_standings(counts=votes, seed=99)

    assert first == again
    assert [row["model"] for row in first] == ["m4", "m3", "m2", "m1"]
    for row in first:
        assert row["ci_low"] < row["rating"] < row["ci_high"], row
        assert 10 < row["ci_high"] - row["ci_low"] < 400, row
    assert [(r["ci_low"], r["ci_high"]) for r in other_seed] != [(r["ci_low"], r["ci_high"]) for r in first]
    # Another seed moves the interval's ends a little, never the ratings.
    assert [r["rating"] for r in other_seed] == [r["rating"] for r in first]


def test_more_votes_narrow_the_interval():
    few, _ = arena_standings(counts=[("x", "y", "a", 6), ("x", "y", "b", 2)])
    many, _ = arena_standings(counts=[("x", "y", "a", 600), ("x", "y", "b", 200)])

    width = {name: row["ci_high"] - row["ci_low"] for name, row in by_model(few).items()}
    narrow = {name: row["ci_high"] - row["ci_low"] for name, row in by_model(many).items()}
    assert narrow["x"] * 4 < width["x"]
    assert by_model(few)["x"]["rating"] == pytest.approx(by_model(many)["x"]["rating"], abs=0.05)


def test_no_votes_is_an_empty_board():
    assert arena_standings(counts=[]) == ([], {})
    assert arena_standings(counts=[("x", "x", "a", 3)]) == ([], {})  # a model against itself is no battle
