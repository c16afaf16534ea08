"""Paper execution, candle by candle, with the backtester's conventions (pure: never Django).

A ``PaperBook`` is one bot's paper account: its cash and its long position. The functions here
are ``backtests.engine``'s kernel for the bots' case (spot, long-only, ``next_open`` fills),
written out operation by operation in the kernel's order, so that the float results are
bit-identical to ``run_backtest`` on the same candles and signals:

* an order decided on candle ``i``'s close fills at candle ``i + 1``'s open (``buy``/``sell``),
  ``slippage`` against us, ``fee`` a fraction of the notional, entry size
  ``units = cash * size / (fill * (1 + fee))``;
* with ``fee_in_base`` (``buy``'s option, the engine's ``EngineOptions.fee_in_base``) the buy's
  fee is taken from the coin bought instead of the cash, in the kernel's float order (the
  engine's module docstring, "Prices and costs"): ``gross = cash * size / fill`` bought,
  ``units = gross - gross * fee`` held, the cash less ``gross * fill``, the fee recorded
  ``gross * fee * fill``; a sell's fee stays in the quote currency;
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

    Live bots only (zero, and absent from ``to_dict``, on paper): ``dust`` is coin held below
    the exchange's minimum order, kept apart from the position (the bot is flat with it) and
    carried with its cost basis (``dust_price``, ``dust_fee``, ``dust_committed``: the share of
    the entry it came from) until an entry or an exit takes it back in (``merge_dust``);
    ``other_fees`` the fees paid in a third asset (BNB), valued in the quote currency at their
    fills: they are in the trades' P&L but never moved the cash, so the equity subtracts them.
    """

    cash: float
    units: float = 0.0
    entry_price: float = 0.0
    entry_fee: float = 0.0
    committed: float = 0.0
    extreme: float = 0.0
    entry_ms: int = 0
    dust: float = 0.0
    dust_price: float = 0.0
    dust_fee: float = 0.0
    dust_committed: float = 0.0
    other_fees: float = 0.0

    @property
    def long(self) -> bool:
        return self.units > 0.0

    @property
    def held(self) -> float:
        """The coin the bot holds: the position and its dust."""
        return self.units + self.dust

    def equity(self, close: float) -> float:
        """Cash plus the position at ``close`` (the engine's ``cash + side * units * close``),
        plus the dust at ``close`` and less the third-asset fees of a live bot (terms added only
        when present, so that a paper book's value is the engine's to the bit)."""
        side = 1.0 if self.long else 0.0
        value = self.cash + side * self.units * close
        if self.dust:
            value += self.dust * close
        if self.other_fees:
            value -= self.other_fees
        return value

    def merge_dust(self) -> None:
        """Take the dust back into the position (an exit sells it along, an entry adds it to
        the new position): the average entry price, and the dust's fee and committed equity
        added, so that the round trip's P&L counts the dust's cost."""
        if not self.dust:
            return
        total = self.units + self.dust
        self.entry_price = (self.units * self.entry_price + self.dust * self.dust_price) / total
        self.entry_fee += self.dust_fee
        self.committed += self.dust_committed
        self.extreme = max(self.extreme, self.dust_price)
        self.units = total
        self.dust = self.dust_price = self.dust_fee = self.dust_committed = 0.0

    def clear_position(self) -> None:
        """Flat: the position's fields zero (cash, dust and third-asset fees kept)."""
        self.units = self.entry_price = self.entry_fee = self.committed = self.extreme = 0.0
        self.entry_ms = 0

    def to_dust(self) -> None:
        """The whole position becomes dust (unsellable): the book is flat, the coin and its
        cost basis are kept apart."""
        if not self.long:
            return
        total = self.units + self.dust
        self.dust_price = (self.units * self.entry_price + self.dust * self.dust_price) / total
        self.dust_fee += self.entry_fee
        self.dust_committed += self.committed
        self.dust = total
        self.clear_position()

    def transfer(self, amount: float, price: float) -> None:
        """Coin moved into (``amount`` > 0) or out of the bot's holding outside of any trade
        (a balance adopted from the account), valued at ``price``: what leaves comes out of
        the dust first, then the position, with its share of their cost basis; what arrives
        joins the position (or the dust, while flat) at ``price``, as its cost."""
        if amount < 0.0:
            out = -amount
            if self.dust:
                take = min(out, self.dust)
                keep = (self.dust - take) / self.dust
                self.dust_fee *= keep
                self.dust_committed *= keep
                self.dust -= take
                out -= take
                if self.dust <= 1e-12:
                    self.dust = self.dust_price = self.dust_fee = self.dust_committed = 0.0
            if out > 0.0 and self.long:
                take = min(out, self.units)
                keep = (self.units - take) / self.units
                self.entry_fee *= keep
                self.committed *= keep
                self.units -= take
                if self.units <= 1e-12:
                    self.clear_position()
            return
        if self.long:
            total = self.units + amount
            self.entry_price = (self.units * self.entry_price + amount * price) / total
            self.units = total
            self.committed += amount * price
        elif amount > 0.0:
            total = self.dust + amount
            self.dust_price = (self.dust * self.dust_price + amount * price) / total
            self.dust = total
            self.dust_committed += amount * price

    def to_dict(self) -> dict:
        """JSON-native; floats survive a JSON round trip exactly (shortest repr). (``asdict``'s
        result, without its recursive copy: every field is a plain number.) The live-only
        fields are left out while zero."""
        data = {name: getattr(self, name) for name in _BOOK_FIELDS}
        for name in _LIVE_FIELDS:
            if not data[name]:
                del data[name]
        return data

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
            **{name: float(data.get(name, 0.0)) for name in _LIVE_FIELDS},
        )


_BOOK_FIELDS = tuple(f.name for f in fields(PaperBook))
_LIVE_FIELDS = ("dust", "dust_price", "dust_fee", "dust_committed", "other_fees")


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
    book: PaperBook,
    price: float,
    *,
    fee: float,
    slippage: float,
    size: float,
    time_ms: int,
    fee_in_base: bool = False,
) -> PaperFill | None:
    """Open a long from flat at market ``price``; None (nothing bought) when the committed
    amount ``cash * size`` is not positive or the book is already long (no pyramiding).

    ``fee_in_base``: the exchange keeps ``fee`` of the coin bought (``fee`` below 1, as
    ``EngineOptions`` requires); the book holds the rest, and the fill reports the coin the order
    bought (``gross``, the exchange's executed amount) with the fee valued in quote at the fill.
    Each line is the engine's ``_entry_nb``, in its order: keep them identical."""
    if book.long:
        return None
    committed = book.cash * size
    if not committed > 0.0:
        return None
    fill = price * (1.0 + slippage)
    if fee_in_base:
        gross = committed / fill
        kept = gross * fee
        units = gross - kept
        paid = kept * fill
        book.cash = book.cash - gross * fill
        bought = gross
    else:
        units = committed / (fill * (1.0 + fee))
        notional = units * fill
        paid = notional * fee
        book.cash = book.cash - notional - paid
        bought = units
    book.units = units
    book.entry_price = fill
    book.entry_fee = paid
    book.committed = committed
    book.extreme = fill
    book.entry_ms = time_ms
    return PaperFill("buy", bought, fill, paid, time_ms)


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
