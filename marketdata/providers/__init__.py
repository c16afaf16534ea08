"""Market-data providers: where raw trades and historical candles come from.

Providers do network or file I/O only; they never touch Django. ``marketdata.collector`` binds
them to the database.
"""

from marketdata.providers.base import DataProvider, ProviderError, RawTrade

__all__ = ["DataProvider", "ProviderError", "RawTrade"]
