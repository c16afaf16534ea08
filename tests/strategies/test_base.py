"""BaseStrategy, Signal, Parameter and OHLCV validation."""

from __future__ import annotations

import json
import math
import textwrap
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from strategies.base import (
    Action,
    BaseStrategy,
    OHLCVError,
    Parameter,
    Signal,
    StrategyParameterError,
    ema_settle_bars,
    ohlcv_arrays,
    validate_ohlcv,
)
from strategies.builtin import MACDCrossover, RSIReversion, SMACrossover
from tests.strategies.conftest import frame_from_close
from tests.strategies.user_strategies import CloseAboveSMA

# -- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "parameters, name, message",
    [
        ({"fast": "10"}, "fast", "must be an integer, got str '10'"),
        ({"fast": 10.5}, "fast", "must be an integer"),
        ({"fast": True}, "fast", "must be an integer"),
        ({"fast": None}, "fast", "must be an integer"),
        ({"fast": 0}, "fast", "must be >= 1, got 0"),
        ({"slow": 5000}, "slow", "must be <= 1000, got 5000"),
        ({"fats": 5}, "fats", "unknown parameter; sma_crossover takes fast, slow"),
        ({"fast": 30, "slow": 30}, "fast", "fast (30) must be less than slow (30)"),
        ({"fast": 40}, "fast", "fast (40) must be less than slow (30)"),
    ],
)
def test_clean_parameters_names_the_bad_parameter(parameters, name, message) -> None:
    with pytest.raises(StrategyParameterError) as caught:
        SMACrossover(parameters)
    assert caught.value.parameter == name
    assert caught.value.strategy == "sma_crossover"
    assert message in str(caught.value)
    assert str(caught.value).startswith(f"sma_crossover: parameter {name!r}: ")
    assert isinstance(caught.value, ValueError)


def test_clean_parameters_rejects_a_non_mapping() -> None:
    with pytest.raises(StrategyParameterError, match="must be a JSON object") as caught:
        SMACrossover.clean_parameters([("fast", 5)])
    assert caught.value.parameter is None


def test_clean_parameters_fills_defaults_and_coerces() -> None:
    assert SMACrossover({"fast": 5.0}).parameters == {"fast": 5, "slow": 30}
    assert isinstance(SMACrossover({"fast": np.int64(5)}).parameters["fast"], int)
    cleaned = RSIReversion.clean_parameters({"oversold": 25})
    assert cleaned == {"period": 14, "oversold": 25.0, "overbought": 70.0}
    assert isinstance(cleaned["oversold"], float)


def test_clean_parameters_checks_float_parameters() -> None:
    with pytest.raises(StrategyParameterError, match="finite") as caught:
        RSIReversion.clean_parameters({"oversold": math.nan})
    assert caught.value.parameter == "oversold"
    with pytest.raises(StrategyParameterError) as caught:
        RSIReversion.clean_parameters({"oversold": 50, "overbought": 50})
    assert caught.value.parameter == "oversold"  # a valid pair of bounds, but not in order


def test_parameter_rejects_an_invalid_declaration() -> None:
    with pytest.raises(ValueError, match="invalid default"):
        Parameter("n", int, default=0, minimum=1)
    with pytest.raises(TypeError, match="type must be"):
        Parameter("n", list, default=[])
    with pytest.raises(ValueError, match="minimum exceeds maximum"):
        Parameter("n", int, default=1, minimum=5, maximum=2)
    with pytest.raises(ValueError, match="identifier"):
        Parameter("bad name", int, default=1)
    with pytest.raises(ValueError, match="needs a whole step"):
        Parameter("n", int, default=1, minimum=1, maximum=9, step=2.5)
    with pytest.raises(ValueError, match="positive number"):
        Parameter("x", float, default=1.0, step=0.0)
    with pytest.raises(StrategyParameterError, match="positive number"):
        SMACrossover.search_space(steps={"slow": -5})


def test_parameter_bool_and_choices() -> None:
    flag = Parameter("long_only", bool, default=False, help="never sell short")
    assert flag.clean(True) is True
    with pytest.raises(StrategyParameterError, match="true or false"):
        flag.clean(1)
    mode = Parameter("mode", str, default="close", choices=("close", "hl2"))
    assert mode.clean("hl2") == "hl2"
    with pytest.raises(StrategyParameterError, match="one of 'close', 'hl2'"):
        mode.clean("open")
    assert flag.grid() == [False, True]
    assert mode.grid() == ["close", "hl2"]


def test_parameter_schema_is_json_native() -> None:
    schema = SMACrossover.parameter_schema()
    assert json.loads(json.dumps(schema)) == schema
    assert schema[0] == {
        "name": "fast",
        "type": "int",
        "default": 10,
        "minimum": 1,
        "maximum": 500,
        "step": 5,
        "help": "Fast SMA length, in candles; must be less than slow.",
        "choices": None,
    }
    json_schema = RSIReversion.json_schema()
    assert json_schema["type"] == "object"
    assert json_schema["additionalProperties"] is False
    assert json_schema["properties"]["oversold"] == {
        "type": "number",
        "title": "oversold",
        "default": 30.0,
        "description": "Buy when the RSI rises above this level from at or below it.",
        "minimum": 1.0,
        "maximum": 50.0,
        "x-step": 5.0,
    }
    described = MACDCrossover.describe()
    assert json.loads(json.dumps(described)) == described
    assert described["warmup"] == 26 + 9 - 1
    assert "Warm-up" in described["description"]


def test_search_space_is_a_grid_within_bounds() -> None:
    space = SMACrossover.search_space()
    assert space["fast"][:3] == [5, 10, 15]
    assert space["fast"][-1] == 500
    assert space["slow"][0] == 10
    assert space["slow"][-1] == 1000
    floats = RSIReversion.search_space()["oversold"]
    assert floats == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 50.0]
    narrowed = SMACrossover.search_space({"fast": [5, 10]}, steps={"slow": 250})
    assert narrowed == {"fast": [5, 10], "slow": [250, 500, 750, 1000]}
    with pytest.raises(StrategyParameterError) as caught:
        SMACrossover.search_space({"fast": [0]})
    assert caught.value.parameter == "fast"
    with pytest.raises(StrategyParameterError) as caught:
        SMACrossover.search_space({"speed": [1]})
    assert caught.value.parameter == "speed"


def test_parameter_grid_skips_combinations_that_break_a_rule() -> None:
    grid = list(SMACrossover.parameter_grid({"fast": [5, 20, 40], "slow": [10, 30]}))
    assert grid == [
        {"fast": 5, "slow": 10},
        {"fast": 5, "slow": 30},
        {"fast": 20, "slow": 30},
    ]


def test_ema_settle_bars_makes_the_seed_negligible() -> None:
    bars = ema_settle_bars(0.1)
    assert 0.9**bars <= 2.0**-53 < 0.9 ** (bars - 1)
    assert ema_settle_bars(1.0) == 0
    with pytest.raises(ValueError, match="alpha"):
        ema_settle_bars(0.0)


# -- signals ------------------------------------------------------------------------------------


def test_signal_to_dict_is_json_native() -> None:
    signal = Signal(
        action="BUY",
        price=101.5,
        time=pd.Timestamp("2024-01-01 00:05", tz="UTC"),
        strength=1.0,
        reason="because",
        indicators={"fast": 1.25, "slow": math.nan},
        strategy="sma_crossover",
    )
    assert signal.action is Action.BUY
    assert signal.time == datetime(2024, 1, 1, 0, 5, tzinfo=UTC)
    payload = signal.to_dict()
    assert payload == {
        "action": "BUY",
        "price": 101.5,
        "time": "2024-01-01T00:05:00Z",
        "time_ms": 1_704_067_500_000,
        "strength": 1.0,
        "reason": "because",
        "indicators": {"fast": 1.25, "slow": None},
        "strategy": "sma_crossover",
    }
    assert json.loads(json.dumps(payload, allow_nan=False)) == payload


def test_signal_is_frozen_and_validated() -> None:
    time = datetime(2024, 1, 1, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    signal = Signal(Action.HOLD, 1.0, time)
    assert signal.time == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(AttributeError):
        signal.action = Action.BUY
    with pytest.raises(TypeError):
        signal.indicators["x"] = 1.0
    with pytest.raises(ValueError, match="strength"):
        Signal(Action.BUY, 1.0, time, strength=1.5)
    with pytest.raises(ValueError, match="timezone-aware"):
        Signal(Action.BUY, 1.0, datetime(2024, 1, 1))  # noqa: DTZ001 - the point of the test
    with pytest.raises(ValueError):
        Signal("BUY!", 1.0, time)
    assert Action.from_code(-1) is Action.SELL
    assert Action.SELL.code == -1
    assert str(Action.BUY) == "BUY"


# -- OHLCV validation ---------------------------------------------------------------------------


def test_validate_ohlcv_accepts_a_valid_frame_without_copying() -> None:
    frame = frame_from_close([1.0, 2.0, 3.0])
    assert validate_ohlcv(frame) is frame
    assert ohlcv_arrays(frame).close.tolist() == [1.0, 2.0, 3.0]


def test_validate_ohlcv_converts_numeric_columns() -> None:
    frame = frame_from_close([1.0, 2.0, 3.0])
    frame["volume"] = [1, 2, 3]
    validated = validate_ohlcv(frame)
    assert validated["volume"].dtype == np.float64
    assert frame["volume"].dtype != np.float64  # the caller's frame is left alone


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.drop(columns=["volume"]), "lacks column"),
        (lambda f: f.rename(columns=str.upper), "column names are lowercase"),
        (lambda f: f.reset_index(drop=True), "DatetimeIndex"),
        (lambda f: f.tz_localize(None), r"naive: localise it with .tz_localize\('UTC'\)"),
        (lambda f: f.tz_convert("Europe/Berlin"), "Europe/Berlin: convert it"),
        (lambda f: f.iloc[[0, 2, 1]], "out of order"),
        (lambda f: f.iloc[[0, 1, 1, 2]], "a duplicate"),
        (lambda f: f.assign(close=[1.0, math.nan, 3.0]), "'close' holds nan"),
        (lambda f: f.assign(high=["a", "b", "c"]), "'high' is not numeric"),
        (lambda f: f["close"], "must be a pandas DataFrame"),
        (lambda f: pd.concat([f, f[["close"]]], axis=1), "more than one 'close' column"),
    ],
)
def test_validate_ohlcv_explains_what_is_wrong(mutate, message) -> None:
    frame = frame_from_close([1.0, 2.0, 3.0])
    with pytest.raises(OHLCVError, match=message):
        validate_ohlcv(mutate(frame))


def test_generate_signals_validates_its_input() -> None:
    with pytest.raises(OHLCVError, match="naive"):
        SMACrossover.generate_signals(frame_from_close(range(40)).tz_localize(None))
    with pytest.raises(StrategyParameterError):
        SMACrossover.generate_signals(frame_from_close(range(40)), {"fast": 50})


# -- what the base class guarantees to user strategies --------------------------------------------


class _Raw(BaseStrategy):
    """Returns whatever the test puts in ``output``; warm-up 3."""

    name = "raw"
    output: object = None

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return 3

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict):
        return cls.output


def test_generate_signals_output_is_int8_and_zero_during_warmup() -> None:
    frame = frame_from_close([1.0] * 6)
    _Raw.output = pd.Series([1.0, -1.0, 1.0, 1.0, -1.0, 0.0], index=frame.index)
    result = _Raw.generate_signals(frame)
    assert result.dtype == np.int8
    assert result.tolist() == [0, 0, 0, 1, -1, 0]


@pytest.mark.parametrize(
    "output, error, message",
    [
        ([1, 0], ValueError, r"returned shape \(2,\); expected one value per bar \(6,\)"),
        ([0, 0, 0, 0, 2, 0], ValueError, "returned 2 at bar 4"),
        ([0, 0, 0, 0, 0.5, 0], ValueError, "returned 0.5 at bar 4"),
        (["x"] * 6, TypeError, "must return numbers"),
    ],
)
def test_generate_signals_rejects_bad_output(output, error, message) -> None:
    _Raw.output = output
    with pytest.raises(error, match=message):
        _Raw.generate_signals(frame_from_close([1.0] * 6))


def test_base_strategy_is_abstract() -> None:
    class Incomplete(BaseStrategy):
        name = "incomplete"

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    with pytest.raises(TypeError, match="must implement the classmethod generate_signals"):
        Incomplete.generate_signals(frame_from_close([1.0]))


def test_plain_pandas_user_strategy_works_end_to_end() -> None:
    frame = frame_from_close([10, 10, 10, 10, 10, 12, 13, 9, 8, 8])
    signals = CloseAboveSMA.generate_signals(frame, {"n": 3})
    # SMA(3) from bar 2; the close rises above it at bar 5 and falls below at bar 7.
    assert signals.tolist() == [0, 0, 0, 0, 0, 1, 0, -1, 0, 0]
    strategy = CloseAboveSMA({"n": 3})
    signal = strategy.process_data(frame.iloc[:6])
    assert signal.action is Action.BUY
    assert signal.reason.startswith("BUY by the close_above_sma rule")
    assert strategy.get_indicators()["sma"]["pane"] == "price"


def test_process_data_reports_warmup_and_rejects_empty_data() -> None:
    strategy = SMACrossover({"fast": 2, "slow": 4})
    signal = strategy.process_data(frame_from_close([1.0, 2.0, 3.0]))
    assert signal.action is Action.HOLD
    assert signal.strength == 0.0
    assert signal.reason == "warming up: the first signal needs 5 candles, got 3"
    assert math.isnan(signal.indicators["slow_sma"])
    assert signal.to_dict()["indicators"]["slow_sma"] is None
    with pytest.raises(OHLCVError, match="at least one candle"):
        strategy.process_data(frame_from_close([]))


def test_get_indicators_is_empty_before_data_and_aligned_after() -> None:
    strategy = SMACrossover({"fast": 2, "slow": 3})
    assert strategy.get_indicators() == {}
    frame = frame_from_close([1.0, 2.0, 3.0, 4.0])
    strategy.process_data(frame)
    plotted = strategy.get_indicators()
    assert plotted["fast_sma"] == {
        "values": [None, 1.5, 2.5, 3.5],
        "pane": "price",
        "color": "#1f77b4",
    }
    assert plotted["slow_sma"]["values"] == [None, None, 2.0, 3.0]
    assert strategy.last_index.equals(frame.index)
    assert json.loads(json.dumps(plotted)) == plotted


def test_module_docstring_example_is_a_working_strategy() -> None:
    """The how-to in strategies.base's docstring runs as written and passes the checks."""
    import strategies.base as base_module
    from strategies.lookahead import check_lookahead, random_walk_ohlcv

    text = base_module.__doc__.split("numba is optional::")[1].split("What the base class")[0]
    namespace: dict = {"__name__": "docstring_example"}
    exec(compile(textwrap.dedent(text), "strategies.base docstring", "exec"), namespace)
    cls = namespace["CloseAboveSMA"]
    assert cls.name == "close_above_sma"
    data = random_walk_ohlcv(300, seed=5, volatility=5e-3)
    report = check_lookahead(cls, {"n": 20}, data, n_cuts=8)
    assert report.ok, report.summary()
    signals = cls.generate_signals(data, {"n": 20})
    assert (signals == 1).any() and (signals == -1).any()
    assert cls({"n": 20}).process_data(data).action.code == signals[-1]


def test_validate_ohlcv_checks_values_of_the_columns_a_strategy_reads() -> None:
    frame = frame_from_close([1.0, 2.0, 3.0]).assign(volume=[1.0, math.nan, 1.0])
    assert validate_ohlcv(frame, ("close",)) is frame
    with pytest.raises(OHLCVError, match="'volume' holds nan"):
        validate_ohlcv(frame)
    # SMACrossover reads only the close; a user strategy checks all five by default.
    assert SMACrossover.columns == ("close",)
    assert SMACrossover.generate_signals(frame, {"fast": 1, "slow": 2}).tolist() == [0, 0, 0]
    with pytest.raises(OHLCVError, match="'volume' holds nan"):
        CloseAboveSMA.generate_signals(frame, {"n": 2})
    with pytest.raises(OHLCVError, match="lacks column"):
        SMACrossover.generate_signals(frame.drop(columns=["volume"]))


def test_strategy_columns_must_be_ohlcv_columns() -> None:
    with pytest.raises(TypeError, match=r"\['price'\] are not OHLCV columns"):

        class _Wrong(BaseStrategy):
            columns = ("price",)
