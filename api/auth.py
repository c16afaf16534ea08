"""``POST /api/token/``: DRF's token view with two limits on password guessing.

- axes (settings "Sign-in limits"): DRF's ``AuthTokenSerializer`` calls
  ``authenticate(request=...)`` with the serializer context's request. DRF's ``Request`` wrapper
  would do for reading, but axes marks a locked-out request by setting an attribute on the
  request it is given, and ``AxesMiddleware`` reads that attribute from Django's
  ``HttpRequest``: set on the wrapper, a locked-out token request was answered 400 like any
  wrong password. So the serializer gets the ``HttpRequest`` itself (its address, and its
  ``POST`` for a form body; the username comes from the credentials).
- a scoped throttle (``token``: ``TRADEAPP_API_TOKEN_RATE``, per address), so that a flood of
  requests is cut before any password is hashed; DRF's view has none of its own.

A locked-out request is answered by ``locked_out_response``: 429 ``locked_out`` in the API's
error shape (``api.errors``) with ``Retry-After``.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse
from rest_framework import exceptions
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.throttling import ScopedRateThrottle

from api.errors import api_exception_handler


class SignInPaused(exceptions.Throttled):
    """429: too many failed sign-ins for this username or from this address."""

    default_detail = "Sign-in is paused for this account or address after too many failed attempts."
    default_code = "locked_out"
    extra_detail_singular = "Try again in {wait} second."
    extra_detail_plural = "Try again in {wait} seconds."


def locked_out_response(request: HttpRequest, seconds: int) -> JsonResponse:
    """The API's answer to a locked-out sign-in, built by the API's own exception handler (the
    error shape, and DRF's ``Retry-After`` for a 429), as a plain response: axes' middleware
    returns it as it is, outside DRF's rendering."""
    answer = api_exception_handler(SignInPaused(wait=seconds), {"request": request})
    assert answer is not None  # an APIException always gets a response
    response = JsonResponse(answer.data, status=answer.status_code)
    response["Retry-After"] = answer["Retry-After"]
    return response


class ObtainTokenView(ObtainAuthToken):
    """DRF's ``ObtainAuthToken`` (same body, same answer), limited (module docstring)."""

    throttle_classes = [ScopedRateThrottle]
    throttle_scope = "token"

    def get_serializer_context(self) -> dict[str, Any]:
        return {**super().get_serializer_context(), "request": self.request._request}
