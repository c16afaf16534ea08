"""CcxtProvider against the fake Binance server, through the real, unmodified ccxt client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import ccxt
import pytest
import pytest_asyncio

from marketdata.providers.base import ProviderError, RawTrade
from marketdata.providers.ccxt_provider import CcxtProvider, _Feed, rewrite_api_urls
from tests.exchange_server import FakeBinance

BTC, ETH = "BTC/USDT", "ETH/USDT"
MINUTE = 60_000


@pytest.fixture
def server() -> Iterator[FakeBinance]:
    with FakeBinance(history_s=1800, live_rate=30) as ex:
        yield ex


class Events(list):
    def __call__(self, event: str, detail: str) -> None:
        self.append((event, detail))

    def count(self, event: str) -> int:  # type: ignore[override]
        return sum(1 for e, _ in self if e == event)


def make_provider(server: FakeBinance, **kwargs: Any) -> tuple[CcxtProvider, Events]:
    kwargs = {"poll_interval": 0.2, "max_backoff": 0.4, **kwargs}
    provider = CcxtProvider("binance", api_urls=server.rest_url, **kwargs)
    events = Events()
    provider.on_event = events
    return provider, events


@pytest_asyncio.fixture
async def provider(server: FakeBinance) -> AsyncIterator[tuple[CcxtProvider, Events]]:
    provider, events = make_provider(server)
    yield provider, events
    await provider.close()


@pytest_asyncio.fixture
async def polling_provider(server: FakeBinance) -> AsyncIterator[tuple[CcxtProvider, Events]]:
    provider, events = make_provider(server, use_websocket=False)
    yield provider, events
    await provider.close()


class Stream:
    """Consumes ``provider.stream_trades`` in a task; tests wait on what it has collected."""

    def __init__(self, provider: CcxtProvider, symbols: list[str]) -> None:
        self.trades: list[RawTrade] = []
        self.error: BaseException | None = None
        self._gen = provider.stream_trades(symbols)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for trade in self._gen:
                self.trades.append(trade)
        except Exception as exc:
            self.error = exc

    def ids(self, symbol: str) -> list[int]:
        return [int(t["id"]) for t in self.trades if t["symbol"] == symbol]

    async def until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        async def poll() -> None:
            while not condition():
                if self.error is not None:
                    raise self.error
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; got {len(self.trades)}")

    async def more(self, symbol: str, n: int, timeout: float = 10) -> None:
        """Wait until ``n`` more trades of ``symbol`` have arrived."""
        target = len(self.ids(symbol)) + n
        await self.until(lambda: len(self.ids(symbol)) >= target, timeout, f"{n} {symbol} trades")

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._gen.aclose()


def assert_complete(stream: Stream, server: FakeBinance, symbol: str) -> None:
    """Every trade the server made between the first and the last one yielded was yielded,
    exactly once, in order, with the server's values."""
    ids = stream.ids(symbol)
    assert len(ids) == len(set(ids)), "a trade was yielded twice"
    assert ids == sorted(ids), "trades were yielded out of order"
    rows = {r["a"]: r for r in server.trades(symbol) if ids[0] <= r["a"] <= ids[-1]}
    missing = sorted(set(rows) - set(ids))
    assert not missing, f"{len(missing)} trades lost, e.g. {missing[:5]}"
    for trade in (t for t in stream.trades if t["symbol"] == symbol):
        row = rows[int(trade["id"])]
        assert trade["exchange"] == "binance"
        assert trade["timestamp"] == row["T"]
        assert trade["price"] == float(row["p"])
        assert trade["amount"] == float(row["q"])
        assert trade["side"] == ("sell" if row["m"] else "buy")


def back_on_ws(events: Events, symbol: str) -> bool:
    """``symbol`` lost its WebSocket and then got trades on a new one."""
    mine = [e for e, detail in events if detail.startswith(symbol) and e != "error"]
    return "reconnecting" in mine and mine[-1] == "connected"


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stream_yields_live_trades_via_websocket(server, provider):
    provider, events = provider
    stream = Stream(provider, [BTC, ETH])
    try:
        await stream.more(BTC, 15)
        await stream.more(ETH, 15)
    finally:
        await stream.stop()
    assert server.ws_connections >= 2  # one stream per symbol
    assert events.count("connected") == 2
    assert events.count("reconnecting") == 0
    assert_complete(stream, server, BTC)
    assert_complete(stream, server, ETH)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("abrupt", "channel"),
    [(False, "trade"), (True, "trade"), (True, "aggTrade")],
    ids=["close-frame", "tcp-cut", "tcp-cut-aggTrade"],
)
async def test_stream_reconnects_after_ws_drop_without_loss_or_duplicates(server, abrupt, channel):
    # binance's `aggTrade` channel carries the ids REST fetch_trades (aggTrades) returns
    provider, events = make_provider(server, options={"watchTrades": {"name": channel}})
    stream = Stream(provider, [BTC])
    try:
        await stream.more(BTC, 10)
        for drop in (1, 2):
            server.drop_ws(abrupt=abrupt)
            server.add_trades(BTC, 5)  # made while nobody is connected: REST must fill them
            await stream.until(
                lambda n=drop: events.count("reconnecting") >= n, 5, f"reconnect {drop}"
            )
            await stream.more(BTC, 20)
            await stream.until(lambda: back_on_ws(events, BTC), 5, "the WebSocket again")
    finally:
        await stream.stop()
        await provider.close()
    assert server.ws_connections >= 3
    assert set(server.subscribed) == {f"btcusdt@{channel}"}
    assert events.count("reconnecting") >= 2
    assert_complete(stream, server, BTC)


@pytest.mark.asyncio
async def test_stream_polls_rest_while_ws_unavailable_then_returns_to_ws(server, provider):
    provider, events = provider
    server.ws_available = False
    stream = Stream(provider, [BTC])
    try:
        await stream.more(BTC, 25)
        assert events.count("fallback") >= 1
        assert events.count("connected") == 0
        assert any(
            path == "/api/v3/aggTrades" and "startTime" in q for _, path, q in server.requests
        )
        server.ws_available = True
        await stream.until(lambda: events.count("connected") == 1, 10, "the WebSocket again")
        await stream.more(BTC, 20)
    finally:
        await stream.stop()
    assert_complete(stream, server, BTC)


@pytest.mark.asyncio
async def test_stream_without_websocket_polls_rest(server, polling_provider):
    provider, events = polling_provider
    stream = Stream(provider, [BTC, ETH])
    try:
        await stream.more(BTC, 20)
        await stream.more(ETH, 20)
    finally:
        await stream.stop()
    assert server.ws_connections == 0
    assert events.count("fallback") == 2
    assert_complete(stream, server, BTC)
    assert_complete(stream, server, ETH)


@pytest.mark.asyncio
async def test_stream_survives_5xx_and_429_bursts(server, polling_provider):
    provider, events = polling_provider
    stream = Stream(provider, [BTC])
    try:
        await stream.more(BTC, 5)
        for status in (500, 503, 504, 429):
            before = events.count("error")
            server.fail_next(3 if status != 429 else 2, status, path="/api/v3/aggTrades")
            await stream.until(lambda n=before: events.count("error") >= n + 2, 10, f"{status}s")
            await stream.more(BTC, 10)
    finally:
        await stream.stop()
    errors = " ".join(detail for event, detail in events if event == "error")
    for name in ("OperationFailed", "ExchangeNotAvailable", "RequestTimeout", "DDoSProtection"):
        assert name in errors
    # the two 429s carried Retry-After: 1, and the provider waited at least that long
    agg = [t for t, path, _ in server.requests if path == "/api/v3/aggTrades"]
    assert any(b - a >= 0.95 for a, b in itertools.pairwise(agg))
    assert_complete(stream, server, BTC)


@pytest.mark.asyncio
async def test_stream_recovers_after_connections_refused_and_fills_the_gap(server, provider):
    provider, events = provider
    stream = Stream(provider, [BTC, ETH])
    try:
        await stream.more(BTC, 10)
        server.refuse_for(1.5)  # the server keeps trading meanwhile
        await stream.until(lambda: events.count("error") >= 2, 5, "failed REST polls")
        server.fail_next(2, 503, path="/api/v3/aggTrades")  # and the gap fill fails at first
        await stream.more(BTC, 40, timeout=15)
        await stream.more(ETH, 10)
        await stream.until(lambda: back_on_ws(events, BTC) and back_on_ws(events, ETH), 10,
                           "both symbols back on the WebSocket")  # fmt: skip
    finally:
        await stream.stop()
    assert_complete(stream, server, BTC)
    assert_complete(stream, server, ETH)


@pytest.mark.asyncio
@pytest.mark.parametrize("use_websocket", [True, False], ids=["ws", "rest"])
async def test_stream_yields_malformed_rows_as_received(server, use_websocket):
    provider, _ = make_provider(server, use_websocket=use_websocket)
    stream = Stream(provider, [BTC])
    try:
        await stream.more(BTC, 5)
        bad = {kind: server.add_trades(BTC, 1, malformed=kind)[0]
               for kind in ("bad_price", "negative_qty", "missing_fields")}  # fmt: skip
        await stream.until(lambda: set(bad.values()) <= set(stream.ids(BTC)), 10, "bad rows")
        await stream.more(BTC, 10)  # and the stream goes on after them
    finally:
        await stream.stop()
        await provider.close()
    by_id = {int(t["id"]): t for t in stream.trades}
    price = by_id[bad["bad_price"]]
    assert price["price"] == "abc"  # ccxt's parser raised: the raw value, for the collector
    assert price["info"]["p"] == "abc"
    assert by_id[bad["negative_qty"]]["amount"] == -1.0
    missing = by_id[bad["missing_fields"]]
    assert missing["price"] is None
    assert missing["amount"] is None
    assert provider.stats["unparsed"] >= 1
    ids = stream.ids(BTC)
    assert len(ids) == len(set(ids))
    good = {r["a"] for r in server.trades(BTC) if ids[0] <= r["a"] <= ids[-1]}
    assert good == set(ids)


@pytest.mark.asyncio
async def test_emit_dedupes_across_id_spaces_by_time_watermark():
    """Binance's `trade` stream and REST aggTrades number trades differently: after a switch,
    a trade older than the newest one yielded is a duplicate even under an unseen id."""
    provider = CcxtProvider("binance")  # no I/O: only the de-duplication rule is exercised
    queue: asyncio.Queue = asyncio.Queue()
    feed = _Feed(BTC, queue, watermark=1000, cursor=1000)

    def emit(trade_id: str | None, ts: Any, *, parsed: bool = True) -> None:
        trade = RawTrade(exchange="binance", symbol=BTC, id=trade_id, timestamp=ts, price=1.0,
                         amount=1.0, side="buy", info={})  # fmt: skip
        provider._emit(feed, trade, parsed=parsed)

    emit("a7", 1005)  # from a REST fill
    emit("t3", 1004)  # the WebSocket's copy of an older trade: skipped
    emit("a7", 1005)  # same id: skipped
    emit("t4", 1005)  # same millisecond, new id: yielded
    emit("x1", "garbage", parsed=False)  # unparsed: yielded, the watermark is not touched
    emit("t5", 1006)
    emit(None, 1006)  # an exchange without trade ids: its values identify the trade...
    emit(None, 1006)  # ...so the same trade polled again is skipped
    assert [queue.get_nowait()["id"] for _ in range(queue.qsize())] == [
        "a7", "t4", "x1", "t5", None
    ]  # fmt: skip
    assert provider.stats == {"duplicates": 2, "out_of_order": 1, "unparsed": 0}
    assert feed.watermark == 1006
    await provider.close()


@pytest.mark.asyncio
@pytest.mark.parametrize("rate", [0.1, 0.4], ids=["short-windows", "full-pages"])
async def test_poll_catches_up_hours_through_one_hour_windows_and_full_pages(rate):
    """After a long outage REST resumes from the last trade seen: binance answers a since-query
    with at most 1 h and 1000 trades (360 and 1440 trades an hour here), so the provider steps
    window by window and pages within a window, up to now."""
    with FakeBinance(history_s=4 * 3600, history_rate=rate, live_rate=0) as server:
        provider, _ = make_provider(server, use_websocket=False)
        since = server.now_ms() - 3 * 3600_000
        feed = _Feed(BTC, asyncio.Queue(), watermark=since, cursor=since)
        try:
            await asyncio.wait_for(provider.exchange.load_markets(), 10)
            await asyncio.wait_for(provider._poll(feed), 20)
        finally:
            await provider.close()
        got = [int(feed.queue.get_nowait()["id"]) for _ in range(feed.queue.qsize())]
        expected = [r["a"] for r in server.trades(BTC) if r["T"] >= since]
        assert len(expected) > 3 * 3600 * rate * 0.9
        assert got == expected


@pytest.mark.asyncio
async def test_stream_unknown_symbol_raises_provider_error(server, provider):
    provider, _ = provider
    stream = provider.stream_trades([BTC, "DOGE/USDT"])
    with pytest.raises(ProviderError, match="DOGE/USDT"):
        await asyncio.wait_for(anext(stream), 10)
    with pytest.raises(ProviderError, match="DOGE/USDT"):
        await asyncio.wait_for(provider.fetch_candles("DOGE/USDT", "1m", 0), 10)


# --- candles ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def history_server() -> Iterator[FakeBinance]:
    with FakeBinance(history_s=45 * 3600, history_rate=0.5, live_rate=2) as ex:
        yield ex


@pytest.mark.asyncio
async def test_fetch_candles_paginates_with_close_time_stamps(history_server):
    server = history_server
    provider, _ = make_provider(server)
    since = (server.now_ms() // MINUTE - 2500) * MINUTE + 17  # inside a minute, on purpose
    candles, pages, cursor = [], 0, since
    try:
        while pages < 10:
            page = await asyncio.wait_for(provider.fetch_candles(BTC, "1m", cursor), 10)
            if not page:
                break
            pages += 1
            candles += page
            cursor = page[-1]["timestamp"]
    finally:
        await provider.close()
    now = server.now_ms()
    assert pages == 3
    stamps = [c["timestamp"] for c in candles]
    assert stamps[0] == since - 17 + MINUTE  # the candle holding `since` closes a minute later
    assert all(b - a == MINUTE for a, b in itertools.pairwise(stamps))  # no gap/dup
    assert stamps[-1] <= now < stamps[-1] + 2 * MINUTE  # the in-progress candle was dropped
    raw = server.klines(BTC, "1m", start=since - 17, limit=1000)
    assert raw[-1][6] + 1 > now or len(raw) == 1000
    expected = {}
    for start in range(since - 17, now, 1000 * MINUTE):
        for row in server.klines(BTC, "1m", start=start, limit=1000):
            expected[row[0] + MINUTE] = row  # the exchange's open time + 1 minute
    for c in candles:
        row = expected[c["timestamp"]]
        assert row[6] == c["timestamp"] - 1  # binance's closeTime is open + 60000 - 1
        assert [c["open"], c["high"], c["low"], c["close"], c["volume"]] == [
            float(v) for v in row[1:6]
        ]
    klines = [q for _, path, q in server.requests if path == "/api/v3/klines"]
    assert [int(q["startTime"]) for q in klines[:3]] == [since - 17 + i * 1000 * MINUTE
                                                          for i in range(3)]  # fmt: skip


@pytest.mark.asyncio
async def test_fetch_candles_drops_the_candle_in_progress(history_server):
    server = history_server
    provider, _ = make_provider(server)
    try:
        now = server.now_ms()
        if now % MINUTE > MINUTE - 3000:  # keep the check away from a minute boundary
            await asyncio.sleep((MINUTE - now % MINUTE) / 1000 + 0.05)
        server.add_trades(BTC, 1)
        raw = server.klines(BTC, "1m", limit=3)
        candles = await asyncio.wait_for(provider.fetch_candles(BTC, "1m", raw[0][0]), 10)
    finally:
        await provider.close()
    assert raw[-1][0] <= server.now_ms() < raw[-1][0] + MINUTE  # the server sent it...
    assert [c["timestamp"] for c in candles] == [raw[0][0] + MINUTE, raw[1][0] + MINUTE]  # ...
    assert all(c["timestamp"] <= server.now_ms() for c in candles)


@pytest.mark.asyncio
async def test_fetch_candles_equal_an_aggregation_of_the_servers_trades(history_server):
    """Exchange candles hold the trades with close - 1 min <= time < close (binance's interval,
    open-stamped); the provider only relabels them with their close time."""
    server = history_server
    provider, _ = make_provider(server)
    since = (server.now_ms() // MINUTE - 90) * MINUTE
    try:
        candles = await asyncio.wait_for(provider.fetch_candles(BTC, "1m", since), 10)
    finally:
        await provider.close()
    buckets: dict[int, list[dict[str, Any]]] = {}
    for row in server.trades(BTC):
        if since <= row["T"] < candles[-1]["timestamp"]:
            buckets.setdefault(row["T"] // MINUTE * MINUTE + MINUTE, []).append(row)
    assert [c["timestamp"] for c in candles] == sorted(buckets)
    for c in candles:
        rows = buckets[c["timestamp"]]
        prices = [float(r["p"]) for r in rows]
        assert (c["open"], c["high"], c["low"], c["close"]) == (
            prices[0],
            max(prices),
            min(prices),
            prices[-1],
        )
        assert c["volume"] == pytest.approx(sum(float(r["q"]) for r in rows), rel=1e-12)


@pytest.mark.asyncio
async def test_fetch_candles_retries_server_errors_then_gives_up(history_server):
    server = history_server
    provider, events = make_provider(server, max_backoff=0.1)
    since = server.now_ms() - 30 * MINUTE
    try:
        server.fail_next(2, 503, path="/api/v3/klines")
        candles = await asyncio.wait_for(provider.fetch_candles(BTC, "5m", since), 10)
        assert len(candles) >= 5
        assert events.count("error") == 2
        server.fail_next(10, 502, path="/api/v3/klines")
        with pytest.raises(ccxt.ExchangeNotAvailable):
            await asyncio.wait_for(provider.fetch_candles(BTC, "5m", since), 10)
    finally:
        server.clear_faults()
        await provider.close()
    assert events.count("error") == 2 + 4  # five attempts in all: four retries reported


# --- configuration ------------------------------------------------------------------------


def test_rewrite_api_urls_keeps_paths_and_maps_websockets():
    api = {
        "public": "https://api.binance.com/api/v3",
        "ws": {"spot": "wss://stream.binance.com:9443/ws", "ws-api": {"spot": "wss://x/ws-api/v3"}},
        "rest": "https://{hostname}",
        "rateLimit": 50,
    }
    assert rewrite_api_urls(api, "http://127.0.0.1:8765") == {
        "public": "http://127.0.0.1:8765/api/v3",
        "ws": {
            "spot": "ws://127.0.0.1:8765/ws",
            "ws-api": {"spot": "ws://127.0.0.1:8765/ws-api/v3"},
        },
        "rest": "http://127.0.0.1:8765",
        "rateLimit": 50,
    }
    assert rewrite_api_urls("wss://a/b", "https://proxy:1") == "wss://proxy:1/b"


@pytest.mark.asyncio
async def test_provider_points_every_binance_url_at_the_server(server):
    provider, _ = make_provider(server)
    try:
        urls: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for value in node.values():
                    walk(value)
            elif isinstance(node, str):
                urls.append(node)

        walk(provider.exchange.urls["api"])
        assert urls
        assert all(u.startswith((server.rest_url, f"ws://127.0.0.1:{server.port}/")) for u in urls)
        assert provider.exchange.urls["api"]["ws"]["spot"] == server.ws_url
        await asyncio.wait_for(provider.exchange.load_markets(), 10)
        assert [path for _, path, _ in server.requests] == ["/api/v3/exchangeInfo"]
    finally:
        await provider.close()
