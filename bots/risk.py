"""Risk rules of the bots (pure: never Django): may a signal become an order, and why not.

Bots trade spot, long only: a BUY opens a long from flat, a SELL closes it. ``assess`` runs the
checks for one signal and returns each with its outcome, for the decision log:

``position``
    BUY needs a flat book (no pyramiding), SELL a long one (nothing to sell otherwise).
``cooldown``
    after a losing trade, no entry for ``cooldown_candles`` candles: the candle in which the
    loss closed and the ones after it (``cooldown_left`` counts them down).
``daily_loss``
    no entry once the equity has fallen by ``max_daily_loss`` (a fraction) since the first
    candle of the UTC day; the service also pauses the bot (``daily_loss_breached``).
``exposure``
    the owner's budget across all bots: the notional of their other bots' positions plus this
    entry (``cash * max_position_fraction``) may not exceed ``exposure_budget``.
``balance``
    a live bot whose booked position differs from its exchange account's balance by more
    than dust (``bots.reconcile``) makes no entry until a reconciliation finds them equal.
``equity``
    an entry needs positive cash to commit.

Exits (SELL while long) are never blocked: risk rules only ever refuse new exposure. Stop-loss,
take-profit and trailing stop are not checks of a signal: the broker applies them on every
candle (``bots.paper.stop_exit``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Assessment", "Check", "EntryContext", "RiskLimits", "assess", "daily_loss_breached"]


@dataclass(frozen=True)
class RiskLimits:
    """A bot's limits (fractions; None switches one off)."""

    max_position_fraction: float = 1.0
    cooldown_candles: int = 0
    max_daily_loss: float | None = None


@dataclass(frozen=True)
class EntryContext:
    """What the checks look at when a signal arrives (after the candle's fills and stops)."""

    long: bool
    cash: float
    equity: float
    day_start_equity: float
    cooldown_left: int = 0
    exposure_other: float = 0.0
    exposure_budget: float | None = None
    # Set (why) while a live bot's booked position differs from its account's balance.
    balance_mismatch: str = ""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class Assessment:
    """``side`` of the order to send ("buy"/"sell") or None, the checks run, and ``reason``:
    why no order followed (empty when one did)."""

    side: str | None
    checks: tuple[Check, ...]
    reason: str

    def checks_json(self) -> list[dict]:
        return [check.to_dict() for check in self.checks]


def daily_loss_fraction(day_start_equity: float, equity: float) -> float:
    """Loss since the day's start as a fraction of that start (negative for a gain)."""
    if not day_start_equity > 0.0:
        return 0.0
    return (day_start_equity - equity) / day_start_equity


def daily_loss_breached(limits: RiskLimits, day_start_equity: float, equity: float) -> bool:
    return limits.max_daily_loss is not None and daily_loss_fraction(
        day_start_equity, equity
    ) >= float(limits.max_daily_loss)


def _money(value: float) -> str:
    return f"{value:.2f}"


def assess(action: str, ctx: EntryContext, limits: RiskLimits) -> Assessment:
    """Checks for one signal (``action`` BUY, SELL or HOLD); see the module docstring."""
    if action == "HOLD":
        return Assessment(None, (), "hold: the strategy asked for no trade")
    if action == "SELL":
        if not ctx.long:
            check = Check("position", False, "flat: nothing to sell (spot, long only)")
            return Assessment(None, (check,), check.detail)
        return Assessment("sell", (Check("position", True, "long: the sell closes it"),), "")
    if action != "BUY":
        raise ValueError(f"unknown action {action!r}")
    if ctx.long:
        check = Check("position", False, "already long: no pyramiding")
        return Assessment(None, (check,), check.detail)
    notional = ctx.cash * limits.max_position_fraction
    checks = [
        Check(
            "position",
            True,
            f"flat; entry of {_money(notional)} "
            f"({limits.max_position_fraction:g} of cash {_money(ctx.cash)})",
        ),
        Check(
            "cooldown",
            ctx.cooldown_left <= 0,
            f"cooling down after a loss: {ctx.cooldown_left} candle(s) left"
            if ctx.cooldown_left > 0
            else "no cooldown",
        ),
    ]
    lost = daily_loss_fraction(ctx.day_start_equity, ctx.equity)
    if limits.max_daily_loss is not None:
        breached = daily_loss_breached(limits, ctx.day_start_equity, ctx.equity)
        checks.append(
            Check(
                "daily_loss",
                not breached,
                f"lost {lost:.2%} today, limit {float(limits.max_daily_loss):.2%}",
            )
        )
    if ctx.exposure_budget is not None:
        total = ctx.exposure_other + notional
        checks.append(
            Check(
                "exposure",
                total <= ctx.exposure_budget,
                f"exposure {_money(ctx.exposure_other)} + {_money(notional)} = {_money(total)}, "
                f"budget {_money(ctx.exposure_budget)}",
            )
        )
    if ctx.balance_mismatch:
        checks.append(Check("balance", False, ctx.balance_mismatch))
    checks.append(Check("equity", notional > 0.0, f"cash to commit {_money(notional)}"))
    failed = [check for check in checks if not check.passed]
    if failed:
        return Assessment(None, tuple(checks), "; ".join(f"{c.name}: {c.detail}" for c in failed))
    return Assessment("buy", tuple(checks), "")
