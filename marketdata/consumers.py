"""``/ws/market/{symbol}``: one symbol's candles as they form and close, for any signed-in user.

Writing the symbol in the URL: ccxt's form ``BTC/USDT`` goes in as it is
(``/ws/market/BTC/USDT``) or percent-encoded (``/ws/market/BTC%2FUSDT``); the dash form
``BTC-USDT`` is accepted too (the last ``-`` read as ``/``) when no instrument is named with the
dash itself. Query parameters choose the snapshot's candles: ``timeframe`` (one of 1m 5m 15m 1h
4h 1d, default 1m) and ``limit`` (1-1000, default 300).

On connect: a snapshot of the symbol's instruments (one per exchange, with their collection
status) and the latest closed candles of the first active one, oldest first, as
``{"timestamp", "open", "high", "low", "close", "volume", "trades"}`` with ``timestamp`` the
close time in epoch milliseconds (right-aligned, as everywhere); then every event of
``market_data:{symbol}``: ``candle.update`` (the 1m candle in progress) and ``candle.closed``.
An unknown symbol closes with 4404, a bad query with 4400.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from marketdata.aggregation import TIMEFRAMES
from marketdata.models import Candle, Instrument
from marketdata.services import datetime_to_ms
from tradeapp import events
from tradeapp.consumers import CLOSE_BAD_REQUEST, CLOSE_NOT_FOUND, StreamConsumer

DEFAULT_CANDLES = 300
MAX_CANDLES = 1000


class MarketConsumer(StreamConsumer):
    """``/ws/market/{symbol}`` (module docstring)."""

    symbol: str
    timeframe: str
    limit: int

    def allowed(self, user: Any) -> bool:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        self.timeframe = query.get("timeframe", ["1m"])[-1]
        limit = query.get("limit", [str(DEFAULT_CANDLES)])[-1]
        if self.timeframe not in TIMEFRAMES or not limit.isdigit():
            self.refusal_code = CLOSE_BAD_REQUEST
            return False
        self.limit = int(limit)
        if not 1 <= self.limit <= MAX_CANDLES:
            self.refusal_code = CLOSE_BAD_REQUEST
            return False
        symbol = self.scope["url_route"]["kwargs"]["symbol"]
        known = Instrument.objects.filter(symbol=symbol)
        if not known.exists() and "-" in symbol and "/" not in symbol:
            base, _, quote = symbol.rpartition("-")
            symbol = f"{base}/{quote}"
            known = Instrument.objects.filter(symbol=symbol)
        if not known.exists():
            self.refusal_code = CLOSE_NOT_FOUND
            return False
        self.symbol = symbol
        return True

    def get_streams(self) -> list[str]:
        return [events.MARKET_DATA_CHANNEL.format(symbol=self.symbol)]

    def snapshot(self) -> dict[str, Any]:
        instruments = list(
            Instrument.objects.filter(symbol=self.symbol)
            .select_related("exchange", "status")
            .order_by("-active", "exchange__ccxt_id")
        )
        shown = next((i for i in instruments if i.active), instruments[0])
        rows = (
            Candle.objects.filter(instrument=shown, timeframe=self.timeframe)
            .order_by("-close_time")
            .values_list("close_time", "open", "high", "low", "close", "volume", "trades")[
                : self.limit
            ]
        )
        candles = [
            {
                "timestamp": datetime_to_ms(close_time),
                "open": float(open_),
                "high": float(high),
                "low": float(low),
                "close": float(close),
                "volume": float(volume),
                "trades": int(trades or 0),
            }
            for close_time, open_, high, low, close, volume, trades in reversed(list(rows))
        ]
        return {
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "instrument_id": shown.pk,
            "instruments": [_instrument(i) for i in instruments],
            "candles": candles,
        }


def _instrument(instrument: Instrument) -> dict[str, Any]:
    status = getattr(instrument, "status", None)
    collection = None
    if status is not None:
        collection = {
            "state": status.state,
            "last_tick_ms": datetime_to_ms(status.last_tick_at) if status.last_tick_at else None,
            "last_candle_ms": (
                datetime_to_ms(status.last_candle_at) if status.last_candle_at else None
            ),
            "ticks": status.ticks_count,
            "rejects": status.rejects_count,
            "last_error": status.last_error,
        }
    return {
        "id": instrument.pk,
        "exchange": instrument.exchange.ccxt_id,
        "symbol": instrument.symbol,
        "active": instrument.active,
        "collection": collection,
    }
