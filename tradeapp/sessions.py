"""Open WebSockets follow their session: a socket whose session ends is closed.

A WebSocket is authenticated once, at connect (``tradeapp.consumers.StreamConsumer``), and may
stay open for days. Three things end it afterwards, each with close code 4401 (not signed in,
``CLOSE_SESSION_ENDED``; the pages' live script does not reconnect on it):

* **sign-out** (Django's ``user_logged_out``): the sockets of the signed-out session close at
  once; the user's other sockets check their own session at once (a user signed in on two
  machines keeps the other one);
* **a password change** (the user's password hash changed: ``set_password()`` and ``save()``,
  the admin's password form, ``manage.py changepassword``): every socket of the user checks its
  session at once, and Django's session hash no longer matches, so they all close;
* **the periodic re-check** (every ``TRADEAPP_WS_SESSION_RECHECK`` seconds, in the consumer):
  a session deleted or expired, a user made inactive or deleted, or a hash changed behind the
  signals' back (a queryset ``update()``, another process's lost message) closes the socket
  at the latest one interval later.

The signals reach the sockets through the channel layer: every ``StreamConsumer`` is in its
user's group (``user_group``), and a ``session.ended`` message is sent to it once the
transaction that made the change commits. A message lost (Redis down) is caught by the
periodic re-check. Receivers are connected in ``tradeapp.apps.TradeappConfig.ready``.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import import_module
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user
from django.db import transaction
from django.http import HttpRequest

logger = logging.getLogger(__name__)

#: The channel-layer message a user's sockets receive (handler ``session_ended``).
SESSION_ENDED = "session.ended"


def user_group(user_id: Any) -> str:
    """The channel-layer group of every WebSocket of one user: ``user.<id>`` (channels-redis
    allows ASCII letters, digits, ``-``, ``_`` and ``.`` in group names)."""
    return f"user.{int(user_id)}"


def session_digest(session_key: str | None) -> str | None:
    """What a ``session.ended`` message names a session by: a digest, so that session keys (the
    credentials in the cookies) are never written to the channel layer's Redis."""
    if not session_key:
        return None
    return hashlib.sha256(session_key.encode()).hexdigest()


def end_sessions(
    user_id: Any, *, session_key: str | None = None, reason: str, using: str | None = None
) -> None:
    """Tell every WebSocket of ``user_id``: the one(s) of ``session_key`` close at once, the
    others check their session now (``session_user_id``) and close if it no longer signs the
    user in. Sent when the current transaction commits (at once outside one); an unreachable
    channel layer is logged, never raised: the periodic re-check closes the sockets then."""
    message = {"type": SESSION_ENDED, "session": session_digest(session_key), "reason": reason}
    group = user_group(user_id)

    def send() -> None:
        try:
            async_to_sync(get_channel_layer().group_send)(group, message)
        except Exception as exc:  # noqa: BLE001 - e.g. `ensure_admin` before Redis is up
            logger.warning(
                "WebSockets of user %s not told (%s): the periodic re-check closes them: %s",
                user_id, reason, exc,
            )  # fmt: skip

    transaction.on_commit(send, using=using)


def _read_only_session(session_key: str) -> Any:
    """The session engine's store of ``session_key``, made read-only: ``get_user`` flushes a
    session whose hash no longer matches and rotates the key of one verified by an old secret
    (``SECRET_KEY_FALLBACKS``); a check from a socket must change neither behind the browser's
    back (its next request does what Django does). The store keeps its class: the class name
    salts the session's signature."""
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)

    def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    store.save = store.delete = store.cycle_key = nothing
    return store


def session_user_id(session_key: str | None) -> Any:
    """The id of the user ``session_key`` signs in now, or None: ``django.contrib.auth.get_user``
    on a fresh read of the session (missing or expired: no user; an inactive or deleted user,
    or a session auth hash that no longer matches ``user.get_session_auth_hash()``: no user).
    Reads only (``_read_only_session``); runs in a thread (it queries the database)."""
    if not session_key:
        return None
    request = HttpRequest()
    request.session = _read_only_session(session_key)
    user = get_user(request)
    return user.pk if user.is_authenticated else None


# --- signal receivers (connected in TradeappConfig.ready) -------------------------------------


def on_user_logged_out(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Sign-out: the sockets of this session close, the user's others re-check theirs."""
    if user is None or user.pk is None:
        return
    session = getattr(request, "session", None)
    end_sessions(user.pk, session_key=getattr(session, "session_key", None), reason="signed out")


#: Where ``on_user_pre_save`` keeps the stored hash for ``on_user_post_save``.
_HASH_BEFORE = "_tradeapp_password_hash_before"


def on_user_pre_save(
    sender: Any, instance: Any, raw: bool = False, update_fields: Any = None, **kwargs: Any
) -> None:
    """Remember the stored password hash before a save that may change it (not for a new
    user, a fixture load, or a save of other fields only, such as ``last_login``)."""
    if raw or instance._state.adding or instance.pk is None:
        return
    if update_fields is not None and "password" not in update_fields:
        return
    before = (
        sender._base_manager.using(kwargs.get("using") or "default")
        .filter(pk=instance.pk)
        .values_list("password", flat=True)
        .first()
    )
    setattr(instance, _HASH_BEFORE, before)


def on_user_post_save(
    sender: Any, instance: Any, created: bool = False, raw: bool = False, **kwargs: Any
) -> None:
    """A changed password hash ends the user's sessions but the one Django keeps
    (``update_session_auth_hash``): every socket of the user re-checks its session."""
    before = instance.__dict__.pop(_HASH_BEFORE, None)
    if created or raw or before is None or before == instance.password:
        return
    logger.info(
        "password of user %s changed: their WebSockets re-check their sessions", instance.pk
    )
    end_sessions(instance.pk, reason="password changed", using=kwargs.get("using"))
