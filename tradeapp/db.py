"""Retrying a database transaction that lost to another writer.

Two kinds of error are not the transaction's fault and go away when it runs again:

* SQLite (the embedded profile): ``database is locked`` when another process held the one write
  lock longer than the connection's ``timeout``;
* PostgreSQL: serialization failures (SQLSTATE 40001), deadlocks (40P01) and lock timeouts
  (55P03), where the server rolled the transaction back on purpose.

``retry_transient(fn)`` runs ``fn`` (which opens its own ``transaction.atomic`` block) again after
a short, growing, jittered wait, a few times; any other error, or the last failure, is raised.
It refuses to retry inside an outer transaction: that one is broken by the error and only its
owner can start it again.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from django.db import DatabaseError, connection

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: PostgreSQL's "try again" states: serialization_failure, deadlock_detected, lock_not_available.
TRANSIENT_SQLSTATES = frozenset({"40001", "40P01", "55P03"})
_SQLITE_BUSY = ("database is locked", "database table is locked")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is a lost race for a lock that running the transaction again can win."""
    if not isinstance(exc, DatabaseError):
        return False
    for err in (exc, exc.__cause__):
        if err is None:
            continue
        if getattr(err, "sqlstate", None) in TRANSIENT_SQLSTATES:
            return True
        text = str(err).lower()
        if any(busy in text for busy in _SQLITE_BUSY):
            return True
    return False


def retry_transient(
    fn: Callable[..., T],
    *args: object,
    attempts: int = 8,
    first_wait: float = 0.05,
    max_wait: float = 2.0,
    **kwargs: object,
) -> T:
    """``fn(*args, **kwargs)``, run again on a transient error (``is_transient``) up to
    ``attempts`` times in all, waiting ``first_wait`` seconds and doubling (at most
    ``max_wait``, with jitter) between tries."""
    wait = first_wait
    for attempt in range(1, attempts + 1):
        try:
            return fn(*args, **kwargs)
        except DatabaseError as exc:
            if attempt == attempts or connection.in_atomic_block or not is_transient(exc):
                raise
            logger.warning(
                "%s: transient database error (try %d of %d), again in %.2fs: %s",
                getattr(fn, "__qualname__", fn), attempt, attempts, wait, exc,
            )  # fmt: skip
            time.sleep(wait * random.uniform(0.5, 1.5))  # noqa: S311 - jitter, not security
            wait = min(wait * 2, max_wait)
    raise AssertionError("unreachable")  # the loop returns or raises


def retried(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: ``fn`` (a whole transaction) through ``retry_transient``."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        return retry_transient(fn, *args, **kwargs)

    return wrapper
