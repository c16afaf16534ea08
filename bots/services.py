"""Writes of the bots app: create, start, stop, pause, kill switch, and candle processing.

Every state change locks the bot row (``select_for_update``) and moves it with a conditional
UPDATE, so that racing calls leave one consistent state and one ``BotEvent`` per actual change;
events leave after commit (``publish_on_commit``).

Processing a closed candle (``process_candle``) runs, for every running bot on that instrument
and timeframe, each candle after the bot's ``last_processed_at`` up to it, in order:

1. the broker's candle step (paper: the pending order fills at the open, then the stops);
2. the strategy's ``process_data`` on the last ``lookback`` candles;
3. the risk checks (``bots.risk``) and, when they pass, an order to the broker (paper: it fills
   at the next candle's open);
4. a ``Signal`` row with the checks and the reason when no order followed.

Candles are read once per (instrument, timeframe) for all its bots. Paper bots run as one
batch: bots with the same strategy and parameters share one vectorised decision per candle, and
all the batch's signals, orders, fills, trades, books and positions are written in bulk in one
transaction under the bots' row locks, the events published together after commit (a thousand
bots take well under a second per candle). Live bots run one by one (``_process_bot``).
``last_processed_at`` moves with the rows: a redelivered or replayed candle finds it already
processed (and the unique ``Signal`` and ``client_order_id`` refuse a second decision or order
if anything slipped through: the batch then rolls back and each bot retries on its own).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import F, FloatField, Max, Min, Sum
from django.db.models.functions import Cast
from django.utils import timezone

from bots import paper, risk
from bots.brokers import (
    Broker,
    BrokerError,
    PaperBroker,
    PaperWrites,
    broker_for,
    position_fields,
    rows_update,
)
from bots.models import Bot, BotEvent, Order, Position, RiskBudget
from bots.models import Signal as SignalRow
from marketdata.models import Candle, Instrument
from marketdata.services import datetime_to_ms, ms_to_datetime, to_decimal
from strategies.base import (
    OHLCV_COLUMNS,
    Action,
    BaseStrategy,
    Decision,
    OHLCVArrays,
    OHLCVError,
    Signal,
    _unchecked,
    ohlcv_arrays,
    validate_ohlcv,
)
from strategies.registry import get_strategy
from tradeapp.events import publish_many_on_commit, publish_on_commit

logger = logging.getLogger(__name__)

RISK_FIELDS = (
    "max_position_fraction", "stop_loss", "take_profit", "trailing_stop", "cooldown_candles",
    "max_daily_loss", "fee", "fee_in_base", "slippage",
)  # fmt: skip


_UNSET: Any = object()


class BotStateError(Exception):
    """The bot cannot make that change (live trading off, kill switch engaged, ...)."""


# --- parameters -----------------------------------------------------------------------------


def parameters_clean(strategy: str, parameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """The strategy's cleaned parameters. Raises ``UnknownStrategyError`` (listing the known
    ones) or ``StrategyParameterError`` naming the parameter."""
    return dict(get_strategy(strategy).clean_parameters(parameters or {}))


def strategy_for(bot: Bot, cache: dict[int, BaseStrategy] | None = None) -> BaseStrategy:
    """The bot's strategy instance; ``cache`` (``BotManager.active_bots``) keeps it per bot
    until the strategy or its parameters change."""
    if cache is not None:
        found = cache.get(bot.pk)
        if found is not None and found.name == bot.strategy and found.parameters == bot.parameters:
            return found
    instance = get_strategy(bot.strategy)(bot.parameters)
    if cache is not None:
        cache[bot.pk] = instance
    return instance


# --- events ---------------------------------------------------------------------------------


def _status_event(
    bot: Bot, previous: str, kind: str, actor: Any, message: str, *, notify: bool = True
) -> None:
    BotEvent.objects.create(
        bot=bot, kind=kind, actor=actor if getattr(actor, "pk", None) else None,
        message=message, data={"from": previous, "to": bot.status},
    )  # fmt: skip
    if not notify:
        return
    payload = {
        "bot_id": bot.pk, "status": bot.status, "previous": previous, "message": message,
        "actor": getattr(actor, "username", None),
    }  # fmt: skip
    publish_on_commit(f"bot_signals:{bot.pk}", {"type": "bot.status", **payload})
    publish_on_commit("system_events", {"type": f"bot.{kind}", "owner_id": bot.owner_id, **payload})


def _transition(bot: Bot, *, to: str, allowed_from: Iterable[str], **fields: Any) -> bool:
    """Move the locked ``bot`` to status ``to`` if it is in ``allowed_from``: one conditional
    UPDATE, True when this call made the change."""
    changed = Bot.objects.filter(pk=bot.pk, status__in=list(allowed_from)).update(
        status=to, updated_at=timezone.now(), **fields
    )
    if changed:
        bot.status = to
        for name, value in fields.items():
            setattr(bot, name, value)
    return bool(changed)


# --- create and lifecycle -------------------------------------------------------------------


@transaction.atomic
def bot_create(
    *,
    user: Any,
    name: str,
    strategy: str,
    parameters: Mapping[str, Any] | None,
    instrument: Instrument,
    timeframe: str = "1m",
    mode: str = Bot.Mode.PAPER,
    account: Any = None,
    capital: float | str = 10_000,
    **options: Any,
) -> Bot:
    """A new stopped bot with validated parameters and a fresh paper book of ``capital``.

    ``options``: the risk and cost fields (``RISK_FIELDS``). Raises ``StrategyParameterError``
    naming the parameter, ``ValidationError`` for other fields, ``tradeapp.limits.
    LimitExceeded`` (429) when the user owns their limit of bots (counted under the user's row
    lock, so two creations at once cannot both take the last place).
    """
    from tradeapp.limits import check_bots

    unknown = sorted(set(options) - set(RISK_FIELDS))
    if unknown:
        raise TypeError(f"unknown bot option(s) {', '.join(unknown)}")
    bot = Bot(
        owner=user, name=name, strategy=strategy,
        parameters=parameters_clean(strategy, parameters), instrument=instrument,
        timeframe=timeframe, mode=mode, account=account, capital=to_decimal(float(capital)),
        **options,
    )  # fmt: skip
    bot.full_clean(exclude=["parameters"])
    check_bots(user)
    book_reset(bot)
    bot.save()
    Position.objects.create(bot=bot)
    BotEvent.objects.create(bot=bot, kind=BotEvent.Kind.CREATED, actor=user, message=name)
    return bot


def book_reset(bot: Bot) -> None:
    """A fresh paper book: all of the capital in cash, flat (the caller saves)."""
    book = paper.PaperBook(cash=float(bot.capital))
    bot.paper_book = book.to_dict()
    bot.risk_state = {}
    bot.cash = bot.equity = bot.capital


def _check_can_start(bot: Bot) -> None:
    if bot.mode == Bot.Mode.LIVE:
        if not settings.TRADEAPP_LIVE_TRADING:
            raise BotStateError(
                f"bot {bot.pk} is in live mode but live trading is disabled "
                "(set TRADEAPP_LIVE_TRADING=1 to allow it)"
            )
        if bot.account_id is None:
            raise BotStateError(f"bot {bot.pk} is in live mode without an exchange account")
        broker_for(bot)  # BrokerError when the live broker refuses it (bots.live)
    budget = RiskBudget.objects.filter(owner_id=bot.owner_id).first()
    if budget is not None and budget.kill_switch_at is not None:
        since = budget.kill_switch_at.strftime("%Y-%m-%d %H:%M")
        raise BotStateError(
            f"the kill switch of {bot.owner} is engaged (since {since} UTC): release it before "
            "starting bots"
        )


def bot_start(*, bot_id: int, actor: Any = None, notify: bool = True) -> bool:
    """Start a bot: True if this call started it, False if it was already running.

    A bot that never ran begins after the newest stored candle (history is not traded); one that
    ran before catches up on the candles it missed, in order (a task is queued after commit).
    Raises ``BotStateError`` for a live bot while live trading is off, or while the owner's kill
    switch is engaged. ``notify=False`` (the demo set-up, before Redis runs) writes the audit
    row but sends no event and queues no task (beat's catch-up picks the bot up).
    """
    try:
        with transaction.atomic():
            bot = Bot.objects.select_for_update().get(pk=bot_id)
            if bot.status == Bot.Status.RUNNING:
                return False
            _check_can_start(bot)
            last = bot.last_processed_at
            if last is None:
                last = Candle.objects.filter(
                    instrument_id=bot.instrument_id, timeframe=bot.timeframe
                ).aggregate(last=Max("close_time"))["last"]
            previous = bot.status
            if not _transition(
                bot, to=Bot.Status.RUNNING, allowed_from=[previous], status_reason="",
                last_processed_at=last,
            ):  # fmt: skip
                return False
            broker_for(bot).reconcile(bot)
            _status_event(bot, previous, BotEvent.Kind.STARTED, actor, "started", notify=notify)
            if notify and last is not None:
                transaction.on_commit(
                    lambda: catch_up_enqueue(bot.instrument_id, bot.timeframe, after=last),
                    robust=True,
                )
    except BrokerError as exc:
        raise BotStateError(str(exc)) from exc
    return True


def _cancel_active_orders(bot: Bot, broker: Broker | None = None) -> int:
    orders = list(bot.orders.filter(status__in=Order.ACTIVE))
    if not orders:
        return 0
    try:
        broker = broker or broker_for(bot)
    except BrokerError:
        broker = None
    for order in orders:
        if broker is None:
            order.status = Order.Status.CANCELLED
            order.save(update_fields=["status", "updated_at"])
        else:
            broker.cancel(order)
    return len(orders)


@transaction.atomic
def bot_stop(*, bot_id: int, actor: Any = None, reason: str = "stopped") -> bool:
    """Stop a bot and cancel its open orders: True if this call stopped it."""
    bot = Bot.objects.select_for_update().get(pk=bot_id)
    previous = bot.status
    if previous == Bot.Status.STOPPED:
        return False
    if not _transition(bot, to=Bot.Status.STOPPED, allowed_from=[previous], status_reason=reason):
        return False
    _cancel_active_orders(bot)
    _status_event(bot, previous, BotEvent.Kind.STOPPED, actor, reason)
    return True


def _bot_pause(bot: Bot, reason: str) -> bool:
    """Pause a locked running bot (the daily loss limit): it keeps its book and open orders."""
    if not _transition(
        bot, to=Bot.Status.PAUSED, allowed_from=[Bot.Status.RUNNING], status_reason=reason
    ):
        return False
    _status_event(bot, Bot.Status.RUNNING, BotEvent.Kind.PAUSED, None, reason)
    return True


@transaction.atomic
def bot_error(*, bot_id: int, message: str) -> bool:
    """Put a bot in the error state (its processing failed): True if this call did."""
    bot = Bot.objects.select_for_update().get(pk=bot_id)
    previous = bot.status
    if previous in (Bot.Status.ERROR, Bot.Status.STOPPED):
        return False
    _transition(bot, to=Bot.Status.ERROR, allowed_from=[previous], status_reason=message)
    _status_event(bot, previous, BotEvent.Kind.ERROR, None, message)
    return True


UPDATABLE = ("name", "parameters", *RISK_FIELDS, "status_reason")


@transaction.atomic
def bot_update_state(*, bot_id: int, state: Mapping[str, Any], actor: Any = None) -> Bot:
    """Change a bot's settings (``UPDATABLE``) and/or its ``status`` (through start, stop or
    pause, with their rules). Unknown keys raise ``ValueError``; parameters are validated."""
    unknown = sorted(set(state) - {*UPDATABLE, "status"})
    if unknown:
        allowed = ", ".join(["status", *UPDATABLE])
        raise ValueError(f"cannot update {', '.join(unknown)}; allowed: {allowed}")
    bot = Bot.objects.select_for_update().get(pk=bot_id)
    changes = {k: v for k, v in state.items() if k != "status"}
    if "parameters" in changes:
        changes["parameters"] = parameters_clean(bot.strategy, changes["parameters"])
    if changes:
        for name, value in changes.items():
            setattr(bot, name, value)
        bot.full_clean(exclude=["parameters"])
        bot.save(update_fields=[*changes, "updated_at"])
        BotEvent.objects.create(
            bot=bot, kind=BotEvent.Kind.STATE_UPDATED,
            actor=actor if getattr(actor, "pk", None) else None,
            message=", ".join(sorted(changes)), data={"changes": sorted(changes)},
        )  # fmt: skip
    status = state.get("status")
    if status == Bot.Status.RUNNING:
        bot_start(bot_id=bot.pk, actor=actor)
    elif status == Bot.Status.STOPPED:
        bot_stop(bot_id=bot.pk, actor=actor)
    elif status == Bot.Status.PAUSED:
        _bot_pause(bot, state.get("status_reason") or "paused")
    elif status is not None:
        raise ValueError(f"status must be running, stopped or paused, not {status!r}")
    bot.refresh_from_db()
    return bot


@transaction.atomic
def kill_switch(*, user: Any, actor: Any = None) -> dict[str, int]:
    """Stop all of ``user``'s bots and cancel their open orders; no bot of theirs starts again
    until ``kill_switch_release``. Returns the counts."""
    budget, _ = RiskBudget.objects.select_for_update().get_or_create(owner=user)
    budget.kill_switch_at = timezone.now()
    budget.save(update_fields=["kill_switch_at", "updated_at"])
    stopped = cancelled = 0
    for bot in Bot.objects.select_for_update().filter(owner=user).order_by("pk"):
        previous = bot.status
        if previous != Bot.Status.STOPPED and _transition(
            bot, to=Bot.Status.STOPPED, allowed_from=[previous], status_reason="kill switch"
        ):
            stopped += 1
            _status_event(bot, previous, BotEvent.Kind.KILL_SWITCH, actor, "kill switch")
        cancelled += _cancel_active_orders(bot)
    publish_on_commit(
        "system_events",
        {"type": "kill_switch", "owner_id": user.pk, "bots_stopped": stopped,
         "orders_cancelled": cancelled, "actor": getattr(actor, "username", None)},
    )  # fmt: skip
    return {"bots_stopped": stopped, "orders_cancelled": cancelled}


@transaction.atomic
def kill_switch_release(*, user: Any, actor: Any = None) -> bool:
    """Release ``user``'s kill switch: their bots may be started again (none starts by itself).
    True if this call released it, False if it was not engaged. Audited as the engage is: a
    ``kill_switch_released`` row on each of the user's bots, with ``actor`` (their owner, or
    the staff member in the admin), and ``kill_switch.released`` on ``system_events``."""
    budget = (
        RiskBudget.objects.select_for_update()
        .filter(owner=user, kill_switch_at__isnull=False)
        .first()
    )
    if budget is None:
        return False
    engaged_at = budget.kill_switch_at
    budget.kill_switch_at = None
    budget.save(update_fields=["kill_switch_at", "updated_at"])
    row = {
        "kind": BotEvent.Kind.KILL_SWITCH_RELEASED,
        "actor": actor if getattr(actor, "pk", None) else None,
        "message": "kill switch released",
        "data": {"engaged_at": engaged_at.isoformat()},
    }
    bot_ids = Bot.objects.filter(owner=user).order_by("pk").values_list("pk", flat=True)
    BotEvent.objects.bulk_create(BotEvent(bot_id=bot_id, **row) for bot_id in bot_ids)
    publish_on_commit(
        "system_events",
        {"type": "kill_switch.released", "owner_id": user.pk,
         "actor": getattr(actor, "username", None)},
    )  # fmt: skip
    return True


# --- processing -----------------------------------------------------------------------------


def catch_up_enqueue(instrument_id: int, timeframe: str, *, after: datetime | None = None) -> bool:
    """Queue processing up to the newest stored candle of (instrument, timeframe), if there is
    one (after ``after``). True when a task was queued."""
    from bots.tasks import process_candle_task

    last = Candle.objects.filter(instrument_id=instrument_id, timeframe=timeframe).aggregate(
        last=Max("close_time")
    )["last"]
    if last is None or (after is not None and last <= after):
        return False
    process_candle_task.delay(instrument_id, timeframe, datetime_to_ms(last))
    return True


def catch_up_all() -> int:
    """Queue processing for every (instrument, timeframe) with a running bot that has not seen
    the newest stored candle; returns how many streams were queued."""
    behind = (
        Bot.objects.running()
        .values_list("instrument_id", "timeframe")
        .annotate(oldest=Min("last_processed_at"))
    )
    return sum(
        catch_up_enqueue(instrument_id, timeframe, after=oldest)
        for instrument_id, timeframe, oldest in sorted(set(behind))
    )


class _Conversions:
    """Memos of ``_Candles.load``'s per-value conversions (bounded: cleared when full)."""

    LIMIT = 200_000

    def __init__(self) -> None:
        self._times: dict[Any, int] = {}
        self._rounded: dict[float, float] = {}

    def times(self, raw: list[Any]) -> list[int]:
        """Stored close times as epoch microseconds (what the ``DateTimeField`` reads)."""
        memo = self._times
        if len(memo) > self.LIMIT:
            memo.clear()
        out = []
        for value in raw:
            found = memo.get(value)
            if found is None:
                when = value
                convert = getattr(connection.ops, "convert_datetimefield_value", None)
                if convert is not None:
                    when = convert(value, None, connection)
                if timezone.is_naive(when):
                    when = timezone.make_aware(when, UTC)
                delta = when - datetime(1970, 1, 1, tzinfo=UTC)
                found = memo[value] = (
                    delta.days * 86_400_000_000 + delta.seconds * 1_000_000 + delta.microseconds
                )
            out.append(found)
        return out

    def rounded(self, raw: list[float]) -> list[float]:
        """``float(Decimal)`` of SQLite's Decimal converter: 15 significant digits."""
        memo = self._rounded
        if len(memo) > self.LIMIT:
            memo.clear()
        out = []
        for value in raw:
            found = memo.get(value)
            if found is None:
                found = float(f"{value:.15g}")
                if value:  # not 0.0 == -0.0 (one key): each is its own rounding
                    memo[value] = found
            out.append(found)
        return out


_CONVERSIONS = _Conversions()


@dataclass
class _Candles:
    """One shared window of candles for every bot of a stream, as arrays."""

    frame: pd.DataFrame
    times_ms: np.ndarray
    ohlc: np.ndarray  # shape (n, 4): open, high, low, close
    # The five columns, once the whole window passed ``validate_ohlcv``: every configuration
    # then decides on slices of them without checking the window again (None: it did not
    # pass, and each configuration takes the checked path, which says what is wrong).
    arrays: OHLCVArrays | None = None

    @classmethod
    def load(
        cls, instrument_id: int, timeframe: str, start: datetime | None, end: datetime
    ) -> _Candles:
        """``candles_frame``'s values, read as floats by the database: Django's Decimal
        converters cost more than the rest of a stream's candle (hundreds of rows per call)."""
        qs = Candle.objects.filter(
            instrument_id=instrument_id, timeframe=timeframe, close_time__lte=end
        )
        if start is not None:
            qs = qs.filter(close_time__gte=start)
        names = ("open", "high", "low", "close", "volume")
        qs = (
            qs.order_by("close_time")
            .annotate(**{f"{n}_f": Cast(n, FloatField()) for n in names})
            .values_list("close_time", *(f"{n}_f" for n in names))
        )
        # The raw rows (no per-row converters), their values converted through memos: the
        # conversions are pure functions of the stored values, and consecutive candles share
        # all but one row of their windows.
        sql, params = qs.query.sql_with_params()
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        times = _CONVERSIONS.times([row[0] for row in rows])
        values = np.array([row[1:] for row in rows], dtype=np.float64).reshape(-1, 5)
        if connection.vendor == "sqlite":
            # The Decimal converter reads SQLite's REAL through 15 significant digits: the
            # same rounding, so these are exactly candles_frame's values.
            values = np.array(_CONVERSIONS.rounded(values.ravel().tolist())).reshape(-1, 5)
        frame = pd.DataFrame(
            values,
            index=pd.DatetimeIndex(
                np.array(times, dtype="datetime64[us]"), tz="UTC", name="close_time"
            ),
            columns=list(names),
        )
        try:
            arrays = ohlcv_arrays(validate_ohlcv(frame))
        except OHLCVError:
            arrays = None
        return cls(
            frame=frame,
            times_ms=frame.index.as_unit("ms").asi8,
            ohlc=np.ascontiguousarray(values[:, :4]),
            arrays=arrays,
        )

    def todo(self, last_processed_at: datetime | None, end_ms: int) -> np.ndarray:
        """Indexes of the candles a bot has yet to process, in order."""
        if last_processed_at is None:
            return np.flatnonzero(self.times_ms == end_ms)
        return np.flatnonzero(self.times_ms > datetime_to_ms(last_processed_at))

    def window(self, j: int, lookback: int) -> pd.DataFrame:
        """What ``process_data`` is given to decide on candle ``j``."""
        return self.frame.iloc[max(0, j - lookback + 1) : j + 1]


@dataclass
class _Decided:
    """A strategy's decision on one candle, shared by every bot of the same configuration."""

    signal: Signal
    indicators: dict[str, float | None]


class _Configuration:
    """The bots of a stream that run one strategy with the same parameters: their signals are
    computed once, with the vectorised ``generate_signals`` over the shared window, and each
    candle's decision is built exactly as ``process_data`` builds it for its window's last bar.

    The window starts ``lookback - 1`` candles before the first candle to decide, so a single
    new candle is decided on exactly ``process_data``'s window; a catch-up over many candles
    decides them all in one call over the missed range (the same values for finite-window rules;
    for recursive smoothing equal to float precision, which is what ``lookback`` guarantees)."""

    def __init__(self, strategy: BaseStrategy, candles: _Candles) -> None:
        self.strategy = strategy
        self.cls = type(strategy)
        self.candles = candles
        self.lookback = self.cls.lookback(strategy.parameters)
        self.warmup = self.cls.warmup(strategy.parameters)
        self.start = self.stop = 0
        self.decided: dict[int, _Decided] = {}

    def prepare(self, first: int, last: int) -> None:
        """Compute the signals of candles ``first .. last`` (indexes into the window)."""
        if self.start <= first and last < self.stop:
            return
        if self.lookback <= self.warmup:  # a window that never leaves the warm-up: no shortcut
            self.start, self.stop = first, last + 1
            self.signals = None
            return
        start = max(0, first - self.lookback + 1)
        frame = self.candles.frame.iloc[start : last + 1]
        params = self.strategy.parameters
        if self.candles.arrays is None:
            self.signals = self.cls.generate_signals(frame, params)
            self.indicators = self.cls.compute_indicators(frame, params)
            self.arrays = ohlcv_arrays(frame)
        else:  # the window is validated once for all configurations; params are cleaned
            self.arrays = OHLCVArrays(*(a[start : last + 1] for a in self.candles.arrays))
            # process_data's own unchecked steps (a strategy's overrides included).
            self.signals = _unchecked(self.cls, "generate_signals")(self.cls, frame, params)
            self.indicators = _unchecked(self.cls, "compute_indicators")(self.cls, frame, params)
        self.index = frame.index
        self.start, self.stop = start, last + 1
        self.decided.clear()

    def at(self, j: int) -> _Decided:
        found = self.decided.get(j)
        if found is None:
            self.prepare(j, j)
            found = self.decided[j] = self._decide(j)
        return found

    def _decide(self, j: int) -> _Decided:
        if self.signals is None:
            signal = self.strategy.process_data(self.candles.window(j, self.lookback))
        else:
            # process_data's steps for its window's last bar: n is that window's length.
            k = j - self.start
            n = j - max(0, j - self.lookback + 1) + 1
            nan = float("nan")
            decision = Decision(
                action=Action.from_code(int(self.signals[k])),
                now={name: float(v[k]) for name, v in self.indicators.items()},
                prev={name: float(v[k - 1]) if n > 1 else nan
                      for name, v in self.indicators.items()},
                candle={c: float(v[k]) for c, v in zip(OHLCV_COLUMNS, self.arrays, strict=True)},
                prev_candle={
                    c: float(v[k - 1]) if n > 1 else nan
                    for c, v in zip(OHLCV_COLUMNS, self.arrays, strict=True)
                },
                parameters=self.strategy.parameters,
            )  # fmt: skip
            if n <= self.warmup:
                reason = f"warming up: the first signal needs {self.warmup + 1} candles, got {n}"
                strength = 0.0
            else:
                reason = self.cls.explain(decision)
                strength = self.cls.strength(decision)
            signal = Signal(
                action=decision.action, price=decision.candle["close"], time=self.index[k],
                strength=strength, reason=reason, indicators=decision.now,
                strategy=self.cls.name,
            )  # fmt: skip
        return _Decided(signal, signal.to_dict()["indicators"])


def process_candle(
    *,
    instrument_id: int,
    timeframe: str,
    close_ms: int,
    strategies: dict[int, BaseStrategy] | None = None,
) -> dict[str, int]:
    """Process every running bot of (instrument, timeframe) up to the candle closing at
    ``close_ms`` (the module docstring). Returns counts: bots, candles, signals, orders.

    Paper bots go through the batch path (``_process_paper_bots``): one decision per distinct
    (strategy, parameters), all bots' rows written in bulk in one transaction. Live bots, and
    every paper bot again one by one should the batch's transaction fail, take the per-bot path
    (``_process_bot``: ``process_data`` per candle, rows written as they happen)."""
    end = ms_to_datetime(close_ms)
    # Only what picks the strategies and the window: each path locks and reads its bots again.
    bots = list(
        Bot.objects.running().filter(instrument_id=instrument_id, timeframe=timeframe)
        .only("id", "strategy", "parameters", "mode", "last_processed_at")
        .order_by("pk")
    )  # fmt: skip
    totals = {"bots": 0, "candles": 0, "signals": 0, "orders": 0}
    if not bots:
        return totals
    ready: list[tuple[Bot, BaseStrategy]] = []
    for bot in bots:
        try:
            ready.append((bot, strategy_for(bot, strategies)))
        except Exception as exc:  # noqa: BLE001 - one broken bot must not stop the others
            bot_error(bot_id=bot.pk, message=f"strategy: {exc}")
    if not ready:
        return totals
    lookback = max(type(s).lookback(s.parameters) for _, s in ready)
    earliest = min(bot.last_processed_at or end for bot, _ in ready)
    start = (
        Candle.objects.filter(
            instrument_id=instrument_id, timeframe=timeframe, close_time__lte=earliest
        )
        .order_by("-close_time")
        .values_list("close_time", flat=True)[lookback : lookback + 1]
    )
    start = start[0] if start else None
    candles = _Candles.load(instrument_id, timeframe, start, end)
    paper_bots = [(bot, s) for bot, s in ready if bot.mode == Bot.Mode.PAPER]
    one_by_one = [(bot, s) for bot, s in ready if bot.mode != Bot.Mode.PAPER]
    if paper_bots:
        try:
            counts = _process_paper_bots(paper_bots, candles, end)
        except DatabaseError:
            # A conflict (another worker decided some of these candles first) or any other
            # refusal rolled the whole batch back: each bot on its own finds what is left.
            logger.exception("batch of %s bots on %s %s failed", len(paper_bots), instrument_id,
                             timeframe)  # fmt: skip
            one_by_one = sorted(paper_bots + one_by_one, key=lambda pair: pair[0].pk)
        else:
            for key, value in counts.items():
                totals[key] += value
    for bot, strategy in one_by_one:
        try:
            counts = _process_bot(bot.pk, strategy, candles, end)
        except Exception as exc:  # the bot goes to error, the others go on
            logger.exception("bot %s failed on %s %s at %s", bot.pk, instrument_id, timeframe, end)
            bot_error(bot_id=bot.pk, message=f"processing failed: {exc}")
            continue
        totals["bots"] += 1
        for key, value in counts.items():
            totals[key] += value
    return totals


@dataclass
class _Context:
    """A locked bot's state while its candles are processed."""

    bot: Bot
    broker: Broker
    book: paper.PaperBook
    risk_state: dict[str, Any]
    limits: risk.RiskLimits
    budget: float | None
    exposure_other: float
    # The batch path: no row is written while deciding (PaperBroker with writes).
    deferred: bool = False


def _context(
    bot: Bot,
    *,
    broker: Broker | None = None,
    budget: Any = _UNSET,
    exposure_other: float | None = None,
) -> _Context:
    """``bot``'s context; the batch path passes what it loaded for all its bots at once."""
    if budget is _UNSET:
        budget = (
            RiskBudget.objects.filter(owner_id=bot.owner_id).values_list("max_exposure", flat=True)
            .first()
        )  # fmt: skip
    if exposure_other is None:
        exposure_other = 0.0
        if budget is not None:
            exposure_other = float(
                Position.objects.filter(bot__owner_id=bot.owner_id)
                .exclude(bot=bot)
                .aggregate(total=Sum(F("quantity") * F("mark_price")))["total"]
                or 0
            )
    return _Context(
        bot=bot,
        broker=broker or broker_for(bot),
        book=paper.PaperBook.from_dict(bot.paper_book or {"cash": float(bot.capital)}),
        risk_state=dict(bot.risk_state or {}),
        limits=risk.RiskLimits(
            max_position_fraction=bot.max_position_fraction,
            cooldown_candles=bot.cooldown_candles,
            max_daily_loss=bot.max_daily_loss,
        ),
        budget=None if budget is None else float(budget),
        exposure_other=exposure_other,
        deferred=broker is not None and getattr(broker, "writes", None) is not None,
    )


def _roll_day(ctx: _Context, time_ms: int, open_: float) -> None:
    day = ms_to_datetime(time_ms - 1).date().isoformat()  # a candle closing at 00:00 ends a day
    if ctx.risk_state.get("day") != day:
        start = ctx.risk_state.get("last_equity")
        ctx.risk_state["day"] = day
        ctx.risk_state["day_start_equity"] = (
            float(start) if start is not None else ctx.book.equity(open_)
        )


@dataclass
class _Run:
    """What one bot's candles produced: decisions (with their orders), the last candle."""

    rows: list[SignalRow]
    orders: list[tuple[Order, SignalRow]]
    candles: int = 0
    last_ms: int | None = None
    close: float = 0.0


def _run_candles(
    ctx: _Context,
    todo: np.ndarray,
    done_times: set[datetime],
    candles: _Candles,
    decide: Callable[[int], _Decided],
) -> _Run:
    """The candles ``todo`` of one bot, in order (the module docstring's steps 1-4), against
    its context; ``decide(j)`` is the strategy's decision on candle ``j``."""
    bot = ctx.bot
    run = _Run(rows=[], orders=[])
    for j in todo.tolist():
        time_ms = int(candles.times_ms[j])
        open_, high, low, close = (float(v) for v in candles.ohlc[j])
        run.last_ms, run.close = time_ms, close
        run.candles += 1
        _roll_day(ctx, time_ms, open_)
        result = ctx.broker.on_candle(
            bot, ctx.book, time_ms=time_ms, candle=(open_, high, low, close)
        )
        if result.lost and bot.cooldown_candles:
            ctx.risk_state["cooldown_left"] = bot.cooldown_candles
        if ms_to_datetime(time_ms) in done_times:
            # Decided before (process_signal or an earlier run): never twice.
            _after_candle(ctx, close)
            continue
        decided = decide(j)
        row, order = _decide(ctx, decided.signal, close, indicators=decided.indicators)
        run.rows.append(row)
        if order is not None:
            run.orders.append((order, row))
        equity = ctx.book.equity(close)
        _after_candle(ctx, close)
        if risk.daily_loss_breached(ctx.limits, ctx.risk_state["day_start_equity"], equity):
            lost = risk.daily_loss_fraction(ctx.risk_state["day_start_equity"], equity)
            _bot_pause(bot, f"daily loss limit: lost {lost:.2%} today")
            break
    return run


def _process_bot(
    bot_id: int, strategy: BaseStrategy, candles: _Candles, end: datetime
) -> dict[str, int]:
    """One bot on its own: ``process_data`` on each candle's window, rows written as they
    happen through the bot's broker (live bots; paper bots when their batch failed)."""
    counts = {"candles": 0, "signals": 0, "orders": 0}
    lookback = type(strategy).lookback(strategy.parameters)

    def decide(j: int) -> _Decided:
        signal = strategy.process_data(candles.window(j, lookback))
        return _Decided(signal, signal.to_dict()["indicators"])

    with transaction.atomic():
        bot = Bot.objects.select_for_update().select_related("owner").get(pk=bot_id)
        if bot.status != Bot.Status.RUNNING:
            return counts
        todo = candles.todo(bot.last_processed_at, datetime_to_ms(end))
        if not len(todo):
            return counts
        ctx = _context(bot)
        done_times = set(
            bot.signals.filter(time__gte=ms_to_datetime(int(candles.times_ms[todo[0]])))
            .values_list("time", flat=True)
        )  # fmt: skip
        run = _run_candles(ctx, todo, done_times, candles, decide)
        SignalRow.objects.bulk_create(run.rows)
        for order, row in run.orders:
            order.signal = row
        if run.orders:
            Order.objects.bulk_update([order for order, _ in run.orders], ["signal"])
        for row in run.rows:
            publish_on_commit(f"bot_signals:{bot.pk}", signal_event(row))
        _save_book(ctx, run.last_ms, run.close)
        counts["candles"] = run.candles
        counts["signals"] = len(run.rows)
        counts["orders"] = len(run.orders)
    return counts


def _process_paper_bots(
    ready: list[tuple[Bot, BaseStrategy]], candles: _Candles, end: datetime
) -> dict[str, int]:
    """All paper bots of a stream in one transaction: the bots locked and their open orders,
    decided signals, risk budgets and positions loaded in one query each; one decision per
    (strategy, parameters); the rows inserted and updated in bulk; the events published in
    one batch after commit. A bot whose strategy or candles raise goes to error alone."""
    end_ms = datetime_to_ms(end)
    counts = {"bots": 0, "candles": 0, "signals": 0, "orders": 0}
    configurations: dict[tuple[str, str], _Configuration] = {}
    of_bot: dict[int, _Configuration] = {}
    for bot, strategy in ready:
        key = (bot.strategy, json.dumps(strategy.parameters, sort_keys=True, default=str))
        if key not in configurations:
            configurations[key] = _Configuration(strategy, candles)
        of_bot[bot.pk] = configurations[key]
    failed: dict[int, str] = {}
    with transaction.atomic():
        bots = [
            bot
            for bot in Bot.objects.select_for_update().filter(pk__in=list(of_bot)).order_by("pk")
            if bot.status == Bot.Status.RUNNING and bot.mode == Bot.Mode.PAPER
        ]
        counts["bots"] = len(bots)
        todo = {bot.pk: candles.todo(bot.last_processed_at, end_ms) for bot in bots}
        bots = [bot for bot in bots if len(todo[bot.pk])]
        if not bots:
            return counts
        # One market for the whole batch (its fills name their fee's asset): read once.
        instrument = Instrument.objects.get(pk=bots[0].instrument_id)
        for bot in bots:
            bot.instrument = instrument
        failed.update(_prepare(bots, todo, of_bot))
        state = _BatchState.load([bot for bot in bots if bot.pk not in failed], todo, candles)
        for bot in bots:
            if bot.pk in failed:
                continue
            try:
                state.run(bot, todo[bot.pk], of_bot[bot.pk].at)
            except Exception as exc:  # this bot goes to error, the others go on
                logger.exception("bot %s failed at %s", bot.pk, end)
                failed[bot.pk] = f"processing failed: {exc}"
        for key, value in state.write().items():
            counts[key] += value
    for bot_id, message in failed.items():
        counts["bots"] -= 1
        bot_error(bot_id=bot_id, message=message)
    return counts


def _prepare(
    bots: list[Bot], todo: dict[int, np.ndarray], of_bot: dict[int, _Configuration]
) -> dict[int, str]:
    """Each configuration's signals over the candles any of its bots has yet to decide; the
    bots of a configuration that raises, with the error."""
    spans: dict[int, tuple[int, int]] = {}
    for bot in bots:
        first, last = int(todo[bot.pk][0]), int(todo[bot.pk][-1])
        was = spans.get(id(of_bot[bot.pk]), (first, last))
        spans[id(of_bot[bot.pk])] = (min(first, was[0]), max(last, was[1]))
    failed: dict[int, str] = {}
    for configuration in {id(c): c for c in of_bot.values()}.values():
        if id(configuration) not in spans:
            continue
        try:
            configuration.prepare(*spans[id(configuration)])
        except Exception as exc:  # its bots go to error, not the others
            logger.exception("strategy %s failed", configuration.strategy)
            failed.update(
                {bot.pk: f"processing failed: {exc}" for bot in bots
                 if of_bot[bot.pk] is configuration}
            )  # fmt: skip
    return failed


@dataclass
class _BatchState:
    """What a batch of locked bots reads in one query each, and what their candles produced."""

    candles: _Candles
    done: dict[int, set[datetime]]
    pending: dict[int, Order]
    budgets: dict[int, Decimal | None]
    positions: dict[int, Position]
    # Open notional per bot of owners with a budget, kept current as the bots move on (the
    # per-bot path reads each bot's others from the positions written before it).
    notional: dict[int, dict[int, Decimal]]
    runs: list[tuple[_Context, _Run, PaperWrites]]

    @classmethod
    def load(cls, bots: list[Bot], todo: dict[int, np.ndarray], candles: _Candles) -> _BatchState:
        ids = [bot.pk for bot in bots]
        pending: dict[int, Order] = {}
        for order in Order.objects.filter(bot_id__in=ids, status=Order.Status.OPEN).order_by(
            "-time", "-id"
        ):
            pending[order.bot_id] = order  # the last one read is each bot's first
        done: dict[int, set[datetime]] = {}
        if ids:
            first = ms_to_datetime(int(min(candles.times_ms[todo[pk][0]] for pk in ids)))
            for bot_id, when in SignalRow.objects.filter(
                bot_id__in=ids, time__gte=first
            ).values_list("bot_id", "time"):
                done.setdefault(bot_id, set()).add(when)
        budgets = dict(
            RiskBudget.objects.filter(owner_id__in={bot.owner_id for bot in bots})
            .values_list("owner_id", "max_exposure")
        )  # fmt: skip
        notional: dict[int, dict[int, Decimal]] = {}
        limited = [owner for owner, budget in budgets.items() if budget is not None]
        if limited:
            for bot_id, owner_id, quantity, mark in Position.objects.filter(
                bot__owner_id__in=limited
            ).values_list("bot_id", "bot__owner_id", "quantity", "mark_price"):
                if mark is not None:
                    notional.setdefault(owner_id, {})[bot_id] = quantity * mark
        return cls(
            candles=candles, done=done, pending=pending, budgets=budgets,
            # Only the rows' ids: write() sets every written field (rows_update by pk).
            positions={
                bot_id: Position(pk=pk, bot_id=bot_id)
                for pk, bot_id in Position.objects.filter(bot_id__in=ids).values_list(
                    "pk", "bot_id"
                )
            },
            notional=notional, runs=[],
        )  # fmt: skip

    def run(self, bot: Bot, todo: np.ndarray, decide: Callable[[int], _Decided]) -> None:
        writes = PaperWrites()
        budget = self.budgets.get(bot.owner_id)
        others = sum(
            (v for k, v in self.notional.get(bot.owner_id, {}).items() if k != bot.pk), Decimal(0)
        )
        ctx = _context(
            bot, broker=PaperBroker(bot, writes=writes, pending=self.pending.get(bot.pk)),
            budget=budget, exposure_other=float(others) if budget is not None else 0.0,
        )  # fmt: skip
        run = _run_candles(ctx, todo, self.done.get(bot.pk, set()), self.candles, decide)
        self.runs.append((ctx, run, writes))
        if bot.owner_id in self.notional:
            units = to_decimal(ctx.book.units)
            self.notional[bot.owner_id][bot.pk] = units * to_decimal(run.close)

    def write(self) -> dict[str, int]:
        """Every row in bulk (signals, orders, fills, trades, bots, positions) and the events
        after commit, each bot's in the order the per-bot path sends them."""
        counts = {"candles": 0, "signals": 0, "orders": 0}
        writes = PaperWrites()
        for _, run, mine in self.runs:
            writes.extend(mine)
            for order, row in run.orders:
                order.signal = row
        SignalRow.objects.bulk_create([row for _, run, _ in self.runs for row in run.rows])
        writes.flush()
        now = timezone.now()
        changed, new = [], []
        events: list[tuple[str, dict[str, Any]]] = []
        for ctx, run, mine in self.runs:
            events += [(channel, build()) for channel, build in mine.events]
            events += [(f"bot_signals:{ctx.bot.pk}", signal_event(row)) for row in run.rows]
            values, portfolio = _book_state(ctx, run.last_ms, run.close)
            events.append((f"trade_updates:{ctx.bot.pk}", portfolio))
            ctx.bot.updated_at = now
            position = self.positions.get(ctx.bot.pk)
            if position is None:
                new.append(Position(bot=ctx.bot, **values))
            else:
                for name, value in values.items():
                    setattr(position, name, value)
                position.updated_at = now
                changed.append(position)
            counts["candles"] += run.candles
            counts["signals"] += len(run.rows)
            counts["orders"] += len(run.orders)
        rows_update(Bot, [ctx.bot for ctx, _, _ in self.runs], BOOK_FIELDS)
        rows_update(Position, changed, [*POSITION_FIELDS, "updated_at"])
        Position.objects.bulk_create(new)
        publish_many_on_commit(events)
        return counts


def _after_candle(ctx: _Context, close: float) -> None:
    if ctx.risk_state.get("cooldown_left", 0) > 0:
        ctx.risk_state["cooldown_left"] -= 1
    ctx.risk_state["last_equity"] = ctx.book.equity(close)


def _decide(
    ctx: _Context,
    signal: Signal,
    close: float,
    *,
    indicators: dict[str, float | None] | None = None,
) -> tuple[SignalRow, Order | None]:
    """Risk checks for one signal and, when they pass, the order sent to the broker
    (``indicators``: the signal's, JSON-ready, when the caller has them already)."""
    book = ctx.book
    assessment = risk.assess(
        signal.action.value,
        risk.EntryContext(
            long=book.long,
            cash=book.cash,
            equity=book.equity(close),
            day_start_equity=float(ctx.risk_state.get("day_start_equity", book.equity(close))),
            cooldown_left=int(ctx.risk_state.get("cooldown_left", 0)),
            exposure_other=ctx.exposure_other,
            exposure_budget=ctx.budget,
            balance_mismatch=str((ctx.risk_state.get("balance_mismatch") or {}).get("message", "")),
        ),
        ctx.limits,
    )
    if indicators is None:
        indicators = signal.to_dict()["indicators"]
    row = SignalRow(
        bot=ctx.bot, time=signal.time, action=signal.action.value,
        price=to_decimal(signal.price), strength=signal.strength, reason=signal.reason,
        indicators=indicators, risk_checks=assessment.checks_json(),
        executed=assessment.side is not None, no_order_reason=assessment.reason,
    )  # fmt: skip
    if assessment.side is None:
        return row, None
    time_ms = signal.time_ms
    order = Order(
        bot=ctx.bot,
        client_order_id=Order.make_client_order_id(ctx.bot.pk, time_ms, assessment.side),
        side=assessment.side,
        type=Order.Type.MARKET,
        time=signal.time,
        quantity=to_decimal(book.units) if assessment.side == "sell" else None,
        quote_amount=(
            to_decimal(book.cash * ctx.limits.max_position_fraction)
            if assessment.side == "buy"
            else None
        ),
    )
    check = ctx.broker.exchange_rules(order, book, close)
    if check is not None:
        row.risk_checks = [*row.risk_checks, check.to_dict()]
        if not check.passed:
            row.executed = False
            row.no_order_reason = f"{check.name}: {check.detail}"
            return row, None
    if not ctx.deferred:
        order.save(force_insert=True)  # the row exists before the broker sees the order
    ctx.broker.submit(order)
    return row, order


def signal_event(row: SignalRow) -> dict[str, Any]:
    return {
        "type": "signal.created", "bot_id": row.bot_id, "signal_id": row.pk,
        "time_ms": datetime_to_ms(row.time), "action": row.action, "price": float(row.price),
        "strength": row.strength, "reason": row.reason, "indicators": row.indicators,
        "executed": row.executed, "no_order_reason": row.no_order_reason,
        "risk_checks": row.risk_checks,
    }  # fmt: skip


BOOK_FIELDS = ["paper_book", "risk_state", "cash", "equity", "last_processed_at", "updated_at"]
POSITION_FIELDS = [
    "quantity", "entry_price", "entry_time", "mark_price", "unrealized_pnl", "dust",
]  # fmt: skip


def _book_state(
    ctx: _Context, last_ms: int | None, close: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Set the bot's book fields (``BOOK_FIELDS``, unsaved); return its position's values and
    the ``portfolio.updated`` event."""
    bot, book = ctx.bot, ctx.book
    bot.paper_book = book.to_dict()
    bot.risk_state = ctx.risk_state
    bot.cash = to_decimal(book.cash)
    bot.equity = to_decimal(book.equity(close))
    if last_ms is not None:
        bot.last_processed_at = ms_to_datetime(last_ms)
    position = position_fields(book, close)
    event = {
        "type": "portfolio.updated", "bot_id": bot.pk, "time_ms": last_ms, "cash": book.cash,
        "equity": book.equity(close), "position": book.units,
        "entry_price": book.entry_price if book.long else None, "mark_price": close,
        "unrealized_pnl": float(position["unrealized_pnl"]),
    }  # fmt: skip
    if book.dust:
        event["dust"] = book.dust
    return position, event


def _save_book(ctx: _Context, last_ms: int | None, close: float) -> None:
    position, event = _book_state(ctx, last_ms, close)
    ctx.bot.save(update_fields=BOOK_FIELDS)
    Position.objects.update_or_create(bot=ctx.bot, defaults=position)
    publish_on_commit(f"trade_updates:{ctx.bot.pk}", event)


def bot_process_signal(*, bot_id: int, signal: Signal) -> SignalRow:
    """Decide on one signal now (the seed's ``process_signal``): risk checks, an order when
    they pass, the decision stored. A signal for a candle the bot already decided on returns
    the stored decision and trades nothing."""
    with transaction.atomic():
        bot = Bot.objects.select_for_update().select_related("owner").get(pk=bot_id)
        existing = bot.signals.filter(time=signal.time).first()
        if existing is not None:
            return existing
        if bot.status != Bot.Status.RUNNING:
            raise BotStateError(f"bot {bot.pk} is {bot.status}, not running")
        ctx = _context(bot)
        close = float(signal.price)
        row, order = _decide(ctx, signal, close)
        row.save()
        if order is not None:
            order.signal = row
            order.save(update_fields=["signal", "updated_at"])
        publish_on_commit(f"bot_signals:{bot.pk}", signal_event(row))
        dust = ctx.book.dust != float((bot.paper_book or {}).get("dust", 0.0))
        bot.paper_book = ctx.book.to_dict()
        bot.save(update_fields=["paper_book", "updated_at"])
        if dust:  # a live exit found the position below the exchange's minimum
            Position.objects.update_or_create(bot=bot, defaults=position_fields(ctx.book, close))
    return row


# --- demo -----------------------------------------------------------------------------------

DEMO_BOTS = (
    ("Demo SMA 5/20", "sma_crossover", {"fast": 5, "slow": 20}, {}),
    ("Demo RSI 7", "rsi_reversion", {"period": 7, "oversold": 35.0, "overbought": 65.0},
     {"stop_loss": 0.01, "cooldown_candles": 3}),
    ("Demo Bollinger 20", "bollinger_reversion", {"n": 20, "k": 1.5}, {"take_profit": 0.01}),
)  # fmt: skip


def demo_bots_ensure(*, user: Any, instruments: Iterable[Instrument]) -> list[Bot]:
    """The demo's paper bots on 1m, one per (demo strategy, instrument), running. Idempotent:
    existing ones are kept (and started if stopped)."""
    bots = []
    for instrument in instruments:
        for name, strategy, parameters, options in DEMO_BOTS:
            label = f"{name} {instrument.symbol}"
            bot = Bot.objects.filter(owner=user, name=label).first()
            if bot is None:
                bot = bot_create(
                    user=user, name=label, strategy=strategy, parameters=parameters,
                    instrument=instrument, timeframe="1m", capital=10_000, **options,
                )  # fmt: skip
            if bot.status != Bot.Status.RUNNING:
                bot_start(bot_id=bot.pk, actor=user, notify=False)
            bots.append(bot)
    return bots


# --- pages: edit and delete (the rules the API applies too) ---------------------------------

#: What a bot's owner may change once it exists (``UPDATABLE`` minus the status' own reason):
#: the strategy, market, mode, account and capital are fixed, as the API says.
EDITABLE = ("name", "parameters", *RISK_FIELDS)


@transaction.atomic
def bot_edit(*, bot_id: int, changes: Mapping[str, Any], actor: Any = None) -> Bot:
    """Change a bot's settings (``EDITABLE``) while it is not running, through
    ``bot_update_state`` (validated, audited). Raises ``BotStateError`` while it runs (the lock
    makes the check and the change one step), ``ValueError`` for a field fixed at creation,
    ``StrategyParameterError``/``ValidationError`` as ``bot_update_state`` does."""
    fixed = sorted(set(changes) - set(EDITABLE))
    if fixed:
        raise ValueError(f"cannot be changed once the bot exists: {', '.join(fixed)}")
    bot = Bot.objects.select_for_update().get(pk=bot_id)
    if bot.status == Bot.Status.RUNNING:
        raise BotStateError("stop the bot before changing it")
    changed = {k: v for k, v in changes.items() if getattr(bot, k) != v}
    if not changed:
        return bot
    return bot_update_state(bot_id=bot.pk, state=changed, actor=actor)


@transaction.atomic
def bot_delete(*, bot_id: int, actor: Any = None) -> str:
    """Delete a stopped bot with its history; returns its name. ``BotStateError`` unless it is
    stopped (stopping cancels its open orders first, so none is left at an exchange)."""
    bot = Bot.objects.select_for_update().get(pk=bot_id)
    if bot.status != Bot.Status.STOPPED:
        raise BotStateError("stop the bot before deleting it")
    name = bot.name
    publish_on_commit(
        "system_events",
        {"type": "bot.deleted", "bot_id": bot.pk, "owner_id": bot.owner_id, "name": name,
         "actor": getattr(actor, "username", None)},
    )  # fmt: skip
    bot.delete()
    return name
