"""The seed's three WebSocket routes through the real ASGI application and channels-redis:
``/ws/bot/{bot_id}/status``, ``/ws/portfolio/{bot_id}``, ``/ws/market/{symbol}``.

Each: sign-in required, the bot routes for the owner and staff alone (anyone else: 4404, as the
API's 404), the origin checked, a snapshot on connect, then the stream's events with their
sequence numbers following the snapshot's.
"""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from bots.manager import BotManager
from bots.models import Signal, Trade
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.factories import StaffUserFactory, UserFactory
from tests.tradeapp.test_consumers import session_headers
from tradeapp import events
from tradeapp.asgi import application
from tradeapp.consumers import CLOSE_BAD_REQUEST, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED

HISTORY = 40


@pytest.fixture
def world(transactional_db):
    """An owner with a running paper bot that has traded, another user, a staff user."""
    owner, other, staff = UserFactory(), UserFactory(), StaffUserFactory()
    instrument = instrument_with_exchange("ETH/USDT")
    data = walk(400, seed=11)
    store(instrument, data, slice(0, HISTORY))
    bot = make_bot(owner, instrument, parameters={"fast": 2, "slow": 5})
    manager = BotManager()
    assert manager.start_bot(bot.pk)
    for close_ms in store(instrument, data, slice(HISTORY, 200)):
        manager.process_candle(instrument.pk, "1m", close_ms)
    assert Trade.objects.filter(bot=bot).exists()
    return {
        "owner": owner, "other": other, "staff": staff, "bot": bot, "instrument": instrument,
        "data": data, "manager": manager,
    }  # fmt: skip


async def connect(route: str, user=None, origin: str = "http://localhost"):
    headers = await database_sync_to_async(session_headers)(user, origin)
    communicator = WebsocketCommunicator(application, route, headers=headers)
    connected, code = await communicator.connect(timeout=10)
    return communicator, connected, code


async def next_candle(world, row: int) -> None:
    def work() -> None:
        (close_ms,) = store(world["instrument"], world["data"], slice(row, row + 1))
        world["manager"].process_candle(world["instrument"].pk, "1m", close_ms)

    await database_sync_to_async(work)()


@pytest.mark.asyncio
async def test_bot_status_snapshot_then_each_signal_in_sequence(world):
    bot = world["bot"]
    ws, connected, _ = await connect(f"/ws/bot/{bot.pk}/status", world["owner"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["type"] == "snapshot"
    assert snapshot["bot"]["id"] == bot.pk and snapshot["bot"]["status"] == "running"
    assert (
        snapshot["bot"]["symbol"] == "ETH/USDT" and snapshot["bot"]["strategy"] == "sma_crossover"
    )
    decided = await database_sync_to_async(Signal.objects.filter(bot=bot).count)()
    assert len(snapshot["signals"]) == min(decided, 50)
    times = [s["time_ms"] for s in snapshot["signals"]]
    assert times == sorted(times)  # oldest first
    seq = snapshot["streams"][f"bot_signals:{bot.pk}"]

    await next_candle(world, 200)
    event = await ws.receive_json_from(timeout=5)
    assert event["type"] == "signal.created" and event["bot_id"] == bot.pk
    assert event["seq"] == seq + 1 and event["time_ms"] > times[-1]
    await ws.disconnect()


@pytest.mark.asyncio
async def test_portfolio_snapshot_then_the_candles_updates(world):
    bot = world["bot"]
    ws, connected, _ = await connect(f"/ws/portfolio/{bot.pk}", world["owner"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    portfolio = snapshot["portfolio"]
    assert portfolio["bot_id"] == bot.pk and portfolio["capital"] == 10_000
    trades = await database_sync_to_async(Trade.objects.filter(bot=bot).count)()
    assert len(snapshot["trades"]) == min(trades, 50) > 0
    assert {"entry_price", "exit_price", "pnl", "exit_reason"} <= set(snapshot["trades"][0])
    seq = snapshot["streams"][f"trade_updates:{bot.pk}"]

    await next_candle(world, 200)
    seen = []
    while not seen or seen[-1]["type"] != "portfolio.updated":
        seen.append(await ws.receive_json_from(timeout=5))
    assert [e["seq"] for e in seen] == list(range(seq + 1, seq + 1 + len(seen)))
    assert seen[-1]["bot_id"] == bot.pk and seen[-1]["equity"] > 0
    await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize("route", ["/ws/bot/{}/status", "/ws/portfolio/{}"])
async def test_bot_routes_are_the_owners_and_staffs_alone(world, route):
    bot = world["bot"]
    ws, connected, code = await connect(route.format(bot.pk), world["other"])
    assert not connected and code == CLOSE_NOT_FOUND
    ws, connected, code = await connect(route.format(bot.pk + 1000), world["owner"])
    assert not connected and code == CLOSE_NOT_FOUND  # no such bot: the same answer
    ws, connected, code = await connect(route.format(bot.pk))
    assert not connected and code == CLOSE_UNAUTHENTICATED
    ws, connected, _ = await connect(route.format(bot.pk), world["owner"], "http://evil.example")
    assert not connected  # a page of another origin
    ws, connected, _ = await connect(route.format(bot.pk), world["staff"])
    assert connected
    assert (await ws.receive_json_from(timeout=5))["type"] == "snapshot"
    await ws.disconnect()


@pytest.mark.asyncio
@pytest.mark.parametrize("written", ["ETH/USDT", "ETH%2FUSDT", "ETH-USDT"])
async def test_market_symbol_in_the_url(world, written):
    ws, connected, _ = await connect(f"/ws/market/{written}", world["other"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert snapshot["symbol"] == "ETH/USDT" and snapshot["timeframe"] == "1m"
    assert [i["exchange"] for i in snapshot["instruments"]] == ["simulated"]
    stamps = [c["timestamp"] for c in snapshot["candles"]]
    assert len(stamps) == 200 and stamps == sorted(stamps)
    assert stamps[-1] == int(world["data"]["timestamp"][199])
    assert snapshot["candles"][-1]["close"] == float(world["data"]["close"][199])
    await ws.disconnect()


@pytest.mark.asyncio
async def test_market_snapshot_then_events_and_refusals(world):
    ws, connected, _ = await connect("/ws/market/ETH/USDT?timeframe=1m&limit=10", world["other"])
    assert connected
    snapshot = await ws.receive_json_from(timeout=5)
    assert len(snapshot["candles"]) == 10
    seq = snapshot["streams"]["market_data:ETH/USDT"]
    sent = await events.apublish(
        "market_data:ETH/USDT", {"type": "candle.update", "symbol": "ETH/USDT", "candle": {}}
    )
    received = await ws.receive_json_from(timeout=5)
    assert received == sent and received["seq"] == seq + 1
    await ws.disconnect()

    for route, code in [
        ("/ws/market/DOGE/USDT", CLOSE_NOT_FOUND),
        ("/ws/market/ETH/USDT?timeframe=2m", CLOSE_BAD_REQUEST),
        ("/ws/market/ETH/USDT?limit=0", CLOSE_BAD_REQUEST),
        ("/ws/market/ETH/USDT?limit=abc", CLOSE_BAD_REQUEST),
    ]:
        ws, connected, closed = await connect(route, world["other"])
        assert not connected and closed == code, route
    ws, connected, closed = await connect("/ws/market/ETH/USDT")
    assert not connected and closed == CLOSE_UNAUTHENTICATED
