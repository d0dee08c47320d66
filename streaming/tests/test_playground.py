"""The playground page view: login, which keys and models the page offers, the playground key, headers."""

import json

import pytest
from django.contrib.auth import get_user_model

from accounts.models import ApiKey, Tier
from accounts.services import api_key_issue
from providers.models import Model

pytestmark = pytest.mark.django_db


def page_config(response) -> dict:
    html = response.content.decode()
    start = html.index('<script id="playground-config" type="application/json">') + len(
        '<script id="playground-config" type="application/json">'
    )
    return json.loads(html[start : html.index("</script>", start)])


@pytest.fixture
def models():
    Model.objects.create(name="m-one", input_price_per_million=1, output_price_per_million=3)
    Model.objects.create(name="m-two")
    Model.objects.create(name="m-off", enabled=False)
    return Model.objects.all()


def test_anonymous_users_are_sent_to_login(client):
    response = client.get("/playground/")
    assert response.status_code == 302 and response["Location"] == "/login/?next=/playground/"
    login = client.get("/login/")
    assert login.status_code == 200 and b'name="username"' in login.content


def test_page_offers_the_users_keys_and_their_tiers_models(client, models):
    user = get_user_model().objects.create_user("dana", password="pw-dana-12345")
    limited = Tier.objects.create(name="limited", max_compare_models=2)
    limited.allowed_models.set([Model.objects.get(name="m-one")])
    issued = api_key_issue(owner=user, tier=limited, name="dana-key")
    api_key_issue(owner=user, tier=Tier.objects.create(name="all"), name="dana-all")
    disabled = api_key_issue(owner=user, tier=limited, name="dana-off")
    ApiKey.objects.filter(pk=disabled.api_key.pk).update(enabled=False)
    client.force_login(user)
    response = client.get("/playground/")
    assert response.status_code == 200
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "object-src 'none'" in csp and "unsafe-inline" not in csp
    config = page_config(response)
    assert [k["name"] for k in config["keys"]] == ["dana-key", "dana-all"]
    first = config["keys"][0]
    assert first["max_compare_models"] == 2 and first["tier"] == "limited"
    assert first["models"] == [
        {
            "name": "m-one",
            "input_price_per_million": 1.0,
            "output_price_per_million": 3.0,
            "kinds": ["chat"],
            "down": False,
        }
    ]
    assert [m["name"] for m in config["keys"][1]["models"]] == ["m-one", "m-two"]
    # The page never holds a key's plaintext.
    assert issued.plaintext not in response.content.decode()


def test_staff_without_keys_get_a_playground_key_once(client, models, settings):
    settings.GATEWAY_PLAYGROUND_TIER = "pg-tier"
    staff = get_user_model().objects.create_user("sage", password="pw-sage-12345", is_staff=True)
    client.force_login(staff)
    for _ in range(2):
        config = page_config(client.get("/playground/"))
        assert len(config["keys"]) == 1 and config["keys"][0]["playground"] is True
    key = ApiKey.objects.get(owner=staff)
    assert key.playground and key.tier.name == "pg-tier" and len(key.key_hash) == 64


def test_users_without_keys_are_told_how_to_get_one(client, models):
    user = get_user_model().objects.create_user("eli", password="pw-eli-123456")
    client.force_login(user)
    response = client.get("/playground/")
    assert response.status_code == 200 and b"No API key yet" in response.content
    assert b"issue_key --user eli" in response.content
    assert not ApiKey.objects.filter(owner=user).exists()


def test_admin_links_to_the_playground(admin_client):
    assert b'href="/playground/"' in admin_client.get("/admin/").content
