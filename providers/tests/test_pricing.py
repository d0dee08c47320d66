"""Prices and costs: exact Decimal arithmetic, the defaults for unset prices, per-deployment overrides,
and the upper bound a budget reserves."""

from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal
from fractions import Fraction
from types import SimpleNamespace

from hypothesis import given
from hypothesis import strategies as st

from providers.dialects.canonical import Usage
from providers.pricing import COST_QUANTUM, FREE, Prices, deployment_prices, prices_max, prices_resolve

SONNET = Prices(input=Decimal("3"), output=Decimal("15"), cached_input=Decimal("0.30"), cache_write=Decimal("3.75"))


def test_plain_cost_is_prompt_at_input_and_completion_at_output():
    # 1234 * 3 + 567 * 15 = 3702 + 8505 = 12207 per million
    assert SONNET.cost(Usage(prompt_tokens=1234, completion_tokens=567)) == Decimal("0.012207")


def test_cache_reads_and_writes_are_parts_of_the_prompt_priced_apart():
    usage = Usage(prompt_tokens=10_000, completion_tokens=100, cached_tokens=6_000, cache_write_tokens=3_000)
    # 1000 * 3 + 6000 * 0.30 + 3000 * 3.75 + 100 * 15 = 3000 + 1800 + 11250 + 1500 = 17550 per million
    assert SONNET.cost(usage) == Decimal("0.01755")


def test_reasoning_tokens_are_already_in_the_completion():
    with_reasoning = Usage(prompt_tokens=10, completion_tokens=90, reasoning_tokens=80)
    assert SONNET.cost(with_reasoning) == SONNET.cost(Usage(prompt_tokens=10, completion_tokens=90))
    assert SONNET.cost(with_reasoning) == Decimal("0.00138")  # 10 * 3 + 90 * 15 = 1380 per million


def test_over_reported_cache_counts_never_bill_a_token_twice():
    # 99 cached of 10 prompt tokens: all 10 at the cached price, no cache write left to bill.
    usage = Usage(prompt_tokens=10, completion_tokens=0, cached_tokens=99, cache_write_tokens=50)
    assert SONNET.cost(usage) == Decimal("0.000003")
    # 4 cached, 50 written of 10: 4 cached, the other 6 written.
    usage = Usage(prompt_tokens=10, completion_tokens=0, cached_tokens=4, cache_write_tokens=50)
    assert SONNET.cost(usage) == Decimal("0.0000237")  # 4 * 0.30 + 6 * 3.75 = 23.7 per million


def test_quantized_to_eight_places_half_up():
    prices = Prices(input=Decimal("0.000005"), output=Decimal("0.000015"))
    # 1 * 0.000005 / 1e6 = 5e-12: below half a quantum, rounds to zero; 1000 tokens = 5e-9 rounds half up.
    assert prices.cost(Usage(prompt_tokens=1)) == Decimal("0E-8")
    assert prices.cost(Usage(prompt_tokens=1000)) == Decimal("0.00000001")
    assert prices.cost(Usage(prompt_tokens=999)) == Decimal("0.00000000")
    assert prices.cost(Usage(prompt_tokens=1000)).as_tuple().exponent == -8


def test_unset_prices_default_free_and_cache_prices_to_the_input_price():
    prices = prices_resolve(input=Decimal("2.5"), output=None)
    assert prices == Prices(Decimal("2.5"), Decimal(0), Decimal("2.5"), Decimal("2.5"))
    assert prices_resolve(input=None, output=None) == FREE
    assert prices_resolve(input=None, output=Decimal(4), cached_input=Decimal("0.5")).cached_input == Decimal("0.5")


def _model(**prices):
    fields = ("input", "output", "cached_input", "cache_write")
    return SimpleNamespace(**{f"{name}_price_per_million": prices.get(name) for name in fields})


def test_deployment_overrides_win_field_by_field():
    model = _model(input=Decimal(3), output=Decimal(15), cached_input=Decimal("0.3"))
    plain = SimpleNamespace(model=model, **vars(_model()))
    assert deployment_prices(plain) == Prices(Decimal(3), Decimal(15), Decimal("0.3"), Decimal(3))
    cheaper = SimpleNamespace(model=model, **vars(_model(output=Decimal(12), cache_write=Decimal(4))))
    assert deployment_prices(cheaper) == Prices(Decimal(3), Decimal(12), Decimal("0.3"), Decimal(4))
    # An input override with no cached price anywhere: cache reads cost the deployment's input price.
    bare = SimpleNamespace(model=_model(input=Decimal(1)), **vars(_model(input=Decimal(2))))
    assert deployment_prices(bare) == Prices(Decimal(2), Decimal(0), Decimal(2), Decimal(2))


def test_prices_max_is_field_by_field():
    a = Prices(Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"))
    b = Prices(Decimal(5), Decimal(10), Decimal("0.5"), Decimal(1))
    assert prices_max([a, b]) == Prices(Decimal(5), Decimal(15), Decimal("0.5"), Decimal("3.75"))
    assert prices_max([a]) == a
    assert prices_max([]) is None


def test_max_cost_prices_every_prompt_token_at_the_dearest_prompt_price_and_rounds_up():
    # 1000 * 3.75 + 2000 * 15 = 33750 per million
    assert SONNET.max_cost(1000, 2000) == Decimal("0.03375")
    tiny = Prices(input=Decimal("0.000001"), output=Decimal(0))
    assert tiny.max_cost(1, 0) == Decimal("0.00000001")  # 1e-12 rounded up, never down to 0
    assert FREE.max_cost(10**6, 10**6) == 0


prices_st = st.builds(
    Prices,
    *[st.decimals(min_value=0, max_value=Decimal("999999.999999"), places=6) for _ in range(4)],
)
tokens_st = st.integers(min_value=0, max_value=2**31 - 1)


def _exact(prices: Prices, usage: Usage) -> Fraction:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
    uncached = usage.prompt_tokens - cached - written
    return (
        uncached * Fraction(prices.input)
        + cached * Fraction(prices.cached_input)
        + written * Fraction(prices.cache_write)
        + usage.completion_tokens * Fraction(prices.output)
    ) / 1_000_000


def _decimal(value: Fraction) -> Decimal:
    """A fraction whose denominator divides 10**12, as an exact Decimal."""
    assert (10**12) % value.denominator == 0
    return Decimal(value.numerator * (10**12 // value.denominator)).scaleb(-12)


@given(prices_st, tokens_st, tokens_st, tokens_st, tokens_st)
def test_cost_is_the_exact_figure_rounded_half_up(prices, prompt, completion, cached, written):
    usage = Usage(prompt, completion, cached, written)
    cost = prices.cost(usage)
    assert isinstance(cost, Decimal) and cost.as_tuple().exponent == -8
    exact = _exact(prices, usage)
    assert abs(Fraction(cost) - exact) <= Fraction(COST_QUANTUM) / 2
    # Half up, checked the slow way: the exact figure as a decimal (it has at most 12 places), rounded once.
    assert cost == _decimal(exact).quantize(COST_QUANTUM, ROUND_HALF_UP)


@given(prices_st, tokens_st, tokens_st, tokens_st, tokens_st, st.integers(0, 10**6), st.integers(0, 10**6))
def test_cost_is_monotone_in_every_count_and_bounded_by_max_cost(
    prices, prompt, completion, cached, written, more_prompt, more_completion
):
    usage = Usage(prompt, completion, cached, written)
    cost = prices.cost(usage)
    assert cost >= 0
    assert prices.cost(Usage(prompt + more_prompt, completion, cached, written)) >= cost
    assert prices.cost(Usage(prompt, completion + more_completion, cached, written)) >= cost
    assert cost <= prices.max_cost(prompt, completion)
    dearest = max(prices.input, prices.cached_input, prices.cache_write)
    bound = (prompt * Fraction(dearest) + completion * Fraction(prices.output)) / 1_000_000
    assert prices.max_cost(prompt, completion) == _decimal(bound).quantize(COST_QUANTUM, ROUND_CEILING)


@given(prices_st, prices_st, tokens_st, tokens_st, tokens_st, tokens_st)
def test_prices_max_bounds_the_cost_of_each(a, b, prompt, completion, cached, written):
    usage = Usage(prompt, completion, cached, written)
    highest = prices_max([a, b])
    assert highest.cost(usage) >= max(a.cost(usage), b.cost(usage))
