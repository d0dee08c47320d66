"""What a budget may hold, checked wherever one is written (admin, the YAML import, `manage.py issue_key`), each
problem named in words an operator can act on."""

from decimal import Decimal, InvalidOperation

from accounts.budgets import PERIODS

# Which target each scope needs; the others must be empty (the model's check constraint says the same).
SCOPE_TARGETS = {"key": "api_key", "user": "user", "team": "team", "global": None}
TARGET_LABELS = {"api_key": "an API key", "user": "a user", "team": "a team"}
AMOUNT_MAX_DIGITS = 16
AMOUNT_DECIMAL_PLACES = 8


def budget_amount_parse(value) -> Decimal:
    """An amount of money from a number or a numeric string; raises ValueError naming the problem."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValueError(f"must be a number, not {type(value).__name__}")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"must be a number, not {str(value)!r}") from None
    problem = budget_amount_problem(amount)
    if problem:
        raise ValueError(problem)
    return amount


def budget_amount_problem(amount: Decimal) -> str | None:
    """Why an amount cannot be a budget's, or None."""
    if not amount.is_finite():
        return "must be a finite number"
    if amount < 0:
        return f"must not be negative, got {amount}"
    _sign, digits, exponent = amount.normalize().as_tuple()
    places = max(0, -exponent)
    whole_digits = max(0, len(digits) + exponent)
    if places > AMOUNT_DECIMAL_PLACES or whole_digits > AMOUNT_MAX_DIGITS - AMOUNT_DECIMAL_PLACES:
        return (
            f"must have at most {AMOUNT_MAX_DIGITS - AMOUNT_DECIMAL_PLACES} digits before and "
            f"{AMOUNT_DECIMAL_PLACES} after the point"
        )
    return None


def budget_period_problem(period) -> str | None:
    if period not in PERIODS:
        return f"{period!r} is not one of: {', '.join(PERIODS)}"
    return None


def budget_thresholds_problem(value) -> str | None:
    """Why `value` is not a list of soft thresholds (fractions of the amount in (0, 1]), or None."""
    if not isinstance(value, list | tuple):
        return f"must be a list of fractions in (0, 1], e.g. [0.5, 0.8, 1.0], not {type(value).__name__}"
    seen = set()
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | float | Decimal):
            return f"must be a list of fractions in (0, 1]; {item!r} is not a number"
        if not 0 < item <= 1:
            return f"must be a list of fractions in (0, 1]; {item} is not"
        if item in seen:
            return f"lists {item} twice"
        seen.add(item)
    return None


def budget_thresholds_normalize(value) -> list[float]:
    """Valid thresholds in ascending order, as the JSON list the model stores."""
    return sorted(float(item) for item in value)


def budget_target_problems(*, scope: str, api_key_id, user_id, team_id) -> dict[str, str]:
    """Field name -> what is wrong with the budget's target for its scope (empty when it matches)."""
    if scope not in SCOPE_TARGETS:
        return {"scope": f"{scope!r} is not one of: {', '.join(SCOPE_TARGETS)}"}
    given = {"api_key": api_key_id, "user": user_id, "team": team_id}
    wanted = SCOPE_TARGETS[scope]
    scope_label = "A global budget" if scope == "global" else f"A {'key' if scope == 'key' else scope} budget"
    problems = {}
    if wanted is not None and given[wanted] is None:
        problems[wanted] = f"{scope_label} needs {TARGET_LABELS[wanted]}."
    for name, value in given.items():
        if name != wanted and value is not None:
            problems[name] = f"{scope_label} applies to {_applies_to(scope)}; leave {name.replace('_', ' ')} empty."
    return problems


def _applies_to(scope: str) -> str:
    return "every key" if scope == "global" else TARGET_LABELS[SCOPE_TARGETS[scope]]
