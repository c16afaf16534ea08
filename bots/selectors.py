"""Read paths of the bots app: what pages and the API show of a bot's book."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.db.models import Count, Sum

from bots.models import Bot, Position, Trade

#: The figures summed over a user's bots in ``user_portfolio``.
TOTALS = ("capital", "equity", "unrealized_pnl", "realized_pnl", "fees")


def _money(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def portfolio(bot: Bot) -> dict[str, Any]:
    """One bot's book: capital, cash, equity, the position, realised P&L and fees of its closed
    trades. Money as strings of decimals (exact)."""
    position = Position.objects.filter(bot=bot).first()
    closed = Trade.objects.filter(bot=bot).aggregate(
        pnl=Sum("pnl"), fees=Sum("fees"), count=Count("id")
    )
    return {
        "bot": bot.pk,
        "capital": _money(bot.capital),
        "cash": _money(bot.cash),
        "equity": _money(bot.equity),
        "position": _money(position.quantity) if position else "0",
        "entry_price": _money(position.entry_price) if position else None,
        "mark_price": _money(position.mark_price) if position else None,
        "unrealized_pnl": _money(position.unrealized_pnl) if position else "0",
        "realized_pnl": _money(closed["pnl"] or Decimal(0)),
        "fees": _money(closed["fees"] or Decimal(0)),
        "trades": closed["count"],
        "last_processed_at": bot.last_processed_at,
    }


def user_portfolio(user: Any) -> dict[str, Any]:
    """Each of ``user``'s bots (``portfolio``) and the ``TOTALS`` over them."""
    rows = [portfolio(bot) for bot in Bot.objects.filter(owner=user).order_by("id")]
    total = {
        name: str(sum((Decimal(row[name]) for row in rows if row[name] is not None), Decimal(0)))
        for name in TOTALS
    }
    return {"bots": rows, "total": total}
