"""The real path: the collector announces each closed candle, a real Celery worker process runs
``bots.process_candle`` on the ``bots`` queue, and the paper bot ends with the backtest's trades."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from backtests.engine import run_backtest
from bots import paper
from bots.manager import BotManager
from bots.models import Bot, Order, Signal, Trade
from bots.tasks import process_candle_task
from marketdata.collector import DataCollector
from marketdata.selectors import candles_frame
from strategies.registry import get_strategy
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.support import eventually

HISTORY = 30
PARAMS = {"fast": 3, "slow": 8}
# History of exactly the warm-up: no bar before the bot's first candle can carry a signal, so the
# backtest of the whole stored series is the one to equal.
WARMUP = get_strategy("sma_crossover").warmup(PARAMS)


def processed_up_to(bot: Bot, close_ms: int) -> bool:
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING, bot.status_reason
    return int(bot.last_processed_at.timestamp() * 1000) >= close_ms


@pytest.mark.django_db(transaction=True)
def test_paper_bot_through_the_worker_gives_exactly_the_backtest_trades(
    user_factory, celery_worker, capsys
):
    instrument = instrument_with_exchange()
    candles = walk(160, seed=23)
    store(instrument, candles, slice(0, WARMUP))
    bot = make_bot(user_factory(), instrument, parameters=PARAMS,
                   stop_loss=0.006, take_profit=0.01)  # fmt: skip
    assert BotManager().start_bot(bot.pk)
    collector = DataCollector()
    for i in range(WARMUP, 160):
        (close_ms,) = store(instrument, candles, slice(i, i + 1))
        collector.send_signal_to_bots({
            "instrument_id": instrument.pk, "symbol": instrument.symbol, "timeframe": "1m",
            "candle": {k: candles[k][i] for k in candles},
        })  # fmt: skip
        eventually(lambda c=close_ms: processed_up_to(bot, c), timeout=60,
                   message=f"the worker processes {close_ms}")  # fmt: skip

    assert Signal.objects.filter(bot=bot).count() == 160 - WARMUP
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1m")
    assert len(frame) == 160
    backtest = run_backtest(frame, "sma_crossover", PARAMS, **bot.engine_options())
    closed = backtest.trades[backtest.trades["exit_reason"] != "open"]
    trades = list(Trade.objects.filter(bot=bot).order_by("exit_time"))
    assert len(trades) == len(closed) > 3
    assert [(t.entry_time, t.exit_time, t.exit_reason) for t in trades] == [
        (r.entry_time, r.exit_time, r.exit_reason) for r in closed.itertuples()
    ]
    bot.refresh_from_db()
    book = paper.PaperBook.from_dict(bot.paper_book)
    assert book.equity(float(candles["close"][-1])) == backtest.equity.iloc[-1]
    call_command("parity_check", str(bot.pk))
    assert "PARITY OK" in capsys.readouterr().out


@pytest.mark.django_db(transaction=True)
def test_redelivered_task_decides_and_orders_once(user_factory, celery_worker):
    instrument = instrument_with_exchange("ETH/USDT")
    candles = walk(120, seed=5)
    store(instrument, candles, slice(0, HISTORY))
    bot = make_bot(user_factory(), instrument)
    assert BotManager().start_bot(bot.pk)
    times = store(instrument, candles, slice(HISTORY, 120))
    # The same candle delivered many times (and out of order), to a real worker.
    results = [process_candle_task.delay(instrument.pk, "1m", times[-1]) for _ in range(3)]
    results += [process_candle_task.delay(instrument.pk, "1m", t) for t in times[::10]]
    eventually(lambda: processed_up_to(bot, times[-1]), timeout=60, message="caught up")
    eventually(lambda: all(r.ready() for r in results), timeout=60, message="all tasks ran")
    assert Signal.objects.filter(bot=bot).count() == len(times)
    ids = list(Order.objects.filter(bot=bot).values_list("client_order_id", flat=True))
    assert ids and len(ids) == len(set(ids))
    sides_per_candle = Order.objects.filter(bot=bot, reason="signal").values_list("time", flat=True)
    assert len(list(sides_per_candle)) == len(set(sides_per_candle))
