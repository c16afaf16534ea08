"""Cursor pagination everywhere a list can grow: a page costs one indexed range query whatever
the table's size (no ``COUNT(*)``, no ``OFFSET`` scan), and rows written meanwhile never shift a
page. ``?page_size=`` up to ``max_page_size``; the response's ``next``/``previous`` are URLs."""

from __future__ import annotations

from rest_framework.pagination import CursorPagination


class NewestFirst(CursorPagination):
    """Default: newest rows first, by primary key."""

    ordering = "-id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class CandlesInTime(CursorPagination):
    """Candles oldest first by close time (the index ``(instrument, timeframe, close_time)``)."""

    ordering = "close_time"
    page_size = 500
    page_size_query_param = "page_size"
    max_page_size = 5000


class TicksInTime(CursorPagination):
    """Raw ticks oldest first by trade time (the index ``(instrument, time)``; ticks of one
    millisecond in id order)."""

    ordering = ("time", "id")
    page_size = 1000
    page_size_query_param = "page_size"
    max_page_size = 10_000


class RejectsInTime(CursorPagination):
    """Rejected ticks oldest first by arrival (the index ``(instrument, received_at)``)."""

    ordering = ("received_at", "id")
    page_size = 500
    page_size_query_param = "page_size"
    max_page_size = 5000
