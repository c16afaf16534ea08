"""A fake Binance spot exchange on 127.0.0.1 for tests: REST, WebSocket trades, fault injection.

``FakeBinance`` runs an aiohttp app in a background thread with its own event loop, so sync and
async tests can both use it::

    with FakeBinance(history_s=3600) as ex:
        exchange = ccxt.pro.binance(ex.ccxt_config())  # the real client, URLs rewritten

Data is a seeded random walk per symbol, a history over the past ``history_s`` seconds plus live
trades appended at ``live_rate`` per second while the server runs. Klines are derived from the
server's own trades with Binance's semantics: a row is stamped with its OPEN time and holds the
trades with open <= T < open + tf, field 6 is open + tf - 1, intervals without trades are flat
zero-volume rows, and the still-open candle is the last row. WebSocket clients subscribe to
``<symbol>@trade`` or ``<symbol>@aggTrade``. Simplification: each aggregate trade is a single
trade, so aggTrades' ``a`` equals the trade stream's ``t`` (on the real exchange they are
different counters). The clock is the machine's: ccxt compares candle times with its own.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from aiohttp import WSMsgType, web

MARKETS = {"BTC/USDT": ("BTC", "USDT", 30_000_00), "ETH/USDT": ("ETH", "USDT", 2_000_00)}
TIMEFRAMES_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000, "8h": 28_800_000,
    "12h": 43_200_000, "1d": 86_400_000,
}  # fmt: skip
DROP = object()  # an override value that removes the field from the row
# Malformed rows a test can inject; keys are generic and mapped to each endpoint's field names.
MALFORMED: dict[str, dict[str, Any]] = {
    "bad_price": {"price": "abc"},
    "negative_qty": {"qty": "-1.00000000"},
    "missing_fields": {"price": DROP, "qty": DROP, "time": DROP},
}  # fmt: skip
FIELDS = {  # generic name -> field name in aggTrades and /trades rows, WS trade/aggTrade events
    "agg": {"id": "a", "price": "p", "qty": "q", "time": "T"},
    "trades": {"id": "id", "price": "price", "qty": "qty", "time": "time"},
    "trade": {"id": "t", "price": "p", "qty": "q", "time": "T"},
    "aggTrade": {"id": "a", "price": "p", "qty": "q", "time": "T"},
}  # fmt: skip
FILTERS = [  # what ccxt derives precision (price 0.01, amount 1e-5) and limits from
    {"filterType": "PRICE_FILTER", "minPrice": "0.01000000", "maxPrice": "1000000.00000000",
     "tickSize": "0.01000000"},
    {"filterType": "LOT_SIZE", "minQty": "0.00001000", "maxQty": "9000.00000000",
     "stepSize": "0.00001000"},
    {"filterType": "MARKET_LOT_SIZE", "minQty": "0.00000000", "maxQty": "100.00000000",
     "stepSize": "0.00000000"},
    {"filterType": "NOTIONAL", "minNotional": "5.00000000", "applyMinToMarket": True,
     "maxNotional": "9000000.00000000", "applyMaxToMarket": False, "avgPriceMins": 5},
]  # fmt: skip
ERROR_BODIES = {
    429: {"code": -1003, "msg": "Too much request weight used; current limit is 6000 request "
          "weight per 1 MINUTE. Please use WebSocket Streams for live updates."},
    418: {"code": -1003, "msg": "Way too much request weight used; IP banned until later."},
    500: {"code": -1001, "msg": "Internal error; unable to process your request."},
}  # fmt: skip


def fmt(units: int, exp: int) -> str:
    """``units`` * 10**-exp as Binance prints it (8 decimals)."""
    return f"{Decimal(units).scaleb(-exp):.8f}"


@dataclass
class Book:
    """One symbol's trade history, ascending by time then id. Prices in cents, qty in 1e-5."""

    market_id: str
    price: int
    next_ts: float
    next_id: int = 100_001
    ts: list[int] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    prices: list[int] = field(default_factory=list)
    qtys: list[int] = field(default_factory=list)
    maker: list[bool] = field(default_factory=list)  # isBuyerMaker: True -> a sell
    bad: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> overrides (malformed)

    def row(self, i: int, kind: str) -> dict[str, Any]:
        """Trade ``i`` as a ``kind`` row: "agg" (aggTrades), "trades", "trade" / "aggTrade"
        (WebSocket events)."""
        f = FIELDS[kind]
        row = {
            f["id"]: self.ids[i],
            f["price"]: fmt(self.prices[i], 2),
            f["qty"]: fmt(self.qtys[i], 5),
            f["time"]: self.ts[i],
        }
        if kind == "trades":
            row |= {
                "quoteQty": fmt(self.prices[i] * self.qtys[i], 7),
                "isBuyerMaker": self.maker[i],
                "isBestMatch": True,
            }
        else:
            row |= {"m": self.maker[i], "M": True}
        if kind in ("agg", "aggTrade"):
            row |= {"f": self.ids[i], "l": self.ids[i]}
        if kind in ("trade", "aggTrade"):
            row = {"e": kind, "E": int(time.time() * 1000), "s": self.market_id, **row}
        for key, value in self.bad.get(self.ids[i], {}).items():
            if value is DROP:
                row.pop(f[key], None)
            else:
                row[f[key]] = value
        return row


class FakeBinance:
    def __init__(
        self,
        *,
        seed: int = 7,
        history_s: float = 3 * 86_400,
        history_rate: float = 1.0,
        live_rate: float = 3.0,
        symbols: Iterable[str] = tuple(MARKETS),
    ) -> None:
        self.live_rate = live_rate
        self._rng = random.Random(seed)
        now = self.now_ms()
        self.books: dict[str, Book] = {}
        for symbol in symbols:
            base, quote, price = MARKETS[symbol]
            self.books[symbol] = Book(base + quote, price, now - history_s * 1000)
            self._generate(self.books[symbol], now, history_rate)
        self.requests: list[tuple[float, str, dict[str, str]]] = []  # (time.monotonic(), path,
        # query) of every REST call
        self.ws_available = True  # False: WebSocket upgrades are answered with HTTP 503
        self.ws_connections = 0  # WebSocket connections accepted so far
        self.subscribed: list[str] = []  # every stream a WebSocket client subscribed to
        self._faults: list[list[Any]] = []  # [remaining, status, path prefix, delay s]
        self._ws: dict[web.WebSocketResponse, set[str]] = {}  # connection -> streams
        self._ws_transports: dict[web.WebSocketResponse, asyncio.BaseTransport] = {}
        self._push_lock: asyncio.Lock | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._site: web.TCPSite | None = None
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> FakeBinance:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self._call(self._start)

    def stop(self) -> None:
        async def shutdown() -> None:
            self._live_task.cancel()
            for ws in list(self._ws):
                await ws.close()
            await self._runner.cleanup()

        self._call(shutdown)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def ccxt_config(self) -> dict[str, Any]:
        """Constructor config for ``ccxt.binance`` / ``ccxt.async_support`` / ``ccxt.pro``."""
        import ccxt.pro  # its urls are a superset of the REST-only classes' (they add "ws")

        def rewrite(node: Any) -> Any:
            if isinstance(node, dict):
                return {k: rewrite(v) for k, v in node.items()}
            if isinstance(node, str) and "://" in node:
                base = self.ws_url[: -len("/ws")] if node.startswith("ws") else self.rest_url
                return base + "/" + node.split("://", 1)[1].partition("/")[2]
            return node

        urls = ccxt.pro.binance().describe()["urls"]
        return {
            "urls": {**urls, "api": rewrite(urls["api"])},
            "options": {
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
            },
            "enableRateLimit": False,
        }

    # --- controls for tests (thread-safe: they run on the server's loop) --------------------
    def now_ms(self) -> int:
        return int(time.time() * 1000)

    def trades(self, symbol: str) -> list[dict[str, Any]]:
        """The server's history of ``symbol`` as aggTrades rows (malformed rows as served)."""
        return self._call(
            lambda: [self.books[symbol].row(i, "agg") for i in range(len(self.books[symbol].ids))]
        )

    def add_trades(self, symbol: str, n: int = 1, *, malformed: str | None = None) -> list[int]:
        """Append ``n`` trades stamped now (optionally malformed, see MALFORMED), push on WS."""

        async def add() -> list[int]:
            book = self.books[symbol]
            first = len(book.ids)
            for _ in range(n):
                self._append(book, max(self.now_ms(), book.ts[-1] if book.ts else 0))
                if malformed:
                    book.bad[book.ids[-1]] = MALFORMED[malformed]
            await self._push(book, first)
            return book.ids[first:]

        return self._call(add)

    def fail_next(
        self, n: int, status: int = 503, *, path: str = "/api/", delay: float = 0
    ) -> None:
        """The next ``n`` REST calls under ``path`` answer ``status`` (after ``delay`` s)."""
        self._call(lambda: self._faults.append([n, status, path, delay]))

    def clear_faults(self) -> None:
        self._call(self._faults.clear)

    def drop_ws(self, *, abrupt: bool = False) -> None:
        """Close every WebSocket: a close frame, or (``abrupt``) a dead TCP connection."""

        async def drop() -> None:
            for ws in list(self._ws):
                if abrupt:
                    self._ws_transports[ws].close()
                else:
                    await ws.close(code=1001, message=b"going away")

        self._call(drop)

    def go_down(self) -> None:
        """Stop listening (connections are refused) and cut every open connection."""

        async def down() -> None:
            await self._site.stop()
            for handler in self._runner.server.connections:
                handler.force_close()
            for transport in self._ws_transports.values():
                transport.close()

        self._call(down)

    def come_up(self) -> None:
        self._call(self._listen)

    def refuse_for(self, seconds: float) -> None:
        """Refuse connections for ``seconds``, then listen again on the same port."""
        self.go_down()
        self._loop.call_soon_threadsafe(self._loop.call_later, seconds, self._spawn_listen)

    def klines(
        self,
        symbol: str,
        interval: str,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
    ) -> list[list[Any]]:
        return self._call(lambda: self._klines(self.books[symbol], interval, start, end, limit))

    # --- internals ---------------------------------------------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        async def run() -> Any:
            result = fn()
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def _spawn_listen(self) -> None:
        self._loop.create_task(self._listen())

    async def _start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        api = {
            "exchangeInfo": self._exchange_info,
            "time": self._time,
            "ping": self._ping,
            "trades": self._trades,
            "aggTrades": self._agg_trades,
            "klines": self._klines_h,
            "ticker/24hr": self._ticker,
        }
        for path, handler in api.items():
            app.router.add_get(f"/api/v3/{path}", handler)
        app.router.add_get("/ws", self._ws_handler)
        app.router.add_get("/ws/{n}", self._ws_handler)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await self._listen()
        self._push_lock = asyncio.Lock()
        self._live_task = self._loop.create_task(self._live())

    async def _listen(self) -> None:
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await self._site.start()
        self.port = self._site._server.sockets[0].getsockname()[1]

    def _append(self, book: Book, ts: int) -> None:
        ts = max(ts, book.ts[-1]) if book.ts else ts
        book.price = max(1, round(book.price * math.exp(self._rng.gauss(0, 0.0005))))
        book.ts.append(ts)
        book.ids.append(book.next_id)
        book.prices.append(book.price)
        book.qtys.append(self._rng.randint(1, 50_000))
        book.maker.append(self._rng.random() < 0.5)
        book.next_id += 1

    def _generate(self, book: Book, until: int, rate: float) -> None:
        while rate > 0 and book.next_ts <= until:
            self._append(book, int(book.next_ts))
            book.next_ts += self._rng.expovariate(rate) * 1000

    async def _live(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            for book in self.books.values():
                first = len(book.ids)
                book.next_ts = max(book.next_ts, self.now_ms() - 1000)  # after a pause
                self._generate(book, self.now_ms(), self.live_rate)
                await self._push(book, first)

    async def _push(self, book: Book, first: int) -> None:
        last = len(book.ids)
        async with self._push_lock:  # taken in append order, so events go out in id order
            for ws, streams in list(self._ws.items()):
                for kind in ("trade", "aggTrade"):
                    if f"{book.market_id.lower()}@{kind}" not in streams:
                        continue
                    for i in range(first, last):
                        try:
                            await ws.send_str(json.dumps(book.row(i, kind)))
                        except ConnectionError:
                            break

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path.startswith("/api/"):
            self.requests.append((time.monotonic(), request.path, dict(request.query)))
            for fault in self._faults:
                if fault[0] > 0 and request.path.startswith(fault[2]):
                    fault[0] -= 1
                    await asyncio.sleep(fault[3])
                    return self._error(fault[1])
        return await handler(request)

    def _error(self, status: int) -> web.Response:
        headers = {"Retry-After": "1"} if status in (418, 429) else {}
        if status in ERROR_BODIES:
            return web.json_response(ERROR_BODIES[status], status=status, headers=headers)
        return web.Response(status=status, text="Service Unavailable")  # a proxy's page

    def _book(self, request: web.Request) -> Book:
        market_id = request.query.get("symbol")
        for book in self.books.values():
            if book.market_id == market_id:
                return book
        raise web.HTTPBadRequest(
            text='{"code":-1121,"msg":"Invalid symbol."}', content_type="application/json"
        )

    @staticmethod
    def _int(request: web.Request, name: str, default: int | None = None) -> int | None:
        value = request.query.get(name)
        return default if value is None else int(value)

    async def _exchange_info(self, request: web.Request) -> web.Response:
        symbols = [
            {"symbol": base + quote, "status": "TRADING", "baseAsset": base, "quoteAsset": quote,
             "baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8,
             "orderTypes": ["LIMIT", "MARKET"], "isSpotTradingAllowed": True,
             "isMarginTradingAllowed": False, "permissions": [], "permissionSets": [["SPOT"]],
             "filters": FILTERS}
            for base, quote, _ in (MARKETS[s] for s in self.books)
        ]  # fmt: skip
        info = {"timezone": "UTC", "serverTime": self.now_ms(), "rateLimits": [],
                "exchangeFilters": [], "symbols": symbols}  # fmt: skip
        return web.json_response(info)

    async def _time(self, request: web.Request) -> web.Response:
        return web.json_response({"serverTime": self.now_ms()})

    async def _ping(self, request: web.Request) -> web.Response:
        return web.json_response({})

    async def _trades(self, request: web.Request) -> web.Response:
        book, limit = self._book(request), min(self._int(request, "limit", 500), 1000)
        n = len(book.ids)
        return web.json_response([book.row(i, "trades") for i in range(max(0, n - limit), n)])

    async def _agg_trades(self, request: web.Request) -> web.Response:
        """Binance semantics: fromId -> ids >= fromId; startTime/endTime -> inclusive window of
        at most 1 h, oldest first; neither -> the most recent; ``limit`` default 500, max 1000."""
        book, limit = self._book(request), min(self._int(request, "limit", 500), 1000)
        from_id, start = self._int(request, "fromId"), self._int(request, "startTime")
        end = self._int(request, "endTime")
        if start is not None and end is not None and end - start > 3_600_000:
            return web.json_response(
                {"code": -1127, "msg": "More than 1 hours between startTime and endTime."},
                status=400,
            )
        if from_id is not None:
            lo = bisect.bisect_left(book.ids, from_id)
        elif start is not None or end is not None:
            lo = bisect.bisect_left(book.ts, start or 0)
        else:
            lo = max(0, len(book.ids) - limit)
        hi = len(book.ids) if end is None else bisect.bisect_right(book.ts, end)
        if start is None and from_id is None and end is not None:
            lo = max(lo, hi - limit)
        return web.json_response([book.row(i, "agg") for i in range(lo, min(hi, lo + limit))])

    async def _klines_h(self, request: web.Request) -> web.Response:
        book = self._book(request)
        interval = request.query.get("interval", "")
        if interval not in TIMEFRAMES_MS:
            return web.json_response({"code": -1120, "msg": "Invalid interval."}, status=400)
        start, end = self._int(request, "startTime"), self._int(request, "endTime")
        limit = min(self._int(request, "limit", 500), 1000)
        return web.json_response(self._klines(book, interval, start, end, limit))

    def _klines(
        self, book: Book, interval: str, start: int | None, end: int | None, limit: int
    ) -> list[list[Any]]:
        tf = TIMEFRAMES_MS[interval]
        now = self.now_ms()
        last_open = (min(end, now) if end is not None else now) // tf * tf
        first_trade_open = book.ts[0] // tf * tf if book.ts else last_open + tf
        if start is not None:
            first_open = max(-(-start // tf) * tf, first_trade_open)
        else:
            first_open = max(last_open - (limit - 1) * tf, first_trade_open)
        rows: list[list[Any]] = []
        i = bisect.bisect_left(book.ts, first_open)
        good_before = (k for k in range(i - 1, -1, -1) if book.ids[k] not in book.bad)
        prev_close = next((book.prices[k] for k in good_before), None)
        for open_ in range(first_open, last_open + 1, tf):
            j = bisect.bisect_left(book.ts, open_ + tf, lo=i)
            good = [k for k in range(i, j) if book.ids[k] not in book.bad]
            i = j
            if not good and prev_close is None:
                continue
            prices = [book.prices[k] for k in good] or [prev_close]
            prev_close = prices[-1]
            vol = sum(book.qtys[k] for k in good)
            quote = sum(book.prices[k] * book.qtys[k] for k in good)
            taker = [k for k in good if not book.maker[k]]
            rows.append(
                [
                    open_,
                    fmt(prices[0], 2),
                    fmt(max(prices), 2),
                    fmt(min(prices), 2),
                    fmt(prices[-1], 2),
                    fmt(vol, 5),
                    open_ + tf - 1,
                    fmt(quote, 7),
                    len(good),
                    fmt(sum(book.qtys[k] for k in taker), 5),
                    fmt(sum(book.prices[k] * book.qtys[k] for k in taker), 7),
                    "0",
                ]
            )
            if len(rows) >= limit:
                break
        return rows

    async def _ticker(self, request: web.Request) -> web.Response:
        book, now = self._book(request), self.now_ms()
        lo = bisect.bisect_left(book.ts, now - 86_400_000)
        px = book.prices[lo:] or book.prices[-1:]
        last = book.prices[-1]
        qtys = book.qtys[lo:]
        ticker = {
            "symbol": book.market_id, "priceChange": fmt(last - px[0], 2),
            "priceChangePercent": f"{(last - px[0]) / px[0] * 100:.3f}",
            "weightedAvgPrice": fmt(sum(px) // len(px), 2), "prevClosePrice": fmt(px[0], 2),
            "lastPrice": fmt(last, 2), "lastQty": fmt(book.qtys[-1], 5),
            "bidPrice": fmt(last - 1, 2), "bidQty": "1.00000000", "askPrice": fmt(last + 1, 2),
            "askQty": "1.00000000", "openPrice": fmt(px[0], 2), "highPrice": fmt(max(px), 2),
            "lowPrice": fmt(min(px), 2), "volume": fmt(sum(qtys), 5),
            "quoteVolume": fmt(sum(p * q for p, q in zip(px, qtys, strict=False)), 7),
            "openTime": now - 86_400_000, "closeTime": now,
            "firstId": book.ids[min(lo, len(book.ids) - 1)], "lastId": book.ids[-1],
            "count": len(book.ids) - lo,
        }  # fmt: skip
        return web.json_response(ticker)

    async def _ws_handler(self, request: web.Request) -> web.StreamResponse:
        if not self.ws_available:
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.ws_connections += 1
        self._ws[ws] = set()
        self._ws_transports[ws] = request.transport
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                req = json.loads(msg.data)
                if req.get("method") == "SUBSCRIBE":
                    self._ws[ws].update(req.get("params", []))
                    self.subscribed += req.get("params", [])
                elif req.get("method") == "UNSUBSCRIBE":
                    self._ws[ws].difference_update(req.get("params", []))
                result = sorted(self._ws[ws]) if req.get("method") == "LIST_SUBSCRIPTIONS" else None
                await ws.send_json({"result": result, "id": req.get("id")})
        finally:
            self._ws.pop(ws, None)
            self._ws_transports.pop(ws, None)
        return ws
