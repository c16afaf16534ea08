"""Sign-in limits around django-axes (settings: "Sign-in limits"): what the platform adds to it.

- ``auth.failed`` and ``auth.locked_out`` events on ``system_events`` (docs/events.md): from
  Django's ``user_login_failed`` (every refused password check, on every sign-in path) and axes'
  ``user_locked_out``. They carry the username as typed, the client's address as axes counts it
  and the path; never the password (Django masks it in the signal's credentials, and only the
  username is read from them).
- The reset on success, narrower than axes' own: axes' ``AXES_RESET_ON_SUCCESS`` deletes every
  attempt of the signed-in username *and every attempt from the signing-in address*, so anyone
  with an account of their own could wipe the count of the guesses they make at someone else's
  (4 guesses, their own sign-in, 4 more, ...). Here a successful sign-in forgets only the
  failures of that username from that address: the user's own typos.
- ``locked_out``: axes' ``AXES_LOCKOUT_CALLABLE``, the one answer to a locked-out sign-in: 429
  with ``Retry-After``; the page ``registration/locked_out.html`` for the sign-in pages and the
  admin, the API's error shape for the API's views (``api.auth``). It names neither the username
  nor whether it exists.

Connected in ``TradeappConfig.ready``.
"""

from __future__ import annotations

import math
from typing import Any

from axes.helpers import get_client_ip_address, get_cool_off
from axes.models import AccessAttempt
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from tradeapp.events import SYSTEM_EVENT_CHANNEL, publish_on_commit

#: The longest username an event carries (what the user model stores; an attacker's may be longer).
USERNAME_MAX = 150


def _username(value: Any) -> str | None:
    return None if value is None else str(value)[:USERNAME_MAX]


def _client(request: HttpRequest | None) -> tuple[str | None, str | None]:
    """(address, path) of a sign-in request, the address as axes counts it; (None, None) for a
    password check made without a request."""
    if request is None:
        return None, None
    address = getattr(request, "axes_ip_address", None) or get_client_ip_address(request)
    return address, getattr(request, "path", None)


def lockout_seconds(request: HttpRequest | None = None) -> int:
    """The cool-off: how long a lockout lasts after the last failed attempt."""
    cool_off = get_cool_off(request)
    return int(cool_off.total_seconds()) if cool_off is not None else 0


@receiver(user_login_failed, dispatch_uid="tradeapp.auth_failed_event")
def publish_sign_in_failure(
    sender: Any, credentials: dict[str, Any], request: HttpRequest | None = None, **kwargs: Any
) -> None:
    address, path = _client(request)
    username = _username(credentials.get(get_user_model().USERNAME_FIELD))
    publish_on_commit(
        SYSTEM_EVENT_CHANNEL,
        {"type": "auth.failed", "username": username, "ip": address, "path": path,
         "message": f"sign-in failed for {username!r} from {address or 'an unknown address'}"},
    )  # fmt: skip


@receiver(user_locked_out, dispatch_uid="tradeapp.auth_locked_out_event")
def publish_lockout(
    sender: Any,
    request: HttpRequest | None = None,
    username: Any = None,
    ip_address: str | None = None,
    **kwargs: Any,
) -> None:
    address, path = _client(request)
    address = ip_address or address
    username = _username(username)
    seconds = lockout_seconds(request)
    publish_on_commit(
        SYSTEM_EVENT_CHANNEL,
        {"type": "auth.locked_out", "username": username, "ip": address, "path": path,
         "retry_after": seconds,
         "message": f"sign-in paused for {seconds // 60} min: too many failures "
                    f"(username {username!r} or address {address or 'unknown'})"},
    )  # fmt: skip


@receiver(user_logged_in, dispatch_uid="tradeapp.forget_own_failures")
def forget_own_failures(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """The reset on success (module docstring): this username's failures from this address."""
    if request is None or not settings.TRADEAPP_SIGNIN_RESET_ON_SUCCESS:
        return
    address, _path = _client(request)
    AccessAttempt.objects.filter(username=user.get_username(), ip_address=address).delete()


def locked_out(request: HttpRequest, *_ignored: Any) -> HttpResponse:
    """``AXES_LOCKOUT_CALLABLE``: the answer to a locked-out sign-in (module docstring).

    Takes no notice of axes' other arguments (the original response and the credentials): axes
    8.3.1's middleware passes them in different places when it runs async (under uvicorn)."""
    from rest_framework.views import APIView

    seconds = lockout_seconds(request)
    match = getattr(request, "resolver_match", None)
    view_class = getattr(getattr(match, "func", None), "cls", None)
    if isinstance(view_class, type) and issubclass(view_class, APIView):
        from api.auth import locked_out_response

        return locked_out_response(request, seconds)
    context = {"minutes": max(1, math.ceil(seconds / 60))}
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    return response
