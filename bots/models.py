"""Bots, their decision log (signals), orders, fills, round-trip trades, positions, audit events,
exchange accounts with encrypted credentials, and each user's risk budget.

The database is the source of truth: a bot's paper book (``Bot.paper_book``, exact floats) and
``last_processed_at`` decide what it does next; Redis events only tell listeners.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q

from bots import crypto
from marketdata.models import PRICE, Exchange, Instrument, Timeframe

FRACTION = [MinValueValidator(0.0), MaxValueValidator(1.0)]


class OwnedQuerySet(models.QuerySet):
    owner_path = "owner"

    def owned_by(self, user: Any) -> OwnedQuerySet:
        """The user's own rows; staff see all."""
        if getattr(user, "is_staff", False):
            return self.all()
        return self.filter(**{self.owner_path: user})


class BotOwnedQuerySet(OwnedQuerySet):
    owner_path = "bot__owner"


class ExchangeAccount(models.Model):
    """API credentials of one exchange account. Key and secret are stored only as Fernet tokens
    (``bots.crypto``); nothing here ever returns or prints them except ``api_key``/
    ``api_secret``, which the live broker calls."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="exchange_accounts"
    )
    exchange = models.ForeignKey(Exchange, on_delete=models.PROTECT, related_name="+")
    label = models.CharField(max_length=100)
    api_key_encrypted = models.TextField(blank=True, editable=False)
    api_secret_encrypted = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        ordering = ["owner", "label"]
        constraints = [
            models.UniqueConstraint(fields=["owner", "label"], name="account_unique_label")
        ]

    def __str__(self) -> str:
        return f"{self.label} ({self.exchange_id})"

    def __repr__(self) -> str:
        return f"<ExchangeAccount {self.pk} {self.label!r} credentials={self.credentials_state}>"

    def set_credentials(self, *, api_key: str | None = None, api_secret: str | None = None) -> None:
        """Encrypt new values (None keeps the stored one, "" clears it); the caller saves."""
        if api_key is not None:
            self.api_key_encrypted = crypto.encrypt(api_key) if api_key else ""
        if api_secret is not None:
            self.api_secret_encrypted = crypto.encrypt(api_secret) if api_secret else ""

    def api_key(self) -> str:
        return crypto.decrypt(self.api_key_encrypted) if self.api_key_encrypted else ""

    def api_secret(self) -> str:
        return crypto.decrypt(self.api_secret_encrypted) if self.api_secret_encrypted else ""

    def rotate_credentials(self) -> None:
        """Re-encrypt both tokens with the newest key (``bots.crypto``); the caller saves."""
        if self.api_key_encrypted:
            self.api_key_encrypted = crypto.rotate_token(self.api_key_encrypted)
        if self.api_secret_encrypted:
            self.api_secret_encrypted = crypto.rotate_token(self.api_secret_encrypted)

    @property
    def credentials_state(self) -> str:
        """ "set" / "not set" per credential, the only form in which pages show them."""
        key = "set" if self.api_key_encrypted else "not set"
        secret = "set" if self.api_secret_encrypted else "not set"
        return f"key {key}, secret {secret}"


class BotQuerySet(OwnedQuerySet):
    def running(self) -> BotQuerySet:
        return self.filter(status=Bot.Status.RUNNING)


class Bot(models.Model):
    class Mode(models.TextChoices):
        PAPER = "paper", "Paper"
        LIVE = "live", "Live"

    class Status(models.TextChoices):
        STOPPED = "stopped", "Stopped"
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        ERROR = "error", "Error"

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="bots"
    )
    name = models.CharField(max_length=100)
    strategy = models.CharField(max_length=64)
    parameters = models.JSONField(
        default=dict, blank=True, help_text="Checked against the strategy's schema on save."
    )
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="bots")
    timeframe = models.CharField(max_length=3, choices=Timeframe.choices, default=Timeframe.M1)
    mode = models.CharField(max_length=5, choices=Mode.choices, default=Mode.PAPER)
    account = models.ForeignKey(
        ExchangeAccount, null=True, blank=True, on_delete=models.PROTECT, related_name="bots"
    )
    capital = models.DecimalField(
        **PRICE, default=10_000, help_text="Allocated capital in the quote currency."
    )
    # Risk settings (fractions; empty switches a rule off), applied as bots.risk describes.
    max_position_fraction = models.FloatField(
        default=1.0,
        validators=FRACTION,
        help_text="Fraction of the bot's cash committed per entry (the backtester's size).",
    )
    stop_loss = models.FloatField(
        null=True, blank=True, validators=FRACTION, help_text="Fraction below the entry."
    )
    take_profit = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0)],
        help_text="Fraction above the entry.",
    )  # fmt: skip
    trailing_stop = models.FloatField(
        null=True, blank=True, validators=FRACTION, help_text="Fraction below the highest high."
    )
    cooldown_candles = models.PositiveIntegerField(
        default=0, help_text="Candles without entries after a losing trade."
    )
    max_daily_loss = models.FloatField(
        null=True, blank=True, validators=FRACTION,
        help_text="Fraction of the day's starting equity; reaching it pauses the bot.",
    )  # fmt: skip
    fee = models.FloatField(default=0.001, validators=FRACTION, help_text="Fraction of notional.")
    fee_in_base = models.BooleanField(
        default=False,
        help_text="The exchange takes a buy's fee from the coin bought (Binance's rule unless "
        "fees are paid in BNB): an entry spends the whole committed cash, and paper trading, "
        "backtests and the parity check model the fee that way.",
    )
    slippage = models.FloatField(default=0.0, validators=FRACTION, help_text="Fraction of price.")

    status = models.CharField(
        max_length=8, choices=Status.choices, default=Status.STOPPED, db_index=True
    )
    status_reason = models.TextField(blank=True)
    last_processed_at = models.DateTimeField(
        null=True, blank=True, help_text="Close time of the last candle the bot processed."
    )
    # The paper account as exact floats (bots.paper.PaperBook) and the risk rules' memory
    # ({"day", "day_start_equity", "cooldown_left"}); the Decimal fields below mirror them.
    paper_book = models.JSONField(default=dict, blank=True, editable=False)
    risk_state = models.JSONField(default=dict, blank=True, editable=False)
    cash = models.DecimalField(**PRICE, null=True, blank=True, editable=False)
    equity = models.DecimalField(**PRICE, null=True, blank=True, editable=False)
    reconciled_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = BotQuerySet.as_manager()

    class Meta:
        ordering = ["owner", "name"]
        constraints = [
            models.CheckConstraint(
                condition=~Q(mode="live") | Q(account__isnull=False), name="bot_live_has_account"
            ),
            models.CheckConstraint(condition=Q(capital__gt=0), name="bot_capital_positive"),
            models.CheckConstraint(
                condition=Q(max_position_fraction__gt=0, max_position_fraction__lte=1),
                name="bot_position_fraction",
            ),
        ]
        indexes = [
            models.Index(fields=["instrument", "timeframe", "status"], name="bot_stream_status")
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.strategy} {self.timeframe})"

    def engine_options(self) -> dict[str, Any]:
        """The ``run_backtest`` keyword arguments this bot trades with."""
        return {
            "cash": float(self.capital), "fee": self.fee, "slippage": self.slippage,
            "size": self.max_position_fraction, "fill": "next_open", "allow_short": False,
            "fee_in_base": self.fee_in_base,
            "stop_loss": self.stop_loss, "take_profit": self.take_profit,
            "trailing_stop": self.trailing_stop,
        }  # fmt: skip


class Signal(models.Model):
    """The decision log: every signal of a bot's strategy, executed or not, and why."""

    class Action(models.TextChoices):
        BUY = "BUY", "Buy"
        SELL = "SELL", "Sell"
        HOLD = "HOLD", "Hold"

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="signals")
    time = models.DateTimeField(help_text="Close time of the candle decided on.")
    action = models.CharField(max_length=4, choices=Action.choices)
    price = models.DecimalField(**PRICE, help_text="The candle's close.")
    strength = models.FloatField(default=0.0)
    reason = models.TextField(blank=True)
    indicators = models.JSONField(default=dict, blank=True)
    risk_checks = models.JSONField(
        default=list, blank=True, help_text="[{name, passed, detail}] of the checks run."
    )
    executed = models.BooleanField(default=False, help_text="An order followed.")
    no_order_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BotOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["bot", "-time"]
        constraints = [models.UniqueConstraint(fields=["bot", "time"], name="signal_unique_time")]

    def __str__(self) -> str:
        return f"bot {self.bot_id} {self.time.isoformat()} {self.action}"


class Order(models.Model):
    class Side(models.TextChoices):
        BUY = "buy", "Buy"
        SELL = "sell", "Sell"

    class Type(models.TextChoices):
        MARKET = "market", "Market"
        STOP = "stop", "Stop (stop-loss or trailing)"
        TAKE_PROFIT = "take_profit", "Take-profit"

    class Status(models.TextChoices):
        PENDING_SUBMIT = "pending_submit", "Pending submit"
        OPEN = "open", "Open"
        PARTIALLY_FILLED = "partially_filled", "Partially filled"
        FILLED = "filled", "Filled"
        CANCELLED = "cancelled", "Cancelled"
        REJECTED = "rejected", "Rejected"
        UNKNOWN = "unknown", "Unknown (reconcile)"

    ACTIVE = (Status.PENDING_SUBMIT, Status.OPEN, Status.PARTIALLY_FILLED, Status.UNKNOWN)

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="orders")
    signal = models.ForeignKey(
        Signal, null=True, blank=True, on_delete=models.SET_NULL, related_name="orders"
    )
    client_order_id = models.CharField(
        max_length=36, unique=True, help_text="Ours, derived from bot, candle time and side."
    )
    side = models.CharField(max_length=4, choices=Side.choices)
    type = models.CharField(max_length=11, choices=Type.choices, default=Type.MARKET)
    reason = models.CharField(max_length=16, default="signal")
    time = models.DateTimeField(help_text="Close time of the candle that caused the order.")
    quantity = models.DecimalField(
        **PRICE, null=True, blank=True, help_text="Units; a buy's is known once it fills."
    )
    quote_amount = models.DecimalField(
        **PRICE, null=True, blank=True, help_text="A buy's cash to commit."
    )
    price = models.DecimalField(**PRICE, null=True, blank=True, help_text="Average fill price.")
    filled_quantity = models.DecimalField(**PRICE, default=0)
    status = models.CharField(
        max_length=16, choices=Status.choices, default=Status.PENDING_SUBMIT, db_index=True
    )
    exchange_order_id = models.CharField(max_length=64, blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    filled_at = models.DateTimeField(null=True, blank=True)

    objects = BotOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["bot", "-time", "-id"]

    def __str__(self) -> str:
        return f"{self.client_order_id} {self.side} {self.status}"

    @staticmethod
    def make_client_order_id(bot_id: int, time_ms: int, side: str, reason: str = "signal") -> str:
        """Deterministic: the same bot, candle and side always give the same id, so a replayed
        candle cannot place a second order (the column is unique)."""
        code = {"buy": "b", "sell": "s"}[side]
        suffix = {"stop_loss": "sl", "trailing_stop": "ts", "take_profit": "tp"}.get(reason, "")
        return f"tb{bot_id}-{time_ms}-{code}{suffix}"


class Fill(models.Model):
    order = models.ForeignKey(Order, on_delete=models.CASCADE, related_name="fills")
    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="fills")
    time = models.DateTimeField(help_text="Close time of the candle in which it filled.")
    side = models.CharField(max_length=4, choices=Order.Side.choices)
    quantity = models.DecimalField(**PRICE)
    price = models.DecimalField(**PRICE)
    fee = models.DecimalField(
        **PRICE, help_text="The fee valued in the quote currency at the fill (for P&L)."
    )
    # The fee as the exchange charged it: in the quote currency, the coin bought, or a third
    # asset such as BNB (ccxt's ``fee.cost`` and ``fee.currency``).
    fee_cost = models.DecimalField(**PRICE, default=0, help_text="In ``fee_currency``.")
    fee_currency = models.CharField(max_length=16, blank=True)
    exchange_trade_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BotOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["bot", "time", "id"]

    def __str__(self) -> str:
        return f"{self.order_id} {self.side} {self.quantity} @ {self.price}"


class Trade(models.Model):
    """A round trip (long entry to exit) with its result, as the backtester reports trades."""

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="trades")
    side = models.CharField(max_length=5, default="long")
    entry_time = models.DateTimeField()
    exit_time = models.DateTimeField()
    quantity = models.DecimalField(**PRICE)
    entry_price = models.DecimalField(**PRICE)
    exit_price = models.DecimalField(**PRICE)
    fees = models.DecimalField(**PRICE)
    pnl = models.DecimalField(**PRICE)
    return_fraction = models.FloatField(help_text="pnl / equity committed at entry.")
    exit_reason = models.CharField(max_length=16)
    entry_order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    exit_order = models.ForeignKey(
        Order, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    objects = BotOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["bot", "exit_time"]
        constraints = [
            models.UniqueConstraint(fields=["bot", "exit_time"], name="trade_unique_exit")
        ]

    def __str__(self) -> str:
        return f"bot {self.bot_id} {self.entry_time:%Y-%m-%d %H:%M} -> {self.exit_reason}"


class Position(models.Model):
    """A bot's current position (quantity 0 when flat), marked at the last processed close."""

    bot = models.OneToOneField(Bot, on_delete=models.CASCADE, related_name="position")
    quantity = models.DecimalField(**PRICE, default=0)
    entry_price = models.DecimalField(**PRICE, null=True, blank=True)
    entry_time = models.DateTimeField(null=True, blank=True)
    mark_price = models.DecimalField(**PRICE, null=True, blank=True)
    unrealized_pnl = models.DecimalField(**PRICE, default=0)
    dust = models.DecimalField(
        **PRICE, default=0,
        help_text="Coin held below the exchange's minimum order (amount, lot step or "
        "notional): never sent, never blocks an entry; sold with the next exit that reaches "
        "the minimum. Not part of quantity.",
    )  # fmt: skip
    updated_at = models.DateTimeField(auto_now=True)

    objects = BotOwnedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"bot {self.bot_id} {self.quantity}"


class BotEvent(models.Model):
    """Audit trail: every state change of a bot, with who did it and when."""

    class Kind(models.TextChoices):
        CREATED = "created", "Created"
        STARTED = "started", "Started"
        STOPPED = "stopped", "Stopped"
        PAUSED = "paused", "Paused"
        ERROR = "error", "Error"
        KILL_SWITCH = "kill_switch", "Kill switch"
        KILL_SWITCH_RELEASED = "kill_switch_released", "Kill switch released"
        ORDER_CANCELLED = "order_cancelled", "Order cancelled"
        STATE_UPDATED = "state_updated", "State updated"
        RECONCILED = "reconciled", "Reconciled with the exchange"
        RECONCILE_FAILED = "reconcile_failed", "Reconciliation failed"
        STOP_DEFERRED = "stop_deferred", "Stop exit not sent (an order is unsettled)"
        DUST = "dust", "Position below the exchange's minimum (dust)"
        BALANCE_MISMATCH = "balance_mismatch", "Position differs from the account's balance"
        BALANCE_RESOLVED = "balance_resolved", "Position agrees with the account's balance again"

    bot = models.ForeignKey(Bot, on_delete=models.CASCADE, related_name="events")
    kind = models.CharField(max_length=32, choices=Kind.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
        related_name="+", help_text="Empty: the system.",
    )  # fmt: skip
    message = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    time = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = BotOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-time", "-id"]

    def __str__(self) -> str:
        return f"bot {self.bot_id} {self.kind}"


class RiskBudget(models.Model):
    """A user's limits across all their bots, and their kill switch."""

    owner = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="risk_budget"
    )
    max_exposure = models.DecimalField(
        **PRICE, null=True, blank=True,
        help_text="Most quote currency in open positions across all bots; empty: no limit.",
    )  # fmt: skip
    kill_switch_at = models.DateTimeField(
        null=True, blank=True, help_text="Set: the kill switch is engaged and no bot may start."
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = OwnedQuerySet.as_manager()

    def __str__(self) -> str:
        return f"risk budget of {self.owner}"
