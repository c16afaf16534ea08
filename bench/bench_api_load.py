"""The REST API and the dashboard under a real load generator (locust, headless) on loopback.

``uvicorn tradeapp.asgi:application`` as the Procfile runs it (one process), then with
``--workers 2``, on a throwaway PostgreSQL database (``tradeapp_bench_api``) holding 2
instruments x 500,000 1m candles (COPY; quick: 1 x 50,000) and a user with an API token and 50
bots. Locust's users (``bench/locustfile.py``) read candles as a chart does (a random start, then
three pages of 1,000 through the cursor), the portfolio (``/api/portfolio/``) and the dashboard
page (``/``, session cookie). Every response is checked there (status, 1,000 gapless candles in
order, 50 bots, the page lists them): a wrong one counts as a failure, and any failure fails
the benchmark. The user's throttle rate is raised for the server (``TRADEAPP_API_USER_RATE``).
"""

from __future__ import annotations

import csv
import io
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench import django_support as ds

MINUTE = 60_000
START_MS = 1_577_836_800_000  # 2020-01-01 00:00 UTC
BOTS = 50
USERS = 20


def _copy_candles(instrument_id: int, n: int, seed: int) -> None:
    """``n`` 1m candles (a random walk) into ``marketdata_candle`` with COPY, in chunks."""
    from django.db import connection

    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.r_[100.0, close[:-1]]
    spread = np.abs(rng.normal(0, 0.001, n)) * close
    high, low = np.maximum(open_, close) + spread, np.minimum(open_, close) - spread
    volume = rng.uniform(1, 10, n)
    stamps = (START_MS + MINUTE * np.arange(1, n + 1, dtype=np.int64)).astype("datetime64[ms]")
    stamps = stamps.astype(str)
    columns = (
        "instrument_id, timeframe, close_time, open, high, low, close, volume, trades, source, "
        "updated_at"
    )
    chunk = 100_000
    with connection.cursor() as cursor:
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            buffer = io.StringIO()
            for i in range(lo, hi):
                buffer.write(
                    f"{instrument_id}\t1m\t{stamps[i]}+00\t{open_[i]:.8f}\t{high[i]:.8f}\t"
                    f"{low[i]:.8f}\t{close[i]:.8f}\t{volume[i]:.8f}\t{i % 97}\tticks\tnow\n"
                )
            with cursor.cursor.copy(f"COPY marketdata_candle ({columns}) FROM STDIN") as copy:
                copy.write(buffer.getvalue())
        cursor.execute("ANALYZE marketdata_candle")


def _locust(base: str, env: dict[str, str], seconds: int, out: Path) -> list[dict]:
    argv = [
        sys.executable, "-m", "locust", "-f", str(ds.ROOT / "bench" / "locustfile.py"),
        "--headless", "-u", str(USERS), "-r", str(USERS), "-t", f"{seconds}s", "--host", base,
        "--csv", str(out), "--only-summary", "--loglevel", "WARNING", "--stop-timeout", "10",
    ]  # fmt: skip
    done = subprocess.run(  # noqa: S603 - this interpreter, locust
        argv, cwd=ds.ROOT, env={**os.environ, **env}, capture_output=True, text=True, check=False
    )
    stats = Path(f"{out}_stats.csv")
    if not stats.exists():
        raise RuntimeError(f"locust wrote no stats (exit {done.returncode}): {done.stderr[-2000:]}")
    rows = list(csv.DictReader(stats.open()))
    failures = Path(f"{out}_failures.csv")
    failed = [r for r in rows if int(r["Failure Count"])]
    if failed:
        detail = failures.read_text()[:2000] if failures.exists() else ""
        raise AssertionError(f"locust saw failures: {[r['Name'] for r in failed]}\n{detail}")
    return rows


def _rows(stats: list[dict], label: str, seconds: int) -> list[dict]:
    out = []
    for r in stats:
        count = int(r["Request Count"])
        name = "all requests" if r["Name"] == "Aggregated" else r["Name"]
        p50, p99 = float(r["50%"]) / 1000, float(r["99%"]) / 1000
        out.append(
            {
                "benchmark": f"{name}, {label}",
                "ours_s": p50,
                "note": f"{float(r['Requests/s']):,.1f} req/s, p50 {p50 * 1000:.0f} ms, p99 "
                f"{p99 * 1000:.0f} ms, max {float(r['Max Response Time']):.0f} ms, "
                f"{count:,} requests, 0 failures ({USERS} users, {seconds} s)",
            }
        )
    return out


def run(quick: bool = False, seconds: int | None = None, candles: int | None = None) -> list[dict]:
    if os.environ.get("BENCH_ISOLATED") != "1":
        extra = [*(["--seconds", str(seconds)] if seconds else []),
                 *(["--candles", str(candles)] if candles else [])]  # fmt: skip
        return ds.isolated("bench_api_load", quick, extra)
    seconds = seconds or (10 if quick else 30)
    per_instrument = candles or (50_000 if quick else 500_000)
    instruments = 1 if quick else 2
    static = Path(tempfile.mkdtemp(prefix="bench-api-static-"))
    with ds.pg_database("tradeapp_bench_api") as url:
        env = {
            **ds.production_env(url),
            "DJANGO_STATIC_ROOT": str(static),
            "TRADEAPP_API_USER_RATE": "10000000/min",
        }
        ds.django_setup(env)
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.test import Client
        from rest_framework.authtoken.models import Token

        from bots import services
        from marketdata.models import Exchange
        from marketdata.services import instrument_ensure

        call_command("collectstatic", interactive=False, verbosity=0)
        Exchange.objects.get_or_create(
            ccxt_id="simulated", defaults={"name": "Sim", "kind": Exchange.Kind.SIMULATED}
        )
        listed = []
        for k in range(instruments):
            listed.append(instrument_ensure(exchange_id="simulated", symbol=f"API{k}/USDT"))
            _copy_candles(listed[-1].pk, per_instrument, seed=k)
        ids = [instrument.pk for instrument in listed]
        user = get_user_model().objects.create_user("apibench", password=secrets.token_urlsafe())
        for k in range(BOTS):
            services.bot_create(
                user=user, name=f"api-bot-{k}", strategy="sma_crossover",
                parameters={"fast": 3, "slow": 8}, instrument=listed[k % len(listed)],
            )  # fmt: skip
        browser = Client()
        browser.force_login(user)
        locust_env = {
            "BENCH_API_TOKEN": Token.objects.create(user=user).key,
            "BENCH_API_SESSION": browser.cookies["sessionid"].value,
            "BENCH_API_INSTRUMENTS": ",".join(map(str, ids)),
            "BENCH_API_FIRST_MS": str(START_MS + MINUTE),
            "BENCH_API_LAST_MS": str(START_MS + MINUTE * per_instrument),
            "BENCH_API_BOTS": str(BOTS),
        }
        data = f"{instruments} x {per_instrument:,} 1m candles"
        rows = []
        with tempfile.TemporaryDirectory(prefix="bench-locust-") as tmp:
            for workers in (1,) if quick else (1, 2):
                with ds.serve(env, workers=workers, log_name=f"api{workers}") as base:
                    # One request each first: the worker processes import and connect.
                    warm = f"/api/candles/?instrument={ids[0]}&timeframe=1m"
                    for path in ("/api/portfolio/", warm):
                        _get(base, path, locust_env["BENCH_API_TOKEN"])
                    stats = _locust(base, locust_env, seconds, Path(tmp) / f"w{workers}")
                label = "1 uvicorn process (Procfile)" if workers == 1 else "uvicorn --workers 2"
                rows += _rows(stats, f"{label}, {data}", seconds)
    return rows


def _get(base: str, path: str, token: str) -> None:
    import urllib.request

    request = urllib.request.Request(  # noqa: S310 - http on loopback
        base + path, headers={"Authorization": f"Token {token}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - loopback
        response.read()


def _options(parser) -> None:
    parser.add_argument("--seconds", type=int, help="locust run time (default 30, quick 10)")
    parser.add_argument("--candles", type=int, help="1m candles per instrument (default 500k)")


if __name__ == "__main__":
    os.environ["BENCH_ISOLATED"] = "1"
    sys.exit(ds.main(run, __doc__, _options))
