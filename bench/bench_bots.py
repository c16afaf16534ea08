"""1,000 paper bots across 20 instruments: from a closed 1m candle to every signal recorded and
every paper fill done, and to the ``trade_updates`` message.

The real path: ``DataCollector.send_signal_to_bots`` -> the ``candle_closed`` receiver ->
``bots.process_candle`` (run eagerly in this process for the timing; then through a real Celery
worker process). Baseline: the per-bot path (``process_data`` on each bot's window, rows written
one by one: how every bot ran before the batch path) on 50 bots, scaled to 1,000.

Long mode (``--candles N``, default 30 in the full run: 30 minutes of simulated 1m candles, both
eager and through the worker): per-candle p50/p99 and the resident memory after every candle, of
this process (eager) and of the worker's process tree (prefork parent and children); the
slope after a warm-up (the first fifth) tells whether memory stays flat.

Runs in a throwaway database: with ``DATABASE_URL`` set, a fresh PostgreSQL database named after
it (``<name>_bench_bots``, dropped at the end) and ``REDIS_URL``; otherwise the embedded default
(SQLite and a private Redis) in a temporary directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

INSTRUMENTS = 20
BOTS = 1_000
HISTORY = 600  # candles stored before the bots start: the longest look-back (EMA, RSI) fits
BASELINE_BOTS = 50
MINUTE = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC
# (strategy, parameters, risk options): a mix of the built-ins, several bots per configuration
# as users running the same preset would.
CONFIGS = [
    ("sma_crossover", {"fast": 3, "slow": 8}, {"stop_loss": 0.004}),
    ("sma_crossover", {"fast": 5, "slow": 20}, {}),
    ("sma_crossover", {"fast": 2, "slow": 5}, {"take_profit": 0.003}),
    ("ema_crossover", {"fast": 5, "slow": 13}, {"trailing_stop": 0.004}),
    ("rsi_reversion", {"period": 7, "oversold": 40.0, "overbought": 60.0}, {"stop_loss": 0.01}),
    ("rsi_reversion", {"period": 14}, {}),
    ("macd_crossover", {}, {}),
    ("bollinger_reversion", {"n": 20, "k": 1.0}, {"take_profit": 0.005}),
    ("donchian_breakout", {"n": 10}, {"stop_loss": 0.003, "cooldown_candles": 3}),
    ("donchian_breakout", {"n": 20}, {}),
]


@contextmanager
def _environment() -> Iterator[str]:
    """Django set up on a throwaway database; yields the profile's name."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tradeapp.settings")
    os.environ.setdefault("TRADEAPP_FERNET_KEYS", "ktg20CeSV29Jsrsr3OpyVtq7UqMiOoxgz5D1DwNunl4=")
    tmp = Path(tempfile.mkdtemp(prefix="bench-bots-"))
    url = os.environ.get("DATABASE_URL")
    admin_url = name = None
    if url:
        os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/13")
        os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
        os.environ.setdefault("DJANGO_ALLOWED_HOSTS", "localhost")
        import psycopg

        base, _, original = url.rpartition("/")
        name = f"{original.split('?')[0]}_bench_bots"
        admin_url = f"{base}/postgres"
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        os.environ["DATABASE_URL"] = f"{base}/{name}"
    else:
        os.environ["TRADEAPP_VAR_DIR"] = str(tmp)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    from tradeapp import embedded_redis

    redis_proc = None
    if settings.EMBEDDED_REDIS_SOCKET is not None:
        redis_proc = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET)
    try:
        call_command("migrate", verbosity=0)
        yield "PostgreSQL + Redis" if url else "embedded (SQLite + private Redis)"
    finally:
        from django.db import connections

        connections.close_all()
        if redis_proc is not None:
            embedded_redis.stop(redis_proc)
        if admin_url is not None:
            import psycopg

            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            os.environ["DATABASE_URL"] = url
        shutil.rmtree(tmp, ignore_errors=True)


def _walk(bars: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, 0.003, bars))), 4)
    open_ = np.round(np.r_[100.0, close[:-1]] * (1 + rng.normal(0, 0.0008, bars)), 4)
    spread = np.abs(rng.normal(0, 0.003, bars)) * close
    return {
        "timestamp": START_MS + MINUTE * np.arange(1, bars + 1, dtype=np.int64),
        "open": open_,
        "close": close,
        "high": np.round(np.maximum(open_, close) + spread, 4),
        "low": np.round(np.minimum(open_, close) - spread, 4),
        "volume": np.round(rng.uniform(1, 10, bars), 3),
        "trades": np.full(bars, 5),
    }


def _store(instrument_id: int, data: dict[str, np.ndarray], rows: slice) -> None:
    from marketdata.services import candles_upsert

    candles_upsert(
        instrument_id=instrument_id, timeframe="1m", candles={k: v[rows] for k, v in data.items()}
    )


def _bots(user, instruments, per_instrument: int, offset: int = 0) -> list:
    from bots import services

    bots = []
    for i, instrument in enumerate(instruments):
        for k in range(per_instrument):
            strategy, params, options = CONFIGS[(i + k + offset) % len(CONFIGS)]
            bot = services.bot_create(
                user=user, name=f"b{offset}-{i}-{k}", strategy=strategy, parameters=params,
                instrument=instrument, capital=10_000, fee=0.001, slippage=0.0005, **options,
            )  # fmt: skip
            services.bot_start(bot_id=bot.pk, notify=False)
            bots.append(bot)
    return bots


class _Listener:
    """Records when each bot's ``portfolio.updated`` (its last ``trade_updates`` message of a
    candle) arrives, by (bot id, candle close ms)."""

    def __init__(self) -> None:
        import json

        from tradeapp.redis_client import get_redis

        self.seen: dict[tuple[int, int], float] = {}
        self.messages = 0
        self._pubsub = get_redis().pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("trade_updates:*")
        self._stop = threading.Event()
        self._json = json
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.05)
            if message is None or message["type"] != "pmessage":
                continue
            now = time.perf_counter()
            self.messages += 1
            event = self._json.loads(message["data"])
            if event["type"] == "portfolio.updated":
                self.seen[(event["bot_id"], event["time_ms"])] = now

    def wait_for(self, keys: list[tuple[int, int]], timeout: float = 30.0) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline and not all(k in self.seen for k in keys):
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._pubsub.close()


def _percentiles(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=np.float64)
    return float(np.percentile(array, 50)), float(np.percentile(array, 99))


def _announce(collector, instrument, data: dict[str, np.ndarray], i: int) -> None:
    collector.send_signal_to_bots({
        "instrument_id": instrument.pk, "symbol": instrument.symbol, "timeframe": "1m",
        "candle": {k: data[k][i] for k in data},
    })  # fmt: skip


def _eager(instruments, data, bots, first: int, candles: int) -> dict:
    from bench.django_support import process_rss_mb
    from bots.models import Bot, Fill, Signal
    from marketdata.collector import DataCollector
    from tradeapp.celery import app

    app.conf.task_always_eager = True
    collector = DataCollector()
    listener = _Listener()
    walls, rss = [], []
    # Filled in place, and each candle's arrivals dropped once read: the memory measured is the
    # platform's, not this loop's bookkeeping growing by a thousand entries a candle.
    latencies = np.empty(candles * len(bots))
    try:
        for i in range(first, first + candles):
            for instrument in instruments:
                _store(instrument.pk, data[instrument.pk], slice(i, i + 1))
            close_ms = int(START_MS + MINUTE * (i + 1))
            started = time.perf_counter()
            for instrument in instruments:
                _announce(collector, instrument, data[instrument.pk], i)
            walls.append(time.perf_counter() - started)
            keys = [(bot.pk, close_ms) for bot in bots]
            listener.wait_for(keys)
            missing = len(keys) - sum(k in listener.seen for k in keys)
            assert missing == 0, f"{missing} portfolio updates never arrived"
            at = (i - first) * len(keys)
            latencies[at : at + len(keys)] = [listener.seen.pop(k) - started for k in keys]
            rss.append(process_rss_mb(os.getpid(), children=False))
    finally:
        listener.close()
        app.conf.task_always_eager = False
    ids = [bot.pk for bot in bots]
    decided = Signal.objects.filter(bot_id__in=ids).count()
    assert decided == len(ids) * candles, (decided, len(ids) * candles)
    assert not Bot.objects.filter(pk__in=ids, status=Bot.Status.ERROR).exists()
    return {
        "walls": walls,
        "latencies": latencies,
        "rss": rss,
        "signals": decided,
        "fills": Fill.objects.filter(bot_id__in=ids).count(),
        "executed": Signal.objects.filter(bot_id__in=ids, executed=True).count(),
    }


def _worker(instruments, data, bots, first: int, candles: int, *, concurrency: int) -> dict | None:
    """The same through a real ``celery worker`` process; None when it does not start."""
    from django.conf import settings
    from django.db.models import Min

    from bench.django_support import process_rss_mb
    from bots.models import Bot, Signal
    from marketdata.collector import DataCollector
    from marketdata.services import ms_to_datetime
    from tradeapp.celery import app

    log = Path(tempfile.gettempdir()) / f"bench-bots-worker-{os.getpid()}.log"
    hostname = f"bench-{secrets.token_hex(4)}@localhost"
    argv = [
        sys.executable, "-m", "celery", "-A", "tradeapp", "worker", "--loglevel", "WARNING",
        "--pool", "prefork", "--concurrency", str(concurrency), "--queues", "bots",
        "--hostname", hostname, "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own argv: this interpreter, celery
            argv, cwd=settings.BASE_DIR, env=dict(os.environ), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.perf_counter() + 60
        while not app.control.ping(destination=[hostname], timeout=0.5):
            if proc.poll() is not None or time.perf_counter() > deadline:
                return None
        collector = DataCollector()
        ids = [bot.pk for bot in bots]
        walls, rss = [], []
        for i in range(first, first + candles):
            for instrument in instruments:
                _store(instrument.pk, data[instrument.pk], slice(i, i + 1))
            close = ms_to_datetime(int(START_MS + MINUTE * (i + 1)))
            started = time.perf_counter()
            for instrument in instruments:
                _announce(collector, instrument, data[instrument.pk], i)
            while True:
                oldest = Bot.objects.filter(pk__in=ids).aggregate(m=Min("last_processed_at"))["m"]
                if oldest is not None and oldest >= close:
                    break
                if time.perf_counter() - started > 60:
                    raise RuntimeError(f"the worker did not process {close}; see {log}")
                time.sleep(0.005)
            walls.append(time.perf_counter() - started)
            rss.append(process_rss_mb(proc.pid))
        decided = Signal.objects.filter(
            bot_id__in=ids, time__gt=ms_to_datetime(int(START_MS + MINUTE * first))
        ).count()
        assert decided == len(ids) * candles, (decided, len(ids) * candles)
        assert not Bot.objects.filter(pk__in=ids, status=Bot.Status.ERROR).exists()
        return {"walls": walls, "rss": rss}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _baseline(user, instrument, data, first: int, candles: int) -> float:
    """Seconds per candle of the per-bot path for BASELINE_BOTS bots, scaled to BOTS."""
    from bots import services
    from bots.models import Bot

    bots = _bots(user, [instrument], BASELINE_BOTS, offset=1)
    strategies = {bot.pk: services.strategy_for(bot) for bot in bots}
    timings = []
    for i in range(first, first + candles):
        _store(instrument.pk, data, slice(i, i + 1))
        end = services.ms_to_datetime(int(START_MS + MINUTE * (i + 1)))
        started = time.perf_counter()
        lookback = max(type(s).lookback(s.parameters) for s in strategies.values())
        window = services._Candles.load(
            instrument.pk, "1m", services.ms_to_datetime(int(START_MS + MINUTE * (i - lookback))),
            end,
        )  # fmt: skip
        for bot in bots:
            services._process_bot(bot.pk, strategies[bot.pk], window, end)
        timings.append(time.perf_counter() - started)
    assert not Bot.objects.filter(pk__in=[b.pk for b in bots], status="error").exists()
    return float(np.median(timings)) * BOTS / BASELINE_BOTS


def run(quick: bool = False, candles: int | None = None) -> list[dict]:
    # A process of its own: Django's settings are per process (bench.django_support).
    from bench import django_support as ds

    if os.environ.get("BENCH_ISOLATED") != "1":
        return ds.isolated("bench_bots", quick, ["--candles", str(candles)] if candles else [])
    worker_candles = candles or (5 if quick else 30)
    candles = candles or (10 if quick else 30)
    with _environment() as profile:
        from django.contrib.auth import get_user_model
        from django.db import connection

        from marketdata.models import Exchange
        from marketdata.services import instrument_ensure

        user = get_user_model().objects.create_user("bench", password=secrets.token_urlsafe())
        # A thousand bots of one user: beyond the default per-user limit (tradeapp.limits).
        from tradeapp.models import UserLimits

        UserLimits.objects.create(user=user, bots=BOTS + BASELINE_BOTS)
        Exchange.objects.get_or_create(
            ccxt_id="simulated", defaults={"name": "Sim", "kind": Exchange.Kind.SIMULATED}
        )
        bars = HISTORY + candles + worker_candles + 10
        instruments, data = [], {}
        for k in range(INSTRUMENTS + 1):
            instrument = instrument_ensure(exchange_id="simulated", symbol=f"B{k:02d}/USDT")
            data[instrument.pk] = _walk(bars, seed=k)
            _store(instrument.pk, data[instrument.pk], slice(0, HISTORY))
            instruments.append(instrument)
        spare = instruments.pop()  # the baseline's bots trade this one
        setup = time.perf_counter()
        bots = _bots(user, instruments, BOTS // INSTRUMENTS)
        setup = time.perf_counter() - setup

        eager = _eager(instruments, data, bots, HISTORY, candles)
        worker = _worker(
            instruments, data, bots, HISTORY + candles, worker_candles,
            concurrency=2 if connection.vendor == "postgresql" else 1,
        )  # fmt: skip
        base = _baseline(user, spare, data[spare.pk], HISTORY + candles, 5)

    p50, p99 = _percentiles(eager["walls"])
    l50, l99 = _percentiles(eager["latencies"])
    rows = [
        {
            "benchmark": f"{BOTS:,} paper bots x {INSTRUMENTS} instruments, per 1m candle, "
            f"eager ({profile})",
            "ours_s": p50,
            "baseline": f"per-bot process_data path ({BASELINE_BOTS} bots, x{BOTS // 50})",
            "baseline_s": base,
            "ratio": base / p50,
            "note": f"p50 {p50:.3f} s, p99 {p99:.3f} s over {candles} candles (target 2 s); "
            f"{eager['signals']:,} signals, {eager['executed']:,} orders, {eager['fills']:,} "
            f"fills; bots set up in {setup:.0f} s",
        },
        {
            "benchmark": "candle close -> trade_updates message (each bot's portfolio.updated)",
            "ours_s": l50,
            "note": f"p50 {l50:.3f} s, p99 {l99:.3f} s over {len(eager['latencies']):,} messages",
        },
        _memory_row("this process (eager)", eager["rss"]),
    ]
    if worker is None:
        rows.append({"benchmark": "through a real Celery worker", "note": "worker did not start"})
    else:
        w50, w99 = _percentiles(worker["walls"])
        rows.append(
            {
                "benchmark": f"{BOTS:,} bots per 1m candle through a real Celery worker",
                "ours_s": w50,
                "note": f"p50 {w50:.3f} s, p99 {w99:.3f} s over {worker_candles} candles "
                "(announce -> every bot's last_processed_at moved; every signal recorded)",
            }
        )
        rows.append(_memory_row("the worker (prefork parent + children)", worker["rss"]))
    return rows


def _memory_row(whose: str, rss: list[float]) -> dict:
    """Resident memory after each candle: flat when it stops growing after the warm-up."""
    from bench.django_support import rss_slope

    warmup = max(3, len(rss) // 5)
    slope, grown = rss_slope(rss, warmup)
    flat = abs(grown) <= max(5.0, 0.02 * rss[-1]) if len(rss) > warmup + 1 else None
    verdict = {True: "flat", False: "GROWING", None: "too few candles to tell"}[flat]
    return {
        "benchmark": f"memory of {whose}, {len(rss)} candles",
        "ours_s": None,
        "note": f"RSS {rss[0]:.0f} MB after candle 1, {rss[min(warmup, len(rss) - 1)]:.0f} MB "
        f"after the warm-up ({warmup}), {rss[-1]:.0f} MB at the end: {slope * 1000:+.0f} kB "
        f"per candle after the warm-up, {grown:+.1f} MB over the rest ({verdict})",
    }


if __name__ == "__main__":
    from bench import django_support as ds

    os.environ["BENCH_ISOLATED"] = "1"
    sys.exit(
        ds.main(
            run, __doc__,
            lambda p: p.add_argument("--candles", type=int, help="1m candles (default 30)"),
        )
    )  # fmt: skip
