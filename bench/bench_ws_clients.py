"""100 signed-in WebSocket clients on the market and bot routes of the real ASGI server.

``uvicorn tradeapp.asgi:application`` (as the Procfile runs it) on a throwaway PostgreSQL
database (``tradeapp_bench_ws``) and this machine's Redis (db 12, ``BENCH_REDIS_URL``); 100
clients in one asyncio process (``bench.ws_clients_support``, the ``websockets`` library, a
session cookie each) spread over ``/ws/market/{symbol}`` (5 symbols x 8 clients),
``/ws/bot/{id}/status`` (20 bots x 2) and ``/ws/portfolio/{id}`` (20 bots x 1). This process
publishes at a steady rate through ``tradeapp.events.publish`` (Redis pub/sub + the Channels
groups: the real path), one event per channel per round.

Checked, or the benchmark fails: every client ends at its channel's last ``seq``; every gap in
a client's ``seq`` is followed by its snapshot request and a snapshot (a repair). To show the
repair works under load, a few losses are injected (a channel's ``seq`` taken in Redis and the
event not sent, as a message lost on the way would look): those gaps must all be repaired and
there must be no other. Baseline: one client alone on one channel at the same per-channel rate
(the fan-out cost is the ratio of the two latencies).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time

from bench import django_support as ds

SYMBOLS = 5
MARKET_CLIENTS = 8  # per symbol
BOTS = 20
STATUS_CLIENTS = 2  # per bot
PORTFOLIO_CLIENTS = 1  # per bot


def _clients(symbols: list[str], bot_ids: list[int]) -> list[dict]:
    clients = []
    for symbol in symbols:
        for _ in range(MARKET_CLIENTS):
            clients.append({"path": f"/ws/market/{symbol}", "channel": f"market_data:{symbol}"})
    for bot_id in bot_ids:
        for _ in range(STATUS_CLIENTS):
            clients.append({"path": f"/ws/bot/{bot_id}/status", "channel": f"bot_signals:{bot_id}"})
        for _ in range(PORTFOLIO_CLIENTS):
            clients.append(
                {"path": f"/ws/portfolio/{bot_id}", "channel": f"trade_updates:{bot_id}"}
            )
    return clients


def _payload(channel: str, k: int) -> dict:
    kind, _, key = channel.partition(":")
    if kind == "market_data":
        price = 100.0 + (k % 50) / 10
        return {
            "type": "candle.update", "instrument_id": 1, "symbol": key, "timeframe": "1m",
            "candle": {"timestamp": 1_767_225_660_000 + 60_000 * (k // 60), "open": 100.0,
                       "high": max(price, 100.0), "low": min(price, 100.0), "close": price,
                       "volume": 1.5 + k, "trades": k + 1},
        }  # fmt: skip
    if kind == "bot_signals":
        return {
            "type": "signal.created", "bot_id": int(key), "action": "hold", "time_ms": k,
            "price": 100.0, "executed": False, "reason": "no crossover",
        }  # fmt: skip
    return {
        "type": "portfolio.updated", "bot_id": int(key), "time_ms": k, "cash": 10_000.0,
        "equity": 10_000.0 + k, "position": 0.0, "unrealized_pnl": 0.0,
    }  # fmt: skip


def _round(
    base: str, cookie: str, clients: list[dict], channels: list[str], *, rounds_per_s: float,
    seconds: float, inject_every_s: float | None,
) -> dict:  # fmt: skip
    """Connect ``clients``, publish one event per channel per round for ``seconds``; the
    clients' results, the publisher's own figures and the injected losses."""
    from tradeapp import events
    from tradeapp.redis_client import get_redis

    config = {
        "base": base.replace("http://", "ws://"),
        "origin": base,
        "cookie": cookie,
        "clients": clients,
        "drain_s": 20,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ws_clients_support"],
        cwd=ds.ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        proc.stdin.write(json.dumps(config) + "\n")
        proc.stdin.flush()
        line = proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the WebSocket clients did not connect: {line!r}")
        final: dict[str, int] = {}
        injected: dict[str, int] = {}
        redis = get_redis()
        period = 1.0 / rounds_per_s
        started = time.perf_counter()
        next_inject = started + (inject_every_s or 0)
        rounds = publish_s = 0
        late = 0.0
        while time.perf_counter() - started < seconds:
            due = started + rounds * period
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            else:
                late = max(late, -wait)
            t = time.perf_counter()
            for channel in channels:
                final[channel] = events.publish(channel, _payload(channel, rounds))["seq"]
            publish_s += time.perf_counter() - t
            rounds += 1
            if inject_every_s and time.perf_counter() >= next_inject:
                # A lost message: the channel's next seq is taken and its event never sent.
                channel = channels[(rounds // 7) % len(channels)]
                final[channel] = int(redis.incr(events._seq_key(channel)))
                injected[channel] = injected.get(channel, 0) + 1
                next_inject += inject_every_s
        # One more round, so that a loss injected last is followed by an event (a client sees
        # a gap only when a later event arrives).
        for channel in channels:
            final[channel] = events.publish(channel, _payload(channel, rounds))["seq"]
        rounds += 1
        elapsed = time.perf_counter() - started
        proc.stdin.write(json.dumps({"final": final}) + "\n")
        proc.stdin.flush()
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or not out.strip():
        raise RuntimeError(f"the WebSocket clients failed (exit {proc.returncode})")
    result = json.loads(out.strip().splitlines()[-1])
    published = rounds * len(channels)
    return {
        **result,
        "elapsed": elapsed,
        "published": published,
        "publish_ms": publish_s / published * 1000,
        "late_s": late,
        "injected": injected,
        "final": final,
    }


def _check(result: dict, subscribers: dict[str, int]) -> dict:
    """Fail loudly unless every client reached its channel's last seq and every gap is an
    injected loss that was repaired; the totals."""
    clients = result["clients"]
    problems = []
    for c in clients:
        if c["last"] < c["target"]:
            problems.append(f"{c['path']}: at seq {c['last']}, published up to {c['target']}")
        if c["unrepaired"]:
            problems.append(f"{c['path']}: a gap without a snapshot repair")
        if c["closed"]:
            problems.append(f"{c['path']}: closed by the server ({c['closed']})")
        if c["errors"]:
            problems.append(f"{c['path']}: {c['errors']}")
    gaps = sum(c["gaps"] for c in clients)
    lost = sum(c["lost"] for c in clients)
    repairs = sum(c["repairs"] for c in clients)
    expected = sum(n * subscribers[ch] for ch, n in result["injected"].items())
    if lost != expected:
        problems.append(f"{lost} events missed by clients, {expected} injected losses")
    if repairs != gaps:
        problems.append(f"{gaps} gaps but {repairs} snapshot repairs")
    if problems:
        raise AssertionError("WebSocket delivery is wrong:\n  " + "\n  ".join(problems[:20]))
    latencies = [x for c in clients for x in c["latencies"]]
    received = sum(c["received"] for c in clients)
    p50, p99, top = ds.percentiles(latencies, 50, 99, 100)
    return {
        "p50": p50 / 1000, "p99": p99 / 1000, "max": top / 1000, "received": received,
        "delivered": len(latencies), "gaps": gaps, "repairs": repairs, "lost": lost,
        "duplicates": sum(c["duplicates"] for c in clients),
    }  # fmt: skip


def run(quick: bool = False, seconds: float | None = None) -> list[dict]:
    if os.environ.get("BENCH_ISOLATED") != "1":
        extra = ["--seconds", str(seconds)] if seconds else []
        return ds.isolated("bench_ws_clients", quick, extra)
    seconds = seconds or (15.0 if quick else 60.0)
    rounds_per_s = 4.0
    with ds.pg_database("tradeapp_bench_ws") as url:
        env = ds.production_env(url)
        ds.django_setup(env)
        from django.contrib.auth import get_user_model
        from django.test import Client

        from bots import services
        from marketdata.models import Exchange
        from marketdata.services import instrument_ensure

        user = get_user_model().objects.create_user("wsbench", password=secrets.token_urlsafe())
        Exchange.objects.get_or_create(
            ccxt_id="simulated", defaults={"name": "Sim", "kind": Exchange.Kind.SIMULATED}
        )
        symbols = [f"WS{k}/USDT" for k in range(SYMBOLS)]
        instruments = [instrument_ensure(exchange_id="simulated", symbol=s) for s in symbols]
        bot_ids = [
            services.bot_create(
                user=user, name=f"ws{k}", strategy="sma_crossover",
                parameters={"fast": 3, "slow": 8}, instrument=instruments[k % SYMBOLS],
            ).pk
            for k in range(BOTS)
        ]  # fmt: skip
        browser = Client()
        browser.force_login(user)
        cookie = f"sessionid={browser.cookies['sessionid'].value}"
        clients = _clients(symbols, bot_ids)
        channels = list(dict.fromkeys(c["channel"] for c in clients))
        subscribers = {ch: sum(c["channel"] == ch for c in clients) for ch in channels}

        with ds.serve(env, log_name="ws") as base:
            single = _round(
                base, cookie, clients[:1], channels[:1], rounds_per_s=rounds_per_s,
                seconds=min(10.0, seconds), inject_every_s=None,
            )  # fmt: skip
            one = _check(single, subscribers)
            many = _round(
                base, cookie, clients, channels, rounds_per_s=rounds_per_s, seconds=seconds,
                inject_every_s=seconds / 4,
            )  # fmt: skip
            fan = _check(many, subscribers)

    rate = fan["received"] / many["elapsed"]
    events_s = many["published"] / many["elapsed"]
    return [
        {
            "benchmark": f"{len(clients)} WebSocket clients ({SYMBOLS * MARKET_CLIENTS} market, "
            f"{BOTS * STATUS_CLIENTS} bot status, {BOTS * PORTFOLIO_CLIENTS} portfolio), "
            "publish -> client, p50",
            "ours_s": fan["p50"],
            "baseline": "one client alone, same per-channel rate",
            "baseline_s": one["p50"],
            "note": f"p50 {fan['p50'] * 1000:.1f} ms, p99 {fan['p99'] * 1000:.1f} ms, max "
            f"{fan['max'] * 1000:.0f} ms over {fan['delivered']:,} messages in "
            f"{many['elapsed']:.0f} s ({rate:,.0f} msg/s delivered, {events_s:,.0f} events/s "
            f"published on {len(channels)} channels); one client p50 "
            f"{one['p50'] * 1000:.1f} ms, p99 {one['p99'] * 1000:.1f} ms (fan-out cost "
            f"{fan['p50'] / one['p50']:.1f}x at p50)",
        },
        {
            "benchmark": "WebSocket drops: gaps in seq, each repaired by a snapshot",
            "ours_s": None,
            "note": f"0 unrepaired; {fan['gaps']} gaps ({fan['lost']} events, all injected "
            f"losses on {len(many['injected'])} channels) -> {fan['repairs']} snapshot "
            f"repairs; {fan['duplicates']} duplicates ignored; every client reached its "
            f"channel's last seq; connect + snapshot of {len(clients)} clients "
            f"{many['connect_s']:.1f} s; publish() {many['publish_ms']:.2f} ms per event",
        },
    ]


def _options(parser) -> None:
    parser.add_argument("--seconds", type=float, help="publishing time (default 60, quick 15)")


if __name__ == "__main__":
    os.environ["BENCH_ISOLATED"] = "1"
    sys.exit(ds.main(run, __doc__, _options))
