"""Stored backtest runs: created by the service, the admin or the command, run by a real worker."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.core.management import CommandError, call_command

from backtests import services
from backtests.models import BacktestRun, RunStatus
from marketdata.models import Exchange
from marketdata.selectors import candles_frame
from marketdata.services import instrument_ensure
from strategies.base import StrategyParameterError
from tests.backtests.support import store_hourly_candles
from tests.factories import StaffUserFactory
from tests.support import eventually

START = datetime(2026, 1, 1, tzinfo=UTC)
HOUR = 3_600_000


@pytest.fixture
def instrument(transactional_db):
    Exchange.objects.create(ccxt_id="simulated", name="Sim", kind="simulated")
    inst = instrument_ensure(exchange_id="simulated", symbol="BTC/USDT")
    store_hourly_candles(inst.pk, start_ms=int(START.timestamp() * 1000), bars=2_000, seed=5)
    return inst


@pytest.fixture
def owner(transactional_db):
    return StaffUserFactory(is_superuser=True)


def create(owner, instrument, **overrides):
    fields = {
        "user": owner, "strategy": "sma_crossover", "parameters": {"fast": 10, "slow": 30},
        "instrument": instrument, "timeframe": "1h", "start": START,
        "end": START + timedelta(days=60),
    } | overrides  # fmt: skip
    return services.backtest_create(**fields)


def test_backtest_runs_in_a_real_worker_and_stores_a_reproducible_result(
    instrument, owner, celery_worker
):
    run = create(owner, instrument)
    assert run.status == RunStatus.QUEUED and run.parameters == {"fast": 10, "slow": 30}
    done = eventually(
        lambda: BacktestRun.objects.filter(pk=run.pk, status__in=["done", "failed"]).first(),
        timeout=120, message="the worker finishes the backtest",
    )  # fmt: skip
    assert done.status == RunStatus.DONE, done.error
    assert done.progress == 1.0 and done.task_id
    assert done.started_at <= done.finished_at

    # The stored result is what the engine gives on the same candles, and the record identifies
    # those candles exactly.
    from backtests.engine import run_backtest

    frame = candles_frame(instrument_id=instrument.pk, timeframe="1h", start=START,
                          end=START + timedelta(days=60))  # fmt: skip
    expected = run_backtest(frame, "sma_crossover", {"fast": 10, "slow": 30})
    assert done.data_bars == len(frame) == 60 * 24
    assert done.data_hash == services.data_hash(frame)
    assert done.data_first == frame.index[0] and done.data_last == frame.index[-1]
    assert done.engine_version and done.strategy_version
    equity = services.unpack_equity(done.equity_blob)
    np.testing.assert_array_equal(equity.to_numpy(), expected.equity.to_numpy())
    trades = services.unpack_trades(done.trades_blob)
    assert len(trades) == done.trades_count == len(expected.trades)
    assert done.metrics["total_return"] == pytest.approx(expected.metrics["total_return"])


def test_backtest_refuses_bad_parameters_and_periods(instrument, owner):
    with pytest.raises(StrategyParameterError, match="slow"):
        create(owner, instrument, parameters={"fast": 30, "slow": 10})
    with pytest.raises(StrategyParameterError, match="speed"):
        create(owner, instrument, parameters={"speed": 3})
    with pytest.raises(ValueError, match="end must be after"):
        create(owner, instrument, end=START)
    assert not BacktestRun.objects.exists()


def test_backtest_without_candles_fails_with_the_reason(instrument, owner):
    run = create(owner, instrument, start=START - timedelta(days=400),
                 end=START - timedelta(days=300), enqueue=False)  # fmt: skip
    services.backtest_execute(run.pk)
    run.refresh_from_db()
    assert run.status == RunStatus.FAILED
    assert "no 1h candles" in run.error


def test_backtest_cancelled_before_it_runs_is_never_executed(instrument, owner):
    run = create(owner, instrument, enqueue=False)
    assert services.run_cancel(run=run) is True
    assert services.backtest_execute(run.pk) is None
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED and run.metrics == {}
    assert services.run_cancel(run=run) is False


def test_backtest_command_prints_metrics(instrument, owner, capsys):
    call_command("backtest", "sma_crossover", "BTC/USDT", "--timeframe", "1h", "--since",
                 "2026-01-01", "--until", "2026-03-01", "--param", "fast=10", "--param",
                 "slow=30", "--local")  # fmt: skip
    out = capsys.readouterr().out
    assert "total_return" in out and "sharpe" in out and "data sha256" in out
    run = BacktestRun.objects.get()
    assert run.status == RunStatus.DONE and run.owner == owner


def test_backtest_command_refuses_bad_input(instrument, owner):
    with pytest.raises(CommandError, match="fast"):
        call_command("backtest", "sma_crossover", "BTC/USDT", "--since", "2026-01-01",
                     "--param", "fast=abc", "--local")  # fmt: skip
    with pytest.raises(CommandError, match="0 instruments"):
        call_command("backtest", "sma_crossover", "DOGE/USDT", "--since", "2026-01-01")
    with pytest.raises(CommandError, match="name=value"):
        call_command("backtest", "sma_crossover", "BTC/USDT", "--since", "2026-01-01",
                     "--param", "fast")  # fmt: skip


def test_backtest_started_from_the_admin_is_queued(instrument, owner, client, settings):
    client.force_login(owner)
    response = client.post("/admin/backtests/backtestrun/add/", {
        "strategy": "sma_crossover", "parameters": '{"fast": 12, "slow": 40}',
        "instrument": instrument.pk, "timeframe": "1h",
        "start_0": "2026-01-01", "start_1": "00:00:00", "end_0": "2026-02-01", "end_1": "00:00:00",
        "cash": "10000", "fee": "0.001", "slippage": "0", "size": "1", "fill": "next_open",
    })  # fmt: skip
    assert response.status_code == 302, re.findall(
        r"errorlist[^<]*<li>([^<]*)", response.content.decode()
    )
    run = BacktestRun.objects.get()
    assert run.owner == owner and run.parameters == {"fast": 12, "slow": 40}
    # Queued on commit (a worker of this session may already have taken it).
    assert run.status in {RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.DONE}
    assert eventually(lambda: BacktestRun.objects.get(pk=run.pk).task_id, timeout=10)
    assert client.get(f"/admin/backtests/backtestrun/{run.pk}/change/").status_code == 200

    bad = client.post("/admin/backtests/backtestrun/add/", {
        "strategy": "sma_crossover", "parameters": '{"fast": 50, "slow": 40}',
        "instrument": instrument.pk, "timeframe": "1h",
        "start_0": "2026-01-01", "start_1": "00:00:00", "end_0": "2026-02-01", "end_1": "00:00:00",
        "cash": "10000", "fee": "0.001", "slippage": "0", "size": "1", "fill": "next_open",
    })  # fmt: skip
    assert bad.status_code == 200 and "slow" in bad.content.decode()
    assert BacktestRun.objects.count() == 1


def test_runs_stored_without_a_broker_are_sent_when_a_worker_starts(instrument, owner):
    """The demo stores its runs before any broker runs (``enqueue=False``): a worker sends them
    when it is ready, each once, however many workers start."""
    from backtests.models import OptimizationRun
    from tests.conftest import start_worker, stop_worker

    run = create(owner, instrument, enqueue=False)
    grid = services.optimization_create(
        user=owner, strategy="sma_crossover", instrument=instrument, timeframe="1h",
        start=START, end=START + timedelta(days=30), method="grid",
        space={"fast": [5, 10], "slow": [20, 30]}, enqueue=False,
    )  # fmt: skip
    assert run.task_id == "" and grid.task_id == ""
    worker = start_worker()
    try:
        done = eventually(
            lambda: BacktestRun.objects.filter(pk=run.pk, status="done").first(),
            timeout=120, message="the new worker sent and ran the stored backtest",
        )  # fmt: skip
        finished = eventually(
            lambda: OptimizationRun.objects.filter(pk=grid.pk, status="done").first(),
            timeout=120, message="the new worker sent and ran the stored optimisation",
        )  # fmt: skip
    finally:
        stop_worker(worker)
    assert done.task_id not in ("", services.SENDING)
    assert finished.task_id not in ("", services.SENDING) and finished.combinations == 4
    assert services.runs_send_unsent() == 0  # nothing left to send, nothing sent twice
