"""Raw-tick ingest into PostgreSQL: our COPY path versus Django's ``bulk_create``.

Uses ``DATABASE_URL``/``REDIS_URL`` when set (production profile), else this machine's
PostgreSQL on 127.0.0.1 with a database ``tradeapp_bench`` (created and migrated here).
"""

from __future__ import annotations

import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/tradeapp_bench"


def _setup_django() -> None:
    os.environ.setdefault("DATABASE_URL", DEFAULT_DB)
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost")
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


def run(quick: bool = False) -> list[dict]:
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
