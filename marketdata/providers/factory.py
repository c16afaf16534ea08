"""Build the provider an ``Exchange`` row describes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from marketdata.providers.base import DataProvider, ProviderError

if TYPE_CHECKING:
    from marketdata.models import Exchange


def provider_for(exchange: Exchange) -> DataProvider:
    """A fresh provider for ``exchange`` (kind ccxt, simulated or replay) with its options."""
    options = dict(exchange.options or {})
    if exchange.kind == "ccxt":
        from marketdata.providers.ccxt_provider import CcxtProvider

        return CcxtProvider(
            exchange.ccxt_id, api_urls=exchange.api_base_url or None, options=options or None
        )
    if exchange.kind == "simulated":
        from marketdata.providers.simulated import SimulatedProvider

        return SimulatedProvider(**options)
    if exchange.kind == "replay":
        from marketdata.providers.replay import ReplayProvider

        if "path" not in options:
            raise ProviderError(f"replay exchange {exchange.ccxt_id} needs a 'path' option")
        return ReplayProvider(options.pop("path"), exchange_id=exchange.ccxt_id, **options)
    raise ProviderError(f"unknown exchange kind {exchange.kind!r}")
