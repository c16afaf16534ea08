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
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from tradeapp import events

# Close codes in the 4000-4999 range the WebSocket protocol leaves to applications.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404

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
        for channel in self.streams:
            await self.channel_layer.group_add(events.group_name(channel), self.channel_name)
        await self.accept()
        await self._send_snapshot()

    def _snapshot_message(self) -> dict[str, Any]:
        # Sequence numbers are read before the state, so an event racing the snapshot is
        # delivered again rather than missed.
        seqs = {channel: events.current_seq(channel) for channel in self.streams}
        return {"type": "snapshot", "streams": seqs, **self.snapshot()}

    async def disconnect(self, code: int) -> None:
        if self._snapshot_pending is not None:
            self._snapshot_pending.cancel()
        for channel in getattr(self, "streams", []):
            await self.channel_layer.group_discard(events.group_name(channel), self.channel_name)

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
