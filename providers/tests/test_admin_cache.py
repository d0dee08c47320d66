"""Purging the response cache from the models admin: the action deletes every scope's answers of the selected
models (and only theirs), and the purge-everything page asks first, is CSRF-protected and staff-only, and
says how many answers it deleted. Checked against what is left in the real Redis."""

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from providers.models import Model
from tests.support.response_cache import cache_entries_put, cache_keys_left

pytestmark = pytest.mark.django_db

PURGE_URL = "/admin/providers/model/cache-purge/"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def cached() -> set[str]:
    keys = set()
    for scope in ("team:1", "team:2", "user:7"):
        for model in ("sim-a", "sim-b", "sim-a:8k"):
            keys |= set(cache_entries_put(scope=scope, model=model, count=2))
    return keys


def messages_of(response) -> list[str]:
    return [str(message) for message in get_messages(response.wsgi_request)]


def test_model_purge_action_deletes_the_selected_models_answers_in_every_scope(admin_client, cached):
    sim_a, sim_b = Model.objects.create(name="sim-a"), Model.objects.create(name="sim-b")
    Model.objects.create(name="sim-a:8k")
    response = admin_client.post(
        reverse("admin:providers_model_changelist"),
        {"action": "purge_cached_answers", "_selected_action": [sim_a.pk]},
        follow=True,
    )
    assert messages_of(response) == ["6 cached answer(s) of 1 model(s) deleted."]
    # "sim-a:8k" starts like "sim-a:" in a key: its answers stay.
    assert cache_keys_left() == {key for key in cached if ":sim-a:" not in key or ":sim-a:8k:" in key}

    response = admin_client.post(
        reverse("admin:providers_model_changelist"),
        {"action": "purge_cached_answers", "_selected_action": [sim_a.pk, sim_b.pk]},
        follow=True,
    )
    assert messages_of(response) == ["6 cached answer(s) of 2 model(s) deleted."]
    assert cache_keys_left() == {key for key in cached if ":sim-a:8k:" in key}


def test_purge_everything_asks_first_then_deletes_every_answer(admin_client, cached):
    changelist = admin_client.get(reverse("admin:providers_model_changelist")).content.decode()
    assert f'href="{PURGE_URL}" data-testid="cache-purge-link"' in changelist

    # The dashboard's button posts without confirmation: the page asks, nothing is deleted.
    page = admin_client.post(PURGE_URL, {"return_to": "dashboard"})
    assert page.status_code == 200
    html = page.content.decode()
    assert '<p data-testid="cache-purge-count">18 answers cached now.</p>' in html
    assert 'name="confirm" value="yes"' in html and 'name="return_to" value="dashboard"' in html
    assert cache_keys_left() == cached
    assert admin_client.get(PURGE_URL).status_code == 200
    assert cache_keys_left() == cached

    response = admin_client.post(PURGE_URL, {"confirm": "yes", "return_to": "dashboard"}, follow=True)
    assert response.redirect_chain == [("/admin/dashboard/", 302)]
    assert "18 cached answer(s) deleted (every model, team and user)." in response.content.decode()
    assert cache_keys_left() == set()

    # From anywhere else, back to the model list.
    response = admin_client.post(PURGE_URL, {"confirm": "yes", "return_to": "https://elsewhere.example/"})
    assert response["Location"] == reverse("admin:providers_model_changelist")
    assert messages_of(response) == ["0 cached answer(s) deleted (every model, team and user)."]


def test_purge_everything_needs_a_csrf_token(admin_user, cached):
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    assert client.post(PURGE_URL, {"confirm": "yes"}).status_code == 403
    assert cache_keys_left() == cached

    page = client.get(PURGE_URL)
    token = page.context["csrf_token"]
    assert client.post(PURGE_URL, {"confirm": "yes", "csrfmiddlewaretoken": str(token)}).status_code == 302
    assert cache_keys_left() == set()


def test_purge_everything_is_for_staff_who_may_change_models(client, cached):
    user_model = get_user_model()
    outsider = user_model.objects.create_user("outsider", password="pw")
    client.force_login(outsider)
    response = client.post(PURGE_URL, {"confirm": "yes"})
    assert response.status_code == 302 and "/login/" in response["Location"]

    viewer = user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_model"))
    client.force_login(viewer)
    assert client.post(PURGE_URL, {"confirm": "yes"}).status_code == 403
    assert client.get(PURGE_URL).status_code == 403
    changelist = client.get(reverse("admin:providers_model_changelist")).content.decode()
    assert "purge_cached_answers" not in changelist
    assert cache_keys_left() == cached
