"""Sets up a fault test's private platform, run as ``python -m tests.faults.seed REST_URL N``
in the platform's environment (its own database): the local exchange and BTC/USDT, 25 minutes of
1m history from it (the strategies' warm-up), a user with ``N`` running paper bots on BTC/USDT 1m,
the beat schedule that catches bots up every 5 s instead of every minute (the admin's knob: a
test cannot wait a minute), and a signed-in session for WebSocket clients. Prints JSON."""

from __future__ import annotations

import json
import sys
import time

import django


def main(rest_url: str, n_bots: int) -> dict:
    django.setup()
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    from bots.services import bot_create, bot_start
    from marketdata.models import Exchange
    from marketdata.services import instrument_ensure

    Exchange.objects.create(
        ccxt_id="binance", name="Local Binance", kind="ccxt", api_base_url=rest_url
    )
    instrument = instrument_ensure(exchange_id="binance", symbol="BTC/USDT")
    since = (int(time.time() * 1000) - 25 * 60_000) // 60_000 * 60_000
    call_command("backfill", "binance", "BTC/USDT", "--since", str(since), verbosity=0)
    user = User.objects.create_user("trader", password="x-unused-9431")
    kinds = [
        ("sma_crossover", {"fast": 1, "slow": 3}),
        ("rsi_reversion", {"period": 3, "oversold": 45.0, "overbought": 55.0}),
        ("bollinger_reversion", {"n": 5, "k": 0.5}),
    ]
    bots = []
    for i in range(n_bots):
        strategy, parameters = kinds[i % len(kinds)]
        bot = bot_create(
            user=user,
            name=f"fault bot {i}",
            strategy=strategy,
            parameters=parameters,
            instrument=instrument,
            timeframe="1m",
        )
        bot_start(bot_id=bot.pk, actor=user, notify=False)
        bots.append(bot.pk)
    every5s, _ = IntervalSchedule.objects.get_or_create(every=5, period="seconds")
    PeriodicTask.objects.filter(task__in=["bots.catch_up"]).update(interval=every5s)
    # Only the schedules this test is about: the others would add load and noise.
    PeriodicTask.objects.exclude(task__in=["bots.catch_up"]).update(enabled=False)
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.create()
    return {"instrument_id": instrument.pk, "bots": bots, "session": session.session_key}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
