"""The no-lookahead check for any strategy (pure: numpy and pandas only, never Django).

A strategy looks ahead when its signal or an indicator at bar ``i`` depends on a bar after
``i``: a backtest of it is fiction. ``check_lookahead`` tests that on given OHLCV data at random
cut points ``i``, two ways:

* **truncated**: the outputs of ``data[:i + 1]`` equal the outputs of the full data at bars
  ``0..i`` (catches ``shift(-k)``, centred windows, statistics over the whole series, anything
  that reads past the end);
* **perturbed**: the outputs of the full data with every bar after ``i`` replaced by a different
  random path equal the original outputs at bars ``0..i`` (catches code that reads later bars
  without failing when they are missing).

Signals must be equal exactly. Indicator values may differ by floating-point summation order
only (relative 1e-9 of the series' scale); their NaN positions must match exactly.
``manage.py check_lookahead`` runs it on random data for any registered strategy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from strategies.base import BaseStrategy, validate_ohlcv

__all__ = ["LookaheadReport", "LookaheadViolation", "check_lookahead", "random_walk_ohlcv"]

# Relative tolerance for indicator values (of the largest magnitude in the compared range).
INDICATOR_RTOL = 1e-9
# 2023-11-15 00:00 UTC, a candle close time.
DEFAULT_START_MS = 1_700_006_400_000


def random_walk_ohlcv(
    n: int,
    *,
    seed: int = 0,
    start_ms: int = DEFAULT_START_MS,
    interval_ms: int = 60_000,
    price: float = 30_000.0,
    volatility: float = 1e-3,
) -> pd.DataFrame:
    """``n`` consistent random-walk candles (a UTC index of close times ``interval_ms`` apart).

    Log-normal closes with per-candle volatility ``volatility``; each open is the previous close;
    high/low lie beyond open and close; volume is exponential. Same seed, same data.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    close = price * np.exp(np.cumsum(rng.normal(0.0, volatility, n)))
    open_ = np.empty(n)
    if n:
        open_[0] = price
        open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0.0, volatility / 2, (2, n)))
    high = np.maximum(open_, close) * (1.0 + wick[0])
    low = np.minimum(open_, close) * (1.0 - wick[1])
    volume = rng.exponential(10.0, n)
    index = pd.to_datetime(start_ms + interval_ms * np.arange(1, n + 1), unit="ms", utc=True)
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


@dataclass(frozen=True)
class LookaheadViolation:
    """The first bar ``bar <= cut`` where an output changed when data after ``cut`` changed."""

    check: str  # "truncated" or "perturbed"
    output: str  # "signals" or "indicator <name>"
    cut: int
    bar: int
    full: float
    changed: float

    def describe(self) -> str:
        how = (
            f"computed on bars 0..{self.cut} only"
            if self.check == "truncated"
            else f"with bars after {self.cut} changed"
        )
        return (
            f"{self.output} at bar {self.bar} is {self.full!r} on the full data but "
            f"{self.changed!r} {how}"
        )


@dataclass(frozen=True)
class LookaheadReport:
    strategy: str
    parameters: dict[str, Any]
    bars: int
    cuts: tuple[int, ...]
    outputs: tuple[str, ...]
    violations: tuple[LookaheadViolation, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self, max_violations: int = 5) -> str:
        """A verdict a person can read: PASS/FAIL, what was checked, the first violations."""
        head = (
            f"{self.strategy} {self.parameters}: {len(self.outputs)} outputs "
            f"({', '.join(self.outputs)}) at {len(self.cuts)} cut points over {self.bars} bars"
        )
        if self.ok:
            return f"PASS {head}: no lookahead"
        lines = [f"FAIL {head}: {len(self.violations)} violation(s), it looks ahead"]
        lines += [f"  - {v.describe()}" for v in self.violations[:max_violations]]
        if len(self.violations) > max_violations:
            lines.append(f"  ... and {len(self.violations) - max_violations} more")
        return "\n".join(lines)


def _first_difference(full: np.ndarray, changed: np.ndarray, exact: bool) -> int:
    """Index of the first differing value (NaN equals NaN), or -1."""
    if exact:
        differs = full != changed
    else:
        nan_full, nan_changed = np.isnan(full), np.isnan(changed)
        finite = full[np.isfinite(full)]
        scale = float(np.abs(finite).max()) if finite.size else 0.0
        tolerance = INDICATOR_RTOL * max(scale, 1.0)
        with np.errstate(invalid="ignore"):
            far = ~((full == changed) | (np.abs(full - changed) <= tolerance))
        differs = (nan_full != nan_changed) | (far & ~nan_full & ~nan_changed)
    hits = np.flatnonzero(differs)
    return int(hits[0]) if hits.size else -1


def _perturb_after(frame: pd.DataFrame, cut: int, rng: np.random.Generator) -> pd.DataFrame:
    """A copy of ``frame`` whose bars after ``cut`` follow another random path.

    Prices of each later bar are scaled by one positive factor (so high >= open/close >= low
    still holds), drawn as a random walk with jumps large enough to move any indicator; volumes
    are rescaled at random.
    """
    changed = frame.copy()
    count = len(frame) - cut - 1
    if count <= 0:
        return changed
    factor = np.exp(np.cumsum(rng.normal(0.0, 0.02, count)) + rng.choice([-0.1, 0.1]))
    for column in ("open", "high", "low", "close"):
        values = changed[column].to_numpy(dtype=np.float64, copy=True)
        values[cut + 1 :] *= factor
        changed[column] = values
    volume = changed["volume"].to_numpy(dtype=np.float64, copy=True)
    volume[cut + 1 :] *= rng.uniform(0.2, 5.0, count)
    changed["volume"] = volume
    return changed


def _cut_points(n: int, warmup: int, n_cuts: int, rng: np.random.Generator) -> list[int]:
    """Random cuts in ``0..n-2`` (a cut needs a later bar), always with the first bar that may
    signal and the last possible cut."""
    if n < 2:
        return []
    must = {n - 2} | ({warmup} if warmup <= n - 2 else set())
    pool = np.arange(0, n - 1)
    extra = rng.choice(pool, size=min(max(n_cuts - len(must), 0), pool.size), replace=False)
    return sorted(must | {int(c) for c in extra})


def check_lookahead(
    strategy_cls: type[BaseStrategy],
    parameters: Mapping[str, Any] | None,
    ohlcv: pd.DataFrame,
    n_cuts: int = 20,
    *,
    seed: int = 0,
) -> LookaheadReport:
    """Check that ``strategy_cls`` with ``parameters`` never uses bars after the one it decides.

    For ``n_cuts`` random cut points ``i`` (plus the first bar that may signal and the last
    possible cut), compares ``generate_signals`` and every ``compute_indicators`` output of the
    full data at bars ``0..i`` with those of ``data[:i + 1]`` (truncated) and of the data with
    the bars after ``i`` replaced (perturbed). Returns a report of every mismatch (the first bar
    per cut, check and output). Parameters are cleaned first (``StrategyParameterError``);
    ``OHLCVError`` for bad data; a strategy that raises propagates its error.
    """
    params = strategy_cls.clean_parameters(parameters)
    frame = validate_ohlcv(ohlcv)
    n = len(frame)
    rng = np.random.default_rng(seed)

    def outputs(data: pd.DataFrame) -> dict[str, np.ndarray]:
        result = {"signals": strategy_cls.generate_signals(data, params)}
        for name, values in strategy_cls.compute_indicators(data, params).items():
            result[f"indicator {name}"] = values
        return result

    full = outputs(frame)
    cuts = _cut_points(n, strategy_cls.warmup(params), n_cuts, rng)
    violations: list[LookaheadViolation] = []
    for cut in cuts:
        candidates = {
            "truncated": outputs(frame.iloc[: cut + 1]),
            "perturbed": outputs(_perturb_after(frame, cut, rng)),
        }
        for check, changed in candidates.items():
            for output, values in full.items():
                if output not in changed:
                    violations.append(
                        LookaheadViolation(check, output, cut, cut, math.nan, math.nan)
                    )
                    continue
                head_full = values[: cut + 1]
                head_changed = changed[output][: cut + 1]
                bar = _first_difference(head_full, head_changed, exact=output == "signals")
                if bar >= 0:
                    violations.append(
                        LookaheadViolation(
                            check, output, cut, bar, float(head_full[bar]), float(head_changed[bar])
                        )
                    )
    return LookaheadReport(
        strategy=strategy_cls.name or strategy_cls.__name__,
        parameters=params,
        bars=n,
        cuts=tuple(cuts),
        outputs=tuple(full),
        violations=tuple(violations),
    )
