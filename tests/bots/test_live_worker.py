"""A live bot through real Celery worker processes: a worker SIGKILLed in the middle of
``bots.process_candle`` (late acks) has its task redelivered to another worker, and the exchange
sees exactly one order; the ``bots.reconcile`` task settles what the killed worker left."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from django_celery_results.models import TaskResult

from bots import services
from bots.live import TEST_PAUSE_ENV
from bots.models import Bot, BotEvent, Order, Signal
from bots.parity import parity_check
from bots.reconcile import reconcile_bot
from bots.tasks import process_candle_task, reconcile_task
from marketdata.models import Candle
from marketdata.selectors import candles_frame
from marketdata.services import ms_to_datetime
from strategies.registry import get_strategy
from tests.bots.live_support import KEY, SECRET, decide, live_bot
from tests.bots.support import make_bot, store, walk
from tests.conftest import start_worker, stop_worker
from tests.exchange_server import FakeBinance
from tests.support import eventually
from tradeapp.celery import app

QUEUE = "bots-live-test"  # only this test's workers consume it (they have the pause hook)
PARAMS = {"fast": 3, "slow": 8}


@pytest.fixture
def server() -> Iterator[FakeBinance]:
    with FakeBinance(history_s=600, live_rate=2) as ex:
        ex.add_account(KEY, SECRET, {"USDT": 50_000})
        yield ex


@pytest.fixture
def live_workers(settings, monkeypatch, redis_server) -> Iterator[list]:
    """Workers started by the test (on QUEUE, live trading on), stopped at its end."""
    settings.TRADEAPP_LIVE_TRADING = True
    settings.TRADEAPP_CELERY_QUEUES = [QUEUE]
    monkeypatch.setenv("TRADEAPP_LIVE_TRADING", "1")
    workers: list = []
    yield workers
    for worker in workers:
        stop_worker(worker)


def first_buy(bot: Bot, candles: dict) -> int:
    """Store candles up to the first one on which the bot's strategy says BUY; its index."""
    store(bot.instrument, candles, slice(0, len(candles["close"])))
    frame = candles_frame(instrument_id=bot.instrument_id, timeframe="1m")
    strategy = get_strategy(bot.strategy)(bot.parameters)
    lookback = type(strategy).lookback(strategy.parameters)
    for j in range(lookback, len(frame)):
        if strategy.process_data(frame.iloc[j - lookback + 1 : j + 1]).action == "BUY":
            Candle.objects.filter(
                instrument=bot.instrument, close_time__gte=frame.index[j]
            ).delete()
            return j
    raise AssertionError("no BUY in the series")


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("point", ["submit", "sent"])
def test_a_worker_killed_mid_candle_leaves_exactly_one_order_on_the_exchange(
    user, server, live_workers, monkeypatch, tmp_path, point
):
    bot = live_bot(user, server, parameters=PARAMS)
    candles = walk(120, seed=11)
    j = first_buy(bot, candles)
    assert services.bot_start(bot_id=bot.pk, notify=False)
    bot.refresh_from_db()
    assert bot.reconciled_at is not None
    (close_ms,) = store(bot.instrument, candles, slice(j, j + 1))

    # "submit": killed with the order row written but not committed; "sent": killed after the
    # exchange answered, before anything was recorded.
    marker = tmp_path / "paused"
    monkeypatch.setenv(TEST_PAUSE_ENV, f"{point}:{marker}")
    first = start_worker()
    live_workers.append(first)
    result = process_candle_task.apply_async((bot.instrument_id, "1m", close_ms), queue=QUEUE)
    pid = int(eventually(lambda: marker.exists() and marker.read_text(), timeout=60,
                         message="the task reaches the pause"))  # fmt: skip
    # The first worker takes no more work from the queue, a second one joins, then the first
    # one's pool process dies mid-task: the message is redelivered to the second.
    assert app.control.cancel_consumer(QUEUE, destination=[first.hostname], reply=True)
    second = start_worker()
    live_workers.append(second)
    os.kill(pid, signal.SIGKILL)

    def done_by_second() -> bool:
        row = TaskResult.objects.filter(task_id=result.id).first()
        return row is not None and row.status == "SUCCESS" and row.worker == second.hostname

    eventually(done_by_second, timeout=90, message=f"redelivered to {second.hostname}")
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING, bot.status_reason
    assert bot.last_processed_at == ms_to_datetime(close_ms)
    (row,) = Signal.objects.filter(bot=bot)
    assert row.action == "BUY" and row.executed
    (order,) = Order.objects.filter(bot=bot)
    if point == "sent":
        # The killed worker had sent it; nobody sends it again. Reconciliation adopts the fill.
        assert order.status == Order.Status.PENDING_SUBMIT
        assert reconcile_bot(bot).settled == 1
        order.refresh_from_db()
    assert order.status == Order.Status.FILLED, order.error
    assert server.order_posts == 1
    (on_exchange,) = server.orders(KEY)
    assert on_exchange["clientOrderId"] == order.client_order_id
    assert order.fills.count() == 1
    assert Path(marker).exists()


@pytest.mark.django_db(transaction=True)
def test_the_reconcile_task_settles_an_unknown_order_on_a_worker(user, server, live_workers):
    bot = live_bot(user, server)
    assert services.bot_start(bot_id=bot.pk, notify=False)
    server.drop_next_order_response(mode="close")

    decide(bot, "BUY", 1)
    order = Order.objects.get(bot=bot)
    assert order.status == Order.Status.UNKNOWN
    live_workers.append(start_worker())
    result = reconcile_task.apply_async(queue=QUEUE)
    assert result.get(timeout=60) == {"bots": 1, "failed": 0}
    order.refresh_from_db()
    assert order.status == Order.Status.FILLED and order.fills.count() == 1
    assert server.order_posts == 1


@pytest.mark.django_db(transaction=True)
def test_live_bots_on_a_base_fee_exchange_trade_in_and_out_through_a_worker(user, live_workers):
    """Three live bots sharing one account on an exchange that takes a buy's fee from the coin
    bought: candles processed by a worker, every order accepted, the bots' coin equal to the
    account's, no balance mismatch, each bot's parity check clean."""
    data = walk(140, seed=5)
    for name in ("open", "high", "low", "close"):
        data[name] = np.round(data[name] * 300, 2)  # about 30,000 USDT, on the 0.01 tick
    with FakeBinance(history_s=600, live_rate=0, symbols=("BTC/USDT",)) as server:
        server.add_account(KEY, SECRET, {"USDT": 50_000}, fee_mode="base")
        first = live_bot(user, server, parameters={"fast": 3, "slow": 8}, fee_in_base=True,
                         capital=5_000, slippage=0.0)  # fmt: skip
        options = {"mode": Bot.Mode.LIVE, "account": first.account, "fee_in_base": True,
                   "capital": 5_000, "slippage": 0.0}  # fmt: skip
        bots = [first] + [
            make_bot(
                user,
                first.instrument,
                name=f"bot {fast}",
                parameters={"fast": fast, "slow": 10},
                **options,
            )
            for fast in (2, 4)
        ]
        store(first.instrument, data, slice(0, 30))
        for bot in bots:
            assert services.bot_start(bot_id=bot.pk, notify=False)
        live_workers.append(start_worker())
        for j in range(30, 139):
            server.set_price("BTC/USDT", Decimal(repr(float(data["open"][j + 1]))))
            (close_ms,) = store(first.instrument, data, slice(j, j + 1))
            result = process_candle_task.apply_async((first.instrument_id, "1m", close_ms),
                                                     queue=QUEUE)  # fmt: skip
            result.get(timeout=60)
        assert reconcile_task.apply_async(queue=QUEUE).get(timeout=60) == {"bots": 3, "failed": 0}
        orders = Order.objects.filter(bot__in=bots)
        assert orders.count() >= 12
        assert orders.exclude(status=Order.Status.FILLED).count() == 0
        assert server.order_posts == orders.count()
        assert all(o["status"] == "FILLED" for o in server.orders(KEY))
        held = 0.0
        for bot in bots:
            bot.refresh_from_db()
            assert bot.status == Bot.Status.RUNNING, bot.status_reason
            held += float(bot.paper_book.get("units", 0.0)) + float(bot.paper_book.get("dust", 0))
            report = parity_check(bot)
            assert report.ok, report.lines()
        assert held == pytest.approx(float(server.total_balance(KEY).get("BTC", 0)), abs=1e-12)
        assert not BotEvent.objects.filter(kind=BotEvent.Kind.BALANCE_MISMATCH).exists()
