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

Signed spot trading (``add_account``): ``/api/v3/account``, ``/order`` (POST, GET, DELETE),
``/openOrders``, ``/allOrders`` and ``/myTrades`` check ``X-MBX-APIKEY`` and the HMAC-SHA256
signature of the exact query string or form body, as Binance does, and keep balances, orders
and trades per account. MARKET orders fill at once, in one fill, at the symbol's last trade
price (no book depth; ``set_price`` pins it, ``live_rate=0`` keeps it); LIMIT orders rest
(``NEW``, balance locked) until cancelled: there is no matching. ``drop_next_order_response``
makes the exchange accept an order but never answer its request.

Commissions follow the account's ``fee_mode`` (``add_account``), each fill's rounded to 8
decimals as Binance prints it, and shown by ``commissionAsset`` in the order's ``fills`` and in
``/myTrades``:

* ``"quote"`` (the default): ``COMMISSION`` of the notional in the quote asset, on buys and
  sells; a buy locks its notional plus that commission.
* ``"base"``: Binance's own default, "the fee is taken from the asset you receive": a BUY pays
  ``qty * COMMISSION`` of the base asset (it receives ``qty`` minus that and pays exactly
  ``qty * price``), a SELL pays ``COMMISSION`` of the notional out of the quote it receives.
* ``"bnb"``: "use BNB to pay for fees": ``BNB_COMMISSION`` of the notional, converted at the
  BNB/USDT last price (the server needs the ``"BNB/USDT"`` symbol), taken from the free BNB;
  a fill whose BNB commission the free BNB cannot pay falls back to the ``"base"`` rule.

Orders pass Binance's filters as ``exchangeInfo`` reports them, set per server
(``lot_step``, ``min_qty``, ``min_notional``): a quantity off the LOT_SIZE step or below its
minQty is refused ``-1013 Filter failure: LOT_SIZE``, a notional below minNotional
``-1013 Filter failure: NOTIONAL``.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import hmac
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

MARKETS = {  # symbol -> (base, quote, first price in cents)
    "BTC/USDT": ("BTC", "USDT", 30_000_00), "ETH/USDT": ("ETH", "USDT", 2_000_00),
    "BNB/USDT": ("BNB", "USDT", 600_00),
}  # fmt: skip
DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT")  # a server's books unless ``symbols`` says
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
FILTERS = [  # the default filters; what ccxt derives precision (price 0.01, amount 1e-5)
    # and limits from (a server reports its own lot_step, min_qty and min_notional)
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


COMMISSION = Decimal("0.001")  # of the notional (fee modes "quote", "base": of the quantity)
BNB_COMMISSION = Decimal("0.00075")  # of the notional, paid in BNB (fee mode "bnb": 25% off)
FEE_MODES = ("quote", "base", "bnb")
LOT = Decimal("0.00001")  # the default LOT_SIZE stepSize and minQty
MIN_NOTIONAL = Decimal(5)  # the default NOTIONAL minNotional
EIGHT = Decimal("1e-8")  # Binance prints amounts with 8 decimals
INSUFFICIENT = "Account has insufficient balance for requested action."


class BinanceError(Exception):
    """An error answer ``{code, msg}`` with its HTTP status."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


@dataclass
class Account:
    """One API key's spot account: free and locked balances, orders and trades (Binance rows)."""

    secret: str
    free: dict[str, Decimal]
    locked: dict[str, Decimal] = field(default_factory=dict)
    orders: list[dict[str, Any]] = field(default_factory=list)
    trades: list[dict[str, Any]] = field(default_factory=list)
    fee_mode: str = "quote"  # which asset pays the commission: one of FEE_MODES


def dec(value: Decimal) -> str:
    return f"{value:.8f}"


def to_dec(value: Any) -> Decimal:
    """A Decimal from a str, int, float (by its repr) or Decimal."""
    return value if isinstance(value, Decimal) else Decimal(str(value))


def floor_to(value: Decimal, step: Decimal) -> Decimal:
    """``value`` rounded down to a multiple of ``step`` (Binance's steps need not be 10**-n)."""
    return (value // step) * step


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


@dataclass
class _Deal:
    """An order being filled at ``price``: what its fills need to settle their commission."""

    account: Account
    order: dict[str, Any]
    price: Decimal
    fee: Decimal  # a quote-mode buy's whole commission, locked with its notional (else 0)
    base: str
    quote: str
    bnb_price: Decimal | None = None  # BNB/USDT at the order's acceptance (fee mode "bnb")
    fee_paid: Decimal = Decimal(0)  # of ``fee``, what fills paid out of the lock so far
    filled: dict[str, Decimal] = field(default_factory=dict)  # fee rule -> qty filled under it
    paid: dict[str, Decimal] = field(default_factory=dict)  # fee rule -> commission paid


class FakeBinance:
    def __init__(
        self,
        *,
        seed: int = 7,
        history_s: float = 3 * 86_400,
        history_rate: float = 1.0,
        live_rate: float = 3.0,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        lot_step: Decimal | str = LOT,
        min_qty: Decimal | str = LOT,
        min_notional: Decimal | str = MIN_NOTIONAL,
    ) -> None:
        """``symbols`` are keys of MARKETS; ``lot_step`` and ``min_qty`` are every symbol's
        LOT_SIZE stepSize and minQty, ``min_notional`` its NOTIONAL minNotional (at most 8
        decimals, as Binance prints them). ``live_rate=0``: no live trades, the last price (the
        one MARKET orders fill at) stays until ``set_price`` or ``add_trades``."""
        self.lot_step, self.min_qty = to_dec(lot_step), to_dec(min_qty)
        self.min_notional = to_dec(min_notional)
        for name, value in (("lot_step", self.lot_step), ("min_qty", self.min_qty),
                            ("min_notional", self.min_notional)):  # fmt: skip
            if value < 0 or value % EIGHT or (value == 0 and name == "lot_step"):
                raise ValueError(f"{name}={value}: Binance's filters are >= 0 with 8 decimals")
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
        self.accounts: dict[str, Account] = {}  # API key -> account
        self.order_posts = 0  # POST /api/v3/order requests received (any outcome)
        self._order_drops: list[tuple[str, float]] = []  # (mode, delay s) per next accepted order
        self._next_order_id = 5_000_001
        self._next_trade_id = 9_000_001
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
        self._call(self._order_drops.clear)

    def add_account(
        self, api_key: str, secret: str, balances: dict[str, Any], *, fee_mode: str = "quote"
    ) -> None:
        """A spot account for ``api_key``, signed with ``secret``, holding ``balances`` free,
        paying commissions as ``fee_mode`` says (one of FEE_MODES, see the module docstring;
        ``"bnb"`` needs the server's ``"BNB/USDT"`` symbol for its conversion)."""
        if fee_mode not in FEE_MODES:
            raise ValueError(f"fee_mode={fee_mode!r}: one of {FEE_MODES}")
        if fee_mode == "bnb" and "BNB/USDT" not in self.books:
            raise ValueError('fee_mode="bnb" converts at BNB/USDT: add it to the symbols')
        free = {asset: to_dec(amount) for asset, amount in balances.items()}
        account = Account(secret, free, fee_mode=fee_mode)
        self._call(lambda: self.accounts.__setitem__(api_key, account))

    def balance(self, api_key: str) -> dict[str, Decimal]:
        """Free balance per asset."""
        return self._call(lambda: dict(self.accounts[api_key].free))

    def total_balance(self, api_key: str) -> dict[str, Decimal]:
        """Free plus locked, per asset."""

        def total() -> dict[str, Decimal]:
            account = self.accounts[api_key]
            assets = set(account.free) | set(account.locked)
            return {
                a: account.free.get(a, Decimal(0)) + account.locked.get(a, Decimal(0))
                for a in assets
            }

        return self._call(total)

    def set_balance(self, api_key: str, asset: str, amount: Decimal | str | int) -> None:
        """Set the account's FREE balance of ``asset`` to ``amount`` (what is locked in open
        orders stays): a deposit or a withdrawal made outside of any bot."""
        value = to_dec(amount)
        self._call(lambda: self.accounts[api_key].free.__setitem__(asset, value))

    def account_trades(self, api_key: str) -> list[dict[str, Any]]:
        """The account's trades as ``GET /api/v3/myTrades`` shows them, oldest first."""
        return self._call(lambda: [dict(t) for t in self.accounts[api_key].trades])

    def last_price(self, symbol: str) -> Decimal:
        """The symbol's last trade price: what a MARKET order placed now fills at."""
        return self._call(lambda: Decimal(self.books[symbol].prices[-1]).scaleb(-2))

    def set_price(self, symbol: str, price: Decimal | str | int) -> int:
        """A trade at ``price`` (a multiple of the 0.01 tick) stamped now, pushed on WS: the
        price MARKET orders fill at from now on (with ``live_rate=0``, until the next
        ``set_price``/``add_trades``; live trades walk on from it). Returns its trade id."""
        cents = to_dec(price) * 100
        if cents <= 0 or cents % 1:
            raise ValueError(f"price={price}: a positive multiple of the 0.01 tick")

        async def add() -> int:
            book = self.books[symbol]
            first = len(book.ids)
            self._append(book, self.now_ms(), price=int(cents))
            await self._push(book, first)
            return book.ids[-1]

        return self._call(add)

    def orders(self, api_key: str) -> list[dict[str, Any]]:
        """Every order the account placed, as ``GET /api/v3/order`` shows it, oldest first."""
        return self._call(lambda: [self._order_row(o) for o in self.accounts[api_key].orders])

    def drop_next_order_response(self, *, mode: str = "close", delay: float = 0.0) -> None:
        """The next accepted order is placed, but its request gets no answer: ``close`` cuts
        the connection, ``delay`` answers only after ``delay`` s (past the client's timeout)."""
        if mode not in ("close", "delay"):
            raise ValueError(mode)
        self._call(lambda: self._order_drops.append((mode, delay)))

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
        signed = {
            ("GET", "account"): self._account,
            ("POST", "order"): self._new_order,
            ("GET", "order"): self._query_order,
            ("DELETE", "order"): self._cancel_order,
            ("GET", "openOrders"): self._open_orders,
            ("GET", "allOrders"): self._all_orders,
            ("GET", "myTrades"): self._my_trades,
        }
        for (method, path), handler in signed.items():
            app.router.add_route(method, f"/api/v3/{path}", self._signed(handler))
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

    def _append(self, book: Book, ts: int, *, price: int | None = None) -> None:
        """One trade at ``ts``: at ``price`` (cents), or a step of the seeded random walk."""
        ts = max(ts, book.ts[-1]) if book.ts else ts
        if price is None:
            book.price = max(1, round(book.price * math.exp(self._rng.gauss(0, 0.0005))))
        else:
            book.price = price
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

    def _filters(self) -> list[dict[str, Any]]:
        """FILTERS with this server's LOT_SIZE and NOTIONAL values."""
        own = {
            "LOT_SIZE": {"stepSize": dec(self.lot_step), "minQty": dec(self.min_qty)},
            "NOTIONAL": {"minNotional": dec(self.min_notional)},
        }
        return [{**f, **own.get(f["filterType"], {})} for f in FILTERS]

    async def _exchange_info(self, request: web.Request) -> web.Response:
        filters = self._filters()
        symbols = [
            {"symbol": base + quote, "status": "TRADING", "baseAsset": base, "quoteAsset": quote,
             "baseAssetPrecision": 8, "quotePrecision": 8, "quoteAssetPrecision": 8,
             "orderTypes": ["LIMIT", "MARKET"], "isSpotTradingAllowed": True,
             "isMarginTradingAllowed": False, "permissions": [], "permissionSets": [["SPOT"]],
             "filters": filters}
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

    # --- signed trading endpoints ---------------------------------------------------------
    def _signed(self, handler: Callable) -> Callable:
        """Check the API key and the signature, then call ``handler(request, account, params)``;
        a ``BinanceError`` becomes Binance's ``{code, msg}`` answer."""

        async def checked(request: web.Request) -> web.StreamResponse:
            raw = await request.text() if request.method == "POST" else request.query_string
            if request.method == "POST" and request.path == "/api/v3/order":
                self.order_posts += 1
            try:
                account = self.accounts.get(request.headers.get("X-MBX-APIKEY", ""))
                if account is None:
                    raise BinanceError(
                        -2015, "Invalid API-key, IP, or permissions for action.", 401
                    )
                payload, _, signature = raw.rpartition("&signature=")
                expected = hmac.new(
                    account.secret.encode(), payload.encode(), hashlib.sha256
                ).hexdigest()
                if not hmac.compare_digest(signature, expected):
                    raise BinanceError(-1022, "Signature for this request is not valid.")
                params = dict(parse_qsl(payload, keep_blank_values=True))
                if "timestamp" not in params:
                    raise BinanceError(
                        -1102, "Mandatory parameter 'timestamp' was not sent, was empty/null, "
                        "or malformed.",
                    )  # fmt: skip
                return await handler(request, account, params)
            except BinanceError as exc:
                return web.json_response({"code": exc.code, "msg": exc.msg}, status=exc.status)

        return checked

    def _market(self, params: dict[str, str]) -> tuple[Book, str, str]:
        for symbol, book in self.books.items():
            if book.market_id == params.get("symbol"):
                base, quote, _ = MARKETS[symbol]
                return book, base, quote
        raise BinanceError(-1121, "Invalid symbol.")

    def _find(self, account: Account, params: dict[str, str]) -> dict[str, Any]:
        book, _, _ = self._market(params)
        order_id, client_id = params.get("orderId"), params.get("origClientOrderId")
        if order_id is None and client_id is None:
            raise BinanceError(
                -1102, "Param 'origClientOrderId' or 'orderId' must be sent, but both were empty"
                "/null!",
            )  # fmt: skip
        for order in account.orders:
            if order["symbol"] == book.market_id and (
                str(order["orderId"]) == order_id or order["clientOrderId"] == client_id
            ):
                return order
        raise BinanceError(-2013, "Order does not exist.")

    @staticmethod
    def _order_row(order: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in order.items() if k != "fills"}

    @staticmethod
    def _move(account: Account, asset: str, amount: Decimal, *, to_locked: bool) -> None:
        src, dst = (account.free, account.locked) if to_locked else (account.locked, account.free)
        src[asset] = src.get(asset, Decimal(0)) - amount
        dst[asset] = dst.get(asset, Decimal(0)) + amount

    async def _account(self, request: web.Request, account: Account, params: dict) -> web.Response:
        assets = sorted(set(account.free) | set(account.locked))
        balances = [
            {"asset": a, "free": dec(account.free.get(a, Decimal(0))),
             "locked": dec(account.locked.get(a, Decimal(0)))}
            for a in assets
        ]  # fmt: skip
        bps = int(COMMISSION * 10_000)  # Binance reports the standard rate, whatever pays it
        rates = {"maker": dec(COMMISSION), "taker": dec(COMMISSION), "buyer": dec(Decimal(0)),
                 "seller": dec(Decimal(0))}  # fmt: skip
        return web.json_response({
            "makerCommission": bps, "takerCommission": bps, "buyerCommission": 0,
            "sellerCommission": 0, "commissionRates": rates, "canTrade": True,
            "canWithdraw": True, "canDeposit": True, "brokered": False,
            "requireSelfTradePrevention": False, "preventSor": False,
            "updateTime": self.now_ms(), "accountType": "SPOT", "balances": balances,
            "permissions": ["SPOT"], "uid": 1,
        })  # fmt: skip

    async def _new_order(self, request: web.Request, account: Account, params: dict) -> Any:
        book, base, quote = self._market(params)
        side, kind = params.get("side"), params.get("type")
        if side not in ("BUY", "SELL") or kind not in ("MARKET", "LIMIT"):
            raise BinanceError(-1116, "Invalid orderType.")
        client_id = params.get("newClientOrderId") or f"fake{self._next_order_id}"
        # Real Binance refuses a newClientOrderId only while an order with it is open; this
        # server refuses any reuse, so a test sees a second send of one order as an error too.
        if any(o["clientOrderId"] == client_id for o in account.orders):
            raise BinanceError(-2010, "Duplicate order sent.")
        last = Decimal(book.prices[-1]).scaleb(-2)
        price = last if kind == "MARKET" else Decimal(params.get("price") or 0)
        if "quantity" in params:
            qty = Decimal(params["quantity"])
        elif kind == "MARKET" and "quoteOrderQty" in params:
            qty = floor_to(Decimal(params["quoteOrderQty"]) / price, self.lot_step)
        else:
            raise BinanceError(-1102, "Mandatory parameter 'quantity' was not sent.")
        if qty <= 0 or qty < self.min_qty or qty % self.lot_step:
            raise BinanceError(-1013, "Filter failure: LOT_SIZE")
        if price <= 0:
            raise BinanceError(-1013, "Filter failure: PRICE_FILTER")
        cost = qty * price
        if cost < self.min_notional:
            raise BinanceError(-1013, "Filter failure: NOTIONAL")
        # Fee mode "quote": a buy locks its commission with its notional; in the other modes
        # the commission comes out of what the order receives (or the BNB), nothing is locked.
        fee = self._locked_fee(account, cost)
        pay, need = (quote, cost + fee) if side == "BUY" else (base, qty)
        if account.free.get(pay, Decimal(0)) < need:
            raise BinanceError(-2010, INSUFFICIENT)
        now = self.now_ms()
        order = {
            "symbol": book.market_id, "orderId": self._next_order_id, "orderListId": -1,
            "clientOrderId": client_id, "price": dec(price if kind == "LIMIT" else Decimal(0)),
            "origQty": dec(qty), "executedQty": dec(Decimal(0)),
            "cummulativeQuoteQty": dec(Decimal(0)), "status": "NEW",
            "timeInForce": params.get("timeInForce", "GTC"), "type": kind, "side": side,
            "stopPrice": dec(Decimal(0)), "icebergQty": dec(Decimal(0)), "time": now,
            "updateTime": now, "isWorking": True, "workingTime": now,
            "origQuoteOrderQty": dec(Decimal(params.get("quoteOrderQty", 0))),
            "selfTradePreventionMode": "NONE", "fills": [],
        }  # fmt: skip
        self._next_order_id += 1
        account.orders.append(order)
        self._move(account, pay, need, to_locked=True)
        if kind == "MARKET":
            bnb = self._bnb_price() if account.fee_mode == "bnb" else None
            deal = _Deal(account, order, price, fee if side == "BUY" else Decimal(0), base, quote,
                         bnb)  # fmt: skip
            self._fill(deal, qty, now)
        drop = self._order_drops.pop(0) if self._order_drops else None
        if drop is not None:
            mode, delay = drop
            if mode == "close":
                request.transport.close()  # the order stands; its answer never leaves
                return web.Response(status=204)
            await asyncio.sleep(delay)
        return web.json_response({**order, "transactTime": now})

    @staticmethod
    def _locked_fee(account: Account, cost: Decimal) -> Decimal:
        """What a buy of notional ``cost`` locks for its commission: fee mode "quote" only."""
        if account.fee_mode != "quote":
            return Decimal(0)
        return (cost * COMMISSION).quantize(EIGHT)

    def _bnb_price(self) -> Decimal:
        """BNB/USDT's last trade price: what fee mode "bnb" converts a notional at."""
        return Decimal(self.books["BNB/USDT"].prices[-1]).scaleb(-2)

    def _fill(self, deal: _Deal, qty: Decimal, now: int) -> None:
        """A MARKET order fills at once, all ``qty`` in one fill."""
        self._trade(deal, qty, now)

    @staticmethod
    def _fee(rule: str, qty: Decimal, deal: _Deal) -> Decimal:
        """The commission of ``qty`` at the deal's price under ``rule``, rounded to 8 decimals:
        "quote" (of the notional, in the quote asset), "base" (of the quantity, in the base
        asset) or "bnb" (BNB_COMMISSION of the notional, in BNB at the deal's BNB price)."""
        if rule == "base":
            return (qty * COMMISSION).quantize(EIGHT)
        if rule == "bnb":
            return (qty * deal.price * BNB_COMMISSION / deal.bnb_price).quantize(EIGHT)
        return (qty * deal.price * COMMISSION).quantize(EIGHT)

    def _commission(self, deal: _Deal, qty: Decimal, done: bool) -> tuple[str, Decimal]:
        """Which rule pays the commission of a fill of ``qty`` and how much. A fill pays
        ``_fee`` of its own quantity; the order's last fill (``done``) pays what is left of the
        commission of everything filled under its rule, so an order's fills sum to exactly the
        commission of its whole quantity (per rule, when BNB ran out in the middle). Fee mode
        "bnb" falls back to the "base" rule when the free BNB cannot pay the fill's fee."""
        buy = deal.order["side"] == "BUY"
        received = "base" if buy else "quote"  # "the fee is taken from the asset you receive"
        rules = {"quote": ("quote",), "base": (received,), "bnb": ("bnb", received)}
        for rule in rules[deal.account.fee_mode]:
            if done:
                whole = deal.filled.get(rule, Decimal(0)) + qty
                fee = self._fee(rule, whole, deal) - deal.paid.get(rule, Decimal(0))
            else:
                fee = self._fee(rule, qty, deal)
            if rule != "bnb" or deal.account.free.get("BNB", Decimal(0)) >= fee:
                return rule, fee
        raise AssertionError("the last rule always pays")  # pragma: no cover

    def _trade(self, deal: _Deal, qty: Decimal, now: int | None = None) -> None:
        """``qty`` more of ``deal``'s order trades at its price, in one fill: the account pays
        the notional (a buy, out of the lock) or the quantity (a sell, out of the lock),
        receives the other side and pays the fill's commission as its fee mode says."""
        account, order, price = deal.account, deal.order, deal.price
        base, quote = deal.base, deal.quote
        now = self.now_ms() if now is None else now
        executed = Decimal(order["executedQty"]) + qty
        done = executed == Decimal(order["origQty"])
        cost = qty * price
        rule, fee = self._commission(deal, qty, done)
        asset = {"quote": quote, "base": base, "bnb": "BNB"}[rule]
        deal.filled[rule] = deal.filled.get(rule, Decimal(0)) + qty
        deal.paid[rule] = deal.paid.get(rule, Decimal(0)) + fee
        if rule == "bnb":
            account.free["BNB"] = account.free.get("BNB", Decimal(0)) - fee
        if order["side"] == "BUY":
            from_lock = fee if rule == "quote" else Decimal(0)  # fee mode "quote" locked it
            deal.fee_paid += from_lock
            account.locked[quote] -= cost + from_lock
            received = qty - (fee if rule == "base" else Decimal(0))
            account.free[base] = account.free.get(base, Decimal(0)) + received
        else:
            account.locked[base] -= qty
            received = cost - (fee if rule == "quote" else Decimal(0))
            account.free[quote] = account.free.get(quote, Decimal(0)) + received
        trade_id = self._next_trade_id
        self._next_trade_id += 1
        order.update(
            status="FILLED" if done else "PARTIALLY_FILLED", executedQty=dec(executed),
            cummulativeQuoteQty=dec(Decimal(order["cummulativeQuoteQty"]) + cost),
            updateTime=now,
        )  # fmt: skip
        order["fills"] = [*order["fills"], {"price": dec(price), "qty": dec(qty),
                          "commission": dec(fee), "commissionAsset": asset,
                          "tradeId": trade_id}]  # fmt: skip
        account.trades.append({
            "symbol": order["symbol"], "id": trade_id, "orderId": order["orderId"],
            "orderListId": -1, "price": dec(price), "qty": dec(qty), "quoteQty": dec(cost),
            "commission": dec(fee), "commissionAsset": asset, "time": now,
            "isBuyer": order["side"] == "BUY", "isMaker": False, "isBestMatch": True,
        })  # fmt: skip

    async def _query_order(self, request: web.Request, account: Account, params: dict) -> Any:
        return web.json_response(self._order_row(self._find(account, params)))

    async def _cancel_order(self, request: web.Request, account: Account, params: dict) -> Any:
        try:
            order = self._find(account, params)
        except BinanceError as exc:
            if exc.code == -2013:
                raise BinanceError(-2011, "Unknown order sent.") from None
            raise
        if order["status"] not in ("NEW", "PARTIALLY_FILLED"):
            raise BinanceError(-2011, "Unknown order sent.")
        _, base, quote = self._market(params)
        qty = Decimal(order["origQty"]) - Decimal(order["executedQty"])
        if order["side"] == "BUY":
            price = Decimal(order["price"])
            held = qty * price + self._locked_fee(account, qty * price)
            self._move(account, quote, held, to_locked=False)
        else:
            self._move(account, base, qty, to_locked=False)
        order.update(status="CANCELED", updateTime=self.now_ms())
        row = self._order_row(order)
        return web.json_response({**row, "origClientOrderId": row["clientOrderId"]})

    async def _open_orders(self, request: web.Request, account: Account, params: dict) -> Any:
        market_id = params.get("symbol")
        if market_id is not None:
            self._market(params)
        rows = [
            self._order_row(o) for o in account.orders
            if o["status"] in ("NEW", "PARTIALLY_FILLED")
            and (market_id is None or o["symbol"] == market_id)
        ]  # fmt: skip
        return web.json_response(rows)

    async def _all_orders(self, request: web.Request, account: Account, params: dict) -> Any:
        book, _, _ = self._market(params)
        first_id = int(params.get("orderId", 0))
        start, end = int(params.get("startTime", 0)), params.get("endTime")
        limit = min(int(params.get("limit", 500)), 1000)
        rows = [
            self._order_row(o) for o in account.orders
            if o["symbol"] == book.market_id and o["orderId"] >= first_id and o["time"] >= start
            and (end is None or o["time"] <= int(end))
        ]  # fmt: skip
        return web.json_response(rows[:limit] if "orderId" in params else rows[-limit:])

    async def _my_trades(self, request: web.Request, account: Account, params: dict) -> Any:
        book, _, _ = self._market(params)
        order_id = params.get("orderId")
        from_id, start = int(params.get("fromId", 0)), int(params.get("startTime", 0))
        limit = min(int(params.get("limit", 500)), 1000)
        rows = [
            t for t in account.trades
            if t["symbol"] == book.market_id and t["id"] >= from_id and t["time"] >= start
            and (order_id is None or str(t["orderId"]) == order_id)
        ]  # fmt: skip
        return web.json_response(rows[:limit])

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


@dataclass
class _Parked:
    """An order request held on its way to the exchange (``FaultyBinance.park_next_order``)."""

    release: asyncio.Event
    land: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FaultyBinance(FakeBinance):
    """``FakeBinance`` with more order faults (the order-lifecycle state machine's), all for
    the next order request(s) only:

    * ``refuse_next_order``: the exchange refuses it with Binance's ``{code, msg}`` (default:
      insufficient balance), applying nothing;
    * ``rest_next_order``: a MARKET order is accepted but filled only in part (``fraction`` of
      its quantity, 0 for none) and answered ``NEW``/``PARTIALLY_FILLED``; ``fill_resting``
      fills such orders later, at the price (and BNB price) of their acceptance, each part
      paying its commission in the account's fee mode (the last part what is left, so the parts
      sum to the whole order's); a cancel releases exactly what they still lock;
    * ``park_next_order``: the request is held on its way (the client times out); later it
      either lands (``land_parked``: the exchange applies it then, answering no one) or is lost
      (``lose_parked``: nothing applied).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._refusals: list[tuple[int, str]] = []
        self._rests: list[Decimal] = []
        self._resting: dict[int, _Deal] = {}  # orderId -> what it locks
        self._parks = 0
        self._parked: list[_Parked] = []
        self.order_requests = 0  # POST /api/v3/order requests that reached the server at all

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.method == "POST" and request.path == "/api/v3/order":
            self.order_requests += 1
        return await super()._middleware(request, handler)

    def refuse_next_order(self, *, code: int = -2010, msg: str = INSUFFICIENT) -> None:
        self._call(lambda: self._refusals.append((code, msg)))

    def rest_next_order(self, fraction: float = 0.0) -> None:
        self._call(lambda: self._rests.append(Decimal(str(fraction))))

    def park_next_order(self) -> None:
        def arm() -> None:
            self._parks += 1

        self._call(arm)

    @property
    def resting(self) -> int:
        """Orders the exchange accepted and has yet to fill in full."""
        return self._call(lambda: len(self._resting))

    @property
    def parked(self) -> int:
        """Order requests held on their way now."""
        return self._call(lambda: len(self._parked))

    def land_parked(self) -> int:
        """The held requests reach the exchange, which applies them; returns how many."""
        return self._call(lambda: self._resolve_parked(land=True))

    def lose_parked(self) -> int:
        """The held requests are lost on their way: nothing is applied; returns how many."""
        return self._call(lambda: self._resolve_parked(land=False))

    def stop(self) -> None:
        if self._thread.is_alive():
            self.lose_parked()  # the server's shutdown waits for its handlers
        super().stop()

    def clear_faults(self) -> None:
        """Disarm every fault not yet triggered (held requests stay held)."""
        super().clear_faults()

        def clear() -> None:
            self._refusals.clear()
            self._rests.clear()
            self._parks = 0

        self._call(clear)

    def fill_resting(self, api_key: str, fraction: float = 1.0) -> int:
        """Fill ``fraction`` of what each resting order of ``api_key`` still holds (at least one
        lot; 1 fills it all) at its acceptance price; returns how many orders traded."""

        def fill() -> int:
            traded = 0
            for rest in list(self._resting.values()):
                if rest.account is not self.accounts[api_key]:
                    continue
                order = rest.order
                left = Decimal(order["origQty"]) - Decimal(order["executedQty"])
                part = floor_to(left * Decimal(str(fraction)), self.lot_step)
                self._fill_part(rest, min(left, max(part, self.lot_step)))
                traded += 1
            return traded

        return self._call(fill)

    async def _resolve_parked(self, *, land: bool) -> int:
        parked, self._parked = self._parked, []
        for entry in parked:
            entry.land = land
            entry.release.set()
        for entry in parked:
            await entry.done.wait()
        return len(parked)

    async def _new_order(self, request: web.Request, account: Account, params: dict) -> Any:
        if self._parks:
            self._parks -= 1
            entry = _Parked(asyncio.Event())
            self._parked.append(entry)
            try:
                await entry.release.wait()
                if not entry.land:
                    return web.Response(status=204)  # lost: no one reads this
                return await self._place(request, account, params)
            except BinanceError:
                return web.Response(status=204)  # refused on landing: no one reads it either
            finally:
                entry.done.set()
        return await self._place(request, account, params)

    async def _place(self, request: web.Request, account: Account, params: dict) -> Any:
        if self._refusals:
            code, msg = self._refusals.pop(0)
            raise BinanceError(code, msg)
        return await super()._new_order(request, account, params)

    def _fill(self, deal: _Deal, qty: Decimal, now: int) -> None:
        if not self._rests:
            super()._fill(deal, qty, now)
            return
        fraction = self._rests.pop(0)
        self._resting[deal.order["orderId"]] = deal
        part = floor_to(qty * fraction, self.lot_step)
        if part > 0:
            self._fill_part(deal, part)

    def _fill_part(self, rest: _Deal, qty: Decimal) -> None:
        """``qty`` more of a resting order trades at its price, in one fill (the last part
        pays what is left of the commission, so the parts pay exactly the whole's)."""
        self._trade(rest, qty)
        if rest.order["status"] == "FILLED":
            self._resting.pop(rest.order["orderId"], None)

    async def _cancel_order(self, request: web.Request, account: Account, params: dict) -> Any:
        try:
            order = self._find(account, params)
        except BinanceError:
            order = None
        rest = None if order is None else self._resting.get(order["orderId"])
        if rest is None:
            return await super()._cancel_order(request, account, params)
        # Release exactly what the order still locks: the rest of a buy's notional and (fee
        # mode "quote") of its fee, or a sell's unsold quantity.
        left = Decimal(order["origQty"]) - Decimal(order["executedQty"])
        if order["side"] == "BUY":
            self._move(account, rest.quote, left * rest.price + rest.fee - rest.fee_paid,
                       to_locked=False)  # fmt: skip
        else:
            self._move(account, rest.base, left, to_locked=False)
        del self._resting[order["orderId"]]
        order.update(status="CANCELED", updateTime=self.now_ms())
        row = self._order_row(order)
        return web.json_response({**row, "origClientOrderId": row["clientOrderId"]})
