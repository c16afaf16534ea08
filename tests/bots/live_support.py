"""Helpers of the live-broker tests: a live bot on the local exchange server (``FakeBinance``)
through the real ccxt client."""

from __future__ import annotations

from typing import Any

from bots import services
from bots.models import Bot, ExchangeAccount, Signal
from marketdata.models import Exchange, Instrument
from marketdata.services import candles_upsert, instrument_ensure, ms_to_datetime
from strategies.base import Signal as StrategySignal
from tests.bots.support import MINUTE, START_MS, make_bot
from tests.exchange_server import FakeBinance

KEY = "live-test-key-7f3a"
SECRET = "live-test-secret-c41d9e"  # the local exchange server's, not a real one
TIMEOUT_MS = 1500  # the client gives up on an order after this; the server's drop waits longer


def binance_instrument(server: FakeBinance, symbol: str = "BTC/USDT") -> Instrument:
    Exchange.objects.update_or_create(
        ccxt_id="binance",
        defaults={"name": "Binance (local)", "kind": Exchange.Kind.CCXT,
                  "api_base_url": server.rest_url, "options": {"timeout": TIMEOUT_MS}},
    )  # fmt: skip
    return instrument_ensure(exchange_id="binance", symbol=symbol)


def live_bot(
    user: Any,
    server: FakeBinance,
    *,
    key: str = KEY,
    secret: str = SECRET,
    label: str = "main",
    **overrides: Any,
) -> Bot:
    instrument = binance_instrument(server)
    account = ExchangeAccount(owner=user, exchange=instrument.exchange, label=label)
    account.set_credentials(api_key=key, api_secret=secret)
    account.save()
    return make_bot(user, instrument, mode=Bot.Mode.LIVE, account=account, **overrides)


def decide(bot: Bot, action: str, minute: int, price: float = 30_000.0) -> Signal:
    """The bot decides ``action`` on the candle closing ``minute`` minutes after START_MS."""
    signal = StrategySignal(
        action=action, price=price, time=ms_to_datetime(START_MS + minute * MINUTE),
        strength=1.0 if action != "HOLD" else 0.0, reason="test",
    )  # fmt: skip
    return services.bot_process_signal(bot_id=bot.pk, signal=signal)


def close_candle(bot: Bot, minute: int, ohlc: tuple[float, float, float, float]) -> dict[str, int]:
    """Store the 1m candle closing ``minute`` minutes after START_MS (prices rounded to cents)
    and process it as the collector's task does (``services.process_candle``)."""
    close_ms = START_MS + minute * MINUTE
    open_, high, low, close = (round(v, 2) for v in ohlc)
    candles_upsert(
        instrument_id=bot.instrument_id, timeframe="1m",
        candles=[{"timestamp": close_ms, "open": open_, "high": high, "low": low,
                  "close": close, "volume": 1.0, "trades": 1}],
    )  # fmt: skip
    return services.process_candle(
        instrument_id=bot.instrument_id, timeframe="1m", close_ms=close_ms
    )
