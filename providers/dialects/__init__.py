"""Wire formats. Each dialect module is pure translation (no I/O) and registers itself here.

A dialect knows how to build an upstream request, parse upstream responses and stream events,
and render the gateway's errors and canonical events in its client-facing shape.
"""

from providers.dialects.base import Dialect

DIALECTS: dict[str, Dialect] = {}


def register(dialect: Dialect) -> Dialect:
    DIALECTS[dialect.name] = dialect
    return dialect


def dialect_get(name: str) -> Dialect:
    return DIALECTS[name]


from providers.dialects import anthropic, openai, responses  # noqa: E402,F401  (registration)
