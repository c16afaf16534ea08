"""The optimisation page of a large grid: its size and render time.

A throwaway PostgreSQL database (``tradeapp_bench_optpage``, production profile) holds a
finished grid optimisation of 250 x 400 = 100,000 combinations (quick: 100 x 100), stored as
``tests/backtests/test_optimization_page.py`` stores it. The page is fetched in process through
Django's test client (the whole view, middleware and template; no network), signed in as the
owner: best first, sorted by another metric, and page 1,000 of the ranking. Times are best of
3 after one warm-up request. Each response is checked (200, under 1 MB, the table's rows in
place) before its time is reported; there is no baseline to divide by.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time

from bench import django_support as ds

#: The page's budget (issue 15): a 100,000-combination run's page stays under 1 MB.
MAX_BYTES = 1_000_000


def run(quick: bool = False) -> list[dict]:
    if os.environ.get("BENCH_ISOLATED") != "1":
        return ds.isolated("bench_optimization_page", quick)
    fast, slow = (range(2, 102), range(200, 300)) if quick else (range(2, 252), range(300, 700))
    static = tempfile.mkdtemp(prefix="bench-optpage-static-")
    with ds.pg_database("tradeapp_bench_optpage") as url:
        ds.django_setup({**ds.production_env(url), "DJANGO_STATIC_ROOT": static})
        from django.contrib.auth import get_user_model
        from django.core.management import call_command
        from django.test import Client

        from marketdata.models import Exchange
        from marketdata.services import instrument_ensure
        from tests.backtests.test_optimization_page import store_optimization

        call_command("collectstatic", interactive=False, verbosity=0)  # hashed static names
        Exchange.objects.create(ccxt_id="simulated", name="Sim", kind=Exchange.Kind.SIMULATED)
        instrument = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
        user = get_user_model().objects.create_user("optbench")
        began = time.perf_counter()
        opt = store_optimization(user, instrument, fast=list(fast), slow=list(slow))
        stored = time.perf_counter() - began
        n = opt.results.count()
        client = Client(HTTP_HOST="localhost")
        client.force_login(user)
        path = f"/optimizations/{opt.pk}/"
        rows = []
        for label, query in [
            ("best first", ""),
            ("sorted by total return", "?sort=-total_return"),
            ("page 1,000 of the ranking", f"?page={min(1000, n // 50)}"),
        ]:
            client.get(path + query)
            timings = []
            for _ in range(3):
                began = time.perf_counter()
                response = client.get(path + query)
                timings.append(time.perf_counter() - began)
            body = response.content
            listed = len(re.findall(rb"<tr data-result-id=", body))
            if response.status_code != 200 or len(body) >= MAX_BYTES or listed != 50:
                raise RuntimeError(
                    f"{label}: status {response.status_code}, {len(body):,} bytes, {listed} rows"
                )
            rows.append(
                {
                    "benchmark": f"optimisation page, {n:,} combinations, {label}",
                    "ours_s": min(timings),
                    "note": f"{len(body):,} bytes (budget {MAX_BYTES:,}); stored in {stored:.1f} s",
                }
            )
    return rows


if __name__ == "__main__":
    os.environ["BENCH_ISOLATED"] = "1"
    sys.exit(ds.main(run, __doc__))
