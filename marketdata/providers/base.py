"""The provider contract (the seed's ``DataProvider``)."""

from __future__ import annotations

import abc
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, TypedDict

logger = logging.getLogger(__name__)


class RawTrade(TypedDict, total=False):
    """One trade as a provider received it, in ccxt's unified trade shape.

    Values are *as received*: a provider does not validate them (a price may be a string, NaN,
    negative...). ``DataCollector.process_raw_data`` validates, and rejects with a reason.
    """

    exchange: str  # provider's exchange id: "binance", "simulated", "replay", ...
    symbol: str  # ccxt symbol, "BTC/USDT"
    id: str | None  # exchange trade id, when the exchange gives one
    timestamp: Any  # epoch milliseconds (int), as received
    price: Any
    amount: Any
    side: str | None  # "buy" / "sell" / None
    info: Any  # the exchange's original payload, JSON-serialisable


class Candle(TypedDict):
    """A closed candle, RIGHT-aligned: ``timestamp`` is the close time in epoch ms."""

    timestamp: int
    open: float
    high: float
    low: float
    close: float
    volume: float


class ProviderError(Exception):
    """A provider failure that retrying will not fix (bad symbol, bad credentials, bad file)."""


# Events a provider reports through ``on_event``: "connected", "reconnecting", "error", "fallback".
EventHook = Callable[[str, str], None]


class DataProvider(abc.ABC):
    """A source of market data: a live stream of trades and a history of closed candles.

    Subclasses: ``CcxtProvider`` (any ccxt exchange), ``SimulatedProvider`` (seeded random walk),
    ``ReplayProvider`` (a CSV/Parquet file).
    """

    #: exchange id written into every RawTrade (``Exchange.ccxt_id`` in the database)
    exchange_id: str = ""

    def __init__(self) -> None:
        self.on_event: EventHook = self._log_event

    def _log_event(self, event: str, detail: str) -> None:
        logger.info("%s provider %s: %s", self.exchange_id, event, detail)

    def report(self, event: str, detail: str = "") -> None:
        """Tell the collector about a connection change or an error (never raises)."""
        try:
            self.on_event(event, detail)
        except Exception:
            logger.exception("on_event hook failed")

    @abc.abstractmethod
    def stream_trades(self, symbols: Sequence[str]) -> AsyncIterator[RawTrade]:
        """Yield the trades of ``symbols`` as they happen, oldest first per symbol, until
        cancelled or ``close()``d. Transient failures (network, 5xx, 429) are retried inside with
        backoff and reported through ``report``; a ``ProviderError`` ends the stream."""

    @abc.abstractmethod
    async def fetch_candles(
        self, symbol: str, timeframe: str, since_ms: int, *, limit: int = 1000
    ) -> list[Candle]:
        """One page of at most ``limit`` CLOSED candles whose close time is > ``since_ms``,
        ascending, right-aligned (close-time stamps). An empty list means no more history yet.
        Callers page by passing the last close time as the next ``since_ms``."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most providers hold nothing
        """Release connections. Idempotent."""
