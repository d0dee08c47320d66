"""Prices of one deployment per million tokens, and what a call costs at them, in Decimal from end to end.

A model's prices apply to every deployment that does not override them field by field; a price left unset
on the model is 0 (free), and unset cached-read or cache-write prices are the input price. Costs are
quantized to COST_QUANTUM (the eight decimal places of UsageRecord.cost) with ROUND_HALF_UP, the rounding
a person checking an invoice by hand expects; an upper bound (max_cost) rounds up instead, so it never
falls below the cost it bounds.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, localcontext

from providers.dialects.canonical import Usage

COST_QUANTUM = Decimal("0.00000001")
_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
# Prices have at most 12 digits and token counts 10: products and sums stay exact well below this.
_PRECISION = 60


@dataclass(frozen=True, slots=True)
class Prices:
    """Per-million-token prices in GATEWAY_CURRENCY. Cache reads and cache writes are parts of the prompt
    priced apart; reasoning tokens are output tokens (providers count them in completion_tokens)."""

    input: Decimal = _ZERO
    output: Decimal = _ZERO
    cached_input: Decimal = _ZERO
    cache_write: Decimal = _ZERO

    def cost(self, usage: Usage) -> Decimal:
        """What `usage` costs: uncached prompt tokens at the input price, cache reads at the cached price,
        cache writes at the cache-write price, completion tokens at the output price, over one million,
        quantized to COST_QUANTUM with ROUND_HALF_UP. Counts a provider over-reports (more cached than
        prompt tokens) are clamped to the prompt, never billed twice."""
        prompt = max(usage.prompt_tokens, 0)
        cached = min(max(usage.cached_tokens, 0), prompt)
        written = min(max(usage.cache_write_tokens, 0), prompt - cached)
        with localcontext(prec=_PRECISION):
            total = (
                (prompt - cached - written) * self.input
                + cached * self.cached_input
                + written * self.cache_write
                + max(usage.completion_tokens, 0) * self.output
            )
            return (total / _MILLION).quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)

    def max_cost(self, prompt_tokens: int, output_tokens: int) -> Decimal:
        """An upper bound of what a call with this many prompt tokens and at most this many output tokens
        can cost, for budget reservations: every prompt token at the dearest prompt price (input, cached
        read or cache write, whichever the provider ends up reporting), every output token at the output
        price; rounded up, so it is never below `cost` of any usage within those counts."""
        dearest = max(self.input, self.cached_input, self.cache_write)
        with localcontext(prec=_PRECISION):
            total = max(prompt_tokens, 0) * dearest + max(output_tokens, 0) * self.output
            return (total / _MILLION).quantize(COST_QUANTUM, rounding=ROUND_CEILING)


FREE = Prices()


def prices_resolve(
    *,
    input: Decimal | None,
    output: Decimal | None,
    cached_input: Decimal | None = None,
    cache_write: Decimal | None = None,
) -> Prices:
    """Prices from nullable per-million figures: unset input/output = 0, unset cache prices = the input's."""
    price_in = _ZERO if input is None else Decimal(input)
    return Prices(
        input=price_in,
        output=_ZERO if output is None else Decimal(output),
        cached_input=price_in if cached_input is None else Decimal(cached_input),
        cache_write=price_in if cache_write is None else Decimal(cache_write),
    )


def _first(*values):
    return next((value for value in values if value is not None), None)


def deployment_prices(deployment) -> Prices:
    """The prices in force at one deployment (a providers.models.Deployment with its model): each of its
    own prices that is set, the model's otherwise."""
    model = deployment.model

    def price(name: str) -> Decimal | None:
        return _first(getattr(deployment, name), getattr(model, name))

    return prices_resolve(
        input=price("input_price_per_million"),
        output=price("output_price_per_million"),
        cached_input=price("cached_input_price_per_million"),
        cache_write=price("cache_write_price_per_million"),
    )


def prices_max(prices: Iterable[Prices]) -> Prices | None:
    """Field by field the highest of `prices` (an upper bound for whichever one ends up serving), or None
    when there are none."""
    prices = list(prices)
    if not prices:
        return None
    return Prices(
        input=max(p.input for p in prices),
        output=max(p.output for p in prices),
        cached_input=max(p.cached_input for p in prices),
        cache_write=max(p.cache_write for p in prices),
    )
