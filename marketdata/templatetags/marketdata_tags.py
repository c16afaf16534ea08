"""Filters of the market pages."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()


@register.filter
def price(value: Any) -> str:
    """A stored price as the exchange wrote it: no padding zeros, no exponent; ``—`` for None."""
    if value is None or value == "":
        return "—"
    try:
        number = Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return str(value)
    text = f"{number.normalize():f}"
    return "0" if text in ("-0", "") else text


@register.filter
def duration(seconds: Any) -> str:
    """Seconds as a short age: ``42 s``, ``5 min``, ``3 h 20 min``, ``2 d 4 h``; ``—`` for None."""
    if seconds is None or seconds == "":
        return "—"
    total = max(0, int(float(seconds)))
    if total < 120:
        return f"{total} s"
    minutes = total // 60
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"
