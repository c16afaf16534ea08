"""``CcxtProvider``: live trades and closed candles from any exchange ccxt supports.

Trades come from ccxt.pro ``watch_trades`` (WebSocket) when the exchange has it, else from REST
polling of ``fetch_trades``. When the WebSocket fails the provider polls REST meanwhile and
reconnects with exponential backoff and jitter; after every (re)connect it first fills the gap
from REST, so no trade is lost, and it de-duplicates by trade id (and by a per-symbol time
watermark), so none is yielded twice. The exchange's own URLs can be pointed at another host
(a local test server) with ``api_urls``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import ccxt
import ccxt.async_support
import ccxt.pro

from marketdata.providers.base import Candle, DataProvider, ProviderError, RawTrade

logger = logging.getLogger(__name__)
T = TypeVar("T")

# ccxt's "try again" family: NetworkError (RequestTimeout, ExchangeNotAvailable, DDoSProtection,
# RateLimitExceeded, ...) and exchange codes that mean "temporary" (binance -1000/-1001).
RETRYABLE = (ccxt.OperationFailed,)
RATE_LIMITED = (ccxt.DDoSProtection, ccxt.RateLimitExceeded)
# What ccxt's parsers raise on a malformed row (e.g. Precise("abc") -> ValueError).
PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, ArithmeticError, AttributeError)
TRADES_PAGE = 1000  # trades asked per REST call (binance's maximum)
# A since-query may cover only a bounded window (binance aggTrades: since .. since + 1 h), so a
# short page older than this does not mean "caught up".
SINCE_WINDOW_MS = 3_600_000
BACKOFF_BASE_S = 0.5
RATE_LIMIT_FACTOR = 4  # rate limits back off this much longer than other network errors
CANDLE_ATTEMPTS = 5  # fetch_candles gives up (re-raising ccxt's error) after this many tries
SEEN_IDS = 10_000  # trade ids remembered per symbol for de-duplication
MONDAY_MS = 4 * 86_400_000  # 1970-01-05, a Monday: weekly candles open on Mondays (UTC)
# Raw field names of a row ccxt could not parse, tried in order (binance WS / REST, others).
RAW_KEYS = {
    "id": ("id", "t", "a", "tradeId", "trade_id"),
    "timestamp": ("timestamp", "T", "time", "ts"),
    "price": ("price", "p", "px"),
    "amount": ("amount", "q", "qty", "size", "sz", "quantity"),
    "side": ("side",),
}


def rewrite_api_urls(node: Any, base: str) -> Any:
    """Point every URL in a ccxt ``urls["api"]`` tree at ``base`` ("http://host:port"), keeping
    each path and query; http(s) URLs take ``base``'s scheme, ws(s) URLs become ws(s)://host."""
    if isinstance(node, dict):
        return {key: rewrite_api_urls(value, base) for key, value in node.items()}
    if not isinstance(node, str) or "://" not in node:
        return node
    target, url = urlsplit(base), urlsplit(node)
    scheme = target.scheme
    if url.scheme in ("ws", "wss"):
        scheme = "wss" if target.scheme == "https" else "ws"
    return urlunsplit((scheme, target.netloc, url.path, url.query, url.fragment))


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(into)
    for key, value in extra.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if both_dicts else value
    return out


def _raw_rows(response: Any) -> list[Any] | None:
    """The list of trade rows in a raw REST response (a list, or the first list in a dict)."""
    if isinstance(response, list):
        return response
    if isinstance(response, dict):
        for value in response.values():
            rows = _raw_rows(value) if isinstance(value, dict | list) else None
            if rows is not None:
                return rows
    return None


@dataclass
class _Feed:
    """One symbol's stream state."""

    symbol: str
    queue: asyncio.Queue
    watermark: int  # newest trade time yielded (ms): an older parsed trade is a duplicate
    cursor: int  # every trade older than this has been fetched (ms): REST resumes here
    seen: OrderedDict[str, None] = field(default_factory=OrderedDict)


class CcxtProvider(DataProvider):
    def __init__(
        self,
        exchange_id: str,
        *,
        api_urls: dict[str, Any] | str | None = None,
        options: dict[str, Any] | None = None,
        use_websocket: bool = True,
        poll_interval: float = 2.0,
        max_backoff: float = 60.0,
    ) -> None:
        """``options`` are merged into ccxt's ``exchange.options``. With ``api_urls`` (a test
        server) binance is told to load spot markets only, no currencies and no margin pairs
        (else ``load_markets`` calls sapi/fapi/dapi), and ccxt's client-side rate limiter is
        off (a local server has no limits; it answers 429 itself when a test says so)."""
        super().__init__()
        self.exchange_id = exchange_id
        klass = getattr(ccxt.pro, exchange_id, None) or getattr(
            ccxt.async_support, exchange_id, None
        )
        if klass is None:
            raise ProviderError(f"ccxt has no exchange {exchange_id!r}")
        own: dict[str, Any] = {}
        if api_urls is not None:
            own = {
                "fetchMarkets": {"types": ["spot"]},
                "fetchCurrencies": False,
                "fetchMargins": False,
            }
        self.exchange = klass(
            {"enableRateLimit": api_urls is None, "options": _merge(own, options or {})}
        )
        if isinstance(api_urls, str):
            self.exchange.urls["api"] = rewrite_api_urls(self.exchange.urls["api"], api_urls)
        elif api_urls is not None:
            self.exchange.urls["api"] = _merge(self.exchange.urls["api"], api_urls)
        self.exchange.enableLastJsonResponse = True  # raw rows when ccxt's parser fails
        self.use_websocket = use_websocket and bool(self.exchange.has.get("watchTrades"))
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.stats = {"duplicates": 0, "out_of_order": 0, "unparsed": 0}
        self._feeds: dict[str, _Feed] = {}
        self._rest_lock = asyncio.Lock()  # keeps last_json_response paired with its call
        self._closed = False
        if self.use_websocket:
            self._guard_ws_parser()

    # --- trades ---------------------------------------------------------------------------
    async def stream_trades(self, symbols: Sequence[str]) -> AsyncIterator[RawTrade]:
        await self._retry(self.exchange.load_markets, what="load_markets", attempts=None)
        unknown = [s for s in symbols if s not in self.exchange.markets]
        if unknown:
            raise ProviderError(f"{self.exchange_id} has no market {', '.join(unknown)}")
        queue: asyncio.Queue = asyncio.Queue()
        start = self.exchange.milliseconds()
        feeds = [_Feed(s, queue, start, start) for s in symbols]
        self._feeds.update((feed.symbol, feed) for feed in feeds)
        tasks = [asyncio.create_task(self._run_feed(feed)) for feed in feeds]
        for task in tasks:  # a worker's ProviderError (or bug) ends the stream, in the consumer
            task.add_done_callback(
                lambda t: t.cancelled() or t.exception() is None or queue.put_nowait(t.exception())
            )
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for feed in feeds:
                self._feeds.pop(feed.symbol, None)

    async def _run_feed(self, feed: _Feed) -> None:
        """WebSocket when it works, REST polling while it does not; REST fills every gap."""
        loop = asyncio.get_running_loop()
        use_ws, ws_failures, rest_failures = self.use_websocket, 0, 0
        next_ws_try, need_fill, connected = 0.0, True, False
        # Loop time before which REST is not called again: a failed poll's backoff (at least a
        # 429's Retry-After) holds for every REST call, also the one a failing WebSocket retry
        # falls back to at once.
        rest_ready = 0.0
        if not use_ws:
            self.report("fallback", f"{feed.symbol}: polling REST every {self.poll_interval}s")
        while True:
            if use_ws:
                try:
                    trades = await self.exchange.watch_trades(feed.symbol)
                except RETRYABLE as exc:
                    ws_failures += 1
                    delay = self._backoff(ws_failures, exc)
                    self.report(
                        "reconnecting",
                        f"{feed.symbol} websocket: {exc!r}; next try in {delay:.1f}s",
                    )
                    self.report("fallback", f"{feed.symbol}: polling REST meanwhile")
                    use_ws, need_fill, connected = False, True, False
                    next_ws_try = loop.time() + delay
                    continue
                except ccxt.BaseError as exc:
                    raise ProviderError(f"{self.exchange_id} {feed.symbol}: {exc}") from exc
                if need_fill:  # trades between the last one we saw and this subscription
                    await asyncio.sleep(max(0.0, rest_ready - loop.time()))
                    await self._retry(lambda: self._poll(feed), what="fill", attempts=None)
                    need_fill = False
                if not connected:
                    self.report("connected", f"{feed.symbol} websocket")
                    connected, ws_failures = True, 0
                for trade in trades:
                    self._emit(feed, self._from_ccxt(trade), parsed=True)
                continue
            wait = self.poll_interval
            await asyncio.sleep(max(0.0, rest_ready - loop.time()))
            try:
                await self._poll(feed)
                rest_failures = 0
            except RETRYABLE as exc:
                rest_failures += 1
                wait = self._backoff(rest_failures, exc)
                rest_ready = loop.time() + wait
                self.report("error", f"{feed.symbol} REST: {exc!r}; retrying in {wait:.1f}s")
            except ccxt.BaseError as exc:
                raise ProviderError(f"{self.exchange_id} {feed.symbol}: {exc}") from exc
            if self.use_websocket:
                if loop.time() >= next_ws_try:
                    use_ws = True
                    continue
                wait = min(wait, next_ws_try - loop.time())
            await asyncio.sleep(wait)

    async def _poll(self, feed: _Feed) -> None:
        """Fetch and emit every trade from the feed's cursor up to now, page by page."""
        since = max(feed.cursor, feed.watermark)  # inclusive: same-ms trades are deduped by id
        while True:
            page = await self._fetch_trades(feed.symbol, since)
            for trade, parsed in page:
                self._emit(feed, trade, parsed=parsed)
            if len(page) >= TRADES_PAGE:
                # a full page: more may follow its newest trade (+1 when a page was all one ms)
                since = feed.watermark if feed.watermark > since else since + 1
            elif self.exchange.milliseconds() - since > SINCE_WINDOW_MS:
                since += SINCE_WINDOW_MS  # the window was exhausted, but it ended before now
            else:
                break
        feed.cursor = since

    async def _fetch_trades(self, symbol: str, since: int) -> list[tuple[RawTrade, bool]]:
        """``fetch_trades`` as (RawTrade, parsed) pairs. When ccxt's parser raises on a row, or
        drops rows (one without a timestamp fails its ``since`` filter), the raw rows are
        parsed one by one and a row that still fails comes back as received."""
        async with self._rest_lock:
            try:
                trades = await self.exchange.fetch_trades(symbol, since=since, limit=TRADES_PAGE)
            except PARSE_ERRORS as exc:
                logger.warning(
                    "%s: ccxt could not parse %s trades: %r", self.exchange_id, symbol, exc
                )
                trades = None
            rows = _raw_rows(self.exchange.last_json_response)
            if self.exchange.last_json_response is None and self.exchange.last_http_response:
                # ccxt takes a body that is not JSON (a proxy's page, a truncated answer) for
                # no trades: a catch-up would then skip that window for good. Retry it.
                raise ccxt.BadResponse(
                    f"{self.exchange_id}: trades response for {symbol} is not JSON: "
                    f"{self.exchange.last_http_response[:80]!r}"
                )
        if trades is not None and (rows is None or len(rows) == len(trades)):
            return [(self._from_ccxt(t), True) for t in trades]
        if rows is None:
            raise ProviderError(f"{self.exchange_id}: unparseable trades response for {symbol}")
        market = self.exchange.market(symbol)
        good, bad = [], []
        for row in rows:
            try:
                good.append(self._from_ccxt(self.exchange.parse_trade(row, market)))
            except PARSE_ERRORS:
                bad.append(self._from_raw(row, symbol))
        good.sort(key=lambda t: t["timestamp"] if isinstance(t["timestamp"], int) else since)
        return [(t, True) for t in good] + [(t, False) for t in bad]

    def _emit(self, feed: _Feed, trade: RawTrade, *, parsed: bool) -> None:
        """Queue ``trade`` unless it was already yielded (same id, or older than the newest one
        yielded). Trades ccxt could not parse skip the time watermark (their time is unparsed
        too) and are de-duplicated by id alone."""
        ts = trade.get("timestamp")
        key = trade.get("id")
        if key is None and parsed:  # no exchange id: the trade's values identify it
            key = f"{ts}|{trade.get('price')}|{trade.get('amount')}|{trade.get('side')}"
        if key is not None and key in feed.seen:
            self.stats["duplicates"] += 1
            return
        if parsed and isinstance(ts, int) and not isinstance(ts, bool):
            # sources mix (WS, REST fill): an older trade than the newest yielded was already
            # yielded, possibly under another id (binance's trade ids are not aggTrade ids)
            if ts < feed.watermark:
                self.stats["out_of_order"] += 1
                logger.debug(
                    "%s %s: skipped trade %s older than %s",
                    self.exchange_id, feed.symbol, key, feed.watermark,
                )  # fmt: skip
                return
            feed.watermark = ts
        if key is not None:
            feed.seen[key] = None
            if len(feed.seen) > SEEN_IDS:
                feed.seen.popitem(last=False)
        feed.queue.put_nowait(trade)

    def _from_ccxt(self, trade: dict[str, Any]) -> RawTrade:
        return RawTrade(
            exchange=self.exchange_id,
            symbol=trade.get("symbol"),
            id=trade.get("id"),
            timestamp=trade.get("timestamp"),
            price=trade.get("price"),
            amount=trade.get("amount"),
            side=trade.get("side"),
            info=trade.get("info"),
        )

    def _from_raw(self, row: Any, symbol: str | None) -> RawTrade:
        """A row ccxt could not parse, with its values unparsed, for the collector to reject."""
        self.stats["unparsed"] += 1
        values: dict[str, Any] = {}
        if isinstance(row, dict):
            for name, keys in RAW_KEYS.items():
                values[name] = next((row[k] for k in keys if k in row), None)
        trade_id = values.get("id")
        return RawTrade(
            exchange=self.exchange_id,
            symbol=symbol,
            id=None if trade_id is None else str(trade_id),
            timestamp=values.get("timestamp"),
            price=values.get("price"),
            amount=values.get("amount"),
            side=values.get("side"),
            info=row,
        )

    def _guard_ws_parser(self) -> None:
        """Catch parser errors in ccxt's WebSocket message handler. Uncaught, one malformed
        trade stops ccxt's receive loop for good (checked with ccxt 4.5.64: every later
        ``watch_trades`` hangs, even a dropped connection goes unnoticed); here the row is
        yielded as received instead and the connection keeps going."""
        handle = self.exchange.handle_message

        def guarded(client: Any, message: Any) -> Any:
            try:
                return handle(client, message)
            except PARSE_ERRORS as exc:
                market_id = message.get("s") if isinstance(message, dict) else None
                symbol = self.exchange.safe_market(market_id)["symbol"] if market_id else None
                feed = self._feeds.get(symbol) if symbol else None
                logger.warning(
                    "%s: ccxt could not parse a WebSocket message (%r): %s",
                    self.exchange_id,
                    exc,
                    message,
                )
                if feed is not None:
                    self._emit(feed, self._from_raw(message, symbol), parsed=False)
                return None

        self.exchange.handle_message = guarded

    # --- candles --------------------------------------------------------------------------
    async def fetch_candles(
        self, symbol: str, timeframe: str, since_ms: int, *, limit: int = 1000
    ) -> list[Candle]:
        await self._retry(self.exchange.load_markets, what="load_markets")
        if symbol not in self.exchange.markets:
            raise ProviderError(f"{self.exchange_id} has no market {symbol}")
        first_open = self._first_open_after(timeframe, since_ms)
        rows = await self._retry(
            lambda: self.exchange.fetch_ohlcv(symbol, timeframe, since=first_open, limit=limit),
            what=f"fetch_ohlcv {symbol} {timeframe}",
        )
        now = self.exchange.milliseconds()
        candles: dict[int, Candle] = {}
        for open_ms, o, h, low, c, v in rows:
            # ccxt stamps OHLCV with the candle's OPEN time; we store its CLOSE time, the
            # EXCLUSIVE end of [open, open + timeframe): close = open + timeframe (not binance's
            # closeTime field, which is open + timeframe - 1 ms).
            close_ms = self._close_of(timeframe, open_ms)
            if close_ms > now:  # still open: its values will change, a strategy never sees it
                continue
            if close_ms > since_ms:
                candles[close_ms] = Candle(
                    timestamp=close_ms, open=o, high=h, low=low, close=c, volume=v
                )
        return [candles[k] for k in sorted(candles)]

    def _first_open_after(self, timeframe: str, since_ms: int) -> int:
        """Open time of the first candle whose close time is > ``since_ms``: the candle that
        contains the instant ``since_ms``."""
        if timeframe.endswith("M"):
            day = datetime.fromtimestamp(since_ms / 1000, tz=UTC)
            return int(
                day.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp() * 1000
            )
        tf_ms = self.exchange.parse_timeframe(timeframe) * 1000
        anchor = MONDAY_MS if timeframe.endswith("w") else 0
        return since_ms - (since_ms - anchor) % tf_ms

    def _close_of(self, timeframe: str, open_ms: int) -> int:
        if timeframe.endswith("M"):  # ccxt's parse_timeframe says 30 days; months are not
            opened = datetime.fromtimestamp(open_ms / 1000, tz=UTC)
            months = opened.year * 12 + opened.month - 1 + int(timeframe[:-1])
            closed = opened.replace(year=months // 12, month=months % 12 + 1)
            return int(closed.timestamp() * 1000)
        return open_ms + int(self.exchange.parse_timeframe(timeframe) * 1000)

    # --- retries --------------------------------------------------------------------------
    async def _retry(
        self,
        call: Callable[[], Awaitable[T]],
        *,
        what: str,
        attempts: int | None = CANDLE_ATTEMPTS,
    ) -> T:
        """``call()``, retried with backoff on ccxt's retryable errors (``attempts`` tries, then
        the error is raised; None: until cancelled). Others become ProviderError."""
        failures = 0
        while True:
            try:
                return await call()
            except RETRYABLE as exc:
                failures += 1
                if attempts is not None and failures >= attempts:
                    raise
                delay = self._backoff(failures, exc)
                self.report("error", f"{what}: {exc!r}; retry {failures} in {delay:.1f}s")
                await asyncio.sleep(delay)
            except ccxt.BaseError as exc:  # BadSymbol, AuthenticationError, other ExchangeError
                raise ProviderError(f"{self.exchange_id} {what}: {exc}") from exc

    def _backoff(self, failures: int, exc: Exception) -> float:
        """Exponential backoff with jitter, capped at ``max_backoff``; rate limits wait longer
        and at least the server's Retry-After (binance bans IPs that ignore it)."""
        limited = isinstance(exc, RATE_LIMITED)
        base = BACKOFF_BASE_S * (RATE_LIMIT_FACTOR if limited else 1)
        delay = min(self.max_backoff, base * 2 ** (failures - 1))
        delay *= 0.5 + random.random() / 2  # noqa: S311 - jitter, not cryptography
        if limited:
            headers = {k.lower(): v for k, v in (self.exchange.last_response_headers or {}).items()}
            try:
                delay = max(delay, float(headers.get("retry-after", 0)))
            except ValueError:
                pass
        return delay

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self.exchange.close()
