"""Candle processing in this process: decision log, idempotency, catch-up, risk rules, events,
and the parity check against the backtest engine."""

from __future__ import annotations

import json

import pytest
from django.core.management import CommandError, call_command

from backtests.engine import run_backtest
from bots import paper, services
from bots.manager import BotManager
from bots.models import Bot, BotEvent, Fill, Order, Signal, Trade
from bots.parity import parity_check
from marketdata.selectors import candles_frame
from marketdata.services import ms_to_datetime
from strategies.base import Action
from strategies.base import Signal as StrategySignal
from strategies.registry import get_strategy
from tests.bots.support import instrument_with_exchange, make_bot, store, walk
from tests.support import eventually

HISTORY = 40


@pytest.fixture
def instrument(db):
    return instrument_with_exchange()


@pytest.fixture
def candles(instrument):
    data = walk(400, seed=11)
    store(instrument, data, slice(0, HISTORY))
    return data


def started(user, instrument, **overrides):
    bot = make_bot(user, instrument, **overrides)
    assert BotManager().start_bot(bot.pk)
    bot.refresh_from_db()
    return bot


def feed(instrument, candles, rows: slice, manager=None):
    """Store each candle of ``rows`` and process it at once, as the collector would."""
    manager = manager or BotManager()
    for close_ms in store(instrument, candles, rows):
        manager.process_candle(instrument.pk, "1m", close_ms)


def test_every_candle_is_decided_once_and_redelivery_trades_nothing(user, instrument, candles):
    bot = started(user, instrument)
    feed(instrument, candles, slice(HISTORY, 200))
    assert Signal.objects.filter(bot=bot).count() == 160
    orders = Order.objects.filter(bot=bot).count()
    assert orders > 4 and Fill.objects.filter(bot=bot).count() >= orders - 1
    # Redelivered / replayed candles, newest and older: nothing new.
    manager = BotManager()
    last_ms = int(candles["timestamp"][199])
    for close_ms in (last_ms, last_ms, int(candles["timestamp"][150])):
        assert manager.process_candle(instrument.pk, "1m", close_ms)["signals"] == 0
    assert Signal.objects.filter(bot=bot).count() == 160
    assert Order.objects.filter(bot=bot).count() == orders
    # The seed's process_signal on a decided candle returns the stored decision.
    decided = Signal.objects.filter(bot=bot).order_by("-time").first()
    again = manager.process_signal(
        bot.pk, StrategySignal(action=Action.BUY, price=100.0, time=decided.time)
    )
    assert again.pk == decided.pk and Order.objects.filter(bot=bot).count() == orders
    # The decision log explains every signal without an order.
    for row in Signal.objects.filter(bot=bot, executed=False):
        assert row.no_order_reason
    for row in Signal.objects.filter(bot=bot, executed=True):
        assert row.action in ("BUY", "SELL") and row.risk_checks and not row.no_order_reason
        assert all(check["passed"] for check in row.risk_checks)
    assert parity_check(bot).ok


def test_catch_up_after_downtime_processes_missed_candles_in_order(user, instrument, candles):
    bot = started(user, instrument, stop_loss=0.01, take_profit=0.02)
    feed(instrument, candles, slice(HISTORY, 100))
    # Down: 150 candles arrive and nobody processes them; one wake-up catches up on all.
    store(instrument, candles, slice(100, 250))
    counts = BotManager().process_candle(instrument.pk, "1m", int(candles["timestamp"][249]))
    assert counts["candles"] == counts["signals"] == 150
    times = list(Signal.objects.filter(bot=bot).order_by("time").values_list("time", flat=True))
    assert times == [ms_to_datetime(int(t)) for t in candles["timestamp"][HISTORY:250]]
    report = parity_check(bot)
    assert report.ok, report.lines()
    assert report.bot_fills == report.backtest_fills > 4
    # Restart after a stop: the bot catches up from where it stopped.
    BotManager().stop_bot(bot.pk)
    store(instrument, candles, slice(250, 300))
    BotManager().start_bot(bot.pk)
    BotManager().process_candle(instrument.pk, "1m", int(candles["timestamp"][299]))
    assert Signal.objects.filter(bot=bot).count() == 260


def test_paper_trades_equal_run_backtest(user, instrument):
    candles = walk(400, seed=11)
    params = {"fast": 3, "slow": 8}
    # History of exactly the warm-up: no bar before the bot's start can carry a signal, so the
    # backtest of the whole stored series is the one to equal.
    warmup = get_strategy("sma_crossover").warmup(params)
    store(instrument, candles, slice(0, warmup))
    bot = started(user, instrument, parameters=params, trailing_stop=0.008,
                  max_position_fraction=0.7)  # fmt: skip
    feed(instrument, candles, slice(warmup, 400))
    frame = candles_frame(instrument_id=instrument.pk, timeframe="1m")
    backtest = run_backtest(frame, "sma_crossover", params, **bot.engine_options())
    expected = backtest.trades
    closed = expected[expected["exit_reason"] != "open"]
    trades = list(Trade.objects.filter(bot=bot).order_by("exit_time"))
    assert len(trades) == len(closed) > 5
    for ours, theirs in zip(trades, closed.itertuples(), strict=True):
        assert ours.entry_time == theirs.entry_time and ours.exit_time == theirs.exit_time
        assert ours.exit_reason == theirs.exit_reason
        # Decimal columns keep 15 significant digits on SQLite; the book below is exact.
        assert float(ours.entry_price) == pytest.approx(theirs.entry_price, rel=1e-14)
        assert float(ours.exit_price) == pytest.approx(theirs.exit_price, rel=1e-14)
        assert float(ours.quantity) == pytest.approx(theirs.size, rel=1e-14)
        assert float(ours.pnl) == pytest.approx(theirs.pnl, rel=1e-12, abs=1e-12)
    assert {t.exit_reason for t in trades} >= {"signal", "trailing_stop"}
    # The paper book (exact floats) ends on the backtest's final equity, bit for bit.
    bot.refresh_from_db()
    book = paper.PaperBook.from_dict(bot.paper_book)
    assert book.equity(float(candles["close"][399])) == backtest.equity.iloc[-1]


def test_parity_check_command_reports_and_fails_on_a_mismatch(user, instrument, candles, capsys):
    bot = started(user, instrument)
    feed(instrument, candles, slice(HISTORY, 200))
    call_command("parity_check", str(bot.pk))
    assert "PARITY OK" in capsys.readouterr().out
    fill = Fill.objects.filter(bot=bot).order_by("time").first()
    Fill.objects.filter(pk=fill.pk).update(price=fill.price * 2)
    with pytest.raises(CommandError, match="1 fill mismatch"):
        call_command("parity_check", str(bot.pk))
    assert "PARITY MISMATCH" in capsys.readouterr().out


def test_stop_loss_exits_inside_the_candle_as_a_stop_order(user, instrument, candles):
    bot = started(user, instrument, stop_loss=0.003)
    feed(instrument, candles, slice(HISTORY, 400))
    stops = Order.objects.filter(bot=bot, type=Order.Type.STOP)
    assert stops.exists()
    for order in stops:
        assert order.status == Order.Status.FILLED and order.client_order_id.endswith("sl")
        trade = Trade.objects.get(exit_order=order)
        assert trade.exit_reason == "stop_loss" and trade.exit_time == order.time
    assert parity_check(bot).ok


def test_cooldown_after_a_loss_refuses_entries_and_says_why(user, instrument, candles):
    bot = started(user, instrument, stop_loss=0.003, cooldown_candles=30)
    feed(instrument, candles, slice(HISTORY, 400))
    refused = Signal.objects.filter(bot=bot, action="BUY", executed=False,
                                    no_order_reason__startswith="cooldown:")  # fmt: skip
    assert refused.exists()
    for row in refused:
        assert {"name": "cooldown", "passed": False} == {
            k: v
            for k, v in next(c for c in row.risk_checks if c["name"] == "cooldown").items()
            if k != "detail"
        }
    # Each refused entry follows a losing trade within the cooldown.
    for row in refused:
        loss = Trade.objects.filter(bot=bot, pnl__lt=0, exit_time__lte=row.time).last()
        assert loss is not None and (row.time - loss.exit_time).total_seconds() < 30 * 60
    # The parity report names the rule behind the difference.
    report = parity_check(bot)
    assert not report.ok and any("cooldown" in line for line in report.fill_mismatches)


def test_max_daily_loss_pauses_the_bot(user, instrument, candles):
    bot = started(user, instrument, max_daily_loss=0.002, stop_loss=0.01)
    feed(instrument, candles, slice(HISTORY, 400))
    bot.refresh_from_db()
    assert bot.status == Bot.Status.PAUSED and "daily loss limit" in bot.status_reason
    event = BotEvent.objects.get(bot=bot, kind=BotEvent.Kind.PAUSED)
    assert event.data == {"from": "running", "to": "paused"}
    decided = Signal.objects.filter(bot=bot).count()
    assert decided < 360  # it stopped deciding once paused
    BotManager().process_candle(instrument.pk, "1m", int(candles["timestamp"][399]))
    assert Signal.objects.filter(bot=bot).count() == decided


def test_exposure_budget_across_bots(user, instrument, candles):
    from bots.models import RiskBudget

    RiskBudget.objects.create(owner=user, max_exposure=12_000)
    first = started(user, instrument, name="a", parameters={"fast": 3, "slow": 8})
    second = started(user, instrument, name="b", parameters={"fast": 2, "slow": 6})
    feed(instrument, candles, slice(HISTORY, 400))
    refused = Signal.objects.filter(bot__in=[first, second],
                                    no_order_reason__startswith="exposure:")  # fmt: skip
    assert refused.exists()
    check = next(c for c in refused.first().risk_checks if c["name"] == "exposure")
    assert check["passed"] is False and "budget 12000.00" in check["detail"]


@pytest.mark.django_db(transaction=True)
def test_events_are_published_after_commit(user_factory, redis_server):
    from tradeapp.redis_client import get_redis

    instrument = instrument_with_exchange()
    data = walk(200, seed=11)
    store(instrument, data, slice(0, HISTORY))
    bot = started(user_factory(), instrument)
    pubsub = get_redis().pubsub()
    pubsub.subscribe(f"bot_signals:{bot.pk}", f"trade_updates:{bot.pk}", "system_events")
    confirmed = []
    eventually(
        lambda: (
            (message := pubsub.get_message(timeout=0.1)) is not None
            and confirmed.append(message["channel"]) is None
            and len(confirmed) == 3
        ),
        message="the three subscriptions are confirmed",
    )
    feed(instrument, data, slice(HISTORY, 200))
    BotManager().stop_bot(bot.pk)
    seen: dict[str, set[str]] = {}

    def collect():
        while (message := pubsub.get_message(timeout=0.1)) is not None:
            if message["type"] == "message":
                event = json.loads(message["data"])
                seen.setdefault(event["channel"], set()).add(event["type"])
        return "bot.stopped" in seen.get("system_events", set())

    eventually(collect, timeout=10, message="the stop event arrives")
    pubsub.close()
    assert seen[f"bot_signals:{bot.pk}"] >= {"signal.created", "bot.status"}
    assert seen[f"trade_updates:{bot.pk}"] >= {
        "order.updated", "fill.created", "trade.closed", "portfolio.updated",
    }  # fmt: skip
    assert services.signal_event(Signal.objects.filter(bot=bot).first())["bot_id"] == bot.pk


def test_a_paper_bot_with_the_fee_in_the_coin_bought_equals_its_backtest(user, instrument, candles):
    bot = started(user, instrument, fee_in_base=True, stop_loss=0.01)
    feed(instrument, candles, slice(HISTORY, 250))
    buys = list(Fill.objects.filter(bot=bot, side="buy"))
    sells = list(Fill.objects.filter(bot=bot, side="sell"))
    assert len(buys) > 3 and sells
    # The buy's fee is taken from the coin: in BTC, worth its value at the fill.
    assert {f.fee_currency for f in buys} == {"BTC"} and {f.fee_currency for f in sells} == {"USDT"}
    for fill in buys:
        assert float(fill.fee_cost * fill.price) == pytest.approx(float(fill.fee), rel=1e-12)
    report = parity_check(bot)
    assert report.ok, report.lines()
    assert report.bot_fills == report.backtest_fills
    # The same bot's fills against a backtest with the fee in quote: the entries differ.
    Bot.objects.filter(pk=bot.pk).update(fee_in_base=False)
    bot.refresh_from_db()
    assert not parity_check(bot).ok
