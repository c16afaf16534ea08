"""Per-user limits: what one user may ask of the installation's shared workers and bots.

The one place that decides. One user's three 100,000-combination grids once held every worker
of the ``backtests`` queue while everyone else waited; now each user has:

* ``concurrent_runs``: research runs (backtests and optimisations) queued or running at once;
* ``combinations``: combinations one optimisation may try (a grid's size, random search's
  draws, a walk-forward window's grid), counted before anything is enumerated;
* ``bars``: bars one backtest or optimisation may cover, estimated from the period and the
  timeframe before any candle is loaded (``estimated_bars``);
* ``bots``: bots the user may own.

The defaults are the ``TRADEAPP_LIMIT_*`` settings; a ``tradeapp.models.UserLimits`` row (the
user's admin page) overrides any of them for that user. Staff have the defaults too: an account
is an account to the workers, and an admin who needs more raises their own row.

Every check raises ``LimitExceeded``, a ``ValidationError`` keyed by the request field it is
about (``space``, ``n_iter``; the others are about the request as a whole) whose message names
the limit and the value. Its ``status_code`` tells the API how to answer: 429 when waiting
helps (too many runs at once, too many bots: the count goes down), 400 when the request itself
is too big. The services call these checks before they store anything; the counting checks
lock the user's row first, so two requests of one user at the same moment are counted one after
the other (SQLite's writers are serialised anyway: its transactions begin IMMEDIATE).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import datetime
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import transaction
from django.utils.dateparse import parse_datetime

#: ``LimitExceeded.status_code``: wait (a run finishes, a bot is deleted) and ask again.
TOO_MANY = 429
#: ``LimitExceeded.status_code``: the request is too big; change it.
TOO_BIG = 400


@dataclass(frozen=True)
class Limits:
    """One user's effective limits (their own values where set, else the defaults)."""

    concurrent_runs: int
    combinations: int
    bars: int
    bots: int


LIMIT_NAMES = tuple(f.name for f in fields(Limits))


def default_limits() -> Limits:
    """The installation's defaults (the ``TRADEAPP_LIMIT_*`` settings)."""
    return Limits(
        concurrent_runs=settings.TRADEAPP_LIMIT_CONCURRENT_RUNS,
        combinations=settings.TRADEAPP_LIMIT_COMBINATIONS,
        bars=settings.TRADEAPP_LIMIT_BARS,
        bots=settings.TRADEAPP_LIMIT_BOTS,
    )


def limits_for(user: Any) -> Limits:
    """``user``'s effective limits: the defaults, with the values their ``UserLimits`` row
    sets (an empty value keeps the default). ``None`` or an unsaved user: the defaults."""
    from tradeapp.models import UserLimits

    limits = default_limits()
    if getattr(user, "pk", None) is None:
        return limits
    own = UserLimits.objects.filter(user_id=user.pk).values(*LIMIT_NAMES).first()
    if own is None:
        return limits
    return replace(limits, **{name: value for name, value in own.items() if value is not None})


class LimitExceeded(ValidationError):
    """A request beyond one of the user's limits. A ``ValidationError`` keyed by the field it is
    about (``NON_FIELD_ERRORS`` when it is about the request as a whole), so forms show it next
    to the input and the API in its ``fields``; ``status_code`` is ``TOO_MANY`` (429) or
    ``TOO_BIG`` (400), ``limit`` the name of the limit (a ``Limits`` field), ``value`` what the
    request would reach and ``maximum`` the limit (for messages of one's own, e.g. the admin's
    about another user)."""

    def __init__(
        self,
        message: str | dict[str, list[str]],
        *,
        limit: str,
        status_code: int,
        field: str | None = None,
        value: int | None = None,
        maximum: int | None = None,
    ) -> None:
        errors = message if isinstance(message, dict) else {field or NON_FIELD_ERRORS: [message]}
        super().__init__(errors)
        self.limit = limit
        self.status_code = status_code
        self.value = value
        self.maximum = maximum


class SizeChecks:
    """Collects the size limits (``TOO_BIG``) one request exceeds, so that they are reported
    together with its other errors: ``with checks.checking(): check_bars(...)``, then
    ``checks.raise_with(errors)``."""

    def __init__(self) -> None:
        self.exceeded: list[LimitExceeded] = []

    def __bool__(self) -> bool:
        return bool(self.exceeded)

    @contextmanager
    def checking(self) -> Iterator[None]:
        try:
            yield
        except LimitExceeded as exc:
            self.exceeded.append(exc)

    def raise_with(self, errors: dict[str, list[str]]) -> None:
        """Raise the request's other ``errors`` with the exceeded limits' messages (a
        ``ValidationError``: 400 "invalid"), or the limits alone as one ``LimitExceeded``;
        return when there is neither."""
        limited: dict[str, list[str]] = {}
        for exc in self.exceeded:
            for field, messages in exc.message_dict.items():
                limited.setdefault(field, []).extend(messages)
        if errors:
            every = {field: list(messages) for field, messages in errors.items()}
            for field, messages in limited.items():
                every.setdefault(field, []).extend(messages)
            raise ValidationError(every)
        if self.exceeded:
            raise LimitExceeded(limited, limit=self.exceeded[0].limit, status_code=TOO_BIG)


def lock_user(user_id: Any) -> None:
    """Lock the user's row until the caller's transaction ends: the next request of the same
    user counts after this one stored its row (or gave up); the research queue's next chunks
    of the user are chosen after this choice is stored (``backtests.services._dispatch``)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError(
            "a user's row is locked inside the transaction that stores what it decided"
        )
    list(get_user_model().objects.select_for_update().filter(pk=user_id).values_list("pk"))


def research_runs_active(user: Any) -> int:
    """The user's backtests and optimisations queued or running."""
    from backtests.models import BacktestRun, OptimizationRun, RunStatus

    active = (RunStatus.QUEUED, RunStatus.RUNNING)
    return sum(
        model.objects.filter(owner_id=user.pk, status__in=active).count()
        for model in (BacktestRun, OptimizationRun)
    )


def check_research_runs(user: Any, *, lock: bool = True) -> None:
    """Refuse (429) a new research run when the user has ``concurrent_runs`` queued or running.
    ``lock``: count under the user's row lock (in the transaction that stores the run); a
    form's early check (``lock=False``) only shows the message sooner."""
    if lock:
        lock_user(user.pk)
    limit = limits_for(user).concurrent_runs
    active = research_runs_active(user)
    if active >= limit:
        raise LimitExceeded(
            f"you have {active} research run{'s' if active != 1 else ''} queued or running "
            f"(your limit is {limit}); wait for one to finish or cancel one",
            limit="concurrent_runs", status_code=TOO_MANY, value=active, maximum=limit,
        )  # fmt: skip


def bots_owned(user: Any) -> int:
    """The bots ``user`` owns (what the ``bots`` limit counts)."""
    from bots.models import Bot

    return Bot.objects.filter(owner_id=user.pk).count()


def check_bots(user: Any, *, lock: bool = True) -> None:
    """Refuse (429) a new bot when the user owns ``bots`` bots already (``lock`` as in
    ``check_research_runs``)."""

    if lock:
        lock_user(user.pk)
    limit = limits_for(user).bots
    owned = bots_owned(user)
    if owned >= limit:
        raise LimitExceeded(
            f"you have {owned} bot{'s' if owned != 1 else ''} (your limit is {limit}); "
            "delete one to create another",
            limit="bots", status_code=TOO_MANY, value=owned, maximum=limit,
        )  # fmt: skip


def _moment(value: datetime | str | None) -> datetime | None:
    """A datetime, or an ISO 8601 text as a model field takes it (None when it is not one)."""
    if isinstance(value, str):
        try:
            value = parse_datetime(value)
        except ValueError:
            return None
    return value if isinstance(value, datetime) else None


def estimated_bars(
    start: datetime | str | None, end: datetime | str | None, timeframe: str
) -> int | None:
    """The bars a period can hold on ``timeframe``: its candle close times from ``start`` to
    ``end`` included, ``(end - start) / timeframe`` plus the first. None when the period or the
    timeframe is missing or unknown (refused by the run's own checks)."""
    from marketdata.aggregation import parse_timeframe

    start, end = _moment(start), _moment(end)
    try:
        seconds = parse_timeframe(timeframe)
        span = (end - start).total_seconds()  # type: ignore[operator]
    except (TypeError, ValueError):  # a moment missing, naive beside aware; a bad timeframe
        return None
    return int(span // seconds) + 1 if span > 0 else None


def check_bars(
    limits: Limits, start: datetime | str | None, end: datetime | str | None, timeframe: str
) -> None:
    """Refuse (400) a backtest or optimisation whose period holds more than ``bars`` bars."""
    bars = estimated_bars(start, end, timeframe)
    if bars is not None and bars > limits.bars:
        raise LimitExceeded(
            f"the period holds about {bars:,} {timeframe} bars; at most {limits.bars:,} "
            "(your limit per backtest or optimisation): shorten the period or use a longer "
            "timeframe",
            limit="bars", status_code=TOO_BIG, value=bars, maximum=limits.bars,
        )  # fmt: skip


def check_combinations(limits: Limits, combinations: int, *, method: str) -> None:
    """Refuse (400) an optimisation trying more than ``combinations`` combinations. ``method``:
    ``grid`` (the grid's size, on ``space``), ``random`` (``n_iter``, on ``n_iter``) or
    ``walk_forward`` (the grid each window searches, on ``space``)."""
    if combinations <= limits.combinations:
        return
    most = f"at most {limits.combinations:,} (your limit per optimisation)"
    if method == "random":
        field, text = "n_iter", f"{combinations:,} draws; {most}"
    elif method == "walk_forward":
        field = "space"
        text = (
            f"each walk-forward window searches a grid of {combinations:,} combinations; "
            f"{most}: narrow it"
        )
    else:
        field = "space"
        text = (
            f"the grid holds {combinations:,} combinations; {most}: narrow it or use random search"
        )
    raise LimitExceeded(
        text, limit="combinations", status_code=TOO_BIG, field=field, value=combinations,
        maximum=limits.combinations,
    )  # fmt: skip


def check_research_run(
    user: Any, *, start: datetime | str | None, end: datetime | str | None, timeframe: str
) -> None:
    """A new backtest's checks, in the transaction that stores it: its period's bars (400),
    then, under the user's row lock, the runs the user has queued or running (429)."""
    check_bars(limits_for(user), start, end, timeframe)
    check_research_runs(user)


def page_status(exc: Exception) -> int:
    """The status of a page that shows a refused form again: 429 when the user has too many
    runs or bots (as the API answers), 200 for every other refusal (the form's errors)."""
    return TOO_MANY if getattr(exc, "status_code", None) == TOO_MANY else 200
