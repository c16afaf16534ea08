"""Helpers shared by the test suite."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.05, message: str = ""
) -> T:
    """Call ``condition`` until it returns something truthy (returned), for at most ``timeout`` s.

    Exceptions raised by ``condition`` count as "not yet"; the last one is reported on timeout.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except Exception as exc:
            last_error, value = exc, None
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"not true within {timeout}s: {message or condition}{detail}")
        time.sleep(interval)
