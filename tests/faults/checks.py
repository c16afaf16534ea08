"""What "nothing lost, nothing doubled, nothing half-written" means, checked on a fault test's
private database against the local exchange's own records (``FakeBinance``)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from tests.exchange_server import FakeBinance
from tests.faults.support import Platform

MIN = 60_000


def ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def wait_for_second(second: float, *, not_before: float = 0.0) -> int:
    """Sleep until the wall clock is ``second`` s into a minute, at the first such moment at or
    after ``not_before`` (epoch s) and now; returns the epoch ms of the minute boundary that
    follows."""
    now = time.time()
    start = max(now, not_before)
    target = start - start % 60 + second
    if target < start:
        target += 60
    time.sleep(max(0.0, target - now))
    return (int(target * 1000) // MIN + 1) * MIN


def _near(volume: Decimal, exact: Decimal) -> Decimal:
    """``exact`` when ``volume`` equals it to 1e-12 relative, else ``volume``: the streaming
    candle builder sums amounts as float64 (``marketdata.aggregation``), so a tick-built
    candle's volume carries float rounding in its last digits (129.29108000000016)."""
    return exact if abs(volume - exact) <= abs(exact) * Decimal("1e-12") else volume


def ticks_exactly_once(plat: Platform, server: FakeBinance) -> dict[str, int]:
    """Every trade the exchange made between the first and the last one collected is stored
    once, as received; returns counts."""
    rows = plat.query("SELECT trade_id, price, amount FROM marketdata_rawtick")
    ids = [int(r[0]) for r in rows]
    assert len(ids) == len(set(ids)), "a raw tick is stored twice"
    lo, hi = min(ids), max(ids)
    made = {int(t["a"]): t for t in server.trades("BTC/USDT") if lo <= int(t["a"]) <= hi}
    missing = sorted(set(made) - set(ids))
    assert not missing, f"{len(missing)} trades of the exchange never stored: {missing[:20]}"
    assert set(ids) <= set(made), sorted(set(ids) - set(made))[:20]
    for trade_id, price, amount in rows:
        trade = made[int(trade_id)]
        assert (Decimal(trade["p"]), Decimal(trade["q"])) == (price, amount), trade
    return {"ticks": len(ids), "first_id": lo, "last_id": hi}


def candles_match_exchange(plat: Platform, server: FakeBinance, since_ms: int) -> dict[str, int]:
    """Every 1m candle the exchange has with close in (since_ms, newest stored close] is stored
    once, stamped with its close time, with the exchange's open/high/low/close/volume/trades."""
    rows = plat.query(
        "SELECT close_time, open, high, low, close, volume, trades, source FROM marketdata_candle "
        "WHERE timeframe = '1m' ORDER BY close_time"
    )
    stored = {ms(r[0]): r[1:] for r in rows}
    last = max(stored)
    trade_times = {int(t["T"]) for t in server.trades("BTC/USDT")}
    want = {}
    for k in server.klines("BTC/USDT", "1m", start=since_ms - MIN, limit=1000):
        close = int(k[0]) + MIN  # Binance stamps the open time; ours is the close time
        if since_ms < close <= last and Decimal(k[5]) > 0:
            want[close] = (
                Decimal(k[1]),
                Decimal(k[2]),
                Decimal(k[3]),
                Decimal(k[4]),
                Decimal(k[5]),
                int(k[8]),
            )
    missing = sorted(set(want) - set(stored))
    assert not missing, f"1m candles missing: {missing}"
    extra = sorted(c for c in stored if c > since_ms and c not in want)
    assert not extra, f"1m candles the exchange does not have: {extra}"
    compared = 0
    for close, expected in want.items():
        # Ours hold (close - 1m, close], Binance's [open, open + 1m): a trade on the exact
        # boundary millisecond sits one candle apart; such minutes are not compared.
        if close in trade_times or close - MIN in trade_times:
            continue
        o, h, lo, c, v, n, source = stored[close]
        got = (o, h, lo, c, _near(v, expected[4])) + ((n,) if source == "ticks" else (expected[5],))
        assert got == expected, (close, source, got, expected)
        compared += 1
    return {"candles": len(want), "compared": compared, "last_close": last}


def candles_hold_their_ticks(plat: Platform, since_ms: int) -> int:
    """Nothing half-written: each candle built from ticks has exactly the volume and trade count
    of the raw ticks stored inside it (ticks and candles are written in one transaction)."""
    rows = plat.query(
        """
        SELECT c.close_time, c.volume, c.trades, COALESCE(SUM(t.amount), 0), COUNT(t.id)
        FROM marketdata_candle c LEFT JOIN marketdata_rawtick t
          ON t.instrument_id = c.instrument_id AND t.time > c.close_time - interval '1 minute'
             AND t.time <= c.close_time
        WHERE c.timeframe = '1m' AND c.source = 'ticks' AND c.close_time > to_timestamp(%s)
        GROUP BY c.id ORDER BY c.close_time
        """,
        [since_ms / 1000],
    )
    bad = [r for r in rows if (_near(r[1], r[3]), r[2]) != (r[3], r[4])]
    assert not bad, f"candles whose ticks differ (close, volume, trades, tick sum, count): {bad}"
    return len(rows)


def bots_processed_every_candle_once(
    plat: Platform, bot_ids: list[int], started: dict[int, datetime]
) -> dict[str, int]:
    """Each bot decided every stored 1m candle after its start exactly once (one Signal per
    candle, in order, up to its ``last_processed_at``), is still running, and its books agree:
    every filled order has fills summing to its quantity, the position is the sum of its fills,
    at most one order per (bot, candle, side, reason)."""
    closes = [
        ms(r[0])
        for r in plat.query(
            "SELECT close_time FROM marketdata_candle WHERE timeframe = '1m' ORDER BY close_time"
        )
    ]
    signals = orders = 0
    for bot_id in bot_ids:
        status, last = plat.query(
            "SELECT status, last_processed_at FROM bots_bot WHERE id = %s", [bot_id]
        )[0]
        assert status == "running", (bot_id, status)
        decided = [
            ms(r[0])
            for r in plat.query(
                "SELECT time FROM bots_signal WHERE bot_id = %s ORDER BY time", [bot_id]
            )
        ]
        expected = [c for c in closes if ms(started[bot_id]) < c <= ms(last)]
        assert decided == expected, (
            bot_id,
            sorted(set(expected) - set(decided)),
            sorted(set(decided) - set(expected)),
        )
        signals += len(decided)
        dup = plat.query(
            "SELECT time, side, reason, COUNT(*) FROM bots_order WHERE bot_id = %s "
            "GROUP BY time, side, reason HAVING COUNT(*) > 1",
            [bot_id],
        )
        assert not dup, (bot_id, dup)
        unfilled = plat.query(
            """SELECT o.id, o.filled_quantity, COALESCE(SUM(f.quantity), 0) FROM bots_order o
               LEFT JOIN bots_fill f ON f.order_id = o.id WHERE o.bot_id = %s
               GROUP BY o.id HAVING o.filled_quantity <> COALESCE(SUM(f.quantity), 0)
               OR (o.status = 'filled' AND COUNT(f.id) = 0)""",
            [bot_id],
        )
        assert not unfilled, (bot_id, unfilled)
        held = plat.value(
            "SELECT COALESCE(SUM(CASE WHEN side = 'buy' THEN quantity ELSE -quantity END), 0) "
            "FROM bots_fill WHERE bot_id = %s",
            [bot_id],
        )
        position = plat.value("SELECT quantity FROM bots_position WHERE bot_id = %s", [bot_id])
        assert abs(held - position) < Decimal("1e-8"), (bot_id, held, position)
        orders += plat.value("SELECT COUNT(*) FROM bots_order WHERE bot_id = %s", [bot_id])
    return {"signals": signals, "orders": orders}


@dataclass
class WatchingClient:
    """A WebSocket client of ``/ws/market/BTC/USDT`` behaving as the pages' ``LiveStream``:
    on a ``seq`` that is not the last plus one it asks for a snapshot; a closed connection is
    opened again after 0.5 s (doubling to 4 s). Runs in a thread; records what it saw."""

    url: str
    session: str
    origin: str
    snapshots: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)  # (time, seq)
    gaps: list[tuple[float, int, int]] = field(default_factory=list)  # (time, expected, got)
    connects: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> WatchingClient:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        import websockets

        delay = 0.5
        while not self._stop.is_set():
            try:
                async with websockets.connect(
                    self.url,
                    origin=self.origin,
                    open_timeout=5,
                    additional_headers={"Cookie": f"sessionid={self.session}"},
                ) as ws:
                    self.connects += 1
                    last: int | None = None
                    repairing = False
                    while not self._stop.is_set():
                        try:
                            raw = await asyncio.wait_for(ws.recv(), 0.5)
                        except TimeoutError:
                            continue
                        message = json.loads(raw)
                        now = time.time()
                        if message.get("type") == "snapshot":
                            self.snapshots.append((now, message["streams"]))
                            last = next(iter(message["streams"].values()))
                            repairing = False
                            delay = 0.5
                            continue
                        if "seq" not in message:
                            continue
                        self.events.append((now, message["seq"]))
                        if last is not None and message["seq"] != last + 1 and not repairing:
                            self.gaps.append((now, last + 1, message["seq"]))
                            repairing = True
                            await ws.send(json.dumps({"type": "snapshot"}))
                        elif not repairing:
                            last = message["seq"]
            except Exception as exc:
                self.errors.append(f"{time.time():.1f} {type(exc).__name__}: {exc}")
            if not self._stop.wait(delay):
                delay = min(delay * 2, 4.0)


def datetime_of(epoch_ms: int) -> datetime:
    from datetime import UTC

    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


def status_counts_match(plat: Platform) -> int:
    """The collection status's tick counter is written in the flush's transaction: it equals the
    stored raw ticks exactly (a half-applied flush would leave them apart)."""
    counted = plat.value("SELECT SUM(ticks_count) FROM marketdata_collectionstatus")
    stored = plat.value("SELECT COUNT(*) FROM marketdata_rawtick")
    assert counted == stored, (counted, stored)
    return stored
