"""Exchanges, instruments, raw ticks (the audit copy), rejected ticks, candles, collection status.

Raw data and processed data are kept apart: ``RawTick`` and ``RejectedTick`` are written once, as
received, and never modified by processing; ``Candle`` rows are derived from them (or imported
from the exchange) and may be recomputed.
"""

from __future__ import annotations

from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketdata.aggregation import TIMEFRAMES

# Prices and amounts: 20 integer and 18 fractional digits hold any exchange's values as sent.
PRICE = {"max_digits": 38, "decimal_places": 18}


class Timeframe(models.TextChoices):
    M1 = "1m", "1 minute"
    M5 = "5m", "5 minutes"
    M15 = "15m", "15 minutes"
    H1 = "1h", "1 hour"
    H4 = "4h", "4 hours"
    D1 = "1d", "1 day"


def default_timeframes() -> list[str]:
    return list(TIMEFRAMES)


def validate_timeframes(value: object) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError("Give a non-empty list of timeframes.")
    unknown = [tf for tf in value if tf not in TIMEFRAMES]
    if unknown:
        raise ValidationError(f"Unknown timeframes {unknown}; allowed: {', '.join(TIMEFRAMES)}.")
    if "1m" not in value:
        # Higher timeframes are built from stored 1m candles.
        raise ValidationError("Timeframes must include 1m: higher timeframes are built from it.")


class Exchange(models.Model):
    class Kind(models.TextChoices):
        CCXT = "ccxt", "ccxt exchange"
        SIMULATED = "simulated", "Simulated (seeded random walk)"
        REPLAY = "replay", "Replay of a file"

    ccxt_id = models.SlugField(
        max_length=50, unique=True, help_text="ccxt exchange id (binance, okx, ...) or a name."
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.CCXT)
    api_base_url = models.CharField(
        max_length=200,
        blank=True,
        help_text="Overrides the exchange's API base URL (e.g. http://127.0.0.1:8080 for a "
        "local exchange server). Empty: the exchange's own URLs.",
    )
    options = models.JSONField(
        default=dict,
        blank=True,
        help_text="Provider options: ccxt options; seed/trades_per_second for simulated; "
        "path/speed for replay.",
    )
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["ccxt_id"]

    def __str__(self) -> str:
        return self.name or self.ccxt_id


class InstrumentQuerySet(models.QuerySet):
    def active(self) -> InstrumentQuerySet:
        return self.filter(active=True, exchange__active=True)


class Instrument(models.Model):
    exchange = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="instruments")
    symbol = models.CharField(max_length=64, help_text="As ccxt writes it, e.g. BTC/USDT.")
    base = models.CharField(max_length=32)
    quote = models.CharField(max_length=32)
    active = models.BooleanField(default=True)
    timeframes = models.JSONField(
        default=default_timeframes,
        validators=[validate_timeframes],
        help_text="Timeframes to build (must include 1m).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = InstrumentQuerySet.as_manager()

    class Meta:
        ordering = ["exchange__ccxt_id", "symbol"]
        constraints = [
            models.UniqueConstraint(fields=["exchange", "symbol"], name="instrument_unique_symbol")
        ]

    def __str__(self) -> str:
        return f"{self.exchange.ccxt_id}:{self.symbol}"


class RawTick(models.Model):
    """A trade exactly as received. Never modified by processing."""

    id = models.BigAutoField(primary_key=True)
    # The hottest insert path: no index of its own ((instrument, time) and (instrument, trade_id)
    # start with it) and no database-level FK check per row (a third of the COPY ingest time).
    # Integrity holds in the ORM: instruments are PROTECTed while they have ticks, and the
    # collector only writes ids of instruments it loaded.
    instrument = models.ForeignKey(
        Instrument,
        on_delete=models.PROTECT,
        related_name="raw_ticks",
        db_index=False,
        db_constraint=False,
    )
    # NULL (not "") when the exchange gives no id: only real ids are unique.
    trade_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    time = models.DateTimeField(help_text="Trade time reported by the exchange.")
    price = models.DecimalField(**PRICE)
    amount = models.DecimalField(**PRICE)
    side = models.CharField(max_length=4, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["instrument", "time", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["instrument", "trade_id"],
                condition=Q(trade_id__isnull=False),
                name="rawtick_unique_trade_id",
            )
        ]
        indexes = [models.Index(fields=["instrument", "time"], name="rawtick_instrument_time")]

    def __str__(self) -> str:
        return f"{self.instrument_id} {self.time.isoformat()} {self.price} x {self.amount}"


class RejectedTick(models.Model):
    """A row that failed validation, kept with its raw payload and the reason. Nothing is lost."""

    id = models.BigAutoField(primary_key=True)
    exchange = models.CharField(max_length=50)
    symbol = models.CharField(max_length=64, blank=True)
    instrument = models.ForeignKey(
        Instrument,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="rejected_ticks",
        db_index=False,  # indexed through (instrument, received_at)
    )
    payload = models.JSONField()
    reason = models.CharField(max_length=200)
    received_at = models.DateTimeField()

    class Meta:
        ordering = ["-received_at", "-id"]
        indexes = [
            models.Index(fields=["instrument", "received_at"], name="rejected_instrument_time")
        ]

    def __str__(self) -> str:
        return f"{self.exchange}:{self.symbol} {self.reason}"


class Candle(models.Model):
    """OHLCV candle, RIGHT-aligned: ``close_time`` is the end of its interval (inclusive)."""

    class Source(models.TextChoices):
        TICKS = "ticks", "Aggregated from ticks"
        EXCHANGE = "exchange", "Imported from the exchange"

    id = models.BigAutoField(primary_key=True)
    # Indexed through the unique (instrument, timeframe, close_time) constraint.
    instrument = models.ForeignKey(
        Instrument, on_delete=models.PROTECT, related_name="candles", db_index=False
    )
    timeframe = models.CharField(max_length=3, choices=Timeframe.choices)
    close_time = models.DateTimeField()
    open = models.DecimalField(**PRICE)
    high = models.DecimalField(**PRICE)
    low = models.DecimalField(**PRICE)
    close = models.DecimalField(**PRICE)
    volume = models.DecimalField(**PRICE)
    trades = models.PositiveIntegerField(default=0)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.TICKS)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument", "timeframe", "close_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["instrument", "timeframe", "close_time"], name="candle_unique_close"
            ),
            models.CheckConstraint(
                condition=Q(low__lte=models.F("high")), name="candle_low_le_high"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument_id} {self.timeframe} {self.close_time.isoformat()}"


class CollectionStatus(models.Model):
    """What the collector is doing for one instrument: shown on pages and in /healthz."""

    class State(models.TextChoices):
        STOPPED = "stopped", "Stopped"
        RUNNING = "running", "Running"
        RECONNECTING = "reconnecting", "Reconnecting"
        ERROR = "error", "Error"

    instrument = models.OneToOneField(
        Instrument, on_delete=models.CASCADE, primary_key=True, related_name="status"
    )
    state = models.CharField(max_length=12, choices=State.choices, default=State.STOPPED)
    last_tick_at = models.DateTimeField(null=True, blank=True)
    last_candle_at = models.DateTimeField(null=True, blank=True)
    ticks_count = models.BigIntegerField(default=0)
    rejects_count = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "collection status"

    def __str__(self) -> str:
        return f"{self.instrument} {self.state}"

    @property
    def lag(self) -> timedelta | None:
        """Time since the last tick was received."""
        return None if self.last_tick_at is None else timezone.now() - self.last_tick_at
