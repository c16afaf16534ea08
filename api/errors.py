"""One shape for every error the API returns.

``{"error": {"status": 400, "code": "invalid", "message": "...", "fields": {"name": ["..."]}}}``:
``code`` is DRF's machine-readable code (``not_authenticated``, ``permission_denied``,
``not_found``, ``invalid``, ``throttled``, ``method_not_allowed``, ``parse_error``,
``conflict`` for an object still in use, ``request_too_large`` for a body above
``DATA_UPLOAD_MAX_MEMORY_SIZE`` (``api.parsers``), ``limit_exceeded`` for a request beyond the
user's limits (``tradeapp.limits``: 429 for too many runs at once or too many bots, 400 for a
search or period too big, with ``fields`` as a validation error's), ...),
``message`` a sentence for people and ``fields`` the messages per input field (only for
validation errors; ``non_field_errors`` for the others). A strategy's parameter errors
(``StrategyParameterError``) and model validation errors raised by the services become 400s of the
same shape, never 500s.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import (
    NON_FIELD_ERRORS,
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import ProtectedError
from django.http import Http404
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from strategies.base import StrategyParameterError
from tradeapp.limits import LimitExceeded


class Conflict(exceptions.APIException):
    """409: the object cannot be deleted or changed while others depend on it."""

    status_code = 409
    default_detail = "The object is in use."
    default_code = "conflict"


class LimitReached(exceptions.ValidationError):
    """A request beyond one of the user's limits (``tradeapp.limits.LimitExceeded``): its
    status (429 or 400) and messages per field, code ``limit_exceeded``."""

    default_code = "limit_exceeded"

    def __init__(self, detail: dict[str, Any], status_code: int) -> None:
        super().__init__(detail, code=self.default_code)
        self.status_code = status_code


def _django_detail(exc: DjangoValidationError) -> dict[str, Any]:
    """A Django ``ValidationError``'s messages per field (``non_field_errors`` for the rest)."""
    detail = exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}
    fields: dict[str, Any] = {}
    for key, messages in detail.items():  # a model's constraints: "__all__" in Django's words
        fields.setdefault("non_field_errors" if key == NON_FIELD_ERRORS else key, []).extend(
            messages
        )
    return fields


def _flatten(detail: Any) -> Any:
    """DRF's nested ``ErrorDetail`` structure as plain strings, lists and dicts."""
    if isinstance(detail, dict):
        return {str(key): _flatten(value) for key, value in detail.items()}
    if isinstance(detail, list):
        return [_flatten(item) for item in detail]
    return str(detail)


def _first_message(fields: dict[str, Any]) -> str:
    for name, messages in fields.items():
        text = messages[0] if isinstance(messages, list) and messages else messages
        if isinstance(text, dict):
            return _first_message(text)
        return str(text) if name == "non_field_errors" else f"{name}: {text}"
    return "Invalid input."


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, then the one error shape (module docstring)."""
    if isinstance(exc, LimitExceeded):  # before ValidationError: it is one
        exc = LimitReached(_django_detail(exc), exc.status_code)
    elif isinstance(exc, StrategyParameterError):  # the message names the parameter
        exc = exceptions.ValidationError({"parameters": [str(exc)]})
    elif isinstance(exc, DjangoValidationError):
        exc = exceptions.ValidationError(_django_detail(exc))
    elif isinstance(exc, ProtectedError):
        names = sorted({str(obj) for obj in exc.protected_objects})[:5]
        exc = Conflict(f"still in use by {', '.join(names)}")
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, RequestDataTooBig):  # Django's multipart parser, past the limit
        from api.parsers import too_large

        exc = too_large()
    elif isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        exc = exceptions.ParseError(str(exc))
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    response = exception_handler(exc, context)
    if response is None:
        return None  # a real bug: Django's 500, logged
    code = "error"
    if isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        code = codes if isinstance(codes, str) else exc.default_code
    body: dict[str, Any] = {"status": response.status_code, "code": code}
    if isinstance(exc, exceptions.ValidationError):
        detail = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        fields = _flatten(detail)
        body["code"] = LimitReached.default_code if isinstance(exc, LimitReached) else "invalid"
        body["message"] = _first_message(fields)
        body["fields"] = fields
    else:
        body["message"] = str(getattr(exc, "detail", "")) or "Error."
    response.data = {"error": body}
    return response
