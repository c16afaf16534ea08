"""Number formats of the backtest pages: ``{% load backtests_tags %}``."""

from __future__ import annotations

import math
from typing import Any

from django import template

register = template.Library()


def _finite(value: Any) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@register.filter
def percent(value: Any, places: int = 2) -> str:
    """A fraction as a percentage (``0.1234`` -> ``12.34%``); ``—`` when undefined."""
    number = _finite(value)
    return "—" if number is None else f"{number * 100:,.{int(places)}f}%"


@register.filter
def number(value: Any, places: int = 2) -> str:
    """A number with thousands separators and ``places`` decimals; ``—`` when undefined."""
    number_ = _finite(value)
    return "—" if number_ is None else f"{number_:,.{int(places)}f}"


@register.filter
def raw(value: Any) -> str:
    """A number for a ``data-value`` attribute (sorting): plain, empty when undefined."""
    number_ = _finite(value)
    return "" if number_ is None else repr(number_)
