"""The route table carries each deployment's prices (its overrides over the model's) and answers the highest
prices a request to some models can meet, without a query."""

import asyncio
from decimal import Decimal

import pytest

from providers.models import Deployment, Model, Provider
from providers.pricing import Prices
from providers.routing import route_table_load, router

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def catalog(db):
    sim = Provider.objects.create(name="sim", base_url="http://127.0.0.1:1/v1")
    other = Provider.objects.create(name="other", base_url="http://127.0.0.1:2/v1")
    gpt = Model.objects.create(name="gpt", input_price_per_million=Decimal("2.5"), output_price_per_million=Decimal(10))
    claude = Model.objects.create(
        name="claude",
        input_price_per_million=Decimal(3),
        output_price_per_million=Decimal(15),
        cached_input_price_per_million=Decimal("0.3"),
        cache_write_price_per_million=Decimal("3.75"),
    )
    deployments = {
        "gpt-plain": Deployment.objects.create(model=gpt, provider=sim, upstream_model="a"),
        "gpt-dear": Deployment.objects.create(
            model=gpt,
            provider=other,
            upstream_model="b",
            output_price_per_million=Decimal(12),
            cached_input_price_per_million=Decimal(1),
        ),  # fmt: skip
        "gpt-off": Deployment.objects.create(
            model=gpt, provider=other, upstream_model="c", enabled=False, input_price_per_million=Decimal(99)
        ),
        "claude": Deployment.objects.create(
            model=claude, provider=sim, upstream_model="d", cache_write_price_per_million=Decimal(4)
        ),
    }
    return deployments


def test_each_route_carries_its_deployments_prices(catalog):
    table = route_table_load()
    prices = {route.deployment_id: route.prices for routes in table.routes.values() for route in routes}
    assert prices == {
        catalog["gpt-plain"].pk: Prices(Decimal("2.5"), Decimal(10), Decimal("2.5"), Decimal("2.5")),
        catalog["gpt-dear"].pk: Prices(Decimal("2.5"), Decimal(12), Decimal(1), Decimal("2.5")),
        catalog["claude"].pk: Prices(Decimal(3), Decimal(15), Decimal("0.3"), Decimal(4)),
    }
    assert all(isinstance(value, Decimal) for p in prices.values() for value in (p.input, p.output))


def test_max_prices_over_the_enabled_deployments_of_the_named_models_from_the_route_table(catalog):
    router.reset()
    try:
        asyncio.run(router.table())  # warm, as on a request path
        # A change that bypasses the config signals (no version bump) is not seen: the answer is the table's.
        Deployment.objects.filter(pk=catalog["claude"].pk).update(output_price_per_million=Decimal(1000))
        gpt, both, unknown = (asyncio.run(router.max_prices(names)) for names in (["gpt"], ["gpt", "claude"], ["x"]))
    finally:
        router.reset()
    # Field by field: the plain deployment's cache reads (at its input price) cost more than the other's;
    # the disabled deployment's 99 does not count.
    assert gpt == Prices(Decimal("2.5"), Decimal(12), Decimal("2.5"), Decimal("2.5"))
    assert both == Prices(Decimal(3), Decimal(15), Decimal("2.5"), Decimal(4))
    assert unknown is None
