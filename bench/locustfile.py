"""Locust users for ``bench_api_load``: the candles endpoint (cursor paging), the portfolio
endpoint and the dashboard page, as a signed-in user (API token; session cookie for the page).

Configured by ``bench_api_load`` through the environment: ``BENCH_API_TOKEN``,
``BENCH_API_SESSION`` (session cookie value), ``BENCH_API_INSTRUMENTS`` (ids, comma-separated),
``BENCH_API_FIRST_MS`` / ``BENCH_API_LAST_MS`` (close times of the stored 1m candles) and
``BENCH_API_BOTS`` (bots the user has). Every response is checked: a wrong one is a failure.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime

from locust import HttpUser, between, task

MINUTE = 60_000
PAGE = 1000
PAGES_PER_WALK = 3

TOKEN = os.environ.get("BENCH_API_TOKEN", "")
SESSION = os.environ.get("BENCH_API_SESSION", "")
INSTRUMENTS = [int(x) for x in os.environ.get("BENCH_API_INSTRUMENTS", "1").split(",")]
FIRST_MS = int(os.environ.get("BENCH_API_FIRST_MS", "0"))
LAST_MS = int(os.environ.get("BENCH_API_LAST_MS", "0"))
BOTS = int(os.environ.get("BENCH_API_BOTS", "0"))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


class ApiUser(HttpUser):
    wait_time = between(0, 0)

    def on_start(self) -> None:
        self.api = {"Authorization": f"Token {TOKEN}", "Accept": "application/json"}
        self.page = {"Cookie": f"sessionid={SESSION}"}

    @task(3)
    def candles(self) -> None:
        """A chart reading ``PAGES_PER_WALK`` pages of 1m candles from a random time on."""
        # Load patterns, not secrets: the module's generator is fine.
        instrument = random.choice(INSTRUMENTS)  # noqa: S311
        start = random.randrange((LAST_MS - FIRST_MS) // MINUTE - PAGE * 4)  # noqa: S311
        since = FIRST_MS + MINUTE * start
        url = (
            f"/api/candles/?instrument={instrument}&timeframe=1m&since={_iso(since)}"
            f"&page_size={PAGE}"
        )
        expected = since
        for page in range(PAGES_PER_WALK):
            name = "/api/candles/ (first page)" if page == 0 else "/api/candles/ (cursor)"
            with self.client.get(url, headers=self.api, name=name, catch_response=True) as r:
                if r.status_code != 200:
                    r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
                    return
                body = r.json()
                rows = body.get("results", [])
                times = [_ms(row["close_time"]) for row in rows]
                # Gapless minutes in order, starting where the previous page stopped.
                wanted = list(range(expected, expected + PAGE * MINUTE, MINUTE))
                if len(rows) != PAGE or times != wanted:
                    r.failure(f"page of {len(rows)} candles from {times[:1]}, expected {expected}")
                    return
                expected = times[-1] + MINUTE
                url = body.get("next")
                if not url:
                    r.failure("no next page")
                    return

    @task(1)
    def portfolio(self) -> None:
        with self.client.get(
            "/api/portfolio/", headers=self.api, name="/api/portfolio/", catch_response=True
        ) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif len(r.json().get("bots", [])) != BOTS:
                r.failure(f"{len(r.json().get('bots', []))} bots, expected {BOTS}")

    @task(1)
    def dashboard(self) -> None:
        with self.client.get(
            "/", headers=self.page, name="/ (dashboard)", catch_response=True,
            allow_redirects=False,
        ) as r:  # fmt: skip
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code} (signed out?)")
            elif "api-bot-0" not in r.text:
                r.failure("the dashboard does not list the user's bots")
