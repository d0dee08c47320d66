"""The row editors of the model and provider admin forms, through the Django test client: the form data a
browser sends from the rendered page (no JavaScript) becomes the JSON the model stores, bad rows are
refused with errors naming the row (shown beside it), and a JSON value posted whole is still read."""

import json
from html.parser import HTMLParser

import orjson
import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse
from django.utils.datastructures import MultiValueDict

from providers.models import Model, Provider

pytestmark = pytest.mark.django_db

TRANSFORMS = [
    {"op": "cap", "path": "max_tokens", "max": 8192},
    {"op": "force", "path": "metadata.tags", "value": {"team": "ml", "ids": [1, 2.5, None, True]}},
    {"op": "default", "path": "temperature", "value": 0.7},
    {"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"},
    {"op": "drop", "path": "metadata.user_id"},
    {"op": "header", "name": "HTTP-Referer", "value": "https://app.example.com"},
]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


class PostData(MultiValueDict):
    """Form data whose repeated fields the test client sends as repeated parts."""

    def items(self):
        return self.lists()


class FormData(HTMLParser):
    """What a browser without JavaScript submits from an admin change form: every named input, select and
    textarea outside <template>, in document order (unchecked boxes left out)."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.fields: list[tuple[str, str]] = []
        self.in_form = self.done = False
        self.template_depth = 0
        self.select: str | None = None
        self.selected: str | None = None
        self.first_option: str | None = None
        self.textarea: str | None = None
        self.text = ""
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        attrs = {key: value or "" for key, value in attrs}
        if tag == "form" and not self.done and attrs.get("id", "").endswith("_form"):
            self.in_form = True
        if not self.in_form:
            return
        if tag == "template":
            self.template_depth += 1
        if self.template_depth:
            return
        name = attrs.get("name")
        if tag == "input" and name and attrs.get("type") not in ("submit", "button", "file"):
            if attrs.get("type") not in ("checkbox", "radio") or "checked" in attrs:
                self.fields.append((name, attrs.get("value", "on" if attrs.get("type") == "checkbox" else "")))
        elif tag == "select" and name:
            self.select, self.selected, self.first_option = name, None, None
        elif tag == "option" and self.select is not None:
            if self.first_option is None:
                self.first_option = attrs.get("value", "")
            if "selected" in attrs:
                self.selected = attrs.get("value", "")
        elif tag == "textarea" and name:
            self.textarea, self.text = name, ""

    def handle_endtag(self, tag):
        if not self.in_form:
            return
        if tag == "template":
            self.template_depth -= 1
        elif tag == "form":
            self.in_form, self.done = False, True
        elif self.template_depth:
            return
        elif tag == "select" and self.select is not None:
            self.fields.append((self.select, self.selected if self.selected is not None else self.first_option))
            self.select = None
        elif tag == "textarea" and self.textarea is not None:
            self.fields.append((self.textarea, self.text.removeprefix("\n")))
            self.textarea = None

    def handle_data(self, data):
        if self.textarea is not None:
            self.text += data

    def values(self, name: str) -> list[str]:
        return [value for field, value in self.fields if field == name]

    def post_data(self, **replace: list[str] | str) -> "PostData":
        """The form data with some fields replaced (a list replaces every value of a repeated field)."""
        data = PostData()
        for name, value in self.fields:
            if name not in replace:
                data.appendlist(name, value)
        for name, values in replace.items():
            data.setlist(name, values if isinstance(values, list) else [values])
        data["_save"] = "Save"
        return data


def page(client, url) -> FormData:
    response = client.get(url)
    assert response.status_code == 200
    return FormData(response.content.decode())


def errors_of(response, field: str) -> list[str]:
    assert response.status_code == 200, response.status_code
    return list(response.context["adminform"].form.errors[field])


def row_errors(html: str) -> list[str]:
    """The messages shown beside rows, in page order."""

    class RowErrors(HTMLParser):
        def __init__(self):
            super().__init__(convert_charrefs=True)
            self.messages, self.depth, self.inside = [], 0, False

        def handle_starttag(self, tag, attrs):
            if tag == "ul" and ("data-testid", "row-errors") in attrs:
                self.inside = True
            elif self.inside and tag == "li":
                self.messages.append("")

        def handle_endtag(self, tag):
            if tag == "ul":
                self.inside = False

        def handle_data(self, data):
            if self.inside and self.messages:
                self.messages[-1] += data

    parser = RowErrors()
    parser.feed(html)
    return parser.messages


@pytest.fixture
def models():
    return {
        "backup": Model.objects.create(name="backup"),
        "long": Model.objects.create(name="long-context"),
        "main": Model.objects.create(name="main", aliases=["main-*", "primary"], fallbacks=["backup"]),
    }


@pytest.fixture
def provider():
    return Provider.objects.create(name="acme", base_url="https://api.example.com/v1")


def test_widget_assets_are_served_from_static():
    assert finders.find("providers/admin_widgets.js")
    assert finders.find("providers/admin_widgets.css")


def test_model_page_renders_rows_checkboxes_and_blank_rows(admin_client, models):
    response = admin_client.get(reverse("admin:providers_model_change", args=[models["main"].pk]))
    html = response.content.decode()
    assert 'src="/static/providers/admin_widgets.js" type="module"' in html
    form = FormData(html)
    # Each stored name in its own row, then two blank rows for a browser without JavaScript.
    assert form.values("aliases-item") == ["main-*", "primary", "", ""]
    assert form.values("fallbacks-item") == ["backup", "", ""]
    assert form.values("context_fallbacks-item") == ["", ""]
    assert form.values("kinds") == ["chat"]
    assert 'value="embeddings"' in html and 'value="completions"' in html
    assert 'data-testid="aliases-add"' in html


def test_model_rows_and_checkboxes_save_as_the_stored_json(admin_client, models):
    form = page(admin_client, reverse("admin:providers_model_add"))
    assert (form.values("aliases-item"), form.values("kinds")) == (["", ""], ["chat"])
    data = form.post_data(
        name="fresh",
        kinds=["completions", "chat"],
        **{
            "aliases-item": ["fresh-*", "", "  fresh-latest  "],
            "fallbacks-item": ["main", "backup", ""],
            "context_fallbacks-item": ["", "long-context"],
        },
    )
    response = admin_client.post(reverse("admin:providers_model_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    fresh = Model.objects.get(name="fresh")
    assert fresh.aliases == ["fresh-*", "fresh-latest"]
    assert fresh.fallbacks == ["main", "backup"]
    assert fresh.context_fallbacks == ["long-context"]
    assert fresh.kinds == ["chat", "completions"]


def test_unchanged_model_page_saves_the_same_values(admin_client, models):
    main = models["main"]
    url = reverse("admin:providers_model_change", args=[main.pk])
    response = admin_client.post(url, page(admin_client, url).post_data())
    assert response.status_code == 302
    main.refresh_from_db()
    assert (main.aliases, main.fallbacks, main.context_fallbacks, main.kinds) == (
        ["main-*", "primary"],
        ["backup"],
        [],
        ["chat"],
    )


def test_emptied_rows_and_no_kinds_save_as_none_and_chat(admin_client, models):
    main = models["main"]
    url = reverse("admin:providers_model_change", args=[main.pk])
    form = page(admin_client, url)
    data = form.post_data(kinds=[], **{"aliases-item": ["", ""]})
    # Every fallback row removed (as the script's remove button does): only the field's own input is sent.
    del data["fallbacks-item"]
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    main.refresh_from_db()
    assert (main.aliases, main.fallbacks, main.kinds) == ([], [], ["chat"])


@pytest.mark.parametrize(
    ("field", "rows", "expected"),
    [
        ("fallbacks-item", ["backup", "back*"], "fallback 2: 'back*' is a pattern; only a model name can go here"),
        ("aliases-item", ["m-*", "", "other", "m-*"], "alias 3: 'm-*' is listed twice"),
        ("context_fallbacks-item", ["long-context", "nope?"], "context fallback 2: 'nope?' is a pattern"),
    ],
)
def test_bad_name_rows_are_refused_naming_the_row(admin_client, models, field, rows, expected):
    main = models["main"]
    url = reverse("admin:providers_model_change", args=[main.pk])
    response = admin_client.post(url, page(admin_client, url).post_data(**{field: rows}))
    name = field.removesuffix("-item")
    messages = errors_of(response, name)
    assert len(messages) == 1 and messages[0].startswith(expected), messages
    html = response.content.decode()
    assert row_errors(html) == messages
    # The rows come back as typed (blank ones dropped), so the numbers in the messages match them.
    assert FormData(html).values(field)[: len([row for row in rows if row.strip()])] == [r for r in rows if r.strip()]
    main.refresh_from_db()
    assert (main.aliases, main.fallbacks, main.context_fallbacks) == (["main-*", "primary"], ["backup"], [])


def test_rows_naming_unknown_models_or_the_model_itself_are_refused(admin_client, models):
    main = models["main"]
    url = reverse("admin:providers_model_change", args=[main.pk])
    data = page(admin_client, url).post_data(**{"fallbacks-item": ["backup", "ghost"], "aliases-item": ["main"]})
    response = admin_client.post(url, data)
    assert errors_of(response, "fallbacks") == ["no model is named 'ghost'"]
    assert errors_of(response, "aliases") == ["aliases must not name the model itself"]
    # Shown beside the row it is about.
    assert row_errors(response.content.decode()) == [
        "aliases must not name the model itself",
        "no model is named 'ghost'",
    ]


def test_a_json_list_posted_whole_is_still_read(admin_client, models):
    form = page(admin_client, reverse("admin:providers_model_add"))
    data = form.post_data(name="scripted", aliases='["s-*"]', fallbacks='["backup"]', kinds='["embeddings"]')
    for repeated in ("aliases-item", "fallbacks-item"):
        del data[repeated]
    response = admin_client.post(reverse("admin:providers_model_add"), data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    scripted = Model.objects.get(name="scripted")
    assert (scripted.aliases, scripted.fallbacks, scripted.kinds) == (["s-*"], ["backup"], ["embeddings"])


# Provider request transforms


def transform_rows(*rows: dict) -> dict[str, list[str]]:
    """Form data for transform rows; each row gives some of op, path, to, max, name, value."""
    keys = ("op", "path", "to", "max", "name", "value")
    return {f"request_transforms-{key}": [row.get(key, "") for row in rows] for key in keys}


def test_stored_transforms_render_as_rows_and_save_unchanged(admin_client, provider):
    provider.request_transforms = TRANSFORMS
    provider.save()
    url = reverse("admin:providers_provider_change", args=[provider.pk])
    form = page(admin_client, url)
    assert form.values("request_transforms-op") == ["cap", "force", "default", "rename", "drop", "header", "", ""]
    # The JSON's key order is the database's (PostgreSQL's jsonb sorts keys): compare the values.
    assert orjson.loads(form.values("request_transforms-value")[1]) == {"team": "ml", "ids": [1, 2.5, None, True]}
    assert form.values("request_transforms-value")[5] == "https://app.example.com"

    response = admin_client.post(url, form.post_data())
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.request_transforms == TRANSFORMS
    # Same types (8192 stays an int) and the same rule order; keys sorted, as PostgreSQL's jsonb stores them.
    assert json.dumps(provider.request_transforms, sort_keys=True) == json.dumps(TRANSFORMS, sort_keys=True)


def test_transform_rows_save_as_the_stored_json(admin_client, provider):
    url = reverse("admin:providers_provider_change", args=[provider.pk])
    rows = transform_rows(
        {"op": "cap", "path": " max_tokens ", "max": "8192", "to": "ignored: cap takes no 'to'"},
        {},
        {"op": "force", "path": "metadata.tags", "value": '{"team": "ml", "ids": [1, 2.5, null, true]}'},
        {"op": "default", "path": "temperature", "value": "0.7"},
        {"op": "rename", "path": "max_tokens", "to": "max_completion_tokens"},
        {"op": "drop", "path": "metadata.user_id"},
        {"op": "header", "name": "HTTP-Referer", "value": "https://app.example.com"},
    )
    response = admin_client.post(url, page(admin_client, url).post_data(**rows))
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider.refresh_from_db()
    assert provider.request_transforms == TRANSFORMS


def test_bad_transform_rows_are_refused_each_naming_its_row(admin_client, provider):
    provider.request_transforms = [{"op": "drop", "path": "user"}]
    provider.save()
    url = reverse("admin:providers_provider_change", args=[provider.pk])
    rows = transform_rows(
        {"op": "drop", "path": "metadata.user_id"},
        {"op": "cap", "path": "max_tokens", "max": "lots"},
        {"op": "force", "path": "tool_choice", "value": "auto"},
        {"op": "header", "name": "Authorization", "value": "Bearer other"},
        {"op": "rename", "path": "max_tokens"},
        {"path": "orphan"},
        {"op": "drop", "path": "model"},
    )
    response = admin_client.post(url, page(admin_client, url).post_data(**rows))
    messages = errors_of(response, "request_transforms")
    assert messages == [
        "transform 2: 'max' must be a number, not 'lots'",
        "transform 3: 'value' is not JSON (write text in double quotes, e.g. \"auto\")",
        "transform 4: header 'Authorization' is set by the gateway and cannot be overridden",
        "transform 5: 'rename' needs a dotted field 'to'",
        "transform 6: needs an 'op', one of: drop, default, force, cap, rename, header",
        "transform 7: 'path' 'model' is set by the gateway and cannot be changed by a transform",
    ]
    html = response.content.decode()
    assert row_errors(html) == messages
    form = FormData(html)
    assert form.values("request_transforms-max")[1] == "lots"  # as typed
    assert form.values("request_transforms-value")[2] == "auto"
    provider.refresh_from_db()
    assert provider.request_transforms == [{"op": "drop", "path": "user"}]


def test_removing_every_transform_row_clears_them(admin_client, provider):
    provider.request_transforms = TRANSFORMS
    provider.save()
    url = reverse("admin:providers_provider_change", args=[provider.pk])
    data = page(admin_client, url).post_data()
    for key in ("op", "path", "to", "max", "name", "value"):
        del data[f"request_transforms-{key}"]
    assert data["request_transforms"] == ""
    response = admin_client.post(url, data)
    assert response.status_code == 302
    provider.refresh_from_db()
    assert provider.request_transforms == []


def test_unreadable_json_posted_whole_comes_back_as_json_to_fix(admin_client, provider):
    url = reverse("admin:providers_provider_change", args=[provider.pk])
    data = page(admin_client, url).post_data(request_transforms='[{"op": "drop"')
    for key in ("op", "path", "to", "max", "name", "value"):
        del data[f"request_transforms-{key}"]
    response = admin_client.post(url, data)
    assert errors_of(response, "request_transforms") == ["Enter a valid JSON."]
    form = FormData(response.content.decode())
    assert form.values("request_transforms") == ['[{"op": "drop"']
    assert form.values("request_transforms-op") == []
