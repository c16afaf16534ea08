"""Read paths of the bots app: what pages and the API show of a bot's book."""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import Count, OuterRef, QuerySet, Subquery, Sum

from bots.models import Bot, BotEvent, Order, Position, RiskBudget, Signal, Trade
from marketdata.models import Candle
from marketdata.selectors import candles_frame
from marketdata.services import datetime_to_ms
from strategies.base import OHLCVError
from strategies.registry import UnknownStrategyError, get_strategy

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
    return _book(bot, position, closed)


def _book(bot: Bot, position: Position | None, closed: dict[str, Any]) -> dict[str, Any]:
    return {
        "bot": bot.pk,
        "capital": _money(bot.capital),
        "cash": _money(bot.cash),
        "equity": _money(bot.equity),
        "position": _money(position.quantity) if position else "0",
        "entry_price": _money(position.entry_price) if position else None,
        "mark_price": _money(position.mark_price) if position else None,
        "unrealized_pnl": _money(position.unrealized_pnl) if position else "0",
        "dust": _money(position.dust) if position else "0",
        "realized_pnl": _money(closed["pnl"] or Decimal(0)),
        "fees": _money(closed["fees"] or Decimal(0)),
        "trades": closed["count"],
        "last_processed_at": bot.last_processed_at,
    }


def user_portfolio(user: Any) -> dict[str, Any]:
    """Each of ``user``'s bots (``portfolio``) and the ``TOTALS`` over them, in one query
    however many bots (the position joined, the closed trades summed per bot by the database,
    as ``portfolio`` sums them)."""
    bots = (
        Bot.objects.filter(owner=user)
        .select_related("position")
        .annotate(
            book_pnl=Sum("trades__pnl"), book_fees=Sum("trades__fees"), book_trades=Count("trades")
        )
        .order_by("id")
    )
    rows = [
        _book(
            bot,
            getattr(bot, "position", None),
            {"pnl": bot.book_pnl, "fees": bot.book_fees, "count": bot.book_trades},
        )
        for bot in bots
    ]
    total = {
        name: str(sum((Decimal(row[name]) for row in rows if row[name] is not None), Decimal(0)))
        for name in TOTALS
    }
    return {"bots": rows, "total": total}


# --- pages: dashboard and bot detail --------------------------------------------------------
# Appended for the bots' pages; these read in a fixed number of queries however many bots
# a page shows (as ``user_portfolio`` above).

#: Rows of each history table on a bot's page (older ones: the REST API).
HISTORY_ROWS = 50
#: Candles on a bot's chart, and the most extra ones read before them to warm the indicators
#: up (an EMA's exact warm-up can be far longer; beyond this its start value has faded).
CHART_CANDLES = 300
CHART_WARMUP_CAP = 5_000


def bots_visible(user: Any, *, everyone: bool = False) -> QuerySet:
    """The bots a page lists: the user's own; a staff user's ``everyone`` shows all. With
    the instrument, the position and the last decision (action, time) in one query."""
    bots = Bot.objects.all() if everyone and user.is_staff else Bot.objects.filter(owner=user)
    last = Signal.objects.filter(bot=OuterRef("pk")).order_by("-time")
    return bots.select_related("instrument__exchange", "position", "owner").annotate(
        last_signal_action=Subquery(last.values("action")[:1]),
        last_signal_time=Subquery(last.values("time")[:1]),
    )


def portfolio_totals(bots: QuerySet) -> dict[str, Any]:
    """``user_portfolio``'s ``TOTALS`` over ``bots`` (strings of decimals), with the P&L
    (equity - capital, and in % of the capital) and the number of bots and of running ones, in
    three queries."""
    ids = bots.values("pk")
    # One row per bot summed here, exactly (SQLite's SUM of decimals goes through floats); the
    # trades, which can be millions, are summed by the database.
    rows = list(Bot.objects.filter(pk__in=ids).values_list("capital", "equity", "status"))
    running = sum(1 for _, _, status in rows if status == Bot.Status.RUNNING)
    unrealized = Position.objects.filter(bot__in=ids).values_list("unrealized_pnl", flat=True)
    closed = Trade.objects.filter(bot__in=ids).aggregate(pnl=Sum("pnl"), fees=Sum("fees"))
    values = {
        "capital": sum((c for c, _, _ in rows), Decimal(0)),
        "equity": sum((e for _, e, _ in rows if e is not None), Decimal(0)),
        "unrealized_pnl": sum(unrealized, Decimal(0)),
        "realized_pnl": closed["pnl"], "fees": closed["fees"],
    }  # fmt: skip
    total = {name: str(values[name] or Decimal(0)) for name in TOTALS}
    pnl = Decimal(total["equity"]) - Decimal(total["capital"])
    capital = Decimal(total["capital"])
    return {
        **total,
        "pnl": str(pnl),
        "pnl_pct": float(pnl / capital * 100) if capital else None,
        "bots": len(rows),
        "running": running,
    }


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def dashboard_row(bot: Bot) -> dict[str, Any]:
    """One bot's line of the dashboard, JSON-native (numbers as floats: for display only).
    ``bot`` comes from ``bots_visible`` (its position and last decision are already read)."""
    position = getattr(bot, "position", None)
    capital, equity = _float(bot.capital), _float(bot.equity)
    pnl = None if equity is None or capital is None else equity - capital
    last_time = getattr(bot, "last_signal_time", None)
    return {
        "id": bot.pk,
        "name": bot.name,
        "owner": bot.owner.get_username(),
        "status": bot.status,
        "status_reason": bot.status_reason,
        "mode": bot.mode,
        "strategy": bot.strategy,
        "exchange": bot.instrument.exchange.ccxt_id,
        "symbol": bot.instrument.symbol,
        "timeframe": bot.timeframe,
        "capital": capital,
        "equity": equity,
        "pnl": pnl,
        "pnl_pct": None if pnl is None or not capital else pnl / capital * 100,
        "position": _float(position.quantity) if position else 0.0,
        "entry_price": _float(position.entry_price) if position else None,
        "mark_price": _float(position.mark_price) if position else None,
        "unrealized_pnl": _float(position.unrealized_pnl) if position else 0.0,
        "fee": bot.fee,
        "last_signal": (
            {"action": bot.last_signal_action, "time_ms": datetime_to_ms(last_time)}
            if last_time is not None
            else None
        ),
    }


def recent_events(user: Any, *, everyone: bool = False, limit: int = 20) -> list[BotEvent]:
    """The latest audit events of the user's bots; staff with ``everyone``: the platform's."""
    events = BotEvent.objects.select_related("bot", "actor").order_by("-time", "-id")
    if not (everyone and user.is_staff):
        events = events.filter(bot__owner=user)
    return list(events[:limit])


def bot_history(bot: Bot) -> dict[str, list[Any]]:
    """The latest decisions, orders and closed trades of a bot (``HISTORY_ROWS`` each)."""
    return {
        "signals": list(Signal.objects.filter(bot=bot).order_by("-time")[:HISTORY_ROWS]),
        "orders": with_fees(bot.orders.order_by("-time", "-id")[:HISTORY_ROWS]),
        "trades": list(Trade.objects.filter(bot=bot).order_by("-exit_time", "-id")[:HISTORY_ROWS]),
    }


def with_fees(orders: QuerySet) -> list[Order]:
    """``orders`` with their fees as the exchange charged them: ``fee_parts``, a list of
    ``(amount, asset)`` per asset, and ``fee_value``, their sum valued in the quote currency
    (one query for all their fills)."""
    rows = list(orders.prefetch_related("fills"))
    for order in rows:
        parts: dict[str, Decimal] = {}
        order.fee_value = Decimal(0)
        for fill in order.fills.all():
            if fill.fee_cost:
                parts[fill.fee_currency] = parts.get(fill.fee_currency, Decimal(0)) + fill.fee_cost
            order.fee_value += fill.fee
        order.fee_parts = sorted(parts.items(), key=lambda part: part[0])
    return rows


def equity_points(bot: Bot) -> list[dict[str, Any]]:
    """The bot's realised equity: its capital, then capital plus the cumulative P&L at each
    closed trade's exit, and its current (marked) equity at the last candle it processed."""
    start = bot.created_at
    first = Trade.objects.filter(bot=bot).order_by("exit_time").values_list("entry_time")[:1]
    if first:
        start = min(start, first[0][0])
    value = bot.capital
    points = [{"timestamp": datetime_to_ms(start), "value": float(value)}]
    for exit_time, pnl in (
        Trade.objects.filter(bot=bot).order_by("exit_time", "id").values_list("exit_time", "pnl")
    ):
        value += pnl
        points.append({"timestamp": datetime_to_ms(exit_time), "value": float(value)})
    if bot.equity is not None and bot.last_processed_at is not None:
        points.append(
            {"timestamp": datetime_to_ms(bot.last_processed_at), "value": float(bot.equity)}
        )
    # One point per time (the chart needs strictly increasing times): the last one wins.
    by_time = {p["timestamp"]: p for p in points}
    return [by_time[t] for t in sorted(by_time)]


def _finite(values: Iterable[float | None]) -> list[float | None]:
    return [v if v is not None and math.isfinite(v) else None for v in values]


def bot_chart(bot: Bot, *, limit: int = CHART_CANDLES) -> dict[str, Any]:
    """What a bot's price chart starts with: its market's last ``limit`` stored candles, the
    strategy's indicators over them (``get_indicators``, computed with up to
    ``CHART_WARMUP_CAP`` earlier candles so that they are warmed up), and a marker for each
    executed decision and each exit by a risk rule (stop-loss, take-profit, trailing stop).

    ``{"candles": [{timestamp, open, high, low, close, volume}], "indicators": {name: {pane,
    color?, group?, style?, levels?, values: [...]}}`` with values aligned to the candles
    (null in the warm-up), ``"markers": [{time_ms, side, text}]``, ``"error"``: why the
    indicators are missing, if they are}.
    """
    candles = Candle.objects.filter(instrument_id=bot.instrument_id, timeframe=bot.timeframe)
    out: dict[str, Any] = {"candles": [], "indicators": {}, "markers": [], "error": ""}
    try:
        cls = get_strategy(bot.strategy)
        params = cls.clean_parameters(bot.parameters)
        warmup = min(cls.lookback(params), CHART_WARMUP_CAP)
    except (UnknownStrategyError, ValueError) as exc:
        cls, params, warmup = None, None, 0
        out["error"] = str(exc)
    first = list(
        candles.order_by("-close_time").values_list("close_time", flat=True)[
            limit + warmup - 1 : limit + warmup
        ]
    )
    frame = candles_frame(
        instrument_id=bot.instrument_id, timeframe=bot.timeframe,
        start=first[0] if first else None,
    )  # fmt: skip
    shown = frame.iloc[-limit:] if limit else frame.iloc[:0]
    times = shown.index.as_unit("ms").asi8.tolist()
    out["candles"] = [
        {"timestamp": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, o, h, lo, c, v in zip(
            times, *(shown[name].tolist() for name in ("open", "high", "low", "close", "volume")),
            strict=True,
        )
    ]  # fmt: skip
    if cls is not None and len(frame):
        strategy = cls(params)
        try:
            strategy.process_data(frame)
        except (OHLCVError, ValueError) as exc:
            out["error"] = f"indicators unavailable: {exc}"
        else:
            for name, series in strategy.get_indicators().items():
                values = series.pop("values")[-len(shown) :] if len(shown) else []
                out["indicators"][name] = {**series, "values": _finite(values)}
    if times:
        since = shown.index[0].to_pydatetime()
        for time, action in Signal.objects.filter(
            bot=bot, executed=True, time__gte=since
        ).values_list("time", "action"):
            side = "buy" if action == Signal.Action.BUY else "sell"
            out["markers"].append({"time_ms": datetime_to_ms(time), "side": side, "text": action})
        for exit_time, reason in (
            Trade.objects.filter(bot=bot, exit_time__gte=since)
            .exclude(exit_reason="signal")
            .values_list("exit_time", "exit_reason")
        ):
            out["markers"].append(
                {"time_ms": datetime_to_ms(exit_time), "side": "sell", "text": reason}
            )
    return out


def kill_switch_engaged_at(user: Any) -> datetime | None:
    """When ``user``'s own kill switch was engaged, or None (not engaged, or never): what the
    pages' release banner and ``/api/kill-switch/`` show."""
    rows = RiskBudget.objects.filter(owner=user).values_list("kill_switch_at", flat=True)
    return rows.first()


# --- the platform's event log (the REST API) -------------------------------------------------


def system_events_for(user: Any) -> QuerySet:
    """The stored events behind the ``system_events`` channel: every bot's audit rows
    (``BotEvent``), newest first, with the bot, its owner and the actor in the same query. The
    user's own bots'; staff: every user's."""
    rows = BotEvent.objects.select_related("bot__owner", "actor").order_by("-time", "-id")
    return rows if user.is_staff else rows.filter(bot__owner=user)
