"""Fair sharing: another user's small backtest and the bots' decisions while one user runs three
100,000-combination grids.

Two layouts, measured in the same run with real Celery worker processes on the same data:

* **shared** (before): one worker process consuming every queue (concurrency 2, as ``make run``
  had it) and each search's chunks all queued at once (``TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT``
  beyond the chunk count);
* **fair** (now, ``make run``'s layout): the ``worker`` process on ``default,collect,bots`` and
  the ``research`` process on ``backtests``, with two chunks in flight per user (concurrency 1
  each here, so that both layouts have two pool processes on this 2-core machine; ``make run``'s
  worker has ``CELERY_CONCURRENCY=2``).

Figures: a small backtest's queue wait (created -> started) submitted by user B while user A's
three grids run; the bots' decision latency (a closed 1m candle announced -> every bot's
``last_processed_at`` moved) of 100 paper bots of user C, idle and under the same load. A wait
beyond ``CAP`` seconds is reported as "> CAP" (the shared layout can take many minutes).

Runs in a throwaway database like ``bench_bots`` (PostgreSQL with ``DATABASE_URL`` set, else the
embedded default). ``--quick``: 10,000-combination grids and fewer samples.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

CAP = 60.0  # seconds: a wait beyond it is reported as "> CAP"
BOTS = 100
BOT_INSTRUMENTS = 5
HOURLY_BARS = 4_000  # the research instrument's 1h candles
SAMPLES = 5


def _grid(quick: bool) -> dict[str, list[int]]:
    # fast < slow everywhere: every combination is valid.
    fast = list(range(1, 21 if quick else 201))
    return {"fast": fast, "slow": list(range(301, 801))}


def _start_worker(queues: str, concurrency: int, env: dict[str, str]) -> tuple:
    from django.conf import settings

    from tradeapp.celery import app

    hostname = f"bench-{secrets.token_hex(4)}@localhost"
    log = Path(tempfile.gettempdir()) / f"bench-fairness-{hostname.partition('@')[0]}.log"
    argv = [
        sys.executable, "-m", "celery", "-A", "tradeapp", "worker", "--loglevel", "WARNING",
        "--pool", "prefork", "--concurrency", str(concurrency), "--queues", queues,
        "--hostname", hostname, "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(  # noqa: S603 - our own argv: this interpreter, celery
            argv, cwd=settings.BASE_DIR, env={**os.environ, **env}, stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.perf_counter() + 60
    while not app.control.ping(destination=[hostname], timeout=0.5):
        if proc.poll() is not None or time.perf_counter() > deadline:
            raise RuntimeError(f"worker {hostname} did not start; see {log}")
    return proc, log


def _stop(procs: list) -> None:
    for proc, _log in procs:
        proc.terminate()
    for proc, _log in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class _World:
    """Users, data and bots shared by both layouts."""

    def __init__(self, quick: bool) -> None:
        from django.contrib.auth import get_user_model

        from bench.bench_bots import _bots, _store, _walk
        from marketdata.models import Exchange
        from marketdata.services import instrument_ensure
        from tests.backtests.support import store_hourly_candles

        users = get_user_model().objects
        self.searcher = users.create_user("searcher", password=secrets.token_urlsafe())
        self.other = users.create_user("other", password=secrets.token_urlsafe())
        self.trader = users.create_user("trader", password=secrets.token_urlsafe())
        from tradeapp.models import UserLimits

        UserLimits.objects.create(user=self.trader, bots=BOTS)  # beyond the default limit
        Exchange.objects.get_or_create(
            ccxt_id="simulated", defaults={"name": "Sim", "kind": Exchange.Kind.SIMULATED}
        )
        self.research = instrument_ensure(exchange_id="simulated", symbol="R/USDT")
        self.start = datetime(2024, 1, 1, tzinfo=UTC)
        store_hourly_candles(
            self.research.pk, start_ms=int(self.start.timestamp() * 1000), bars=HOURLY_BARS,
            seed=3,
        )  # fmt: skip
        self.end = self.start + timedelta(hours=HOURLY_BARS)
        self.instruments, self.data = [], {}
        self.history, self.next_bar = 600, 600
        for k in range(BOT_INSTRUMENTS):
            instrument = instrument_ensure(exchange_id="simulated", symbol=f"F{k:02d}/USDT")
            self.data[instrument.pk] = _walk(self.history + 200, seed=k)
            _store(instrument.pk, self.data[instrument.pk], slice(0, self.history))
            self.instruments.append(instrument)
        self.bots = _bots(self.trader, self.instruments, BOTS // BOT_INSTRUMENTS)
        self.grid = _grid(quick)

    def candle_latency(self) -> float:
        """Announce the next 1m candle; seconds until every bot decided on it (capped)."""
        from django.db.models import Min

        from bench.bench_bots import START_MS, _announce, _store
        from bots.models import Bot
        from marketdata.collector import DataCollector
        from marketdata.services import ms_to_datetime

        i = self.next_bar
        self.next_bar += 1
        for instrument in self.instruments:
            _store(instrument.pk, self.data[instrument.pk], slice(i, i + 1))
        close = ms_to_datetime(int(START_MS + 60_000 * (i + 1)))
        collector = DataCollector()
        started = time.perf_counter()
        for instrument in self.instruments:
            _announce(collector, instrument, self.data[instrument.pk], i)
        ids = [bot.pk for bot in self.bots]
        while time.perf_counter() - started < CAP:
            oldest = Bot.objects.filter(pk__in=ids).aggregate(m=Min("last_processed_at"))["m"]
            if oldest is not None and oldest >= close:
                break
            time.sleep(0.01)
        return time.perf_counter() - started

    def small_backtest_wait(self) -> float:
        """Submit user B's backtest of a month of 1h candles; its queue wait (capped)."""
        from backtests import services
        from backtests.models import BacktestRun

        run = services.backtest_create(
            user=self.other, strategy="sma_crossover", parameters={"fast": 10, "slow": 30},
            instrument=self.research, timeframe="1h", start=self.end - timedelta(days=30),
            end=self.end,
        )  # fmt: skip
        submitted = time.perf_counter()
        while time.perf_counter() - submitted < CAP:
            done = BacktestRun.objects.get(pk=run.pk)
            if done.started_at is not None:
                return (done.started_at - done.created_at).total_seconds()
            time.sleep(0.02)
        services.run_cancel(run=BacktestRun.objects.get(pk=run.pk))
        return float("inf")

    def start_searches(self) -> list:
        from backtests import services
        from backtests.models import OptimizationRun

        fields = {
            "user": self.searcher, "strategy": "sma_crossover", "instrument": self.research,
            "timeframe": "1h", "start": self.start, "end": self.end, "method": "grid",
            "space": self.grid,
        }  # fmt: skip
        runs = [services.optimization_create(**fields) for _ in range(3)]
        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            states = OptimizationRun.objects.filter(pk__in=[r.pk for r in runs])
            if all(r.chunks_done > 0 for r in states):
                break
            time.sleep(0.2)
        return runs

    def stop_searches(self, runs: list) -> None:
        from backtests import services
        from backtests.models import OptimizationRun
        from tradeapp.celery import app

        for run in OptimizationRun.objects.filter(pk__in=[r.pk for r in runs]):
            services.run_cancel(run=run)
        app.control.purge()


def _layout(world: _World, name: str, quick: bool) -> dict:
    # The shared layout's waits run into the cap: fewer samples keep the run short.
    samples = 2 if quick or name == "shared" else SAMPLES
    if name == "shared":
        env = {"TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT": "1000000"}
        os.environ.update(env)
        procs = [_start_worker("default,collect,bots,backtests", 2, env)]
    else:
        env = {"TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT": "2"}
        os.environ.update(env)
        procs = [
            _start_worker("default,collect,bots", 1, env),
            _start_worker("backtests", 1, env),
        ]
    try:
        world.candle_latency(), world.small_backtest_wait()  # warm-up: each process's first
        idle_bots = [world.candle_latency() for _ in range(samples)]
        idle_wait = [world.small_backtest_wait() for _ in range(samples)]
        runs = world.start_searches()
        loaded_wait, loaded_bots = [], []
        for _ in range(samples):
            loaded_wait.append(world.small_backtest_wait())
            loaded_bots.append(world.candle_latency())
        world.stop_searches(runs)
    finally:
        _stop(procs)
    return {
        "idle_bots": float(np.median(idle_bots)),
        "idle_wait": float(np.median(idle_wait)),
        "wait": float(np.median(loaded_wait)),
        "wait_max": float(np.max(loaded_wait)),
        "bots": float(np.median(loaded_bots)),
        "bots_max": float(np.max(loaded_bots)),
    }


def _fmt(seconds: float) -> str:
    return f"> {CAP:.0f} s" if seconds >= CAP else f"{seconds:.2f} s"


def run(quick: bool = False) -> list[dict]:
    from bench import django_support as ds

    if os.environ.get("BENCH_ISOLATED") != "1":
        return ds.isolated("bench_fairness", quick)
    from bench.bench_bots import _environment

    with _environment() as profile:
        world = _World(quick)
        combos = int(np.prod([len(v) for v in world.grid.values()]))
        results = {name: _layout(world, name, quick) for name in ("shared", "fair")}
    fair, shared = results["fair"], results["shared"]
    load = f"while another user runs 3 grids of {combos:,} combinations ({profile})"
    return [
        {
            "benchmark": f"small backtest's queue wait {load}",
            "ours_s": fair["wait"],
            "baseline": "one worker on every queue, every chunk queued at once",
            "baseline_s": min(shared["wait"], CAP),
            "ratio": min(shared["wait"], CAP) / max(fair["wait"], 1e-3),
            "note": f"median; max {_fmt(fair['wait_max'])} (before: median "
            f"{_fmt(shared['wait'])}, max {_fmt(shared['wait_max'])}); idle "
            f"{_fmt(fair['idle_wait'])}",
        },
        {
            "benchmark": f"{BOTS} bots' decision latency per 1m candle {load}",
            "ours_s": fair["bots"],
            "baseline": "one worker on every queue, every chunk queued at once",
            "baseline_s": min(shared["bots"], CAP),
            "ratio": min(shared["bots"], CAP) / max(fair["bots"], 1e-3),
            "note": f"median; max {_fmt(fair['bots_max'])} (before: median "
            f"{_fmt(shared['bots'])}, max {_fmt(shared['bots_max'])}); idle "
            f"{_fmt(fair['idle_bots'])}",
        },
    ]


if __name__ == "__main__":
    from bench import django_support as ds

    os.environ["BENCH_ISOLATED"] = "1"
    sys.exit(ds.main(run, __doc__))
