"""Template helpers shared by every page.

``{% ts value %}`` renders a timestamp (aware datetime or epoch milliseconds) as a ``<time>``
element in UTC; ``static/js/app.js`` rewrites its text into the viewer's time zone and keeps the
UTC form in its tooltip, so a page without JavaScript still reads correctly.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from django import template
from django.utils.html import format_html

register = template.Library()


def _as_datetime(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, int | float | Decimal):
        return dt.datetime.fromtimestamp(float(value) / 1000, tz=dt.UTC)
    return None


@register.simple_tag
def ts(value: Any, empty: str = "—") -> str:
    """A ``<time>`` element for ``value`` (datetime or epoch ms), or ``empty`` when unset."""
    moment = _as_datetime(value)
    if moment is None:
        return format_html("<span>{}</span>", empty)
    moment = moment.astimezone(dt.UTC)
    iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = moment.strftime("%Y-%m-%d %H:%M:%S UTC")
    return format_html('<time datetime="{}" title="{}" data-local>{}</time>', iso, text, text)


@register.filter
def signed(value: Any, places: int = 2) -> str:
    """A number with its sign (``+12.50``, ``-3.10``), for P&L; ``—`` for None."""
    if value is None or value == "":
        return "—"
    number = float(value)
    return f"{number:+,.{int(places)}f}"


@register.filter
def pnl_class(value: Any) -> str:
    """``pos``/``neg``/`` `` for colouring a P&L cell."""
    if value is None or value == "":
        return ""
    number = float(value)
    return "pos" if number > 0 else "neg" if number < 0 else ""
