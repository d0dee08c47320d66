"""Ratings of the playground's blind arena: a Bradley-Terry model fitted by the `choix` library over vote counts,
on an Elo-like scale, with bootstrap confidence intervals and a win-rate matrix. Pure computation, no I/O.

Imported only where a leaderboard is computed (accounts.arena): numpy, scipy and choix add about 90 MB and half a
second to a process, which the gateway's relay processes do not need.
"""

import math
from collections.abc import Iterable

import choix
import numpy as np
from scipy.sparse.csgraph import connected_components

OUTCOMES = ("a", "b", "tie", "bad")

# Ratings: 1000 + 400 * log10(strength), the mean of the rated models anchored at 1000.
RATING_BASE = 1000.0
RATING_SCALE = 400.0
BOOTSTRAP_RESAMPLES = 200
# The bootstrap draws from a generator seeded with this, so the same votes always give the same intervals.
BOOTSTRAP_SEED = 20240601
CI_PERCENTILES = (2.5, 97.5)
# When the maximum-likelihood strengths do not exist (a model that never lost, or models that never met through
# any chain of battles), choix's LSR chain is regularized with this rate between every pair: about one virtual
# win each way per pair (for two models exactly Laplace's add-one: (wins + 1) / (losses + 1)).
REGULARIZATION = 0.5
FIT_MAX_ITERATIONS = 1000
FIT_TOLERANCE = 1e-9


def _log_strengths(comp: np.ndarray) -> np.ndarray:
    """Bradley-Terry log-strengths (natural log, mean 0 over the models that played) from a matrix of wins,
    `comp[i, j]` = wins of i over j (halves for ties); NaN for a model without battles."""
    n = comp.shape[0]
    params = np.full(n, np.nan)
    played = np.flatnonzero((comp + comp.T).sum(axis=1) > 0)
    if len(played) < 2:
        return params
    sub = comp[np.ix_(played, played)]
    # The maximum-likelihood estimate exists when every model can be reached from every other through wins.
    components, _labels = connected_components(sub > 0, directed=True, connection="strong")
    alpha = 0.0 if components == 1 else REGULARIZATION
    try:
        fitted = choix.ilsr_pairwise_dense(sub, alpha=alpha, max_iter=FIT_MAX_ITERATIONS, tol=FIT_TOLERANCE)
    except (RuntimeError, ValueError):
        fitted = choix.ilsr_pairwise_dense(sub, alpha=REGULARIZATION, max_iter=FIT_MAX_ITERATIONS, tol=FIT_TOLERANCE)
    params[played] = fitted - fitted.mean()
    return params


def _ratings(params: np.ndarray) -> np.ndarray:
    return RATING_BASE + RATING_SCALE * params / math.log(10)


def _wins_matrix(n: int, categories: list[tuple[int, int, str]], counts: np.ndarray) -> np.ndarray:
    comp = np.zeros((n, n))
    for (a, b, outcome), count in zip(categories, counts, strict=True):
        if outcome == "a":
            comp[a, b] += count
        elif outcome == "b":
            comp[b, a] += count
        else:  # tie and bad: half a win each way
            comp[a, b] += count / 2
            comp[b, a] += count / 2
    return comp


def _round(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 1)


def arena_standings(
    *,
    counts: Iterable[tuple[str, str, str, int]],
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[list[dict], dict]:
    """Ratings and the win-rate matrix from vote counts `(model_a, model_b, outcome, votes)`.

    The ratings are the maximum-likelihood strengths of a Bradley-Terry model (choix's iterative Luce Spectral
    Ranking over the matrix of wins), on an Elo-like scale: 1000 + 400 * log10(strength), anchored so that the
    mean rating is 1000; two models rated 400 apart have the first win 10 times out of 11. A tie counts as half a
    win for each side, and so does a `bad` vote (both answers bad says neither was better); `ties` and `bad` are
    counted apart in the standings. When no maximum-likelihood estimate exists (a model that never lost, models
    never linked by any chain of battles) the fit is regularized: about one virtual win each way per pair.

    `ci_low` and `ci_high` are the 2.5th and 97.5th percentiles of the ratings over `resamples` bootstrap
    resamples of the votes (drawn with replacement, as many as there are), from a generator seeded with `seed`:
    the same votes always give the same figures. A model absent from a resample is left out of its percentiles.

    The matrix maps each model to every other model to the share of their battles it won (ties and bad votes
    half), or None when they never met. Standings are sorted by rating, best first."""
    tally: dict[tuple[str, str, str], int] = {}
    for model_a, model_b, outcome, votes in counts:
        if model_a == model_b or outcome not in OUTCOMES or votes <= 0:
            continue
        tally[(model_a, model_b, outcome)] = tally.get((model_a, model_b, outcome), 0) + int(votes)
    models = sorted({name for model_a, model_b, _outcome in tally for name in (model_a, model_b)})
    if not models:
        return [], {}
    index = {name: position for position, name in enumerate(models)}
    # Sorted categories: the bootstrap draws depend only on the set of votes, never on the order they were read.
    keys = sorted(tally)
    categories = [(index[a], index[b], outcome) for a, b, outcome in keys]
    observed = np.array([tally[key] for key in keys], dtype=float)
    n = len(models)
    comp = _wins_matrix(n, categories, observed)
    ratings = _ratings(_log_strengths(comp))

    total = int(observed.sum())
    rng = np.random.default_rng(seed)
    samples = np.full((resamples, n), np.nan)
    for draw in range(resamples):
        # Resampling the votes with replacement is a multinomial draw over their distinct (pair, outcome) kinds.
        drawn = rng.multinomial(total, observed / total).astype(float)
        samples[draw] = _ratings(_log_strengths(_wins_matrix(n, categories, drawn)))
    if resamples:
        with np.errstate(all="ignore"):
            low, high = np.nanpercentile(samples, CI_PERCENTILES, axis=0)
    else:
        low = high = np.full(n, np.nan)

    stats = {name: {"battles": 0, "wins": 0, "ties": 0, "bad": 0} for name in models}
    for (model_a, model_b, outcome), votes in tally.items():
        for name in (model_a, model_b):
            stats[name]["battles"] += votes
        if outcome == "a":
            stats[model_a]["wins"] += votes
        elif outcome == "b":
            stats[model_b]["wins"] += votes
        elif outcome == "tie":
            stats[model_a]["ties"] += votes
            stats[model_b]["ties"] += votes
        else:
            stats[model_a]["bad"] += votes
            stats[model_b]["bad"] += votes
    standings = [
        {
            "model": name,
            **stats[name],
            "rating": _round(ratings[index[name]]),
            "ci_low": _round(low[index[name]]),
            "ci_high": _round(high[index[name]]),
        }
        for name in models
    ]
    standings.sort(key=lambda row: (-(row["rating"] or 0.0), -row["battles"], row["model"]))
    matrix = {
        row: {
            column: (
                round(float(comp[index[row], index[column]] / met), 4)
                if (met := comp[index[row], index[column]] + comp[index[column], index[row]]) > 0
                else None
            )
            for column in models
            if column != row
        }
        for row in models
    }
    return standings, matrix
