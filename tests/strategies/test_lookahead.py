"""No lookahead: a signal or indicator at bar i never depends on bars after i."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies.base import BaseStrategy, Parameter, StrategyParameterError
from strategies.builtin import BUILTIN_STRATEGIES
from strategies.lookahead import check_lookahead, random_walk_ohlcv
from tests.strategies.user_strategies import CloseAboveSMA, PeekAhead

# Upper bound for drawn periods, so the warm-up stays well inside the random data.
MAX_PERIOD = 40


def parameters_for(cls: type[BaseStrategy]) -> st.SearchStrategy[dict]:
    """Valid parameter dicts of ``cls`` drawn from its declared bounds (periods capped)."""
    fields = {}
    for spec in cls.parameter_specs:
        if spec.type is int:
            fields[spec.name] = st.integers(int(spec.minimum), min(int(spec.maximum), MAX_PERIOD))
        else:
            fields[spec.name] = st.floats(spec.minimum, spec.maximum)

    def valid(params: dict) -> bool:
        try:
            cls.clean_parameters(params)
        except StrategyParameterError:
            return False
        return True

    return st.fixed_dictionaries(fields).filter(valid)


def ohlcv_data(draw_seed: int, bars: int, tick: float | None) -> pd.DataFrame:
    data = random_walk_ohlcv(bars, seed=draw_seed, volatility=4e-3, price=100.0)
    if tick:
        # Prices on a tick grid make equal values (touches, flat windows) common.
        prices = ["open", "high", "low", "close"]
        data[prices] = (data[prices] / tick).round() * tick
    return data


@pytest.mark.parametrize("cls", BUILTIN_STRATEGIES.values(), ids=lambda c: c.name)
def test_builtin_has_no_lookahead(cls: type[BaseStrategy]) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )
    @given(
        params=parameters_for(cls),
        seed=st.integers(0, 2**32 - 1),
        bars=st.integers(2 * MAX_PERIOD + 20, 260),
        tick=st.sampled_from([None, 0.1, 0.5]),
    )
    def no_lookahead(params: dict, seed: int, bars: int, tick: float | None) -> None:
        report = check_lookahead(cls, params, ohlcv_data(seed, bars, tick), n_cuts=6, seed=seed)
        assert report.ok, report.summary()

    no_lookahead()


def test_check_lookahead_catches_a_strategy_reading_the_next_close() -> None:
    report = check_lookahead(PeekAhead, {}, random_walk_ohlcv(300), n_cuts=10)
    assert not report.ok
    checks = {v.check for v in report.violations}
    assert checks == {"truncated", "perturbed"}
    assert all(v.output == "signals" and v.bar <= v.cut for v in report.violations)
    assert report.summary().startswith("FAIL peek_ahead {}: 1 outputs (signals)")
    assert "it looks ahead" in report.summary()


class _NormalisedByTheWholeSeries(BaseStrategy):
    """Looks ahead subtly: the signal is honest, the indicator is scaled by the series' max."""

    name = "whole_series_scale"
    parameter_specs = (Parameter("n", int, 5, minimum=2),)

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return parameters["n"]

    @classmethod
    def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict) -> dict:
        close = ohlcv["close"]
        return {"scaled": (close.rolling(parameters["n"]).mean() / close.max()).to_numpy()}

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
        return np.zeros(len(ohlcv), dtype=np.int8)


def test_check_lookahead_catches_an_indicator_using_later_bars() -> None:
    report = check_lookahead(_NormalisedByTheWholeSeries, None, random_walk_ohlcv(300), n_cuts=8)
    assert not report.ok
    assert {v.output for v in report.violations} == {"indicator scaled"}


def test_check_lookahead_passes_an_honest_user_strategy() -> None:
    report = check_lookahead(CloseAboveSMA, {"n": 7}, random_walk_ohlcv(300), n_cuts=10)
    assert report.ok, report.summary()
    assert report.outputs == ("signals", "indicator sma")
    assert report.parameters == {"n": 7}
    # The first bar that may signal and the last possible cut are always among the cuts.
    assert {7, 298} <= set(report.cuts)
    assert report.summary().startswith("PASS close_above_sma {'n': 7}")


def test_check_lookahead_validates_parameters_first() -> None:
    with pytest.raises(StrategyParameterError):
        check_lookahead(BUILTIN_STRATEGIES["sma_crossover"], {"fast": 0}, random_walk_ohlcv(50))


def test_random_walk_ohlcv_is_consistent_and_reproducible() -> None:
    data = random_walk_ohlcv(500, seed=3)
    assert data.equals(random_walk_ohlcv(500, seed=3))
    assert not data.equals(random_walk_ohlcv(500, seed=4))
    assert (data["high"] >= data[["open", "close"]].max(axis=1)).all()
    assert (data["low"] <= data[["open", "close"]].min(axis=1)).all()
    assert (data["open"].iloc[1:].to_numpy() == data["close"].iloc[:-1].to_numpy()).all()
    assert str(data.index.tz) == "UTC"
    assert (data.index.to_series().diff().iloc[1:] == pd.Timedelta(minutes=1)).all()
