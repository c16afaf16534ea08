"""The strategy engine's core: ``BaseStrategy``, ``Signal``, parameter schemas, OHLCV validation.

Pure: numpy, pandas and numba only, never Django, so a strategy runs the same in a bot, a
backtest, a joblib worker and a notebook.

One code path
-------------
A strategy is one vectorised classmethod, ``generate_signals(ohlcv, parameters)``, that returns
an int8 array with one value per bar: ``+1`` buy, ``-1`` sell, ``0`` hold. The backtester calls
it on the whole history; a bot calls ``process_data(window)``, which calls the very same method on
the window it is given and reports the window's last bar. Since a strategy may not look ahead
(``strategies.lookahead`` checks it), the signal of the last bar of ``data[:i + 1]`` is the
signal of bar ``i`` in the backtest: the two cannot disagree. A bot need not pass the whole
history: ``lookback(parameters)`` candles give the same decision (exactly for rules over finite
windows; for EMA-style smoothing, once its start value has faded below float precision).

A signal of bar ``i`` may use everything known when candle ``i`` closed (its close included),
and nothing later. Signals during the warm-up (bars ``0 .. warmup(parameters) - 1``) are always
0: the base class zeroes them, whatever ``generate_signals`` returned.

Writing your own strategy
-------------------------
Put it in any importable module and list the module in the ``TRADEAPP_STRATEGY_MODULES``
environment variable (comma-separated), e.g. ``TRADEAPP_STRATEGY_MODULES=mybots.strategies``.
Every concrete ``BaseStrategy`` subclass defined in that module with a ``name`` joins the
registry (``strategies.registry``) beside the built-ins: bots, backtests, presets, the admin and
``manage.py check_lookahead`` see it. A name taken by a built-in or another module is refused.
Plain numpy or pandas is enough; numba is optional::

    import numpy as np
    import pandas as pd

    from strategies.base import BaseStrategy, Parameter


    class CloseAboveSMA(BaseStrategy):
        \"\"\"Buy when the close rises above its SMA, sell when it falls below it.\"\"\"

        name = "close_above_sma"  # lowercase letters, digits and _; unique
        parameter_specs = (
            Parameter("n", int, default=50, minimum=2, maximum=500, step=10,
                      help="SMA length in bars"),
        )
        columns = ("close",)  # what it reads (checked for NaN); default: all five
        plots = {"sma": {"pane": "price", "color": "#ff7f0e"}}

        @classmethod
        def warmup(cls, parameters: dict) -> int:
            return parameters["n"]  # bars before the first bar that may signal

        @classmethod
        def compute_indicators(cls, ohlcv: pd.DataFrame, parameters: dict) -> dict:
            sma = ohlcv["close"].rolling(parameters["n"]).mean()
            return {"sma": sma.to_numpy()}

        @classmethod
        def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
            close = ohlcv["close"]
            above = close > close.rolling(parameters["n"]).mean()
            crossed = above.astype(int).diff().fillna(0)  # +1 up, -1 down
            return crossed.to_numpy()

What the base class does around your methods (so you do not have to):

- ``ohlcv`` is validated by ``validate_ohlcv`` before your method sees it: lowercase columns
  ``open high low close volume``, a UTC ``DatetimeIndex`` of candle close times, strictly
  increasing; the columns listed in ``columns`` (default: all five; set it to what you read)
  float64 without NaN. ``parameters`` is the cleaned dict: every declared parameter
  present (defaults filled in), types and bounds checked, then your ``validate_parameters``.
- The signals you return (ndarray or Series; ints, or floats that are whole numbers) are checked
  to be one per bar in ``{-1, 0, 1}``, converted to int8 and zeroed during the warm-up.
- ``compute_indicators`` must return a dict of one-value-per-bar arrays; ``get_indicators`` and
  ``Signal.indicators`` are built from it. It is optional (default: no indicators).
- A strategy whose indicators remember the whole history (an EMA, Wilder smoothing) should
  override ``lookback`` (see its docstring) so that bots fetch enough candles.
- Cross-parameter rules go in ``validate_parameters`` (raise ``StrategyParameterError`` naming the
  parameter). ``explain(decision)`` and ``strength(decision)`` may be overridden to word the
  decision log (see ``Decision``).
- For speed in parameter sweeps (optional): a classmethod ``signals_from_arrays(arrays,
  parameters)`` computing the same signals from ``OHLCVArrays`` (the columns as float64
  arrays) lets a sweep skip the DataFrame per combination; have ``generate_signals`` call it so
  the two cannot differ (the built-ins do). ``releases_gil = True`` says its time is spent in
  ``nogil`` numba kernels, so sweeps run it in threads instead of processes. A classmethod
  ``signals_for_sweep(arrays, parameter_sets)`` may go further: it computes once what the
  parameter sets share (``SMACrossover``: the prefix sums of the closes) and returns a function
  from a batch of parameter sets to their signals, one row each, equal to
  ``signals_from_arrays``'s.

Never use later bars: no ``shift(-k)``, no statistics over the whole series, no centred windows.
``manage.py check_lookahead close_above_sma`` checks it on random data: run it before you trust
a backtest.
"""

from __future__ import annotations

import abc
import enum
import functools
import inspect
import itertools
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd

from strategies.kernels import (
    first_non_finite_nb,
    first_not_increasing_nb,
)

__all__ = [
    "OHLCV_COLUMNS",
    "Action",
    "BaseStrategy",
    "Decision",
    "OHLCVArrays",
    "OHLCVError",
    "Parameter",
    "Signal",
    "StrategyParameterError",
    "ema_settle_bars",
    "fmt",
    "ohlcv_arrays",
    "signals_evaluator",
    "validate_ohlcv",
]

OHLCV_COLUMNS: tuple[str, ...] = ("open", "high", "low", "close", "volume")
PANES: tuple[str, ...] = ("price", "own")
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "utc", "UTC+00:00", "Etc/UCT", "UCT", "Zulu"})


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class StrategyParameterError(ValueError):
    """A parameter value (or the whole parameter dict) is not acceptable to a strategy.

    ``parameter`` names the offending parameter (``None`` when the dict as a whole is wrong, e.g.
    not a mapping), ``strategy`` the strategy's registry name when known.
    """

    def __init__(self, parameter: str | None, message: str, *, strategy: str | None = None):
        self.parameter = parameter
        self.message = message
        self.strategy = strategy or None
        super().__init__(self._text())

    def _text(self) -> str:
        where = f"parameter {self.parameter!r}: " if self.parameter is not None else ""
        return f"{self.strategy}: {where}{self.message}" if self.strategy else where + self.message

    def for_strategy(self, strategy: str) -> StrategyParameterError:
        """The same error, worded for ``strategy`` (its registry name)."""
        return StrategyParameterError(self.parameter, self.message, strategy=strategy)


class OHLCVError(ValueError):
    """OHLCV data is not in the shape strategies take (see ``validate_ohlcv``)."""


# ---------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------

_TYPE_NAMES: dict[type, str] = {int: "int", float: "float", bool: "bool", str: "str"}
_JSON_TYPES: dict[type, str] = {int: "integer", float: "number", bool: "boolean", str: "string"}


@dataclass(frozen=True)
class Parameter:
    """One declared strategy parameter: the single source for validation, API, forms, optimiser.

    ``type`` is ``int``, ``float``, ``bool`` or ``str``. ``minimum``/``maximum`` are inclusive
    bounds (numbers only; ``None`` = unbounded). ``step`` is the spacing of the optimiser's
    default grid (``grid``), not a validation rule. ``choices`` restricts a ``str`` parameter.
    Values are coerced strictly: an int parameter takes ``5`` or ``5.0`` but not ``5.5``,
    ``"5"`` or ``True``; a float parameter takes ints and finite floats.
    """

    name: str
    type: type
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"parameter name must be an identifier, got {self.name!r}")
        if self.type not in _TYPE_NAMES:
            raise TypeError(
                f"parameter {self.name!r}: type must be int, float, bool or str, got {self.type!r}"
            )
        numeric = self.type in (int, float)
        if not numeric and (self.minimum is not None or self.maximum is not None or self.step):
            raise ValueError(f"parameter {self.name!r}: bounds and step need an int or float type")
        if self.choices and self.type is not str:
            raise ValueError(f"parameter {self.name!r}: choices are for str parameters")
        object.__setattr__(self, "choices", tuple(self.choices))
        if (
            self.minimum is not None
            and self.maximum is not None
            and not self.minimum <= self.maximum
        ):
            raise ValueError(f"parameter {self.name!r}: minimum exceeds maximum")
        if self.step is not None:
            self._check_step(self.step, ValueError)
        try:
            object.__setattr__(self, "default", self.clean(self.default))
        except StrategyParameterError as exc:
            raise ValueError(f"parameter {self.name!r}: invalid default: {exc.message}") from None

    def _check_step(self, step: float, error: Callable[[str], Exception]) -> None:
        if isinstance(step, bool) or not isinstance(step, int | float) or not 0 < step < math.inf:
            raise error(f"parameter {self.name!r}: step must be a positive number, got {step!r}")
        if self.type is int and not float(step).is_integer():
            raise error(f"parameter {self.name!r}: an int parameter needs a whole step, got {step}")

    @property
    def type_name(self) -> str:
        return _TYPE_NAMES[self.type]

    def clean(self, value: object) -> Any:
        """``value`` coerced to the parameter's type; ``StrategyParameterError`` if unfit."""
        cleaned = self._coerce(value)
        if self.minimum is not None and cleaned < self.minimum:
            self._fail(f"must be >= {_num(self.minimum)}, got {_num(cleaned)}")
        if self.maximum is not None and cleaned > self.maximum:
            self._fail(f"must be <= {_num(self.maximum)}, got {_num(cleaned)}")
        if self.choices and cleaned not in self.choices:
            self._fail(f"must be one of {', '.join(map(repr, self.choices))}, got {cleaned!r}")
        return cleaned

    def _coerce(self, value: object) -> Any:
        got = f"got {type(value).__name__} {value!r}"
        if self.type is bool:
            if isinstance(value, bool | np.bool_):
                return bool(value)
            self._fail(f"must be true or false, {got}")
        if self.type is str:
            if isinstance(value, str):
                return value
            self._fail(f"must be a string, {got}")
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number):
            self._fail(f"must be {'an integer' if self.type is int else 'a number'}, {got}")
        if self.type is int:
            if isinstance(value, int | np.integer):
                return int(value)
            if math.isfinite(value) and float(value).is_integer():
                return int(value)
            self._fail(f"must be an integer, {got}")
        number = float(value)
        if not math.isfinite(number):
            self._fail(f"must be a finite number, {got}")
        return number

    def _fail(self, message: str) -> None:
        raise StrategyParameterError(self.name, message)

    def describe(self) -> dict:
        """JSON-native description: name, type, default, minimum, maximum, step, help, choices."""
        return {
            "name": self.name,
            "type": self.type_name,
            "default": self.default,
            "minimum": self.minimum,
            "maximum": self.maximum,
            "step": self.step,
            "help": self.help,
            "choices": list(self.choices) or None,
        }

    def to_json_schema(self) -> dict:
        """A JSON Schema (draft 2020-12) property for this parameter, for API docs and forms.

        ``x-step`` carries ``step`` (a UI/optimiser hint, not a validation keyword).
        """
        schema: dict[str, Any] = {
            "type": _JSON_TYPES[self.type],
            "title": self.name,
            "default": self.default,
        }
        if self.help:
            schema["description"] = self.help
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        if self.step is not None:
            schema["x-step"] = self.step
        if self.choices:
            schema["enum"] = list(self.choices)
        return schema

    def grid(self, step: float | None = None) -> list:
        """Default optimiser values: the multiples of ``step`` (or ``self.step``) in the bounds.

        Without bounds or a step (int parameters default to step 1) the grid is ``[default]``;
        a bool gives ``[False, True]``, a str its choices. A bounded range holding no multiple of
        the step gives ``[minimum]``.
        """
        if self.type is bool:
            return [False, True]
        if self.type is str:
            return list(self.choices) or [self.default]
        step = step if step is not None else self.step
        if step is None and self.type is int:
            step = 1
        if step is None or self.minimum is None or self.maximum is None:
            return [self.default]
        self._check_step(step, lambda message: StrategyParameterError(self.name, message))
        first = math.ceil(self.minimum / step - 1e-9)
        last = math.floor(self.maximum / step + 1e-9)
        values = [self.clean(self.type(round(k * step, 10))) for k in range(first, last + 1)]
        return values or [self.clean(self.minimum)]


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# OHLCV input
# ---------------------------------------------------------------------------------------------


class OHLCVArrays(NamedTuple):
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray


# Indexes already found strictly increasing, by id (a weak reference guards against a reused
# id). pandas indexes are immutable, so the check holds for the life of the object: a sweep
# that calls ``generate_signals`` on one frame hundreds of times reads its 1M timestamps once.
_INCREASING: dict[int, weakref.ref] = {}


def _known_increasing(index: pd.DatetimeIndex) -> bool:
    ref = _INCREASING.get(id(index))
    return ref is not None and ref() is index


def _remember_increasing(index: pd.DatetimeIndex) -> None:
    key = id(index)
    try:
        _INCREASING[key] = weakref.ref(index, lambda _ref: _INCREASING.pop(key, None))
    except TypeError:  # an index type without weak references: simply not remembered
        pass


def _check_index(index: pd.Index) -> None:
    if not isinstance(index, pd.DatetimeIndex):
        raise OHLCVError(
            "OHLCV index must be a DatetimeIndex of candle close times (UTC), got "
            f"{type(index).__name__}"
        )
    if index.tz is None:
        raise OHLCVError("OHLCV index is timezone-naive: localise it with .tz_localize('UTC')")
    if str(index.tz) not in _UTC_NAMES:
        raise OHLCVError(f"OHLCV index is in {index.tz}: convert it with .tz_convert('UTC')")
    if len(index) > 1 and not _known_increasing(index):
        bad = first_not_increasing_nb(index.asi8)
        if bad >= 0:
            what = "a duplicate" if index[bad] == index[bad - 1] else "out of order"
            raise OHLCVError(
                f"OHLCV index must increase strictly (sorted, one candle per time): bar {bad} "
                f"({index[bad]}) is {what} after {index[bad - 1]}; use "
                ".sort_index() and drop duplicates"
            )
        if len(index) > 10_000:  # small windows (a bot's) are cheaper to check than to track
            _remember_increasing(index)


def validate_ohlcv(data: object, columns: Sequence[str] = OHLCV_COLUMNS) -> pd.DataFrame:
    """Check the OHLCV frame strategies take; return it (converted to float64 if needed).

    Required: a pandas DataFrame with lowercase columns ``open high low close volume`` (others
    are ignored), indexed by a UTC ``DatetimeIndex`` of candle close times that strictly
    increases (sorted, no duplicates). The ``columns`` checked (default: all five) must be
    numeric and finite (no NaN: candles are complete); a strategy passes the ones it reads. An
    empty frame is valid. Raises ``OHLCVError`` saying what is wrong and how to fix it. The
    frame is returned as is when those columns are already float64, else a converted copy.
    """
    return _validated(data, columns)[0]


def _validated(
    data: object, checked: Sequence[str] = OHLCV_COLUMNS
) -> tuple[pd.DataFrame, OHLCVArrays]:
    """``validate_ohlcv`` that also returns the five columns as arrays (float64 for the
    ``checked`` ones, as stored for the others)."""
    if not isinstance(data, pd.DataFrame):
        raise OHLCVError(f"OHLCV data must be a pandas DataFrame, got {type(data).__name__}")
    missing = [c for c in OHLCV_COLUMNS if c not in data.columns]
    if missing:
        lower = {str(c).lower() for c in data.columns}
        hint = " (column names are lowercase)" if set(missing) <= lower else f"; got {list(data)}"
        raise OHLCVError(f"OHLCV data lacks column(s) {', '.join(missing)}{hint}")
    index = data.index
    _check_index(index)
    # One lookup per column: column access is the slow part of this check on small windows.
    columns = {name: data[name] for name in OHLCV_COLUMNS}
    converted = {}
    for name, column in columns.items():
        if not isinstance(column, pd.Series):
            raise OHLCVError(f"OHLCV data has more than one {name!r} column")
        if name in checked and column.dtype != np.float64:
            try:
                converted[name] = columns[name] = column.astype(np.float64)
            except (TypeError, ValueError) as exc:
                raise OHLCVError(f"OHLCV column {name!r} is not numeric: {exc}") from None
    arrays = []
    for name, column in columns.items():
        values = column.to_numpy()
        bad = first_non_finite_nb(values) if name in checked else -1
        if bad >= 0:
            raise OHLCVError(
                f"OHLCV column {name!r} holds {values[bad]} at {index[bad]} (bar {bad}): "
                "strategies take complete candles only"
            )
        arrays.append(values)
    return (data.assign(**converted) if converted else data), OHLCVArrays(*arrays)


def ohlcv_arrays(frame: pd.DataFrame) -> OHLCVArrays:
    """The five columns of a validated frame as contiguous float64 arrays (no copy if possible)."""
    return OHLCVArrays(
        *(np.ascontiguousarray(frame[c].to_numpy(dtype=np.float64)) for c in OHLCV_COLUMNS)
    )


# ---------------------------------------------------------------------------------------------
# Signal
# ---------------------------------------------------------------------------------------------


class Action(enum.StrEnum):
    """What a signal asks for; the values are the strings stored and sent."""

    BUY = "BUY"
    SELL = "SELL"
    HOLD = "HOLD"

    @classmethod
    def from_code(cls, code: int) -> Action:
        """+1 -> BUY, -1 -> SELL, 0 -> HOLD (the int8 values of ``generate_signals``)."""
        try:
            return _ACTION_OF_CODE[int(code)]
        except KeyError:
            raise ValueError(f"signal code must be -1, 0 or 1, got {code!r}") from None

    @property
    def code(self) -> int:
        return {Action.BUY: 1, Action.SELL: -1, Action.HOLD: 0}[self]


_ACTION_OF_CODE = {1: Action.BUY, -1: Action.SELL, 0: Action.HOLD}


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _utc_datetime(value: object) -> datetime:
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if not isinstance(value, datetime):
        raise TypeError(f"Signal.time must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("Signal.time must be timezone-aware (UTC)")
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Signal:
    """A strategy's decision for one closed candle.

    ``time`` is the candle's close time (aware UTC), ``price`` its close. ``strength`` is in
    [0, 1] (0 for HOLD by convention). ``reason`` is a sentence for the decision log;
    ``indicators`` maps indicator names to their values at this bar (NaN during warm-up).
    """

    action: Action
    price: float
    time: datetime
    strength: float = 0.0
    reason: str = ""
    indicators: Mapping[str, float] = field(default_factory=dict)
    strategy: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))
        object.__setattr__(self, "price", float(self.price))
        object.__setattr__(self, "time", _utc_datetime(self.time))
        strength = float(self.strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"Signal.strength must be within [0, 1], got {self.strength!r}")
        object.__setattr__(self, "strength", strength)
        values = {str(k): float(v) for k, v in dict(self.indicators).items()}
        object.__setattr__(self, "indicators", MappingProxyType(values))

    @property
    def time_ms(self) -> int:
        """The candle close time in epoch milliseconds."""
        return int(self.time.timestamp() * 1000)

    def to_dict(self) -> dict:
        """JSON-native form (for events, the API and the decision log); NaN becomes None."""
        return {
            "action": self.action.value,
            "price": _json_float(self.price),
            "time": self.time.isoformat().replace("+00:00", "Z"),
            "time_ms": self.time_ms,
            "strength": self.strength,
            "reason": self.reason,
            "indicators": {k: _json_float(v) for k, v in self.indicators.items()},
            "strategy": self.strategy,
        }


# ---------------------------------------------------------------------------------------------
# BaseStrategy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What ``explain`` and ``strength`` see: the action of the last bar, the indicator values
    at that bar (``now``) and the one before (``prev``; NaN when there is none), both candles
    (dicts of open/high/low/close/volume) and the cleaned parameters."""

    action: Action
    now: Mapping[str, float]
    prev: Mapping[str, float]
    candle: Mapping[str, float]
    prev_candle: Mapping[str, float]
    parameters: Mapping[str, Any]


def ema_settle_bars(alpha: float, tolerance: float = 2.0**-53) -> int:
    """Bars after which an exponential smoothing's starting value weighs less than ``tolerance``.

    A recursive smoothing ``s[i] = alpha * x[i] + (1 - alpha) * s[i-1]`` remembers its seed with
    weight ``(1 - alpha) ** k`` after ``k`` bars. Past this many bars, two runs seeded at
    different points agree to float rounding, so a window that long reproduces the full history.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    if alpha == 1.0:
        return 0
    return math.ceil(math.log(tolerance) / math.log1p(-alpha))


def _unwrap(raw: object) -> tuple[Callable, bool]:
    """(function, takes cls first) of a classmethod, staticmethod or plain function."""
    if isinstance(raw, classmethod):
        return raw.__func__, True
    if isinstance(raw, staticmethod):
        return raw.__func__, False
    if callable(raw):
        return raw, True  # written without @classmethod: treated as one
    raise TypeError(f"expected a method, got {type(raw).__name__}")


def _checked_signals(raw: object) -> classmethod:
    func, takes_cls = _unwrap(raw)

    def unchecked(cls: type[BaseStrategy], frame: pd.DataFrame, params: dict) -> np.ndarray:
        result = func(cls, frame, params) if takes_cls else func(frame, params)
        return _finish_signals(cls, result, len(frame), cls.warmup(params))

    @functools.wraps(func)
    def generate_signals(
        cls: type[BaseStrategy], ohlcv: pd.DataFrame, parameters: Mapping | None = None
    ) -> np.ndarray:
        params = cls.clean_parameters(parameters)
        if not cls.finite_check_in_kernel:
            return unchecked(cls, validate_ohlcv(ohlcv, cls.columns), params)
        frame = validate_ohlcv(ohlcv, ())  # the structure and the index; values: the kernel
        try:
            return unchecked(cls, frame, params)
        except (ValueError, TypeError):
            validate_ohlcv(ohlcv, cls.columns)  # a NaN or a non-number: the precise OHLCVError
            raise

    generate_signals.unchecked = unchecked
    return classmethod(generate_signals)


def _finish_signals(cls: type, result: object, n: int, warmup: int) -> np.ndarray:
    where = f"{cls.__name__}.generate_signals"
    signals = np.asarray(result)
    if signals.shape != (n,):
        raise ValueError(
            f"{where} returned shape {signals.shape}; expected one value per bar ({n},)"
        )
    kind = signals.dtype.kind
    if kind not in "iuf":
        raise TypeError(f"{where} must return numbers -1, 0 or 1, got dtype {signals.dtype}")
    if kind == "f":
        invalid = ~np.isin(signals, (-1.0, 0.0, 1.0))
        if invalid.any():
            bad = int(np.flatnonzero(invalid)[0])
            raise ValueError(
                f"{where} returned {signals[bad]} at bar {bad}; signals are -1, 0 or 1"
            )
    elif signals.size and (signals.min() < -1 or signals.max() > 1):  # numpy's SIMD reductions
        bad = int(np.flatnonzero((signals < -1) | (signals > 1))[0])
        raise ValueError(f"{where} returned {signals[bad]} at bar {bad}; signals are -1, 0 or 1")
    # Zeroing the warm-up below writes into the array: only into one the strategy made for
    # this call (owning its memory, or allocated by a numba kernel), never into a view of
    # something the caller still holds.
    fresh = (
        signals.dtype == np.int8
        and signals.flags.writeable
        and (signals.base is None or type(signals.base).__name__ == "_MemInfo")
    )
    out = signals if fresh else signals.astype(np.int8)
    out[: min(warmup, n)] = 0
    return out


def _checked_indicators(raw: object) -> classmethod:
    func, takes_cls = _unwrap(raw)

    def unchecked(
        cls: type[BaseStrategy], frame: pd.DataFrame, params: dict
    ) -> dict[str, np.ndarray]:
        result = func(cls, frame, params) if takes_cls else func(frame, params)
        if not isinstance(result, Mapping):
            raise TypeError(
                f"{cls.__name__}.compute_indicators must return a dict of arrays, got "
                f"{type(result).__name__}"
            )
        out: dict[str, np.ndarray] = {}
        for name, values in result.items():
            array = np.asarray(values, dtype=np.float64)
            if array.shape != (len(frame),):
                raise ValueError(
                    f"{cls.__name__}.compute_indicators: {name!r} has shape {array.shape}; "
                    f"expected one value per bar ({len(frame)},)"
                )
            out[str(name)] = array
        return out

    @functools.wraps(func)
    def compute_indicators(
        cls: type[BaseStrategy], ohlcv: pd.DataFrame, parameters: Mapping | None = None
    ) -> dict[str, np.ndarray]:
        frame = validate_ohlcv(ohlcv, cls.columns)
        return unchecked(cls, frame, cls.clean_parameters(parameters))

    compute_indicators.unchecked = unchecked
    return classmethod(compute_indicators)


def _checked_bars(raw: object, what: str) -> classmethod:
    func, takes_cls = _unwrap(raw)

    @functools.wraps(func)
    def bars(cls: type[BaseStrategy], parameters: Mapping | None = None) -> int:
        params = cls.clean_parameters(parameters)
        value = func(cls, params) if takes_cls else func(params)
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise TypeError(f"{cls.__name__}.{what} must return an int >= 0, got {value!r}")
        return int(value)

    bars.unchecked = None  # marks the function as wrapped by the base class
    return classmethod(bars)


def _unchecked(cls: type[BaseStrategy], attr: str) -> Callable:
    """The wrapped ``generate_signals``/``compute_indicators`` of ``cls`` without its input
    checks, for callers that have validated the frame and parameters themselves."""
    unchecked = getattr(getattr(cls, attr), "unchecked", None)
    if unchecked is None:  # the abstract base method: calling it explains what to implement
        return lambda cls, frame, params: getattr(cls, attr)(frame, params)
    return unchecked


def sweep_evaluator(
    cls: type[BaseStrategy],
    frame: pd.DataFrame,
    arrays: OHLCVArrays,
    parameter_sets: Sequence[dict],
) -> Callable[[Sequence[dict]], np.ndarray]:
    """``f(batch of cleaned parameter sets) -> int8 signals, one row per set`` for a sweep over
    ``parameter_sets`` (cleaned) on one validated ``frame`` (``arrays`` its ``ohlcv_arrays``):
    the strategy's ``signals_for_sweep`` when it has one (work the sets share is done once, a
    batch in one call), else ``signals_evaluator`` set by set. Every row is checked and its
    warm-up zeroed as ``generate_signals``' output is."""
    n = len(frame)
    for_sweep = getattr(cls, "signals_for_sweep", None)
    if for_sweep is None:
        evaluate = signals_evaluator(cls)

        def one_by_one(batch: Sequence[dict]) -> np.ndarray:
            out = np.empty((len(batch), n), dtype=np.int8)
            for row, params in enumerate(batch):
                out[row] = evaluate(frame, arrays, params)
            return out

        return one_by_one
    shared = for_sweep(arrays, list(parameter_sets))

    def together(batch: Sequence[dict]) -> np.ndarray:
        rows = np.asarray(shared(list(batch)))
        if rows.shape != (len(batch), n):
            raise ValueError(
                f"{cls.__name__}.signals_for_sweep returned shape {rows.shape}; expected "
                f"{(len(batch), n)}"
            )
        if rows.dtype != np.int8:  # the general checks and conversion, row by row
            out = np.empty(rows.shape, dtype=np.int8)
            for row, params in enumerate(batch):
                out[row] = _finish_signals(cls, rows[row], n, cls.warmup(params))
            return out
        return _finish_rows(cls, rows, batch, n)

    return together


def _finish_rows(cls: type, rows: np.ndarray, batch: Sequence[dict], n: int) -> np.ndarray:
    """``_finish_signals`` for the int8 rows of a batch: values checked once for all, each
    row's warm-up zeroed in place."""
    if rows.size and (rows.min() < -1 or rows.max() > 1):
        row, bar = (int(v[0]) for v in np.nonzero((rows < -1) | (rows > 1)))
        raise ValueError(
            f"{cls.__name__}.signals_for_sweep returned {rows[row, bar]} at bar {bar}; "
            "signals are -1, 0 or 1"
        )
    rows = np.ascontiguousarray(rows)
    for row, params in zip(rows, batch, strict=True):
        row[: min(cls.warmup(params), n)] = 0
    return rows


def signals_evaluator(cls: type[BaseStrategy]) -> Callable:
    """``f(frame, arrays, cleaned_parameters) -> int8 signals`` for callers that validated one
    frame and evaluate many parameter sets on it (a parameter sweep); ``arrays`` are the frame's
    ``ohlcv_arrays``. Uses the strategy's ``signals_from_arrays`` when it has one (no DataFrame
    column access per call), else ``generate_signals`` without validating the frame again; the
    output is checked and its warm-up zeroed as ``generate_signals``' is."""
    from_arrays = getattr(cls, "signals_from_arrays", None)
    if from_arrays is not None:

        def evaluate(frame: pd.DataFrame, arrays: OHLCVArrays, params: dict) -> np.ndarray:
            return _finish_signals(cls, from_arrays(arrays, params), len(frame), cls.warmup(params))

        return evaluate
    if hasattr(getattr(cls, "generate_signals", None), "unchecked"):
        unchecked = _unchecked(cls, "generate_signals")
        return lambda frame, arrays, params: unchecked(cls, frame, params)
    return lambda frame, arrays, params: cls.generate_signals(frame, params)


_CHECKED: dict[str, Callable[[object], classmethod]] = {
    "generate_signals": _checked_signals,
    "compute_indicators": _checked_indicators,
    "warmup": functools.partial(_checked_bars, what="warmup"),
    "lookback": functools.partial(_checked_bars, what="lookback"),
}


def _no_indicators(cls: type[BaseStrategy], ohlcv: pd.DataFrame, parameters: dict) -> dict:
    """Indicator arrays by name, one value per bar (the series ``get_indicators`` plots and
    ``Signal.indicators`` reports). Default: none."""
    return {}


class BaseStrategy(abc.ABC):
    """Unified interface of all trading strategies (the seed's ``BaseStrategy``).

    Subclasses set ``name``, ``parameter_specs`` (and optionally ``plots``), and implement the
    classmethods ``warmup`` and ``generate_signals`` (and optionally ``compute_indicators``,
    ``validate_parameters``, ``lookback``, ``explain``, ``strength``). The module docstring shows
    a complete example. An instance holds validated parameters (``self.parameters``, defaults
    included) and the indicators of the last window it processed.
    """

    #: Registry name: lowercase letters, digits and underscores, unique.
    name: ClassVar[str] = ""
    #: Display name for pages and the admin; defaults to ``name``.
    title: ClassVar[str] = ""
    parameter_specs: ClassVar[tuple[Parameter, ...]] = ()
    #: The OHLCV columns the strategy reads: these are checked to be numeric and finite before
    #: its methods run (all five must be present in any case).
    columns: ClassVar[tuple[str, ...]] = OHLCV_COLUMNS
    #: How to draw each indicator: ``{"pane": "price" | "own", "color": "#rrggbb",
    #: "group": "..."}``; indicators not listed go to their own pane.
    plots: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: True when ``generate_signals`` spends its time in numba kernels compiled with
    #: ``nogil=True`` (as the built-ins do): a parameter sweep then evaluates combinations in
    #: threads of one process, sharing the data without copies or worker start-up. False (the
    #: default, right for strategies written in pandas or plain Python): worker processes.
    releases_gil: ClassVar[bool] = False
    #: True when ``generate_signals`` itself refuses NaN and infinite values in ``columns`` by
    #: raising ``ValueError`` (``SMACrossover``'s kernel finds them while it reads the prices):
    #: the base class then skips its own scan of those columns, and when the strategy raises it
    #: checks the frame and reports the bad value exactly as ``validate_ohlcv`` does.
    finite_check_in_kernel: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs = tuple(cls.parameter_specs)
        if not all(isinstance(spec, Parameter) for spec in specs):
            raise TypeError(f"{cls.__name__}.parameter_specs must hold Parameter objects")
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise TypeError(f"{cls.__name__}.parameter_specs declares a parameter twice: {names}")
        cls.parameter_specs = specs
        unknown = [c for c in cls.columns if c not in OHLCV_COLUMNS]
        if unknown:
            raise TypeError(f"{cls.__name__}.columns: {unknown} are not OHLCV columns")
        for plot_name, plot in cls.plots.items():
            if plot.get("pane", "own") not in PANES:
                raise TypeError(f"{cls.__name__}.plots[{plot_name!r}]: pane must be price or own")
        # The methods a subclass defines are wrapped once, here, so that every caller gets
        # validated input and checked output (warm-up zeroed) whoever wrote the strategy.
        for attr, wrap in _CHECKED.items():
            raw = cls.__dict__.get(attr)
            func = getattr(raw, "__func__", raw)
            if raw is None or getattr(func, "__isabstractmethod__", False):
                continue
            if not hasattr(func, "unchecked"):  # not wrapped yet (e.g. assigned from another class)
                setattr(cls, attr, wrap(raw))

    def __init__(self, parameters: Mapping | None = None) -> None:
        self.parameters: dict[str, Any] = type(self).clean_parameters(parameters)
        self._last_index: pd.DatetimeIndex | None = None
        self._last_indicators: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.parameters!r})"

    # -- what a strategy implements -------------------------------------------------------------

    @classmethod
    @abc.abstractmethod
    def warmup(cls, parameters: Mapping) -> int:
        """Bars before the first bar that may carry a signal (signals of bars < warmup are 0).

        Receives the cleaned parameters. E.g. a crossover of SMA(10) and SMA(30) needs SMA(30)
        on two consecutive bars: the first is bar 29, so the first possible signal is bar 30.
        """
        raise TypeError(f"{cls.__name__} must implement the classmethod warmup(parameters)")

    @classmethod
    @abc.abstractmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: Mapping | None = None) -> np.ndarray:
        """int8 signals, one per bar (+1 buy, -1 sell, 0 hold), for the whole frame at once."""
        raise TypeError(
            f"{cls.__name__} must implement the classmethod generate_signals(ohlcv, parameters)"
        )

    # Optional; wrapped like an override so the base's default validates its input too.
    compute_indicators = _checked_indicators(_no_indicators)

    @classmethod  # noqa: B027 - an optional hook, deliberately empty
    def validate_parameters(cls, parameters: dict[str, Any]) -> None:
        """Cross-parameter rules (e.g. fast < slow) on cleaned values: raise
        ``StrategyParameterError`` naming the parameter to change. Default: none."""

    @classmethod
    def explain(cls, decision: Decision) -> str:
        """One sentence for the decision log: why this bar is a BUY, SELL or HOLD. Default: the
        action and the indicator values."""
        values = ", ".join(f"{k}={fmt(v)}" for k, v in decision.now.items())
        return f"{decision.action.value} by the {cls.name or cls.__name__} rule" + (
            f" ({values})" if values else ""
        )

    @classmethod
    def strength(cls, decision: Decision) -> float:
        """Conviction in [0, 1]. Default: 1 for BUY/SELL (the rules are binary), 0 for HOLD."""
        return 0.0 if decision.action is Action.HOLD else 1.0

    # -- provided -------------------------------------------------------------------------------

    @classmethod
    def clean_parameters(cls, parameters: Mapping | None = None) -> dict[str, Any]:
        """Validated parameters: defaults filled in, types coerced, bounds and
        ``validate_parameters`` checked. Raises ``StrategyParameterError`` naming the parameter."""
        label = cls.name or cls.__name__
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, Mapping):
            raise StrategyParameterError(
                None,
                f"parameters must be a JSON object (dict), got {type(parameters).__name__}",
                strategy=label,
            )
        specs = {spec.name: spec for spec in cls.parameter_specs}
        unknown = [key for key in parameters if key not in specs]
        if unknown:
            takes = ", ".join(specs) or "no parameters"
            raise StrategyParameterError(
                str(unknown[0]),
                f"unknown parameter; {label} takes {takes}",
                strategy=label,
            )
        cleaned: dict[str, Any] = {}
        try:
            for name, spec in specs.items():
                cleaned[name] = spec.clean(parameters[name]) if name in parameters else spec.default
            cls.validate_parameters(cleaned)
        except StrategyParameterError as exc:
            raise exc.for_strategy(label) from None
        except (TypeError, ValueError) as exc:
            raise StrategyParameterError(None, str(exc), strategy=label) from exc
        return cleaned

    @classmethod
    def lookback(cls, parameters: Mapping | None = None) -> int:
        """Bars of history ``process_data`` needs to decide exactly as the full-history backtest.

        Default ``warmup + 1``: right for rules over finite windows (SMA, rolling max, ...), whose
        signal at bar i reads bars ``i - warmup .. i`` only. Strategies built on recursive
        smoothing (EMA, Wilder's RSI) remember every bar and override this with the warm-up plus
        ``ema_settle_bars`` of their slowest smoothing.
        """
        return cls.warmup(parameters) + 1

    @classmethod
    def plot_spec(cls, parameters: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
        """How to draw each indicator for these parameters. Default: ``plots`` as declared;
        override to add parameter-dependent hints (e.g. the RSI levels)."""
        return {name: dict(spec) for name, spec in cls.plots.items()}

    @classmethod
    def default_parameters(cls) -> dict[str, Any]:
        return cls.clean_parameters({})

    @classmethod
    def parameter_schema(cls) -> list[dict]:
        """The declared parameters, JSON-native (``Parameter.describe`` each, in order)."""
        return [spec.describe() for spec in cls.parameter_specs]

    @classmethod
    def json_schema(cls) -> dict:
        """A JSON Schema object for the parameter dict (unknown keys refused, none required)."""
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": cls.title or cls.name or cls.__name__,
            "type": "object",
            "properties": {spec.name: spec.to_json_schema() for spec in cls.parameter_specs},
            "additionalProperties": False,
        }

    @classmethod
    def describe(cls) -> dict:
        """Everything a page or the API shows about the strategy, JSON-native."""
        defaults = cls.default_parameters()
        return {
            "name": cls.name,
            "title": cls.title or cls.name,
            "description": _docstring(cls),
            "parameters": cls.parameter_schema(),
            "defaults": defaults,
            "warmup": cls.warmup(defaults),
            "lookback": cls.lookback(defaults),
            "plots": cls.plot_spec(defaults),
        }

    @classmethod
    def search_space(
        cls,
        overrides: Mapping[str, Sequence] | None = None,
        *,
        steps: Mapping[str, float] | None = None,
    ) -> dict[str, list]:
        """Values to try per parameter, for the optimiser.

        Each parameter's ``grid`` by default (multiples of its step within its bounds);
        ``steps`` changes a parameter's step, ``overrides`` gives its values outright (each is
        validated). Unknown names raise ``StrategyParameterError``.
        """
        specs = {spec.name: spec for spec in cls.parameter_specs}
        label = cls.name or cls.__name__
        for key in [*(overrides or {}), *(steps or {})]:
            if key not in specs:
                raise StrategyParameterError(
                    str(key), f"unknown parameter; {label} takes {', '.join(specs)}", strategy=label
                )
        space: dict[str, list] = {}
        try:
            for name, spec in specs.items():
                if overrides and name in overrides:
                    values = overrides[name]
                    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
                        values = [values]
                    space[name] = list(dict.fromkeys(spec.clean(v) for v in values))
                else:
                    space[name] = spec.grid((steps or {}).get(name))
        except StrategyParameterError as exc:
            raise exc.for_strategy(label) from None
        return space

    @classmethod
    def parameter_grid(cls, space: Mapping[str, Sequence] | None = None) -> Iterator[dict]:
        """Every valid combination of ``search_space(space)``, cleaned.

        ``space`` maps names to the values to try; parameters it leaves out take their default
        grid (pass ``[value]`` to hold one fixed). Combinations that break a cross-parameter
        rule (fast >= slow, ...) are skipped.
        """
        space = cls.search_space(space)
        names = list(space)
        for combo in itertools.product(*(space[name] for name in names)):
            try:
                yield cls.clean_parameters(dict(zip(names, combo, strict=True)))
            except StrategyParameterError:
                continue

    # -- the seed's instance API ----------------------------------------------------------------

    def process_data(self, data: pd.DataFrame) -> Signal:
        """Decide on the last candle of ``data`` (the seed's method).

        Runs ``generate_signals`` on the whole window and reports its last bar, with the close as
        price, the candle's close time and the indicator values at that bar. Give at least
        ``lookback(parameters)`` candles to match the backtest exactly; fewer than
        ``warmup + 1`` always hold (the reason says so). Raises ``OHLCVError`` for bad or empty
        data.
        """
        cls = type(self)
        frame, arrays = _validated(data, cls.columns)
        n = len(frame)
        if n == 0:
            raise OHLCVError("process_data needs at least one candle")
        signals = _unchecked(cls, "generate_signals")(cls, frame, self.parameters)
        indicators = _unchecked(cls, "compute_indicators")(cls, frame, self.parameters)
        self._last_index = frame.index
        self._last_indicators = indicators
        decision = Decision(
            action=Action.from_code(int(signals[-1])),
            now={k: float(v[-1]) for k, v in indicators.items()},
            prev={k: float(v[-2]) if n > 1 else math.nan for k, v in indicators.items()},
            candle=_candle(arrays, n - 1),
            prev_candle=_candle(arrays, n - 2),
            parameters=self.parameters,
        )
        warmup = cls.warmup(self.parameters)
        if n <= warmup:
            reason = f"warming up: the first signal needs {warmup + 1} candles, got {n}"
            strength = 0.0
        else:
            reason = cls.explain(decision)
            strength = cls.strength(decision)
        return Signal(
            action=decision.action,
            price=decision.candle["close"],
            time=frame.index[-1],
            strength=strength,
            reason=reason,
            indicators=decision.now,
            strategy=cls.name,
        )

    def get_indicators(self) -> dict:
        """Series to plot for the last window given to ``process_data`` (the seed's method).

        ``{name: {"values": [float | None, ...], "pane": "price" | "own", "color"?, "group"?,
        ...}}``, values aligned to that window's candles, NaN as None. Empty before the first
        ``process_data``.
        """
        plots = type(self).plot_spec(self.parameters)
        out: dict[str, dict] = {}
        for name, values in self._last_indicators.items():
            spec = {"pane": "own", **plots.get(name, {})}
            out[name] = {
                "values": [v if math.isfinite(v) else None for v in values.tolist()],
                **spec,
            }
        return out

    @property
    def last_index(self) -> pd.DatetimeIndex | None:
        """Close times of the candles behind ``get_indicators`` (None before any data)."""
        return self._last_index


def fmt(value: float) -> str:
    """A number for a sentence of the decision log (6 significant digits, n/a for NaN)."""
    return "n/a" if not math.isfinite(value) else f"{value:.6g}"


def _candle(arrays: OHLCVArrays, i: int) -> dict[str, float]:
    if i < 0:
        return dict.fromkeys(OHLCV_COLUMNS, math.nan)
    return {name: _float(values[i]) for name, values in zip(OHLCV_COLUMNS, arrays, strict=True)}


def _float(value: object) -> float:
    # Columns a strategy does not read are not validated: report what can be read.
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _docstring(cls: type) -> str:
    return inspect.getdoc(cls) or ""
