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

import asyncio
import json
import logging
import os
import re
import threading
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

# _PUBLISH_LUA for many events in one call: KEYS are (sequence key, channel) pairs, ARGV the
# bodies in the same order; returns the sequence numbers.
_PUBLISH_MANY_LUA = """
local seqs = {}
for i = 1, #ARGV do
  local seq = redis.call('INCR', KEYS[2 * i - 1])
  local body = ARGV[i]
  if body == '{}' then
    body = '{"seq":' .. seq .. '}'
  else
    body = '{"seq":' .. seq .. ',' .. string.sub(body, 2)
  end
  redis.call('PUBLISH', KEYS[2 * i], body)
  seqs[i] = seq
end
return seqs
"""
# Events per script call: Redis runs a script without serving others meanwhile.
_PUBLISH_CHUNK = 200


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
    return _stamp(channel, _encode_parts(channel, payload), int(time.time() * 1000))


def _encode_parts(channel: str, payload: dict[str, Any]) -> tuple[str, str]:
    """The payload checked and encoded once: its ``type`` and its other fields as JSON, which
    ``_stamp`` joins around ``ts`` and ``channel`` when the event leaves."""
    if not isinstance(payload, dict):
        raise TypeError(f"event payload must be a dict, not {type(payload).__name__}")
    event_type = payload.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise ValueError("event payload needs a non-empty string 'type'")
    reserved = RESERVED_KEYS & payload.keys()
    if reserved:
        raise ValueError(f"event payload may not set {sorted(reserved)}: publish() sets them")
    rest = {key: value for key, value in payload.items() if key != "type"}
    try:
        return json.dumps(event_type), json.dumps(rest, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"event payload for {channel} is not JSON-serialisable: {exc}") from exc


def _stamp(channel: str, parts: tuple[str, str], ts: int) -> str:
    """``{"type", "ts", "channel", then the payload's other fields}`` as compact JSON: the
    same text as ``json.dumps`` of that dict."""
    event_type, rest = parts
    head = f'{{"type":{event_type},"ts":{ts},"channel":{json.dumps(channel)}'
    return f"{head}}}" if rest == "{}" else f"{head},{rest[1:]}"


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
    groups = [group_name(channel)]
    _deliver(groups, [event], _memberships(groups))
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
    with one Redis script call for all of them (per ``_PUBLISH_CHUNK``) and one round trip for
    the Channels groups' memberships, so that a thousand events cost milliseconds instead of a
    round trip (and an event loop) each. Only groups with members are sent to: ``group_send``
    to an empty group does nothing."""
    encoded = [(ch, _encode_parts(validate_channel(ch), payload)) for ch, payload in events]
    return _publish_encoded(encoded, decode_all=True)


def _publish_encoded(
    encoded: list[tuple[str, tuple[str, str]]], *, decode_all: bool
) -> list[dict[str, Any]]:
    """Publish ``_encode_parts`` results, stamped now; the events (all of them with
    ``decode_all``, else only those sent to a Channels group: the others are not returned)."""
    if not encoded:
        return []
    ts = int(time.time() * 1000)
    bodies = [(channel, _stamp(channel, parts, ts)) for channel, parts in encoded]
    client = get_redis()
    script = client.register_script(_PUBLISH_MANY_LUA)
    seqs: list[int] = []
    for at in range(0, len(bodies), _PUBLISH_CHUNK):
        chunk = bodies[at : at + _PUBLISH_CHUNK]
        keys = [key for channel, _body in chunk for key in (_seq_key(channel), channel)]
        seqs += script(keys=keys, args=[body for _channel, body in chunk])
    groups = [group_name(channel) for channel, _body in bodies]
    members = _memberships(groups)
    wanted = [i for i, group in enumerate(groups) if members is None or members.get(group, 1)]
    decode = set(range(len(bodies))) if decode_all else set(wanted)
    out = [
        {"seq": int(seq), **json.loads(body)} if i in decode else {}
        for i, ((_channel, body), seq) in enumerate(zip(bodies, seqs, strict=True))
    ]
    _deliver([groups[i] for i in wanted], [out[i] for i in wanted], members)
    return out if decode_all else [out[i] for i in wanted]


def _memberships(groups: list[str]) -> dict[str, int] | None:
    """The member counts of ``groups`` when the layer is channels-redis on plain URLs (read
    synchronously, ``_members``); None for any other layer."""
    layer = get_channel_layer()
    return _members(layer, groups) if _is_redis_layer(layer) else None


def _deliver(
    groups: list[str], events: list[dict[str, Any]], members: dict[str, int] | None
) -> None:
    """Send each event to its Channels group. With ``members`` (``_memberships``), only to
    groups with members, on a long-lived event loop (``_sender_loop``) instead of a new loop
    and connection per call; without, through the layer as ``async_to_sync`` always did."""
    if members is None:
        async_to_sync(_group_send_many)(groups, events)
        return
    wanted = [(g, event) for g, event in zip(groups, events, strict=True) if members.get(g, 1)]
    if not wanted:
        return
    args = ([g for g, _ in wanted], [event for _, event in wanted], members)
    loop = _sender_loop()
    if loop is None:
        async_to_sync(_group_send_many)(*args)
    else:
        asyncio.run_coroutine_threadsafe(_group_send_many(*args), loop).result()


def _is_redis_layer(layer: Any) -> bool:
    return all(
        hasattr(layer, name) for name in ("_group_key", "connection", "consistent_hash", "hosts")
    )


_SYNC_CLIENTS: dict[tuple[int, str, str], Any] = {}


def _members(layer: Any, groups: list[str]) -> dict[str, int] | None:
    """How many members each of ``groups`` has, read from channels-redis's own group keys with
    one pipelined ZCARD per shard over a plain (synchronous) connection; None when a shard is
    not given as a URL (sentinels, ...): the caller then asks through the layer. The host's
    connection options apply to this connection too, but its ``socket_timeout`` (None: for the
    layer's blocking reads) does not: ZCARD never blocks, and a hung Redis must fail fast."""
    by_shard: dict[int, list[str]] = {}
    for group in dict.fromkeys(groups):
        by_shard.setdefault(layer.consistent_hash(group), []).append(group)
    members: dict[str, int] = {}
    for shard, names in by_shard.items():
        host = layer.hosts[shard]
        if not isinstance(host, dict) or "address" not in host:
            return None
        options = {k: v for k, v in host.items() if k not in ("address", "socket_timeout")}
        key = (os.getpid(), str(host["address"]), repr(sorted(options.items())))
        client = _SYNC_CLIENTS.get(key)
        if client is None:
            import redis

            client = _SYNC_CLIENTS[key] = redis.Redis.from_url(str(host["address"]), **options)
        pipe = client.pipeline(transaction=False)
        for group in names:
            pipe.zcard(layer._group_key(group))
        members.update(zip(names, pipe.execute(), strict=True))
    return members


_SENDER: dict[str, Any] = {"pid": None, "loop": None, "thread": None}
_SENDER_LOCK = threading.Lock()


def _sender_loop() -> asyncio.AbstractEventLoop | None:
    """A long-lived event loop in a daemon thread of this process, for ``publish_many``'s group
    sends through channels-redis: its connection pools are per event loop, so ``async_to_sync``
    (a new loop per call) paid a connection per batch. None from inside a running loop (the
    caller is async code: ``async_to_sync`` refuses that as before). Made again after a fork."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        return None
    with _SENDER_LOCK:
        loop, thread = _SENDER["loop"], _SENDER["thread"]
        if _SENDER["pid"] == os.getpid() and thread is not None and thread.is_alive():
            return loop
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="tradeapp-events", daemon=True)
        thread.start()
        _SENDER.update(pid=os.getpid(), loop=loop, thread=thread)
        return loop


async def _group_send_many(
    groups: list[str], events: list[dict[str, Any]], members: dict[str, int] | None = None
) -> None:
    layer = get_channel_layer()
    if members is None:
        members = {}
        if _is_redis_layer(layer):
            # channels-redis: one pipelined ZCARD per shard tells which groups have members
            # (the layer's own group keys); the others are skipped. Any other layer: send to
            # each.
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
    """``publish_many`` once the current transaction commits; validates and encodes now (as
    ``publish_on_commit`` validates: the payloads are not read again), stamps ``ts`` at
    publish, and a Redis outage after commit is logged, never raised."""
    encoded = [(ch, _encode_parts(validate_channel(ch), payload)) for ch, payload in events]
    if encoded:
        transaction.on_commit(lambda: _publish_encoded(encoded, decode_all=False), robust=True)


def publish_on_commit(channel: str, payload: dict[str, Any]) -> None:
    """Publish once the current transaction commits (at once outside a transaction).

    Validates now, so a bad payload fails inside the transaction; a Redis outage after commit is
    logged and does not undo or fail the committed work (the database is the source of truth).
    """
    _encode(validate_channel(channel), payload)
    transaction.on_commit(lambda: publish(channel, payload), robust=True)
