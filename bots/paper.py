"""Paper execution, candle by candle, with the backtester's conventions (pure: never Django).

A ``PaperBook`` is one bot's paper account: its cash and its long position. The functions here
are ``backtests.engine``'s kernel for the bots' case (spot, long-only, ``next_open`` fills),
written out operation by operation in the kernel's order, so that the float results are
bit-identical to ``run_backtest`` on the same candles and signals:

* an order decided on candle ``i``'s close fills at candle ``i + 1``'s open (``buy``/``sell``),
  ``slippage`` against us, ``fee`` a fraction of the notional, entry size
  ``units = cash * size / (fill * (1 + fee))``;
* then the stops of candle ``i + 1`` (``stop_exit``): stop-loss or trailing stop first, then the
  take-profit, each at its level or at a gapped open;
* then the trailing extreme takes in the candle's high (``take_in_high``).

Times are epoch milliseconds of candle close times; a fill at an open is stamped with the close
time of the candle it happened in (as the engine's trades are).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from backtests import engine

__all__ = ["ClosedTrade", "PaperBook", "PaperFill", "buy", "sell", "stop_exit", "take_in_high"]


@dataclass
class PaperBook:
    """Cash and the long position (``units`` 0 when flat), as plain floats.

    ``entry_price`` and ``entry_fee`` are those of the entry fill; ``committed`` the equity put
    in at entry (``units * entry_price * (1 + fee)``, the base of a trade's return); ``extreme``
    the highest high since entry (trailing stop); ``entry_ms`` the entry candle's close time.
    """

    cash: float
    units: float = 0.0
    entry_price: float = 0.0
    entry_fee: float = 0.0
    committed: float = 0.0
    extreme: float = 0.0
    entry_ms: int = 0

    @property
    def long(self) -> bool:
        return self.units > 0.0

    def equity(self, close: float) -> float:
        """Cash plus the position at ``close`` (the engine's ``cash + side * units * close``)."""
        side = 1.0 if self.long else 0.0
        return self.cash + side * self.units * close

    def to_dict(self) -> dict:
        """JSON-native; floats survive a JSON round trip exactly (shortest repr). (``asdict``'s
        result, without its recursive copy: every field is a plain number.)"""
        return {name: getattr(self, name) for name in _BOOK_FIELDS}

    @classmethod
    def from_dict(cls, data: dict) -> PaperBook:
        return cls(
            cash=float(data["cash"]),
            units=float(data.get("units", 0.0)),
            entry_price=float(data.get("entry_price", 0.0)),
            entry_fee=float(data.get("entry_fee", 0.0)),
            committed=float(data.get("committed", 0.0)),
            extreme=float(data.get("extreme", 0.0)),
            entry_ms=int(data.get("entry_ms", 0)),
        )


_BOOK_FIELDS = tuple(f.name for f in fields(PaperBook))


@dataclass(frozen=True)
class PaperFill:
    """One fill: ``side`` "buy"/"sell", ``units``, ``price`` (slippage included), ``fee`` paid."""

    side: str
    units: float
    price: float
    fee: float
    time_ms: int


@dataclass(frozen=True)
class ClosedTrade:
    """A round trip, as the engine's trade records: ``pnl`` net of both fees, ``ret`` over the
    equity committed at entry, ``reason`` one of signal/stop_loss/take_profit/trailing_stop."""

    entry_ms: int
    exit_ms: int
    units: float
    entry_price: float
    exit_price: float
    fees: float
    pnl: float
    ret: float
    reason: str


def buy(
    book: PaperBook, price: float, *, fee: float, slippage: float, size: float, time_ms: int
) -> PaperFill | None:
    """Open a long from flat at market ``price``; None (nothing bought) when the committed
    amount ``cash * size`` is not positive or the book is already long (no pyramiding)."""
    if book.long:
        return None
    committed = book.cash * size
    if not committed > 0.0:
        return None
    fill = price * (1.0 + slippage)
    units = committed / (fill * (1.0 + fee))
    notional = units * fill
    paid = notional * fee
    book.cash = book.cash - notional - paid
    book.units = units
    book.entry_price = fill
    book.entry_fee = paid
    book.committed = committed
    book.extreme = fill
    book.entry_ms = time_ms
    return PaperFill("buy", units, fill, paid, time_ms)


def sell(
    book: PaperBook, price: float, *, fee: float, slippage: float, time_ms: int, reason: str
) -> tuple[PaperFill, ClosedTrade] | None:
    """Close the long at market ``price`` (a stop passes its level); None when flat."""
    if not book.long:
        return None
    units = book.units
    fill = price * (1.0 - slippage)
    notional = units * fill
    paid = notional * fee
    book.cash = book.cash + notional - paid
    fees = book.entry_fee + paid
    pnl = 1.0 * units * (fill - book.entry_price) - fees
    trade = ClosedTrade(
        entry_ms=book.entry_ms,
        exit_ms=time_ms,
        units=units,
        entry_price=book.entry_price,
        exit_price=fill,
        fees=fees,
        pnl=pnl,
        ret=pnl / book.committed,
        reason=reason,
    )
    book.units = book.entry_price = book.entry_fee = book.committed = book.extreme = 0.0
    book.entry_ms = 0
    return PaperFill("sell", units, fill, paid, time_ms), trade


def stop_exit(
    book: PaperBook,
    open_: float,
    high: float,
    low: float,
    *,
    stop_loss: float | None,
    take_profit: float | None,
    trailing_stop: float | None,
) -> tuple[str, float] | None:
    """``(exit reason, market price)`` of the stop or take-profit that triggers in this candle,
    or None: the backtest engine's own rule (``backtests.engine.stop_exit``), so paper, live and
    backtest cannot decide differently. The stop (the tighter of stop-loss and trailing stop;
    ``stop_loss`` on a tie) wins over the take-profit; a gap through a level fills at the open."""
    if not book.long:
        return None
    return engine.stop_exit(
        1.0, book.entry_price, book.extreme, open_, high, low,
        stop_loss=stop_loss, take_profit=take_profit, trailing_stop=trailing_stop,
    )  # fmt: skip


def take_in_high(book: PaperBook, high: float) -> None:
    """After a candle's stop check: the trailing extreme takes in its high."""
    if book.long:
        book.extreme = max(book.extreme, high)
