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

A live bot is replayed as the exchange traded it (``_LiveFills``): each of its fills is keyed
by the candle its order belongs to (a signal's order fills at the next candle, a stop's in the
candle that triggered it), the backtest fills at the exchange's average fill price instead of
the candle's open (no slippage: it is in the price) and takes a buy's fee from the coin bought
when the exchange did (its buy fills' fee asset; the bot's ``fee_in_base`` before any buy).
Quantities then differ only by the exchange's lot step (an entry rounded down, an exit's dust):
up to two lot steps, plus one per earlier round trip for the cash and dust they carried. A stop
exit fills at the market, not at its level: its price difference is listed as a note (its
quantity is still compared). The largest relative difference between the exchange's prices and
the candles' opens is reported as ``max_price_deviation``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

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
    notes: list[str] = field(default_factory=list)

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
        out += [f"  note {line}" for line in self.notes]
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
    open_ = frame["open"].to_numpy(dtype=np.float64)
    times_ms = frame.index.as_unit("ms").asi8
    report.first_ms, report.last_ms = datetime_to_ms(first), datetime_to_ms(last)
    live = _LiveFills.load(bot, times_ms) if bot.mode == Bot.Mode.LIVE else None
    if live is not None:
        open_ = live.replay_opens(open_, report)
        options = replace(options, slippage=0.0, fee_in_base=live.fee_in_base)
    simulation = simulate(
        open_, frame["high"].to_numpy(dtype=np.float64),
        frame["low"].to_numpy(dtype=np.float64), close, signals, options=options,
    )  # fmt: skip
    result = build_result(
        frame.index, close, signals, simulation, options, strategy=cls.name, parameters=params
    )
    refused = _diff_signals(report, decided, times_ms, signals)
    _diff_fills(report, bot, result.trades, refused, tolerance, live)
    return report


@dataclass
class _LiveFills:
    """A live bot's fills by (candle close ms, side) as the backtest would stamp them: the
    gross quantity, the coin it moved (a buy's quantity less a fee taken in the coin), the
    average price, and the order's reason."""

    rows: dict[tuple[int, str], tuple[float, float, float, str]]
    fee_in_base: bool
    lot: float
    times_ms: np.ndarray

    @classmethod
    def load(cls, bot: Bot, times_ms: np.ndarray) -> _LiveFills:
        position = {int(t): i for i, t in enumerate(times_ms.tolist())}
        base = bot.instrument.base
        sums: dict[int, list[float]] = {}
        orders: dict[int, tuple[int, str, str]] = {}
        fee_assets = []
        for fill in Fill.objects.filter(bot=bot).select_related("order").order_by("time", "id"):
            order = fill.order
            quantity, price = float(fill.quantity), float(fill.price)
            row = sums.setdefault(order.pk, [0.0, 0.0, 0.0])
            row[0] += quantity
            row[1] += quantity * price
            if fill.fee_currency == base:
                row[2] += float(fill.fee_cost)
            if fill.side == "buy" and fill.fee_cost:
                fee_assets.append(fill.fee_currency == base)
            orders[order.pk] = (datetime_to_ms(order.time), order.reason, fill.side)
        rows = {}
        for pk, (gross, notional, base_fee) in sums.items():
            decided_ms, reason, side = orders[pk]
            i = position.get(decided_ms)
            if i is None:
                continue
            # A signal's order fills at the next candle's open in the backtest; a stop exit in
            # the candle that triggered it.
            j = i + 1 if reason == "signal" else i
            if j >= len(times_ms):
                continue
            moved = gross - base_fee if side == "buy" else gross
            rows[(int(times_ms[j]), side)] = (gross, moved, notional / gross, reason)
        fee_in_base = fee_assets[0] if fee_assets else bot.fee_in_base
        return cls(rows=rows, fee_in_base=fee_in_base, lot=_lot_step(bot), times_ms=times_ms)

    def replay_opens(self, open_: np.ndarray, report: ParityReport) -> np.ndarray:
        """The opens with each signal fill's bar opening at the exchange's price; the largest
        relative difference between the two into ``report``."""
        out = open_.copy()
        position = {int(t): i for i, t in enumerate(self.times_ms.tolist())}
        for (ms, _side), (_gross, _moved, price, reason) in self.rows.items():
            if reason != "signal":
                continue
            i = position[ms]
            if open_[i]:
                deviation = abs(price - open_[i]) / abs(open_[i])
                report.max_price_deviation = max(report.max_price_deviation, deviation)
            out[i] = price
        return out


def _lot_step(bot: Bot) -> float:
    """The market's amount precision (lot step) from ccxt's market data, 1e-8 when the
    exchange cannot be asked."""
    from bots.live import client_for  # ccxt is imported only where live trading happens

    try:
        client = client_for(bot.account)
        client.load_markets()
        step = (client.market(bot.instrument.symbol).get("precision") or {}).get("amount")
    except Exception:  # noqa: BLE001 - any failure: the finest lot Binance-like exchanges use
        return 1e-8
    return float(step) if step else 1e-8


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


def _diff_fills(  # noqa: PLR0917 - the report, then what it compares
    report: ParityReport,
    bot: Bot,
    trades: pd.DataFrame,
    refused: dict[int, str],
    tolerance: float,
    live: _LiveFills | None = None,
) -> None:
    expected: dict[tuple[int, str], tuple[float, float]] = {}
    for trade in trades.itertuples(index=False):
        entry_ms = int(pd.Timestamp(trade.entry_time).value // 1_000_000)
        expected[(entry_ms, "buy")] = (float(trade.size), float(trade.entry_price))
        if trade.exit_reason != "open":
            exit_ms = int(pd.Timestamp(trade.exit_time).value // 1_000_000)
            expected[(exit_ms, "sell")] = (float(trade.size), float(trade.exit_price))
    last = None if report.last_ms is None else ms_to_datetime(report.last_ms)
    if live is None:
        # The coin a fill moved, as the engine's trade size: a buy's quantity less a fee taken
        # in the coin bought (``fee_in_base``).
        base = bot.instrument.base
        actual: dict[tuple[int, str], tuple[float, float]] = {
            (datetime_to_ms(t), side): (float(q - c) if a == base else float(q), float(p))
            for t, side, q, p, c, a in Fill.objects.filter(bot=bot, time__lte=last).values_list(
                "time", "side", "quantity", "price", "fee_cost", "fee_currency"
            )
        }
        reasons: dict[tuple[int, str], str] = {}
    else:
        actual = {key: (moved, price) for key, (_gross, moved, price, _) in live.rows.items()}
        reasons = {key: row[3] for key, row in live.rows.items()}
    report.bot_fills, report.backtest_fills = len(actual), len(expected)
    trips = 0  # round trips closed before the fill compared (the lot rounding they carry)
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
            if live is None:
                deviation = abs(ap - ep) / abs(ep) if ep else abs(ap)
                report.max_price_deviation = max(report.max_price_deviation, deviation)
                same = _close(aq, eq, tolerance) and _close(ap, ep, tolerance)
            else:
                same = _same_live(report, key, expected[key], actual[key], reasons[key],
                                  live.lot * (2 + trips), tolerance)  # fmt: skip
            if not same:
                report.fill_mismatches.append(
                    f"{_iso(ms)} {side}: bot {aq:.12g} @ {ap:.12g}, backtest {eq:.12g} @ {ep:.12g}"
                )
        if side == "sell":
            trips += 1


def _same_live(  # noqa: PLR0917 - one comparison's parts
    report: ParityReport,
    key: tuple[int, str],
    expected: tuple[float, float],
    actual: tuple[float, float],
    reason: str,
    lots: float,
    tolerance: float,
) -> bool:
    """A live fill against the backtest's: the quantity within ``lots`` (lot rounding), the
    price exact but for a stop exit, which fills at the market (a note, not a mismatch)."""
    (eq, ep), (aq, ap) = expected, actual
    same_quantity = abs(aq - eq) <= lots * (1 + 1e-9) + tolerance * abs(eq)
    if reason == "signal":
        return same_quantity and _close(ap, ep, tolerance)
    if not _close(ap, ep, tolerance):
        report.notes.append(
            f"{_iso(key[0])} {key[1]}: {reason} filled at the market {ap:.12g}, its level {ep:.12g}"
        )
    return same_quantity
