"""DRF exception handler: every management API error in the OpenAI error shape
`{"error": {"message", "type", "param", "code"}}`, so API clients parse one format everywhere."""

import logging

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)

_MISSING_KEY_MESSAGE = "Missing API key. Send it as 'Authorization: Bearer sk-gw-...' or in the 'x-api-key' header."


def error_body(*, message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _first_error(detail, path: str = "") -> tuple[str | None, str, str | None]:
    """(param, message, code) of the first leaf in a ValidationError's nested detail."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key == "non_field_errors" else (f"{path}.{key}" if path else str(key))
            return _first_error(value, name)
    if isinstance(detail, list) and detail:
        return _first_error(detail[0], path)
    code = getattr(detail, "code", None)
    return (path or None), str(detail), code


def api_exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None:
        logger.exception("unhandled error in %s", context.get("view").__class__.__name__, exc_info=exc)
        return Response(
            error_body(message="Internal server error.", type_="server_error", code="internal_error"),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )

    param = None
    if isinstance(exc, exceptions.NotAuthenticated):
        message, code = _MISSING_KEY_MESSAGE, "invalid_api_key"
    elif isinstance(exc, exceptions.AuthenticationFailed):
        message, code = str(exc.detail), "invalid_api_key"
    elif isinstance(exc, exceptions.ValidationError):
        param, message, code = _first_error(exc.detail)
        if param:
            message = f"{param}: {message}"
        code = code or "invalid_value"
    else:
        message = str(exc.detail)
        code = getattr(exc.detail, "code", None) or exc.default_code

    if response.status_code == status.HTTP_429_TOO_MANY_REQUESTS:
        type_ = "rate_limit_error"
    elif response.status_code >= 500:
        type_ = "server_error"
    else:
        type_ = "invalid_request_error"
    response.data = error_body(message=message, type_=type_, code=code, param=param)
    return response
