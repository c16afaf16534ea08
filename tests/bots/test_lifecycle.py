"""BotManager lifecycle: start/stop idempotence and races, live refusal, parameter validation,
state updates, kill switch."""

from __future__ import annotations

import itertools
import threading

import pytest
from django.db import connection
from django.test import override_settings

from bots import services
from bots.manager import BotManager
from bots.models import Bot, BotEvent, ExchangeAccount, Order, RiskBudget
from strategies.base import StrategyParameterError
from strategies.registry import UnknownStrategyError
from tests.bots.support import MINUTE, START_MS, instrument_with_exchange, make_bot, store, walk


@pytest.fixture
def instrument(db):
    inst = instrument_with_exchange()
    store(inst, walk(50, seed=1), slice(0, 50))
    return inst


def events(bot, kind):
    return BotEvent.objects.filter(bot=bot, kind=kind).count()


def test_bot_create_validates_parameters_naming_the_parameter(user, instrument):
    with pytest.raises(StrategyParameterError, match="'slow'") as exc:
        make_bot(user, instrument, parameters={"fast": 3, "slow": 1})
    assert exc.value.parameter == "slow"
    with pytest.raises(StrategyParameterError, match="'speed'"):
        make_bot(user, instrument, parameters={"speed": 3})
    with pytest.raises(UnknownStrategyError, match="available"):
        make_bot(user, instrument, strategy="nope")
    bot = make_bot(user, instrument, parameters={"fast": 4})
    assert bot.parameters == {"fast": 4, "slow": 30}
    assert bot.mode == Bot.Mode.PAPER and bot.status == Bot.Status.STOPPED
    assert bot.paper_book["cash"] == 10_000.0 and events(bot, "created") == 1


def test_start_twice_and_stop_twice_change_once(user, instrument):
    manager = BotManager()
    bot = make_bot(user, instrument)
    assert manager.start_bot(bot.pk) is True
    assert manager.start_bot(bot.pk) is False
    assert bot.pk in manager.active_bots
    bot.refresh_from_db()
    assert bot.status == Bot.Status.RUNNING
    # A first start begins after the newest stored candle: history is not traded.
    assert bot.last_processed_at.timestamp() * 1000 == START_MS + 50 * MINUTE
    assert manager.stop_bot(bot.pk) is True
    assert manager.stop_bot(bot.pk) is False
    assert bot.pk not in manager.active_bots
    bot.refresh_from_db()
    assert bot.status == Bot.Status.STOPPED
    assert events(bot, "started") == 1 and events(bot, "stopped") == 1


@pytest.mark.django_db(transaction=True)
def test_racing_starts_and_stops_leave_one_consistent_state(user_factory):
    inst = instrument_with_exchange()
    bot = make_bot(user_factory(), inst)
    barrier = threading.Barrier(8)
    results: list[tuple[str, bool]] = []
    errors: list[BaseException] = []

    def run(kind: str) -> None:
        try:
            barrier.wait()
            call = services.bot_start if kind == "start" else services.bot_stop
            results.append((kind, call(bot_id=bot.pk)))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(k,)) for k in ["start", "stop"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    bot.refresh_from_db()
    starts = events(bot, "started")
    stops = events(bot, "stopped")
    # Each audit row is one real change, and the changes alternate from stopped.
    assert starts == sum(1 for k, changed in results if k == "start" and changed)
    assert stops == sum(1 for k, changed in results if k == "stop" and changed)
    assert starts >= 1
    assert bot.status == (Bot.Status.RUNNING if starts > stops else Bot.Status.STOPPED)
    assert starts - stops in (0, 1)
    kinds = list(
        BotEvent.objects.filter(bot=bot, kind__in=["started", "stopped"])
        .order_by("id").values_list("kind", flat=True)
    )  # fmt: skip
    assert all(a != b for a, b in itertools.pairwise(kinds)), kinds


def test_live_mode_is_refused_unless_enabled(user, instrument):
    from marketdata.models import Exchange

    account = ExchangeAccount.objects.create(
        owner=user, exchange=Exchange.objects.get(ccxt_id="simulated"), label="main"
    )
    bot = make_bot(user, instrument, mode=Bot.Mode.LIVE, account=account)
    with pytest.raises(services.BotStateError, match="TRADEAPP_LIVE_TRADING"):
        BotManager().start_bot(bot.pk)
    with override_settings(TRADEAPP_LIVE_TRADING=True):
        # Allowed by the setting, but the account's exchange is no ccxt exchange: refused.
        with pytest.raises(services.BotStateError, match="not a ccxt exchange"):
            BotManager().start_bot(bot.pk)
    bot.refresh_from_db()
    assert bot.status == Bot.Status.STOPPED and events(bot, "started") == 0


def test_update_bot_state_validates_and_audits(user, instrument):
    manager = BotManager()
    bot = make_bot(user, instrument)
    with pytest.raises(ValueError, match="cannot update cash"):
        manager.update_bot_state(bot.pk, {"cash": 5})
    with pytest.raises(StrategyParameterError, match="'fast'"):
        manager.update_bot_state(bot.pk, {"parameters": {"fast": 0}})
    bot = manager.update_bot_state(
        bot.pk, {"parameters": {"fast": 2, "slow": 5}, "stop_loss": 0.02}
    )
    assert bot.parameters == {"fast": 2, "slow": 5} and bot.stop_loss == 0.02
    assert events(bot, "state_updated") == 1
    bot = manager.update_bot_state(bot.pk, {"status": "running"})
    assert bot.status == Bot.Status.RUNNING and events(bot, "started") == 1
    bot = manager.update_bot_state(bot.pk, {"status": "paused", "status_reason": "lunch"})
    assert bot.status == Bot.Status.PAUSED and events(bot, "paused") == 1


def test_kill_switch_stops_bots_cancels_orders_and_blocks_starts(user, user_factory, instrument):
    manager = BotManager()
    mine = [make_bot(user, instrument, name=f"b{i}") for i in range(3)]
    other = make_bot(user_factory(), instrument, name="other")
    for bot in [*mine[:2], other]:
        manager.start_bot(bot.pk)
    order = Order.objects.create(
        bot=mine[0], client_order_id="tb-test-1", side="buy", status=Order.Status.OPEN,
        time=mine[0].created_at,
    )  # fmt: skip
    result = manager.kill_switch(user)
    assert result == {"bots_stopped": 2, "orders_cancelled": 1}
    order.refresh_from_db()
    assert order.status == Order.Status.CANCELLED
    assert set(Bot.objects.filter(owner=user).values_list("status", flat=True)) == {"stopped"}
    assert Bot.objects.get(pk=other.pk).status == Bot.Status.RUNNING
    assert BotEvent.objects.filter(bot__owner=user, kind="kill_switch").count() == 2
    with pytest.raises(services.BotStateError, match="kill switch"):
        manager.start_bot(mine[0].pk)
    assert services.kill_switch_release(user=user) is True
    assert RiskBudget.objects.get(owner=user).kill_switch_at is None
    assert manager.start_bot(mine[0].pk) is True
