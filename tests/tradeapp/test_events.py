"""The one publish path: Redis pub/sub on the user's channel names and Channels groups."""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

from tradeapp import events
from tradeapp.redis_client import get_redis


def unique_bot_id() -> int:
    return uuid.uuid4().int % 10**12 + 1


class Listener:
    """A Redis pub/sub subscriber and a channel-layer member of the channel's group."""

    def __init__(self, channel: str):
        self.channel = channel
        self.pubsub = get_redis().pubsub()
        self.pubsub.subscribe(channel)
        # The subscription is only active once its confirmation has been read.
        assert self.pubsub.get_message(timeout=5)["type"] == "subscribe"
        self.layer = get_channel_layer()
        self.layer_channel = async_to_sync(self.layer.new_channel)()
        async_to_sync(self.layer.group_add)(events.group_name(channel), self.layer_channel)

    def redis_message(self, timeout: float = 5) -> dict | None:
        message = self.pubsub.get_message(timeout=timeout)
        return None if message is None else json.loads(message["data"])

    def group_message(self) -> dict:
        return async_to_sync(self.layer.receive)(self.layer_channel)

    def close(self) -> None:
        async_to_sync(self.layer.group_discard)(events.group_name(self.channel), self.layer_channel)
        self.pubsub.close()


@pytest.fixture
def listener_for():
    made: list[Listener] = []

    def make(channel: str) -> Listener:
        made.append(Listener(channel))
        return made[-1]

    yield make
    for listener in made:
        listener.close()


@pytest.mark.parametrize("kind", ["bot_signals", "trade_updates"])
def test_publish_reaches_redis_subscriber_and_group(listener_for, kind):
    channel = f"{kind}:{unique_bot_id()}"
    listener = listener_for(channel)
    event = events.publish(channel, {"type": "signal.created", "action": "BUY", "price": 101.25})

    assert event["seq"] == 1
    assert event["channel"] == channel
    assert event["type"] == "signal.created"
    assert isinstance(event["ts"], int)
    assert listener.redis_message() == event
    assert listener.group_message() == {"type": events.GROUP_MESSAGE_TYPE, "event": event}


def test_publish_market_data_channel_uses_symbol_group(listener_for):
    symbol = f"T{uuid.uuid4().hex[:6].upper()}/USDT"
    channel = f"market_data:{symbol}"
    listener = listener_for(channel)
    assert events.group_name(channel) == f"market_data.{symbol.replace('/', '-')}"
    event = events.publish(channel, {"type": "candle.closed", "close": 1.0, "timeframe": "1m"})
    assert listener.redis_message() == event
    assert listener.group_message()["event"] == event


def test_publish_sequence_numbers_are_consecutive_per_channel(listener_for):
    first, second = f"bot_signals:{unique_bot_id()}", f"bot_signals:{unique_bot_id()}"
    listener = listener_for(first)
    seqs = [events.publish(first, {"type": "tick", "n": n})["seq"] for n in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    assert events.publish(second, {"type": "tick"})["seq"] == 1
    assert [listener.redis_message()["seq"] for _ in range(5)] == seqs
    assert events.current_seq(first) == 5


def test_publish_system_events(listener_for):
    listener = listener_for(events.SYSTEM_EVENT_CHANNEL)
    before = events.current_seq(events.SYSTEM_EVENT_CHANNEL)
    event = events.publish("system_events", {"type": "bot.started", "bot_id": 3})
    assert event["seq"] == before + 1
    assert listener.redis_message()["type"] == "bot.started"
    assert events.group_name("system_events") == "system_events"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"type": "fill", "price": Decimal("1.5")}, TypeError),
        ({"type": "fill", "at": datetime(2026, 1, 1, tzinfo=UTC)}, TypeError),
        ({"type": "fill", "price": math.nan}, TypeError),
        ({"type": "fill", "ids": {1, 2}}, TypeError),
        ({"price": 1.0}, ValueError),
        ({"type": ""}, ValueError),
        ({"type": "fill", "seq": 7}, ValueError),
        (["type", "fill"], TypeError),
    ],
)
def test_publish_refuses_non_json_payloads_and_sends_nothing(listener_for, payload, error):
    channel = f"trade_updates:{unique_bot_id()}"
    listener = listener_for(channel)
    with pytest.raises(error):
        events.publish(channel, payload)
    assert events.current_seq(channel) == 0
    assert listener.redis_message(timeout=0.2) is None


@pytest.mark.parametrize(
    "channel",
    ["market_data:", "bot_signals:abc", "bot_signals:0", "trade_updates", "system_event",
     "orders:1", "market_data:BTC USDT", "market_data:" + "A" * 65, "bot_signals:1:2"],
)  # fmt: skip
def test_publish_refuses_unknown_channels(channel):
    with pytest.raises(ValueError, match="unknown event channel"):
        events.publish(channel, {"type": "x"})


@pytest.mark.django_db(transaction=True)
def test_publish_on_commit_waits_for_commit_and_drops_on_rollback(listener_for):
    channel = f"bot_signals:{unique_bot_id()}"
    listener = listener_for(channel)

    with pytest.raises(RuntimeError), transaction.atomic():
        events.publish_on_commit(channel, {"type": "signal.created", "n": 1})
        raise RuntimeError("roll back")
    assert listener.redis_message(timeout=0.2) is None

    with transaction.atomic():
        events.publish_on_commit(channel, {"type": "signal.created", "n": 2})
        assert listener.redis_message(timeout=0.2) is None
    assert listener.redis_message()["n"] == 2


@pytest.mark.django_db(transaction=True)
def test_publish_on_commit_rejects_bad_payload_inside_the_transaction():
    with pytest.raises(TypeError), transaction.atomic():
        events.publish_on_commit("system_events", {"type": "x", "amount": Decimal(1)})


@pytest.mark.asyncio
async def test_apublish_from_async_code():
    channel = f"trade_updates:{unique_bot_id()}"
    layer = get_channel_layer()
    member = await layer.new_channel()
    await layer.group_add(events.group_name(channel), member)
    event = await events.apublish(channel, {"type": "order.filled", "qty": 0.5})
    assert event["seq"] == 1
    assert await layer.receive(member) == {"type": events.GROUP_MESSAGE_TYPE, "event": event}
    await layer.group_discard(events.group_name(channel), member)
