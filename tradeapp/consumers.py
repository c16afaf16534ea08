"""WebSocket relays. Consumers stay thin: authenticate, join groups, send a snapshot, relay.

A client receives first ``{"type": "snapshot", "streams": {channel: seq, ...}, ...}`` and then
every event published on those channels (see ``tradeapp.events``). When an event's ``seq`` is
not the previous one plus one, messages were lost: the client reconnects and gets a new snapshot.

What a client may send: ``{"type": "snapshot"}`` (a fresh snapshot), nothing else. Anything else
is answered ``{"type": "error", "error": "<why>"}`` and the connection stays open, relaying
events as before: a frame that is not JSON text (binary, malformed, nested too deeply), larger
than ``MAX_CLIENT_FRAME`` characters (not parsed), JSON that is not an object, or an unknown
``type``. A bad frame never ends the connection with a server error (1011).

Snapshots are read from the database at most once per ``SNAPSHOT_INTERVAL`` seconds per
connection: a request inside the interval is answered by one snapshot at its end, however many
requests came meanwhile (coalesced), so a client asking a thousand times a second costs the
database two snapshots a second at most.

A connection follows its session (``tradeapp.sessions``): it is in its user's group
(``user.<id>``), so signing out or changing the password closes it at once, and it re-checks
its session every ``TRADEAPP_WS_SESSION_RECHECK`` seconds (deleted, expired, the user inactive,
the password hash changed: closed). It closes with ``CLOSE_SESSION_ENDED`` (4401, as a
connection refused for not being signed in: the pages do not reconnect on it); a check that
fails (database unreachable) is logged and retried at the next interval.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from tradeapp import events, sessions

logger = logging.getLogger(__name__)

# Close codes in the 4000-4999 range the WebSocket protocol leaves to applications.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404
#: The connection's session ended (signed out, password changed, expired, deleted): the
#: connection is no longer signed in, so the same code as a refusal for that.
CLOSE_SESSION_ENDED = CLOSE_UNAUTHENTICATED

#: The largest frame a client may send, in characters (a request is ``{"type": "snapshot"}``).
MAX_CLIENT_FRAME = 4096
#: Seconds between two snapshots of one connection (requests inside it are coalesced).
SNAPSHOT_INTERVAL = 0.5


class StreamConsumer(AsyncJsonWebsocketConsumer):
    """Base for every live view: signed-in users only, then a snapshot and the stream's events."""

    streams: list[str]
    #: The close code when ``allowed`` refuses; a route about one object sets
    #: ``CLOSE_NOT_FOUND`` for an object the user may not see (its existence is not disclosed).
    refusal_code: int = CLOSE_FORBIDDEN
    #: The snapshot scheduled at the end of the interval, and when the last one was sent.
    _snapshot_pending: asyncio.Future | None = None
    _snapshot_sent_at: float = -SNAPSHOT_INTERVAL
    #: The signed-in user's id, the session's key, the periodic session check (a task from
    #: accept to disconnect), and whether the session ended (nothing is sent after the close).
    _user_id: Any = None
    _session_key: str | None = None
    _session_check: asyncio.Task | None = None
    _session_ended: bool = False

    def allowed(self, user: Any) -> bool:
        """Whether ``user`` (signed in) may watch this route; subclasses narrow it."""
        return True

    def get_streams(self) -> list[str]:
        """The event channels this connection relays (``tradeapp.events`` names)."""
        return []

    def snapshot(self) -> dict[str, Any]:
        """Current state sent on connect (runs in a thread: may query the database)."""
        return {}

    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if not await database_sync_to_async(self.allowed)(user):
            await self.close(code=self.refusal_code)
            return
        self.streams = self.get_streams()
        self._user_id = user.pk
        self._session_key = getattr(self.scope.get("session"), "session_key", None)
        await self.channel_layer.group_add(sessions.user_group(user.pk), self.channel_name)
        for channel in self.streams:
            await self.channel_layer.group_add(events.group_name(channel), self.channel_name)
        await self.accept()
        self._session_check = asyncio.ensure_future(self._recheck_session())
        await self._send_snapshot()

    def _snapshot_message(self) -> dict[str, Any]:
        # Sequence numbers are read before the state, so an event racing the snapshot is
        # delivered again rather than missed.
        seqs = {channel: events.current_seq(channel) for channel in self.streams}
        return {"type": "snapshot", "streams": seqs, **self.snapshot()}

    async def disconnect(self, code: int) -> None:
        if self._session_check is not None:
            self._session_check.cancel()
        await self._leave_groups()

    async def _leave_groups(self) -> None:
        if self._snapshot_pending is not None:
            self._snapshot_pending.cancel()
        if self._user_id is not None:
            await self.channel_layer.group_discard(
                sessions.user_group(self._user_id), self.channel_name
            )
        for channel in getattr(self, "streams", []):
            await self.channel_layer.group_discard(events.group_name(channel), self.channel_name)

    async def send_json(self, content: Any, close: bool = False) -> None:
        # Nothing after the session ended: the connection is closed (the server refuses a
        # frame after the close). Every frame of these consumers goes through here.
        if not self._session_ended:
            await super().send_json(content, close=close)

    # --- the session (tradeapp.sessions) ------------------------------------------------------

    async def _session_valid(self) -> bool | None:
        """Whether this connection's session still signs in its user (a fresh read); None when
        the check failed (database unreachable): logged, and the next periodic check retries."""
        try:
            found = await database_sync_to_async(sessions.session_user_id)(self._session_key)
        except Exception:  # a failed check must not end the connection nor the checks
            logger.exception("WebSocket session check failed: retried in the next interval")
            return None
        return found is not None and found == self._user_id

    async def _end_session(self) -> None:
        if self._session_ended:
            return
        self._session_ended = True
        await self._leave_groups()
        await self.close(code=CLOSE_SESSION_ENDED)

    async def _recheck_session(self) -> None:
        """Every ``TRADEAPP_WS_SESSION_RECHECK`` seconds: close when the session ended."""
        interval = float(settings.TRADEAPP_WS_SESSION_RECHECK)
        while not self._session_ended:
            await asyncio.sleep(interval)
            if await self._session_valid() is False:
                await self._end_session()

    async def session_ended(self, message: dict[str, Any]) -> None:
        """``tradeapp.sessions.end_sessions``: this user signed out somewhere or changed their
        password. This connection's session closes at once; another one is re-checked."""
        if self._session_ended:
            return
        digest = message.get("session")
        if digest is not None and digest == sessions.session_digest(self._session_key):
            await self._end_session()
        elif await self._session_valid() is False:
            await self._end_session()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when the connection's task is cancelled without a disconnect (server
            # shutdown): the periodic check must not outlive its connection.
            if self._session_check is not None:
                self._session_check.cancel()

    async def receive(
        self, text_data: str | None = None, bytes_data: bytes | None = None, **kwargs: Any
    ) -> None:
        # The base class raises on a binary or malformed frame, which ends the connection with
        # 1011: answer an error instead (module docstring).
        if text_data is None:
            await self._refuse("binary frames are not accepted: send JSON text")
            return
        if len(text_data) > MAX_CLIENT_FRAME:
            await self._refuse(f"frame too large: at most {MAX_CLIENT_FRAME} characters")
            return
        try:
            content = json.loads(text_data)
        except (ValueError, RecursionError):
            await self._refuse("not JSON")
            return
        await self.receive_json(content, **kwargs)

    async def _refuse(self, why: str) -> None:
        await self.send_json({"type": "error", "error": why})

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Live views are one-way; a client asks for a fresh snapshot after a gap.
        if not isinstance(content, dict):
            await self._refuse("send a JSON object")
        elif content.get("type") == "snapshot":
            await self._request_snapshot()
        else:
            await self._refuse('unsupported message: the only request is {"type": "snapshot"}')

    async def _request_snapshot(self) -> None:
        if self._snapshot_pending is not None:
            return  # coalesced into the one already scheduled
        wait = self._snapshot_sent_at + SNAPSHOT_INTERVAL - time.monotonic()
        if wait <= 0:
            await self._send_snapshot()
        else:
            self._snapshot_pending = asyncio.ensure_future(self._send_snapshot(after=wait))

    async def _send_snapshot(self, after: float = 0.0) -> None:
        try:
            if after:
                await asyncio.sleep(after)
            self._snapshot_sent_at = time.monotonic()
            await self.send_json(await database_sync_to_async(self._snapshot_message)())
        finally:
            self._snapshot_pending = None

    async def stream_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])


class SystemEventsConsumer(StreamConsumer):
    """``/ws/system/events``: platform-wide events (starts, stops, errors), for staff."""

    def allowed(self, user: Any) -> bool:
        return bool(user.is_staff)

    def get_streams(self) -> list[str]:
        return [events.SYSTEM_EVENT_CHANNEL]
