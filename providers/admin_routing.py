"""The admin's "Test routing" page: what the gateway would do with a request, sent nowhere.

The operator picks a key, a client dialect, headers and a body; the page shows the model that would
serve, why, whether the key's tier allows it, and the deployments that would be tried. Keys are
listed by name, prefix and tier only: the gateway has no plaintext to show.
"""

import json

from django import forms
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone

from accounts.auth import key_context_build
from accounts.models import ApiKey
from providers.models import Model
from providers.route_rules import PromptTooLong, UnknownModel, is_pattern
from providers.selectors import route_explain

EXAMPLE_MESSAGES = [{"role": "user", "content": "Hello"}]


def when_summary(when) -> str:
    """A rule's conditions as one readable line, for the rule list."""
    if not isinstance(when, dict):
        return "(invalid)"
    if not when:
        return "every request"
    parts = []
    for key, value in when.items():
        if key == "min_prompt_tokens":
            parts.append(f"prompt >= {value} tokens")
        elif key == "max_prompt_tokens":
            parts.append(f"prompt <= {value} tokens")
        elif key in ("thinking", "tools"):
            parts.append(key if value is True else f"no {key}")
        elif key == "stream":
            parts.append("streamed" if value is True else "not streamed")
        elif key in ("model", "metadata_user"):
            label = "user" if key == "metadata_user" else key
            parts.append(f"{label} {'matches' if is_pattern(str(value)) else '='} {value}")
        elif key == "header" and isinstance(value, dict):
            parts.extend(f"header {name}: {header_value}" for name, header_value in value.items())
        else:
            parts.append(f"{key} = {value}")
    return " and ".join(parts)


class _KeyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: ApiKey) -> str:
        return f"{obj.name} ({obj.prefix}...), tier {obj.tier.name}"


class RoutingTestForm(forms.Form):
    api_key = _KeyChoiceField(
        queryset=ApiKey.objects.none(),
        label="API key",
        help_text="The key the request would carry: its tier is the 'tier' condition and decides which models "
        "it may use. Enabled, unexpired keys are listed.",
    )
    dialect = forms.ChoiceField(
        label="Client dialect",
        choices=[
            ("openai", "OpenAI (/v1/chat/completions)"),
            ("anthropic", "Anthropic (/v1/messages)"),
            ("responses", "OpenAI Responses (/v1/responses)"),
        ],
        help_text="The 'dialect' condition.",
    )
    headers = forms.CharField(
        label="Request headers",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 80, "placeholder": "x-gateway-route: background"}),
        help_text="One 'name: value' per line, as the client would send them (for 'header' conditions). "
        "The key is chosen above: no need for Authorization.",
    )
    body = forms.CharField(
        label="Request body",
        widget=forms.Textarea(attrs={"rows": 14, "cols": 80, "spellcheck": "false"}),
        help_text="The JSON body the client would send. The prompt estimate is its size in bytes over four, "
        "as at admission; 'thinking', 'reasoning_effort', 'tools', 'stream' and 'metadata.user_id' or 'user' "
        "are read too.",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        now = timezone.now()
        # The keys the gateway would accept; playground keys belong to a staff user's browser session.
        self.fields["api_key"].queryset = (
            ApiKey.objects.filter(enabled=True, playground=False, owner__is_active=True)
            .filter(Q(expires_at__isnull=True) | Q(expires_at__gt=now))
            .select_related("tier", "owner")
            .prefetch_related("tier__allowed_models")
            .order_by("name", "prefix")
        )
        if not self.is_bound:
            first = self.fields["api_key"].queryset.first()
            self.initial.setdefault("api_key", first.pk if first else None)

    def clean_headers(self) -> dict[str, str]:
        headers = {}
        for number, line in enumerate(self.cleaned_data["headers"].splitlines(), start=1):
            if not line.strip():
                continue
            name, colon, value = line.partition(":")
            name = name.strip()
            if not colon or not name or any(char.isspace() for char in name):
                raise forms.ValidationError(f"line {number} is not 'name: value'")
            # Header names are case-insensitive; the rules compare them lowercased.
            headers[name.lower()] = value.strip()
        return headers

    def clean_body(self) -> str:
        text = self.cleaned_data["body"]
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(body, dict):
            raise forms.ValidationError("the body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model.strip():
            raise forms.ValidationError("'model' is required and must be a non-empty string")
        self.cleaned_data["body_json"] = body
        return text


def routing_test_view(request, *, model_admin):
    """Staff only (wrapped in admin_view); needs the permission to view routing rules."""
    if not model_admin.has_view_permission(request):
        raise PermissionDenied
    opts = model_admin.opts
    form = RoutingTestForm(request.POST or None, initial={"body": _example_body()})
    explanation, ctx = None, None
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        ctx = key_context_build(data["api_key"])
        try:
            explanation = route_explain(
                ctx=ctx,
                dialect=data["dialect"],
                headers=data["headers"],
                body=data["body_json"],
                body_size=len(data["body"].encode()),
            )
        except UnknownModel:
            form.add_error(
                "body",
                f"no model or alias matches '{data['body_json']['model']}': the client would get 404 model_not_found",
            )
        except PromptTooLong as exc:
            form.add_error("body", f"{exc}: the client would get 400 context_length_exceeded")
    context = {
        **model_admin.admin_site.each_context(request),
        "title": "Test routing",
        "opts": opts,
        "form": form,
        "explanation": explanation,
        "key_context": ctx,
        "changelist_url": reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist"),
        "media": model_admin.media,
    }
    return TemplateResponse(request, f"admin/{opts.app_label}/{opts.model_name}/test_routing.html", context)


def _example_body() -> str:
    name = Model.objects.filter(enabled=True).values_list("name", flat=True).first() or "my-model"
    return json.dumps({"model": name, "messages": EXAMPLE_MESSAGES}, indent=2)
