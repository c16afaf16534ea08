"""Helpers of the bots tests: a simulated instrument with stored 1m candles, and bots on it."""

from __future__ import annotations

from typing import Any

import numpy as np

from bots import services
from bots.models import Bot
from marketdata.models import Exchange, Instrument
from marketdata.services import candles_upsert, instrument_ensure

MINUTE = 60_000
START_MS = 1_767_225_600_000  # 2026-01-01 00:00 UTC, a candle close time


def instrument_with_exchange(symbol: str = "BTC/USDT") -> Instrument:
    Exchange.objects.get_or_create(
        ccxt_id="simulated", defaults={"name": "Sim", "kind": Exchange.Kind.SIMULATED}
    )
    return instrument_ensure(exchange_id="simulated", symbol=symbol)


def walk(bars: int, *, seed: int, vol: float = 0.004) -> dict[str, np.ndarray]:
    """1m candles of a seeded random walk, closing at START_MS + k minutes (k = 1..bars), with
    prices of 4 decimals (exact as stored decimals)."""
    rng = np.random.default_rng(seed)
    close = np.round(100 * np.exp(np.cumsum(rng.normal(0, vol, bars))), 4)
    open_ = np.round(np.r_[100.0, close[:-1]] * (1 + rng.normal(0, vol / 4, bars)), 4)
    spread = np.abs(rng.normal(0, vol, bars)) * close
    return {
        "timestamp": START_MS + MINUTE * np.arange(1, bars + 1, dtype=np.int64),
        "open": open_,
        "close": close,
        "high": np.round(np.maximum(open_, close) + spread, 4),
        "low": np.round(np.minimum(open_, close) - spread, 4),
        "volume": np.round(rng.uniform(1, 10, bars), 3),
        "trades": np.full(bars, 5),
    }


def store(instrument: Instrument, candles: dict[str, np.ndarray], rows: slice) -> list[int]:
    """Store the candles of ``rows``; returns their close times (ms)."""
    part = {k: v[rows] for k, v in candles.items()}
    candles_upsert(instrument_id=instrument.pk, timeframe="1m", candles=part)
    return [int(t) for t in part["timestamp"]]


def make_bot(user: Any, instrument: Instrument, **overrides: Any) -> Bot:
    fields = {
        "user": user, "name": "bot", "strategy": "sma_crossover",
        "parameters": {"fast": 3, "slow": 8}, "instrument": instrument, "timeframe": "1m",
        "capital": 10_000, "fee": 0.001, "slippage": 0.0005,
    } | overrides  # fmt: skip
    return services.bot_create(**fields)
