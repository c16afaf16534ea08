"""Live equals backtest: replay the candles a bot saw through the backtest engine and diff.

``parity_check(bot)`` takes the bot's decision log (its ``Signal`` rows, first to last), the
stored candles of that span plus the strategy's look-back before it, and runs the engine with
the bot's settings (``Bot.engine_options``): the strategy's signals on the whole frame, with
the bars before the bot's first candle silenced (the bot never decided on them), through
``backtests.engine.simulate`` and ``build_result`` (``run_backtest``'s own steps). It then
compares bar by bar:

* signals: the bot's action at each candle against the backtest's;
* fills: every entry and exit fill of the backtest's trades against the bot's ``Fill`` rows
  (time, side, quantity, price), matched on (candle time, side).

A difference in fills right after a signal the bot's risk rules refused (cooldown, daily loss,
exposure, kill switch) is reported with that reason: the backtest has no such rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backtests.engine import EngineOptions, build_result, simulate, strategy_signals
from bots.models import Bot, Fill
from marketdata.models import Candle
from marketdata.selectors import candles_frame
from marketdata.services import datetime_to_ms, ms_to_datetime
from strategies.base import Action
from strategies.registry import get_strategy


@dataclass
class ParityReport:
    bot_id: int
    bars: int = 0
    first_ms: int | None = None
    last_ms: int | None = None
    signal_mismatches: list[str] = field(default_factory=list)
    fill_mismatches: list[str] = field(default_factory=list)
    bot_fills: int = 0
    backtest_fills: int = 0
    max_price_deviation: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.signal_mismatches and not self.fill_mismatches

    def lines(self) -> list[str]:
        def iso(ms: int | None) -> str:
            return "-" if ms is None else pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()

        out = [
            f"bot {self.bot_id}: {self.bars} candles from {iso(self.first_ms)} to "
            f"{iso(self.last_ms)}",
            f"signals: {self.bars - len(self.signal_mismatches)}/{self.bars} equal",
            f"fills: bot {self.bot_fills}, backtest {self.backtest_fills}, "
            f"{len(self.fill_mismatches)} mismatch(es); largest relative price deviation "
            f"{self.max_price_deviation:.3g}",
        ]
        out += [f"  signal mismatch {line}" for line in self.signal_mismatches]
        out += [f"  fill mismatch {line}" for line in self.fill_mismatches]
        out.append("PARITY OK" if self.ok else "PARITY MISMATCH")
        return out


def _close(a: float, b: float, tolerance: float) -> bool:
    return math.isclose(a, b, rel_tol=tolerance, abs_tol=tolerance * 1e-6)


def parity_check(bot: Bot, *, tolerance: float = 1e-9) -> ParityReport:
    """Diff the bot's signals and fills against the backtest of the same candles (module
    docstring). ``tolerance``: relative difference allowed in prices and quantities (stored as
    decimals of 18 places)."""
    report = ParityReport(bot_id=bot.pk)
    decided = list(bot.signals.order_by("time").values_list("time", "action", "no_order_reason"))
    if not decided:
        return report
    first, last = decided[0][0], decided[-1][0]
    cls = get_strategy(bot.strategy)
    lookback = cls.lookback(cls.clean_parameters(bot.parameters))
    before = list(
        Candle.objects.filter(
            instrument_id=bot.instrument_id, timeframe=bot.timeframe, close_time__lt=first
        )
        .order_by("-close_time")
        .values_list("close_time", flat=True)[: lookback + 1]
    )
    frame = candles_frame(
        instrument_id=bot.instrument_id, timeframe=bot.timeframe,
        start=before[-1] if before else first, end=last,
    )  # fmt: skip
    params, signals = strategy_signals(cls, frame, bot.parameters)
    signals = signals.copy()
    signals[frame.index < pd.Timestamp(first)] = 0
    options = EngineOptions(**bot.engine_options())
    close = frame["close"].to_numpy(dtype=np.float64)
    simulation = simulate(
        frame["open"].to_numpy(dtype=np.float64), frame["high"].to_numpy(dtype=np.float64),
        frame["low"].to_numpy(dtype=np.float64), close, signals, options=options,
    )  # fmt: skip
    result = build_result(
        frame.index, close, signals, simulation, options, strategy=cls.name, parameters=params
    )
    times_ms = frame.index.as_unit("ms").asi8
    report.first_ms, report.last_ms = datetime_to_ms(first), datetime_to_ms(last)
    refused = _diff_signals(report, decided, times_ms, signals)
    _diff_fills(report, bot, result.trades, refused, tolerance)
    return report


def _iso(ms: int) -> str:
    return pd.Timestamp(ms, unit="ms", tz="UTC").isoformat()


def _diff_signals(
    report: ParityReport, decided: list, times_ms: np.ndarray, signals: np.ndarray
) -> dict[int, str]:
    """Signal mismatches into ``report``; returns, by the time of the candle where its order
    would have filled, why the bot placed no order for a BUY/SELL."""
    position = {int(t): i for i, t in enumerate(times_ms.tolist())}
    refused: dict[int, str] = {}
    seen = set()
    for time, action, no_order in decided:
        ms = datetime_to_ms(time)
        seen.add(ms)
        report.bars += 1
        i = position.get(ms)
        expected = "missing candle" if i is None else Action.from_code(int(signals[i])).value
        if action != expected:
            report.signal_mismatches.append(f"{_iso(ms)}: bot {action}, backtest {expected}")
        if no_order and action != "HOLD" and i is not None and i + 1 < len(times_ms):
            refused[int(times_ms[i + 1])] = no_order
    for i, ms in enumerate(times_ms.tolist()):
        if report.first_ms is not None and ms >= report.first_ms and ms not in seen:
            report.bars += 1
            expected = Action.from_code(int(signals[i])).value
            report.signal_mismatches.append(f"{_iso(ms)}: bot never decided, backtest {expected}")
    return refused


def _diff_fills(
    report: ParityReport,
    bot: Bot,
    trades: pd.DataFrame,
    refused: dict[int, str],
    tolerance: float,
) -> None:
    expected: dict[tuple[int, str], tuple[float, float]] = {}
    for trade in trades.itertuples(index=False):
        entry_ms = int(pd.Timestamp(trade.entry_time).value // 1_000_000)
        expected[(entry_ms, "buy")] = (float(trade.size), float(trade.entry_price))
        if trade.exit_reason != "open":
            exit_ms = int(pd.Timestamp(trade.exit_time).value // 1_000_000)
            expected[(exit_ms, "sell")] = (float(trade.size), float(trade.exit_price))
    last = None if report.last_ms is None else ms_to_datetime(report.last_ms)
    actual: dict[tuple[int, str], tuple[float, float]] = {
        (datetime_to_ms(t), side): (float(q), float(p))
        for t, side, q, p in Fill.objects.filter(bot=bot, time__lte=last).values_list(
            "time", "side", "quantity", "price"
        )
    }
    report.bot_fills, report.backtest_fills = len(actual), len(expected)
    for key in sorted(set(expected) | set(actual)):
        ms, side = key
        why = f" (bot's risk rules: {refused[ms]})" if ms in refused else ""
        if key not in actual:
            q, p = expected[key]
            report.fill_mismatches.append(
                f"{_iso(ms)} {side}: backtest {q:.12g} @ {p:.12g}, bot none{why}"
            )
        elif key not in expected:
            q, p = actual[key]
            report.fill_mismatches.append(
                f"{_iso(ms)} {side}: bot {q:.12g} @ {p:.12g}, backtest none"
            )
        else:
            (eq, ep), (aq, ap) = expected[key], actual[key]
            deviation = abs(ap - ep) / abs(ep) if ep else abs(ap)
            report.max_price_deviation = max(report.max_price_deviation, deviation)
            if not (_close(aq, eq, tolerance) and _close(ap, ep, tolerance)):
                report.fill_mismatches.append(
                    f"{_iso(ms)} {side}: bot {aq:.12g} @ {ap:.12g}, backtest {eq:.12g} @ {ep:.12g}"
                )
