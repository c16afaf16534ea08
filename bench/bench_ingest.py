"""Raw-tick ingest into PostgreSQL: our COPY path versus Django's ``bulk_create``; then
sustained collection through the real collector for minutes.

Uses ``DATABASE_URL``/``REDIS_URL`` when set (production profile), else this machine's
PostgreSQL on 127.0.0.1 with a database ``tradeapp_bench`` (created and migrated here).

Sustained mode (``--minutes``: 10 in the full run, 0.5 with ``--quick``; ``--rate`` ticks/s,
default 2,000, over 10 instruments): a provider yields trades at the target rate, each stamped
with the time it was due (so falling behind shows as lag), into the real ``DataCollector.run``
(validation, streaming 1m candles, a flush a second: COPY of the raw ticks, candle upserts,
higher timeframes, status, events). Measured: ticks/s committed, each flush's duration, and
the lag of every tick from its time to its flush's commit; the first and the last window
(a minute, or a third of a short run) are compared to show whether it stays flat. Checked:
every tick produced is stored once, none rejected, and each instrument's 1m candles count
exactly the ticks up to its last closed candle.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/tradeapp_bench"


def _setup_django() -> None:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost")
    # Production needs Fernet keys (encrypted exchange secrets); the bench stores none.
    os.environ.setdefault("TRADEAPP_FERNET_KEYS", "ktg20CeSV29Jsrsr3OpyVtq7UqMiOoxgz5D1DwNunl4=")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeapp.settings")
    import django
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[-1]
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _rows(instrument_id: int, start: int, n: int):
    from marketdata.services import TickRow

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    return [
        TickRow(
            instrument_id=instrument_id,
            trade_id=str(start + i),
            time=t0 + timedelta(milliseconds=(start + i) * 7),
            price=Decimal("60000.00") + Decimal(i % 997) / 100,
            amount=Decimal("0.0123"),
            side="buy" if i % 2 else "sell",
            received_at=now,
        )
        for i in range(n)
    ]


def run(quick: bool = False, minutes: float | None = None, rate: int | None = None) -> list[dict]:
    # A process of its own: Django's settings are per process (bench.django_support).
    from bench import django_support as ds

    if os.environ.get("BENCH_ISOLATED") != "1":
        extra = [*(["--minutes", str(minutes)] if minutes is not None else []),
                 *(["--rate", str(rate)] if rate else [])]  # fmt: skip
        return ds.isolated("bench_ingest", quick, extra)
    rows = _copy_rows(quick)
    minutes = (0.5 if quick else 10.0) if minutes is None else minutes
    if minutes > 0 and not (len(rows) == 1 and "needs PostgreSQL" in rows[0].get("note", "")):
        rows += _sustained(minutes=minutes, rate=rate or SUSTAINED_RATE)
    return rows


def _copy_rows(quick: bool) -> list[dict]:
    _setup_django()
    from django.db import connection

    from marketdata.models import Exchange, RawTick
    from marketdata.services import instrument_ensure, ticks_store

    if connection.vendor != "postgresql":
        return [{"benchmark": "tick ingest", "note": "needs PostgreSQL (DATABASE_URL)"}]
    Exchange.objects.get_or_create(ccxt_id="bench", defaults={"name": "bench", "kind": "ccxt"})
    instrument = instrument_ensure(exchange_id="bench", symbol="BENCH/USDT")
    RawTick.objects.filter(instrument=instrument).delete()

    batch, batches = (20_000, 5) if quick else (50_000, 20)
    rows = [_rows(instrument.pk, b * batch, batch) for b in range(batches)]
    started = time.perf_counter()
    per_batch = []
    for chunk in rows:
        t = time.perf_counter()
        duplicates = ticks_store(chunk)
        per_batch.append(time.perf_counter() - t)
        assert not duplicates
    ours = time.perf_counter() - started
    n = batch * batches
    assert RawTick.objects.filter(instrument=instrument).count() == n

    # Baseline: Django's bulk_create (ignore_conflicts, as a collector without COPY would do),
    # on a tenth of the rows, scaled per tick.
    base_n = n // 10
    base_rows = _rows(instrument.pk, n, base_n)
    objs = [RawTick(**{f: getattr(r, f) for f in type(r).__slots__}) for r in base_rows]
    started = time.perf_counter()
    RawTick.objects.bulk_create(objs, batch_size=2000, ignore_conflicts=True)
    base = (time.perf_counter() - started) * (n / base_n)

    # Redelivered batch: every row refused as a duplicate, none stored twice.
    t = time.perf_counter()
    duplicates = ticks_store(rows[0])
    replay = time.perf_counter() - t
    assert len(duplicates) == batch
    RawTick.objects.filter(instrument=instrument).delete()

    rate = n / ours
    slowest = batch / max(per_batch)
    return [
        {
            "benchmark": f"tick ingest, {n:,} ticks in batches of {batch:,} (COPY)",
            "ours_s": ours,
            "baseline": "Django bulk_create",
            "baseline_s": base,
            "ratio": base / ours,
            "note": f"{rate:,.0f} ticks/s sustained, slowest batch {slowest:,.0f}/s "
            "(target >= 100k/s)",
        },
        {
            "benchmark": f"redelivered batch of {batch:,} (all duplicates)",
            "ours_s": replay,
            "note": f"{batch / replay:,.0f} ticks/s checked, 0 stored twice",
        },
    ]


SUSTAINED_RATE = 2_000  # ticks/s, over SUSTAINED_INSTRUMENTS
SUSTAINED_INSTRUMENTS = 10


def _sustained_provider(rate: int):
    from marketdata.providers.base import DataProvider

    class Stream(DataProvider):
        """Trades at ``rate`` per second, round-robin over the symbols, each stamped with the
        time it was due: a collector that falls behind sees them late."""

        exchange_id = "bench"

        def __init__(self) -> None:
            super().__init__()
            self.produced = 0
            self.started: float | None = None

        async def stream_trades(self, symbols):
            self.started = start = time.time()
            n = 0
            while True:
                due = int((time.time() - start) * rate)
                while n < due:
                    at_ms = int((start + n / rate) * 1000)
                    yield {
                        "exchange": "bench", "symbol": symbols[n % len(symbols)], "id": str(n),
                        "timestamp": at_ms, "price": f"{60000 + (n % 1000) / 100:.2f}",
                        "amount": "0.0123", "side": "buy" if n % 2 else "sell",
                    }  # fmt: skip
                    n += 1
                    self.produced = n
                await asyncio.sleep(0.005)

        async def fetch_candles(self, symbol, timeframe, since_ms, *, limit=1000):
            return []

    return Stream()


def _sustained(*, minutes: float, rate: int) -> list[dict]:  # noqa: PLR0915 - one story
    import numpy as np
    from django.db.models import Count, Max, Sum

    from bench.django_support import percentiles
    from marketdata.collector import DataCollector
    from marketdata.models import Candle, CollectionStatus, Exchange, RawTick, RejectedTick
    from marketdata.services import instrument_ensure

    Exchange.objects.get_or_create(ccxt_id="bench", defaults={"name": "bench", "kind": "ccxt"})
    symbols = [f"SUS{k}/USDT" for k in range(SUSTAINED_INSTRUMENTS)]
    instruments = [instrument_ensure(exchange_id="bench", symbol=s) for s in symbols]
    ids = [i.pk for i in instruments]

    def clean() -> None:
        for model in (RawTick, Candle, RejectedTick, CollectionStatus):
            model.objects.filter(instrument_id__in=ids).delete()

    clean()
    flushes: list[tuple[float, float, int]] = []  # (commit time, seconds, ticks)
    lags: list[np.ndarray] = []  # ms, per flush

    class Timed(DataCollector):
        def flush(self, buffers, provider_events=()):
            started = time.time()
            super().flush(buffers, provider_events)
            done = time.time()
            if buffers.ticks:
                times = np.fromiter((r.time.timestamp() for r in buffers.ticks), np.float64)
                lags.append((done - times) * 1000)
                flushes.append((done, done - started, len(buffers.ticks)))

    provider = _sustained_provider(rate)
    collector = Timed()
    collector.register_provider("bench", provider)
    seconds = minutes * 60

    async def collect() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        await collector.run(symbols, stop=stop)

    print(f"   sustained ingest: {rate:,} ticks/s for {seconds:.0f} s ...", flush=True)
    asyncio.run(collect())

    produced = provider.produced
    stored = RawTick.objects.filter(instrument_id__in=ids).count()
    rejected = RejectedTick.objects.filter(instrument_id__in=ids).count()
    assert stored == produced, f"{produced:,} ticks produced, {stored:,} stored"
    assert rejected == 0, f"{rejected} ticks rejected"
    closed_minutes = 0
    for pk in ids:
        minute = Candle.objects.filter(instrument_id=pk, timeframe="1m")
        found = minute.aggregate(last=Max("close_time"), trades=Sum("trades"), n=Count("id"))
        if found["last"] is None:
            continue
        ticks = RawTick.objects.filter(instrument_id=pk, time__lte=found["last"]).count()
        assert found["trades"] == ticks, f"{pk}: candles count {found['trades']}, ticks {ticks}"
        closed_minutes += found["n"]
    clean()

    t0 = provider.started
    lag = np.concatenate(lags)
    commit_at = np.concatenate([np.full(len(x), f[0]) for x, f in zip(lags, flushes, strict=True)])
    window = min(60.0, seconds / 3)
    first = lag[commit_at <= t0 + window]
    last = lag[commit_at > t0 + seconds - window]
    durations = [f[1] for f in flushes]
    l50, l99, lmax = percentiles(lag, 50, 99, 100)
    f50, f99, fmax = percentiles(durations, 50, 99, 100)
    a50, a99 = percentiles(first, 50, 99)
    b50, b99 = percentiles(last, 50, 99)
    achieved = produced / seconds
    return [
        {
            "benchmark": f"sustained collection into PostgreSQL, {minutes:g} min at "
            f"{rate:,} ticks/s target, {SUSTAINED_INSTRUMENTS} instruments (real collector)",
            "ours_s": seconds,
            "note": f"{achieved:,.0f} ticks/s sustained ({produced:,} ticks, all stored once, "
            f"0 rejected, {closed_minutes} 1m candles checked against the ticks); flush "
            f"(every 1 s) p50 {f50 * 1000:.0f} ms, p99 {f99 * 1000:.0f} ms, max "
            f"{fmax * 1000:.0f} ms over {len(flushes)} flushes",
        },
        {
            "benchmark": "tick time -> committed in PostgreSQL (lag), sustained",
            "ours_s": l50 / 1000,
            "note": f"p50 {l50:.0f} ms, p99 {l99:.0f} ms, max {lmax:.0f} ms; first "
            f"{window:.0f} s p50/p99 {a50:.0f}/{a99:.0f} ms, last {window:.0f} s "
            f"{b50:.0f}/{b99:.0f} ms ({'flat' if b99 <= 1.5 * a99 + 100 else 'GROWING'}); "
            f"includes the wait for the 1 s flush",
        },
    ]


def _options(parser) -> None:
    parser.add_argument("--minutes", type=float, help="sustained run (default 10, quick 0.5)")
    parser.add_argument("--rate", type=int, help=f"ticks/s target (default {SUSTAINED_RATE:,})")


if __name__ == "__main__":
    from bench import django_support as ds

    os.environ["BENCH_ISOLATED"] = "1"
    sys.exit(ds.main(run, __doc__, _options))
