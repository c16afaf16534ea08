"""WebSocket relays. Consumers stay thin: authenticate, join groups, send a snapshot, relay.

A client receives first ``{"type": "snapshot", "streams": {channel: seq, ...}, ...}`` and then
every event published on those channels (see ``tradeapp.events``). When an event's ``seq`` is
not the previous one plus one, messages were lost: the client reconnects and gets a new snapshot.
"""

from __future__ import annotations

from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from tradeapp import events

# Close codes in the 4000-4999 range the WebSocket protocol leaves to applications.
CLOSE_BAD_REQUEST = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class StreamConsumer(AsyncJsonWebsocketConsumer):
    """Base for every live view: signed-in users only, then a snapshot and the stream's events."""

    streams: list[str]
    #: The close code when ``allowed`` refuses; a route about one object sets
    #: ``CLOSE_NOT_FOUND`` for an object the user may not see (its existence is not disclosed).
    refusal_code: int = CLOSE_FORBIDDEN

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
        await self.send_json(await database_sync_to_async(self._snapshot_message)())

    def _snapshot_message(self) -> dict[str, Any]:
        # Sequence numbers are read before the state, so an event racing the snapshot is
        # delivered again rather than missed.
        seqs = {channel: events.current_seq(channel) for channel in self.streams}
        return {"type": "snapshot", "streams": seqs, **self.snapshot()}

    async def disconnect(self, code: int) -> None:
        for channel in getattr(self, "streams", []):
            await self.channel_layer.group_discard(events.group_name(channel), self.channel_name)

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        # Live views are one-way; a client asks for a fresh snapshot after a gap.
        if isinstance(content, dict) and content.get("type") == "snapshot":
            await self.send_json(await database_sync_to_async(self._snapshot_message)())
        else:
            await self.send_json({"type": "error", "error": "unsupported message"})

    async def stream_event(self, message: dict[str, Any]) -> None:
        await self.send_json(message["event"])


class SystemEventsConsumer(StreamConsumer):
    """``/ws/system/events``: platform-wide events (starts, stops, errors), for staff."""

    def allowed(self, user: Any) -> bool:
        return bool(user.is_staff)

    def get_streams(self) -> list[str]:
        return [events.SYSTEM_EVENT_CHANNEL]
