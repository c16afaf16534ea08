"""The fake Binance server itself, through the real synchronous ccxt client: the endpoints answer
with Binance's semantics and the injected faults map to the ccxt errors the provider handles."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import ccxt
import pytest

from tests.exchange_server import FakeBinance

BTC = "BTC/USDT"
MINUTE = 60_000


@pytest.fixture(scope="module")
def server() -> Iterator[FakeBinance]:
    with FakeBinance(history_s=3 * 3600, history_rate=2, live_rate=5) as ex:
        yield ex


@pytest.fixture
def client(server: FakeBinance) -> ccxt.binance:
    server.clear_faults()
    return ccxt.binance({**server.ccxt_config(), "timeout": 3000})


def get(server: FakeBinance, path: str) -> Any:
    with urllib.request.urlopen(server.rest_url + path, timeout=5) as response:
        return json.loads(response.read())


def test_sync_ccxt_loads_markets_from_exchange_info_only(server, client):
    before = len(server.requests)
    markets = client.load_markets()
    assert {BTC, "ETH/USDT"} <= set(markets)
    assert markets[BTC]["precision"]["price"] == 0.01
    assert markets[BTC]["precision"]["amount"] == 0.00001
    assert [path for _, path, _ in server.requests[before:]] == ["/api/v3/exchangeInfo"]
    assert abs(client.fetch_time() - server.now_ms()) < 2000
    last = client.fetch_ticker(BTC)["last"]
    assert last in [float(r["p"]) for r in server.trades(BTC)[-50:]]


def test_fetch_trades_since_calls_agg_trades_with_a_one_hour_window(server, client):
    since = server.now_ms() - 2 * 3600_000
    trades = client.fetch_trades(BTC, since=since, limit=50)
    _, path, query = server.requests[-1]
    assert path == "/api/v3/aggTrades"
    assert int(query["endTime"]) - int(query["startTime"]) == 3600_000
    rows = [r for r in server.trades(BTC) if r["T"] >= since][:50]
    assert [t["id"] for t in trades] == [str(r["a"]) for r in rows]  # the oldest at/after since
    assert (
        get(server, f"/api/v3/aggTrades?symbol=BTCUSDT&fromId={rows[3]['a']}&limit=2")
        == (rows[3:5])
    )
    with pytest.raises(urllib.error.HTTPError) as err:  # binance refuses windows over 1 h
        get(server, f"/api/v3/aggTrades?symbol=BTCUSDT&startTime={since}&endTime={since + 4e6:.0f}")
    assert json.loads(err.value.read())["code"] == -1127


def test_klines_are_open_stamped_derived_from_trades_with_the_open_candle_last(server, client):
    for _ in range(3):  # again if a minute ended during the call
        now = server.now_ms()
        rows = get(server, "/api/v3/klines?symbol=BTCUSDT&interval=1m&limit=5")
        if server.now_ms() // MINUTE == now // MINUTE:
            break
    assert [r[0] for r in rows] == [now // MINUTE * MINUTE - (4 - i) * MINUTE for i in range(5)]
    assert all(r[6] == r[0] + MINUTE - 1 for r in rows)
    first = rows[0]
    trades = [t for t in server.trades(BTC) if first[0] <= t["T"] < first[0] + MINUTE]
    prices = [t["p"] for t in trades]
    assert first[1:5] == [prices[0], max(prices, key=float), min(prices, key=float), prices[-1]]
    assert first[8] == len(trades)
    ohlcv = client.fetch_ohlcv(BTC, "1m", since=first[0], limit=3)
    assert [c[0] for c in ohlcv] == [r[0] for r in rows[:3]]


def test_ws_trade_events_reach_ccxt_pro(server):
    import asyncio

    import ccxt.pro

    async def watch() -> list[dict[str, Any]]:
        exchange = ccxt.pro.binance(server.ccxt_config())
        try:
            return await asyncio.wait_for(exchange.watch_trades(BTC), 10)
        finally:
            await exchange.close()

    trades = asyncio.run(watch())
    assert trades
    assert trades[0]["symbol"] == BTC
    assert "btcusdt@trade" in server.subscribed


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, ccxt.DDoSProtection),
        (418, ccxt.DDoSProtection),
        (500, ccxt.OperationFailed),
        (502, ccxt.ExchangeNotAvailable),
        (503, ccxt.ExchangeNotAvailable),
        (504, ccxt.RequestTimeout),
    ],
)
def test_injected_status_maps_to_ccxt_error(server, client, status, error):
    client.load_markets()
    server.fail_next(1, status, path="/api/v3/ticker")
    with pytest.raises(error):
        client.fetch_ticker(BTC)
    assert client.fetch_ticker(BTC)["last"] > 0  # only the next call failed


def test_refused_connections_then_recovery(server, client):
    client.load_markets()
    server.refuse_for(0.5)
    with pytest.raises(ccxt.NetworkError):
        client.fetch_ticker(BTC)
    deadline = time.monotonic() + 5
    while True:
        try:
            assert client.fetch_ticker(BTC)["last"] > 0
            break
        except ccxt.NetworkError:
            assert time.monotonic() < deadline, "the server did not come back"
            time.sleep(0.1)


def test_malformed_rows_are_served_as_injected(server, client):
    ids = {kind: server.add_trades(BTC, 1, malformed=kind)[0]
           for kind in ("bad_price", "negative_qty", "missing_fields")}  # fmt: skip
    rows = {r["a"]: r for r in get(server, "/api/v3/aggTrades?symbol=BTCUSDT&limit=20")}
    assert rows[ids["bad_price"]]["p"] == "abc"
    assert rows[ids["negative_qty"]]["q"] == "-1.00000000"
    assert {"p", "q", "T"}.isdisjoint(rows[ids["missing_fields"]])
    with pytest.raises(ValueError):  # ccxt's own parser chokes on the price
        client.fetch_trades(BTC, limit=20)
