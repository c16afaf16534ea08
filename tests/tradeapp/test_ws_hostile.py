"""Malformed WebSocket frames through the real ASGI application, signed in: text that is not
JSON, binary frames, JSON that is not an object, unknown types, a 2 MB frame, deep nesting and a
flood of snapshot requests. Each is answered ``{"type": "error", ...}`` (the snapshot flood:
coalesced to one snapshot per interval), the connection stays open and keeps relaying events
(``tradeapp.consumers``' docstring)."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from tests.tradeapp.test_consumers import session_headers
from tradeapp import consumers, events
from tradeapp.asgi import application

BAD_TEXT_FRAMES = [
    "not json",
    "{",
    '{"type": "snapshot"',
    "",
    "null",
    "17",
    '"snapshot"',
    "[]",
    '[{"type": "snapshot"}]',
    '{"type": "subscribe", "channel": "bot_signals:1"}',
    '{"type": null}',
    '{"type": ["snapshot"]}',
    '{"no_type": 1}',
    "NaN",
    "[" * 2000 + "]" * 2000,  # under the size limit, nested past the parser
    "x" * (2 * 1024 * 1024),  # 2 MB
    '{"type": "snapshot", "pad": "' + "y" * 100_000 + '"}',
]


@pytest.fixture
def staff_headers(transactional_db):
    from tests.factories import StaffUserFactory

    return session_headers(StaffUserFactory(password=None))


@pytest.fixture
def owner_and_bot(transactional_db):
    from tests.bots.support import instrument_with_exchange, make_bot
    from tests.factories import UserFactory

    owner = UserFactory(password=None)
    bot = make_bot(owner, instrument_with_exchange("ETH/USDT"))
    return session_headers(owner), bot


async def connected(route: str, headers) -> tuple[WebsocketCommunicator, dict]:
    communicator = WebsocketCommunicator(application, route, headers=headers)
    ok, _ = await communicator.connect(timeout=10)
    assert ok, route
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    return communicator, snapshot


async def still_relays(communicator: WebsocketCommunicator, channel: str) -> None:
    sent = await events.apublish(channel, {"type": "probe", "n": time.monotonic_ns()})
    assert await communicator.receive_json_from(timeout=5) == sent


@pytest.mark.asyncio
async def test_ws_bad_frames_are_answered_and_the_connection_keeps_relaying(staff_headers):
    communicator, _ = await connected("/ws/system/events", staff_headers)
    for frame in BAD_TEXT_FRAMES:
        # As the server hands frames over (the test helper refuses an empty one).
        await communicator.send_input({"type": "websocket.receive", "text": frame})
        answer = await communicator.receive_json_from(timeout=5)
        assert answer["type"] == "error" and answer["error"], (frame[:40], answer)
    await communicator.send_to(bytes_data=b"\x00\xff binary")
    answer = await communicator.receive_json_from(timeout=5)
    assert answer == {"type": "error", "error": "binary frames are not accepted: send JSON text"}
    # Nothing crashed: the connection is open, relays events and answers a real request.
    await still_relays(communicator, events.SYSTEM_EVENT_CHANNEL)
    await asyncio.sleep(consumers.SNAPSHOT_INTERVAL)
    await communicator.send_json_to({"type": "snapshot"})
    assert (await communicator.receive_json_from(timeout=5))["type"] == "snapshot"
    assert await communicator.receive_nothing(timeout=0.2)
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_ws_size_limit_answers_without_parsing(staff_headers):
    communicator, _ = await connected("/ws/system/events", staff_headers)
    await communicator.send_to(text_data=" " * consumers.MAX_CLIENT_FRAME + '{"type": "snapshot"}')
    answer = await communicator.receive_json_from(timeout=5)
    assert answer["type"] == "error" and "too large" in answer["error"]
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_ws_snapshot_flood_is_coalesced(owner_and_bot, monkeypatch):
    headers, bot = owner_and_bot
    reads = 0
    original = consumers.StreamConsumer._snapshot_message

    def counted(self):
        nonlocal reads
        reads += 1
        return original(self)

    monkeypatch.setattr(consumers.StreamConsumer, "_snapshot_message", counted)
    communicator, _ = await connected(f"/ws/bot/{bot.pk}/status", headers)
    assert reads == 1
    started = time.monotonic()
    for _ in range(500):
        await communicator.send_json_to({"type": "snapshot"})
    # One snapshot at the end of the interval for all 500 requests.
    snapshot = await communicator.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot" and snapshot["bot"]["id"] == bot.pk
    assert time.monotonic() - started >= consumers.SNAPSHOT_INTERVAL * 0.9
    assert await communicator.receive_nothing(timeout=consumers.SNAPSHOT_INTERVAL * 1.5)
    assert reads == 2
    # Still relaying the bot's events.
    await still_relays(communicator, events.BOT_SIGNAL_CHANNEL.format(bot_id=bot.pk))
    await communicator.disconnect()


@pytest.mark.asyncio
async def test_ws_bad_frames_on_every_kind_of_route(owner_and_bot):
    headers, bot = owner_and_bot
    from backtests.models import BacktestRun

    run = await database_sync_to_async(BacktestRun.objects.create)(
        owner=bot.owner, strategy="sma_crossover", instrument=bot.instrument, timeframe="1h",
        start="2026-01-01T00:00Z", end="2026-01-02T00:00Z",
    )  # fmt: skip
    routes = {
        f"/ws/bot/{bot.pk}/status": events.BOT_SIGNAL_CHANNEL.format(bot_id=bot.pk),
        f"/ws/portfolio/{bot.pk}": events.TRADE_UPDATE_CHANNEL.format(bot_id=bot.pk),
        "/ws/market/ETH/USDT": events.MARKET_DATA_CHANNEL.format(symbol="ETH/USDT"),
        f"/ws/dashboard?bots={bot.pk}": events.BOT_SIGNAL_CHANNEL.format(bot_id=bot.pk),
        f"/ws/backtest/{run.pk}": events.BACKTEST_CHANNEL.format(run_id=run.pk),
    }
    for route, channel in routes.items():
        communicator, _ = await connected(route, headers)
        for frame in ("not json", "[1]", '{"type": "drop_tables"}'):
            await communicator.send_to(text_data=frame)
            assert (await communicator.receive_json_from(timeout=5))["type"] == "error", route
        await communicator.send_to(bytes_data=b"\x01")
        assert (await communicator.receive_json_from(timeout=5))["type"] == "error", route
        await still_relays(communicator, channel)
        await communicator.disconnect()
