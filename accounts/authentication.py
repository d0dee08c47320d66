"""DRF authentication for the management API: the caller's gateway key, as on the relay endpoints."""

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication

from accounts.auth import key_context_resolve_sync, key_from_headers
from accounts.context import KeyContext


class ApiKeyPrincipal:
    """`request.user` for a key-authenticated request; the KeyContext itself is `request.auth`."""

    is_authenticated = True
    is_anonymous = False
    is_active = True

    def __init__(self, ctx: KeyContext) -> None:
        self.key_context = ctx
        self.pk = self.id = ctx.owner_id
        self.is_staff = ctx.is_staff

    def __str__(self) -> str:
        return f"key {self.key_context.key_prefix}..."


class InvalidApiKey(exceptions.AuthenticationFailed):
    default_detail = "Invalid API key. Keys are issued by the gateway and start with 'sk-gw-'."
    default_code = "invalid_api_key"


class ApiKeyAuthentication(BaseAuthentication):
    def authenticate(self, request):
        plaintext = key_from_headers(request.headers)
        if not plaintext:
            return None  # IsAuthenticated then answers 401 "not authenticated"
        ctx = key_context_resolve_sync(plaintext)
        if ctx is None:
            raise InvalidApiKey()
        return ApiKeyPrincipal(ctx), ctx

    def authenticate_header(self, request) -> str:
        # Makes DRF answer 401 (not 403) when no key was sent.
        return "Bearer"


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    """Describes the key header in the OpenAPI schema (`x-api-key: sk-gw-...` is accepted too)."""

    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "gatewayKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "sk-gw-...",
            "description": "A gateway API key, as `Authorization: Bearer sk-gw-...` or `x-api-key: sk-gw-...`.",
        }
