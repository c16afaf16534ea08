"""The one publish path for real-time events.

``publish(channel, payload)`` sends one event to both audiences at once:

* Redis pub/sub on the user's channel name (``market_data:{symbol}``, ``bot_signals:{bot_id}``,
  ``trade_updates:{bot_id}``, ``system_events``), for any process that subscribes;
* the matching Channels group (``group_name(channel)``), for WebSocket consumers.

Every event is a JSON object carrying ``type`` (given by the caller), ``seq`` (a sequence number
per channel, incremented in Redis), ``ts`` (publish time, epoch milliseconds) and ``channel``,
then the caller's fields. Payloads must be JSON-native (numbers, strings, booleans, null, lists,
objects): convert ``Decimal`` and ``datetime`` at the call site.

Pub/sub is at-most-once: events wake listeners up, the database stays the source of truth. A
client that sees ``seq`` jump (or go back, after a Redis restart) reloads its snapshot.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

from tradeapp.redis_client import get_redis

logger = logging.getLogger(__name__)

MARKET_DATA_CHANNEL = "market_data:{symbol}"
BOT_SIGNAL_CHANNEL = "bot_signals:{bot_id}"
TRADE_UPDATE_CHANNEL = "trade_updates:{bot_id}"
SYSTEM_EVENT_CHANNEL = "system_events"
# Progress of stored research runs (not in the seed: the backtest pages' live progress).
BACKTEST_CHANNEL = "backtests:{run_id}"
OPTIMIZATION_CHANNEL = "optimizations:{run_id}"

_CHANNEL_RE = re.compile(
    r"^(?:market_data:(?P<symbol>[A-Za-z0-9][A-Za-z0-9/:._-]{0,63})"
    r"|(?:bot_signals|trade_updates):(?P<bot_id>[1-9][0-9]{0,17})"
    r"|(?:backtests|optimizations):(?P<run_id>[1-9][0-9]{0,17})"
    r"|system_events)$"
)
_GROUP_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
RESERVED_KEYS = frozenset({"seq", "ts", "channel"})
GROUP_MESSAGE_TYPE = "stream.event"

# Atomically takes the channel's next sequence number and publishes the event with it, so that
# subscribers of one channel always receive increasing numbers. ARGV[1] is the JSON object
# without "seq"; the number is spliced in as its first member.
_PUBLISH_LUA = """
local seq = redis.call('INCR', KEYS[1])
local body = ARGV[1]
if body == '{}' then
  body = '{"seq":' .. seq .. '}'
else
  body = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
end
redis.call('PUBLISH', KEYS[2], body)
return seq
"""


def validate_channel(channel: str) -> str:
    """Return ``channel`` if it is one of the user's channel names, else raise ``ValueError``."""
    if not isinstance(channel, str) or not _CHANNEL_RE.match(channel):
        raise ValueError(
            f"unknown event channel {channel!r}: expected market_data:{{symbol}}, "
            "bot_signals:{bot_id}, trade_updates:{bot_id}, system_events, backtests:{run_id} "
            "or optimizations:{run_id}"
        )
    return channel


def group_name(channel: str) -> str:
    """The Channels group of a channel: colons become dots, ``/`` in symbols becomes ``-``.

    ``market_data:BTC/USDT`` -> ``market_data.BTC-USDT``; ``bot_signals:42`` -> ``bot_signals.42``.
    (Channels allows only ASCII letters, digits, ``-``, ``_`` and ``.`` in group names.)
    """
    kind, _, key = validate_channel(channel).partition(":")
    if not key:
        return kind
    return f"{kind}.{_GROUP_UNSAFE.sub('_', key.replace('/', '-'))}"


def _seq_key(channel: str) -> str:
    return f"{settings.TRADEAPP_REDIS_PREFIX}:seq:{channel}"


def current_seq(channel: str) -> int:
    """The last sequence number published on ``channel`` (0 if none): a snapshot's baseline."""
    value = get_redis().get(_seq_key(validate_channel(channel)))
    return int(value) if value is not None else 0


def _encode(channel: str, payload: dict[str, Any]) -> str:
    if not isinstance(payload, dict):
        raise TypeError(f"event payload must be a dict, not {type(payload).__name__}")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("event payload needs a non-empty string 'type'")
    reserved = RESERVED_KEYS & payload.keys()
    if reserved:
        raise ValueError(f"event payload may not set {sorted(reserved)}: publish() sets them")
    event = {"type": event_type, "ts": int(time.time() * 1000), "channel": channel}
    event.update(payload)
    try:
        return json.dumps(event, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"event payload for {channel} is not JSON-serialisable: {exc}") from exc


def _publish_redis(channel: str, body: str) -> dict[str, Any]:
    seq = get_redis().eval(_PUBLISH_LUA, 2, _seq_key(channel), channel, body)
    return {"seq": int(seq), **json.loads(body)}


def publish(channel: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Publish one event on ``channel`` (Redis pub/sub and Channels group); return the event.

    Raises ``ValueError``/``TypeError`` for a bad channel or payload, and Redis errors when Redis
    is unreachable. From a transaction, use ``publish_on_commit``.
    """
    body = _encode(validate_channel(channel), payload)
    event = _publish_redis(channel, body)
    async_to_sync(get_channel_layer().group_send)(
        group_name(channel), {"type": GROUP_MESSAGE_TYPE, "event": event}
    )
    return event


async def apublish(channel: str, payload: dict[str, Any]) -> dict[str, Any]:
    """``publish`` for async code (the collector, consumers)."""
    body = _encode(validate_channel(channel), payload)
    event = await sync_to_async(_publish_redis, thread_sensitive=False)(channel, body)
    await get_channel_layer().group_send(
        group_name(channel), {"type": GROUP_MESSAGE_TYPE, "event": event}
    )
    return event


def publish_many(events: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """``publish`` for many events at once (a batch of bots): the same events in the same order,
    with one Redis round trip for all of them and one for the Channels groups' memberships, so
    that a thousand events cost milliseconds instead of a round trip (and an event loop) each.
    Only groups with members are sent to: ``group_send`` to an empty group does nothing."""
    encoded = [(ch, _encode(validate_channel(ch), payload)) for ch, payload in events]
    if not encoded:
        return []
    client = get_redis()
    script = client.register_script(_PUBLISH_LUA)
    pipe = client.pipeline(transaction=False)
    for channel, body in encoded:
        script(keys=[_seq_key(channel), channel], args=[body], client=pipe)
    seqs = pipe.execute()
    out = [
        {"seq": int(seq), **json.loads(body)}
        for (_channel, body), seq in zip(encoded, seqs, strict=True)
    ]
    groups = [group_name(channel) for channel, _body in encoded]
    async_to_sync(_group_send_many)(groups, out)
    return out


async def _group_send_many(groups: list[str], events: list[dict[str, Any]]) -> None:
    layer = get_channel_layer()
    members: dict[str, int] = {}
    if all(hasattr(layer, name) for name in ("_group_key", "connection", "consistent_hash")):
        # channels-redis: one pipelined ZCARD per shard tells which groups have members (the
        # layer's own group keys); the others are skipped. Any other layer: send to each.
        by_shard: dict[int, list[str]] = {}
        for group in dict.fromkeys(groups):
            by_shard.setdefault(layer.consistent_hash(group), []).append(group)
        for shard, names in by_shard.items():
            pipe = layer.connection(shard).pipeline(transaction=False)
            for group in names:
                pipe.zcard(layer._group_key(group))
            members.update(zip(names, await pipe.execute(), strict=True))
    for group, event in zip(groups, events, strict=True):
        if members.get(group, 1):
            await layer.group_send(group, {"type": GROUP_MESSAGE_TYPE, "event": event})


def publish_many_on_commit(events: list[tuple[str, dict[str, Any]]]) -> None:
    """``publish_many`` once the current transaction commits; validates now (as
    ``publish_on_commit``), and a Redis outage after commit is logged, never raised."""
    for channel, payload in events:
        _encode(validate_channel(channel), payload)
    if events:
        transaction.on_commit(lambda: publish_many(events), robust=True)


def publish_on_commit(channel: str, payload: dict[str, Any]) -> None:
    """Publish once the current transaction commits (at once outside a transaction).

    Validates now, so a bad payload fails inside the transaction; a Redis outage after commit is
    logged and does not undo or fail the committed work (the database is the source of truth).
    """
    _encode(validate_channel(channel), payload)
    transaction.on_commit(lambda: publish(channel, payload), robust=True)
