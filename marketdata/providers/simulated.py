"""``SimulatedProvider``: a seeded random-walk exchange, for demos and tests without the internet.

Determinism
-----------
Every random number is a pure function of ``(seed, symbol, purpose, counters)``: a counter-based
hash (splitmix64 finaliser over uint64 arrays), never a stateful generator. So the trades of any
time range are the same however, whenever and in whatever order they are asked for, and backfill
(``fetch_candles``) agrees exactly with what the live stream produced.

Time is cut into one-minute *blocks*; block ``b`` holds the trades with time in
``(b*60000, (b+1)*60000]`` ms, the same right-closed convention as our candles, so a 1m candle is
exactly one block and every supported timeframe is a whole number of blocks.

- **Block boundaries.** The log price at each block boundary comes from *eras* of 2**14 blocks
  (~11.4 days). An era's endpoints are independent draws around ``log(start price)``; inside the
  era the path is a Brownian bridge between them (a hashed random walk with its drift removed). So
  the price at any minute is computed from one era, without walking from some origin, and the
  price stays within a few tens of percent of the configured start price forever (a demo must not
  drift to zero over a month). Prices are geometric, hence positive.
- **Trades in a block.** The count is ``trades_per_second * 60`` scaled by a lognormal activity
  factor; times are uniform in the block; the price path between the two boundary prices is a
  Brownian bridge sampled at the trade times. Sides are fair coin flips, amounts lognormal around a
  notional of ``notional`` quote units. Trade ids are ``"{block}-{rank}"``.
- Per-block prefix sums run row-wise on a padded matrix, so a block's floats do not depend on which
  other blocks were generated with it (a flat cumsum over a range would change the rounding).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from marketdata.aggregation import aggregate_arrays, parse_timeframe
from marketdata.providers.base import Candle, DataProvider, ProviderError, RawTrade

BLOCK_MS = 60_000
ERA_BLOCKS = 1 << 14
_MS_PER_YEAR = 365.25 * 86_400 * 1000
# Longest real sleep of the stream: an injected clock may jump, so it is polled at least this often.
_MAX_SLEEP_S = 0.25
# Blocks generated in one go when building candles (bounds memory: ~300 trades per block).
_CHUNK_BLOCKS = 1440

DEFAULT_SYMBOLS: dict[str, float] = {"BTC/USDT": 60000.0, "ETH/USDT": 3000.0, "SOL/USDT": 150.0}

# One hash stream per purpose, so the draws for counts, times, steps... never collide.
_P_ERA_STEP, _P_ERA_END, _P_COUNT, _P_COUNT_ROUND, _P_TIME, _P_STEP, _P_END_STEP = range(1, 8)
_P_SIDE, _P_AMOUNT = 8, 9

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scrambles every bit (arrays only:
    uint64 array arithmetic wraps silently, as intended)."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def _hash(key: int, purpose: int, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    h = np.full(np.shape(a), (key ^ (purpose * 0x9E3779B97F4A7C15)) & 0xFFFFFFFFFFFFFFFF, np.uint64)
    h = _mix64(h)
    h = _mix64(h + np.asarray(a, dtype=np.int64).astype(np.uint64) * _GOLDEN)
    if b is not None:
        h = _mix64(h + np.asarray(b, dtype=np.int64).astype(np.uint64) * _GOLDEN)
    return h


def _uniform(key: int, purpose: int, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Uniform floats in [0, 1), one per counter."""
    return (_hash(key, purpose, a, b) >> _S11).astype(np.float64) * (1.0 / (1 << 53))


def _normal(key: int, purpose: int, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Standard normals by Box-Muller on two hashed uniforms (purpose and purpose + 1000)."""
    u1 = 1.0 - _uniform(key, purpose, a, b)  # (0, 1]: log is finite
    u2 = _uniform(key, purpose + 1000, a, b)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _symbol_key(seed: int, symbol: str) -> int:
    # Python's hash() is salted per process; the key must be stable across runs and machines.
    digest = hashlib.blake2b(f"{seed}\x00{symbol}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True, slots=True)
class _Trades:
    """Trades of a range of blocks, in time order."""

    timestamp: np.ndarray  # int64 ms
    price: np.ndarray  # float64
    amount: np.ndarray  # float64
    buy: np.ndarray  # bool
    block: np.ndarray  # int64
    rank: np.ndarray  # int64, position within the block

    def slice(self, lo: int, hi: int) -> _Trades:
        return _Trades(*(getattr(self, f)[lo:hi] for f in self.__slots__))

    def between(self, start_ms: int, end_ms: int) -> _Trades:
        lo = int(np.searchsorted(self.timestamp, start_ms, side="right"))
        hi = int(np.searchsorted(self.timestamp, end_ms, side="right"))
        return self.slice(lo, hi)


@dataclass(frozen=True, slots=True)
class _Market:
    symbol: str
    key: int
    log_start: float
    price_decimals: int
    base_amount: float  # mean trade amount in base units


class SimulatedProvider(DataProvider):
    """A deterministic simulated exchange (``exchange_id = "simulated"``).

    ``volatility`` is annualised (0.8 = 80 %/year, crypto-like). ``speed`` runs the simulated
    clock faster than ``clock``: simulated now = t0 + (clock() - t0) * speed, with t0 the
    construction time, so at ``speed=60`` one real second is one simulated minute.
    ``history_days`` bounds how far back ``fetch_candles`` goes (generating trades costs time
    linear in the range asked for); ``trades_between`` has no such bound.
    """

    exchange_id = "simulated"

    def __init__(
        self,
        *,
        seed: int = 7,
        symbols: dict[str, float] | None = None,
        trades_per_second: float = 5.0,
        volatility: float = 0.8,
        clock: Callable[[], float] = time.time,
        speed: float = 1.0,
        notional: float = 500.0,
        history_days: float = 7.0,
    ) -> None:
        super().__init__()
        symbols = dict(DEFAULT_SYMBOLS if symbols is None else symbols)
        if not symbols:
            raise ProviderError("SimulatedProvider needs at least one symbol")
        for symbol, price in symbols.items():
            if not (isinstance(price, int | float) and math.isfinite(price) and price > 0):
                raise ProviderError(f"start price of {symbol} must be a positive number: {price!r}")
        if not (trades_per_second >= 0 and math.isfinite(trades_per_second)):
            raise ProviderError(f"trades_per_second must be >= 0: {trades_per_second!r}")
        if not (volatility >= 0 and math.isfinite(volatility)):
            raise ProviderError(f"volatility must be >= 0: {volatility!r}")
        if not (speed > 0 and math.isfinite(speed)):
            raise ProviderError(f"speed must be > 0: {speed!r}")
        self.seed = int(seed)
        self.trades_per_second = float(trades_per_second)
        self.volatility = float(volatility)
        self.speed = float(speed)
        self.history_ms = int(history_days * 86_400_000)
        self._clock = clock
        self._t0 = clock()
        # sigma of log price per sqrt(ms)
        self._sigma = self.volatility / math.sqrt(_MS_PER_YEAR)
        # i.i.d. era endpoints with this spread make the era-to-era step as wide as a free walk's
        self._era_spread = self._sigma * math.sqrt(ERA_BLOCKS * BLOCK_MS / 2)
        self._markets = {
            symbol: _Market(
                symbol=symbol,
                key=_symbol_key(self.seed, symbol),
                log_start=math.log(price),
                price_decimals=max(2, 6 - math.ceil(math.log10(price))),
                base_amount=notional / price,
            )
            for symbol, price in symbols.items()
        }
        self._eras: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self._eras_lock = threading.Lock()
        self._closed = False

    @property
    def symbols(self) -> list[str]:
        return list(self._markets)

    def now_ms(self) -> int:
        """The simulated clock, in epoch ms."""
        now = self._clock()
        return int((self._t0 + (now - self._t0) * self.speed) * 1000)

    # ----------------------------------------------------------------------------- generation

    def _market(self, symbol: str) -> _Market:
        try:
            return self._markets[symbol]
        except KeyError:
            raise ProviderError(
                f"simulated exchange has no symbol {symbol!r} (it has {', '.join(self._markets)})"
            ) from None

    def _era_path(self, market: _Market, era: int) -> np.ndarray:
        """Log-price offsets from the start price at the ERA_BLOCKS boundaries of ``era``."""
        cache_key = (market.symbol, era)
        with self._eras_lock:
            path = self._eras.get(cache_key)
            if path is not None:
                self._eras.move_to_end(cache_key)
                return path
        steps = _normal(market.key, _P_ERA_STEP, np.full(ERA_BLOCKS, era), np.arange(ERA_BLOCKS))
        walk = np.concatenate(([0.0], np.cumsum(steps * (self._sigma * math.sqrt(BLOCK_MS)))))
        ends = self._era_spread * _normal(market.key, _P_ERA_END, np.array([era, era + 1]))
        frac = np.arange(ERA_BLOCKS) / ERA_BLOCKS
        # Brownian bridge from ends[0] to ends[1]; the era's last boundary is the next era's first.
        path = ends[0] + walk[:-1] - frac * walk[-1] + frac * (ends[1] - ends[0])
        with self._eras_lock:
            self._eras[cache_key] = path
            while len(self._eras) > 64:
                self._eras.popitem(last=False)
        return path

    def _boundary_logs(self, market: _Market, b0: int, b1: int) -> np.ndarray:
        """Log prices at the start of blocks b0..b1 (inclusive)."""
        blocks = np.arange(b0, b1 + 1)
        eras = blocks // ERA_BLOCKS
        out = np.empty(len(blocks))
        for era in np.unique(eras):
            mask = eras == era
            out[mask] = self._era_path(market, int(era))[blocks[mask] - era * ERA_BLOCKS]
        return market.log_start + out

    def _generate(self, market: _Market, b0: int, b1: int) -> _Trades:
        """All trades of blocks b0 <= b < b1, in time order."""
        key = market.key
        blocks = np.arange(b0, b1, dtype=np.int64)
        if len(blocks) == 0:
            empty_i, empty_f = np.empty(0, np.int64), np.empty(0)
            return _Trades(empty_i, empty_f, empty_f, np.empty(0, bool), empty_i, empty_i)
        lam = self.trades_per_second * BLOCK_MS / 1000
        # lognormal activity factor with mean 1, then stochastic rounding: E[count] = lam
        activity = np.exp(0.25 * _normal(key, _P_COUNT, blocks) - 0.03125)
        counts = np.floor(lam * activity + _uniform(key, _P_COUNT_ROUND, blocks)).astype(np.int64)
        total = int(counts.sum())
        starts = np.cumsum(counts) - counts
        block = np.repeat(blocks, counts)
        rank = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)

        offset = 1 + np.floor(_uniform(key, _P_TIME, block, rank) * BLOCK_MS).astype(np.int64)
        offset = np.minimum(offset, BLOCK_MS)  # (block start, block end]
        # Sort times within each block; stable, so equal times keep slot order. Each block's rows
        # stay in place (rows are grouped by block), so ``rank`` becomes the time rank.
        order = np.lexsort((offset, block))
        offset = offset[order]

        # Brownian bridge inside each block, sampled at the trade times: row-wise cumsum on a
        # padded matrix so each block's sums are independent of the rest of the range.
        width = int(counts.max()) if total else 0
        prev = np.empty(total, dtype=np.int64)
        if total:
            prev[1:] = offset[:-1]
            prev[starts[counts > 0]] = 0
        steps = _normal(key, _P_STEP, block, rank) * np.sqrt((offset - prev).astype(np.float64))
        grid = np.zeros((len(blocks), max(width, 1)))
        row = block - b0
        grid[row, rank] = steps
        walk = np.cumsum(grid, axis=1)
        last_offset = np.zeros(len(blocks), dtype=np.int64)
        has = counts > 0
        last_offset[has] = offset[starts[has] + counts[has] - 1]
        walk_end = walk[:, -1] + _normal(key, _P_END_STEP, blocks) * np.sqrt(
            (BLOCK_MS - last_offset).astype(np.float64)
        )
        logs = self._boundary_logs(market, b0, b1)
        frac = offset / BLOCK_MS
        sigma = self._sigma
        log_price = (
            logs[row]
            + sigma * (walk[row, rank] - frac * walk_end[row])
            + frac * (logs[row + 1] - logs[row])
        )
        tick = 10.0**-market.price_decimals
        price = np.maximum(np.round(np.exp(log_price), market.price_decimals), tick)
        amount = market.base_amount * np.exp(0.8 * _normal(key, _P_AMOUNT, block, rank) - 0.32)
        amount = np.maximum(np.round(amount, 6), 1e-6)
        buy = _uniform(key, _P_SIDE, block, rank) < 0.5
        return _Trades(block * BLOCK_MS + offset, price, amount, buy, block, rank)

    def _trades(self, symbol: str, start_ms: int, end_ms: int) -> _Trades:
        market = self._market(symbol)
        b0 = start_ms // BLOCK_MS  # block b holds (b*BLOCK_MS, (b+1)*BLOCK_MS]
        b1 = -(-end_ms // BLOCK_MS)
        return self._generate(market, b0, max(b0, b1)).between(start_ms, end_ms)

    def _raw_trades(self, symbol: str, trades: _Trades) -> list[RawTrade]:
        out: list[RawTrade] = []
        columns = zip(
            trades.timestamp.tolist(),
            trades.price.tolist(),
            trades.amount.tolist(),
            trades.buy.tolist(),
            trades.block.tolist(),
            trades.rank.tolist(),
            strict=True,
        )
        for ts, price, amount, buy, block, rank in columns:
            trade_id = f"{block}-{rank}"
            side = "buy" if buy else "sell"
            out.append(
                RawTrade(
                    exchange=self.exchange_id,
                    symbol=symbol,
                    id=trade_id,
                    timestamp=ts,
                    price=price,
                    amount=amount,
                    side=side,
                    info={"id": trade_id, "T": ts, "p": price, "q": amount, "side": side},
                )
            )
        return out

    def trades_between(self, symbol: str, start_ms: int, end_ms: int) -> list[RawTrade]:
        """The trades of ``symbol`` with ``start_ms < timestamp <= end_ms``, oldest first.

        Pure function of (seed, symbol, range); ignores the clock, so it can also look ahead.
        """
        return self._raw_trades(symbol, self._trades(symbol, int(start_ms), int(end_ms)))

    # ----------------------------------------------------------------------------- provider API

    async def stream_trades(self, symbols: Sequence[str]) -> AsyncIterator[RawTrade]:
        """Trades from now on, as the simulated clock reaches them, merged in time order."""
        if isinstance(symbols, str) or not symbols:
            raise ProviderError(f"stream_trades needs a list of symbols, got {symbols!r}")
        markets = [self._market(s) for s in dict.fromkeys(symbols)]
        self.report("connected", f"simulated stream for {', '.join(m.symbol for m in markets)}")
        start = self.now_ms()
        # per symbol: the current block, its trades and the index of the next trade to yield
        blocks = [start // BLOCK_MS for _ in markets]  # block b holds (b*60000, (b+1)*60000]
        current = [self._generate(m, b, b + 1) for m, b in zip(markets, blocks, strict=True)]
        position = [int(np.searchsorted(t.timestamp, start, side="right")) for t in current]
        while not self._closed:
            now = self.now_ms()
            batch: list[tuple[int, int, RawTrade]] = []
            next_due: list[int] = []
            for i, market in enumerate(markets):
                while True:
                    trades, pos = current[i], position[i]
                    end = int(np.searchsorted(trades.timestamp, now, side="right"))
                    if end > pos:
                        for raw in self._raw_trades(market.symbol, trades.slice(pos, end)):
                            batch.append((raw["timestamp"], i, raw))
                        position[i] = pos = end
                    if pos < len(trades.timestamp):
                        next_due.append(int(trades.timestamp[pos]))
                        break
                    if blocks[i] * BLOCK_MS >= now:
                        # an exhausted block that has not even begun: look again at its end
                        next_due.append((blocks[i] + 1) * BLOCK_MS)
                        break
                    blocks[i] += 1
                    current[i] = self._generate(market, blocks[i], blocks[i] + 1)
                    position[i] = 0
            batch.sort(key=lambda item: (item[0], item[1]))
            for _, _, raw in batch:
                yield raw
                if self._closed:
                    return
            wake = min(next_due)
            delay = (wake - self.now_ms()) / 1000 / self.speed
            await asyncio.sleep(min(max(delay, 0.0), _MAX_SLEEP_S))

    async def fetch_candles(
        self, symbol: str, timeframe: str, since_ms: int, *, limit: int = 1000
    ) -> list[Candle]:
        self._market(symbol)
        try:
            tf_ms = int(parse_timeframe(timeframe) * 1000)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProviderError(f"unsupported timeframe {timeframe!r}: {exc}") from exc
        if limit <= 0:
            return []
        now = self.now_ms()
        last_close = now // tf_ms * tf_ms  # closed: close time <= now
        earliest = -(-(now - self.history_ms) // tf_ms) * tf_ms
        first_close = max(int(since_ms) // tf_ms * tf_ms + tf_ms, earliest)
        if first_close > last_close:
            return []
        return await asyncio.to_thread(
            self._candles,
            symbol=symbol,
            timeframe=timeframe,
            first_close=first_close,
            last_close=last_close,
            limit=limit,
        )

    def _candles(
        self, *, symbol: str, timeframe: str, first_close: int, last_close: int, limit: int
    ) -> list[Candle]:
        market = self._market(symbol)
        tf_ms = parse_timeframe(timeframe) * 1000
        out: list[Candle] = []
        per_chunk = max(1, (_CHUNK_BLOCKS * BLOCK_MS) // tf_ms)
        close = first_close
        while close <= last_close and len(out) < limit:
            # candles closing at close .. chunk_last hold the trades in (close - tf, chunk_last]
            chunk_last = min(last_close, close + (min(per_chunk, limit - len(out)) - 1) * tf_ms)
            lo, hi = close - tf_ms, chunk_last
            b0, b1 = lo // BLOCK_MS, -(-hi // BLOCK_MS)
            trades = self._generate(market, b0, b1).between(lo, hi)
            if len(trades.timestamp):
                agg = aggregate_arrays(trades.timestamp, trades.price, trades.amount, timeframe)
                rows = zip(
                    *(agg[f].tolist() for f in ("timestamp", "open", "high", "low", "close")),
                    agg["volume"].tolist(),
                    strict=True,
                )
                for ts, o, h, low, c, v in rows:
                    out.append(
                        Candle(timestamp=int(ts), open=o, high=h, low=low, close=c, volume=v)
                    )
            close = chunk_last + tf_ms
        return out[:limit]

    async def close(self) -> None:
        self._closed = True
