"""Stored backtest and optimisation runs, with what is needed to re-run them to the same result."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Q

from marketdata.models import Instrument, Timeframe


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINISHED = (RunStatus.DONE, RunStatus.FAILED, RunStatus.CANCELLED)


class OwnedQuerySet(models.QuerySet):
    def owned_by(self, user: Any) -> OwnedQuerySet:
        """A user's own runs; staff see all."""
        if getattr(user, "is_staff", False):
            return self.all()
        return self.filter(owner=user)


class RunBase(models.Model):
    """What backtests and optimisations share: who, what, on which data, with which costs."""

    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    strategy = models.CharField(max_length=64, db_index=True)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    timeframe = models.CharField(max_length=3, choices=Timeframe.choices, default=Timeframe.H1)
    start = models.DateTimeField(help_text="First candle close time included.")
    end = models.DateTimeField(help_text="Last candle close time included.")
    # Costs and sizing, as run_backtest takes them.
    cash = models.FloatField(default=10_000)
    fee = models.FloatField(default=0.001, help_text="Fraction of notional per fill.")
    slippage = models.FloatField(default=0.0, help_text="Fraction of price, against us.")
    size = models.FloatField(default=1.0, help_text="Fraction of equity per entry.")
    fill = models.CharField(
        max_length=10, choices=[("next_open", "Next bar's open"), ("close", "Signal bar's close")],
        default="next_open",
    )  # fmt: skip
    allow_short = models.BooleanField(default=False)
    fee_in_base = models.BooleanField(
        default=False,
        help_text="A buy's fee is taken from the coin bought (Binance's spot rule unless fees "
        "are paid in BNB), not from the quote cash. Spot only: not with shorts.",
    )
    stop_loss = models.FloatField(null=True, blank=True, help_text="Fraction below entry.")
    take_profit = models.FloatField(null=True, blank=True, help_text="Fraction above entry.")
    trailing_stop = models.FloatField(null=True, blank=True, help_text="Fraction below the peak.")

    status = models.CharField(
        max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED, db_index=True
    )
    progress = models.FloatField(default=0.0, help_text="0 to 1.")
    error = models.TextField(blank=True)
    task_id = models.CharField(max_length=64, blank=True)
    # Recovery from lost workers (see ``backtests.services.runs_recover_stale``).
    attempts = models.PositiveIntegerField(
        default=0, editable=False, help_text="Times a worker started the run."
    )
    heartbeat_at = models.DateTimeField(
        null=True, blank=True, editable=False,
        help_text="Last sign of life: when the run was sent, started, progressed or beat.",
    )  # fmt: skip
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    # Reproducibility: the exact data and code versions behind the result.
    data_first = models.DateTimeField(null=True, blank=True)
    data_last = models.DateTimeField(null=True, blank=True)
    data_bars = models.PositiveIntegerField(default=0)
    data_hash = models.CharField(max_length=64, blank=True, help_text="sha256 of the candles used")
    strategy_version = models.CharField(max_length=64, blank=True)
    engine_version = models.CharField(max_length=64, blank=True)

    objects = OwnedQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def engine_options(self) -> dict[str, Any]:
        return {
            "cash": self.cash, "fee": self.fee, "slippage": self.slippage, "size": self.size,
            "fill": self.fill, "allow_short": self.allow_short, "fee_in_base": self.fee_in_base,
            "stop_loss": self.stop_loss, "take_profit": self.take_profit,
            "trailing_stop": self.trailing_stop,
        }  # fmt: skip

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return (self.finished_at - self.started_at).total_seconds()
        return None


class BacktestRun(RunBase):
    parameters = models.JSONField(default=dict, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    # Compact results: float32 equity per bar and the trades table, zlib-compressed
    # (see backtests.services.pack_result).
    equity_blob = models.BinaryField(null=True, blank=True, editable=False)
    trades_blob = models.BinaryField(null=True, blank=True, editable=False)
    trades_count = models.PositiveIntegerField(default=0)

    class Meta(RunBase.Meta):
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="backtest_period")
        ]

    def __str__(self) -> str:
        return f"backtest #{self.pk} {self.strategy} {self.instrument_id} {self.timeframe}"


class OptimizationRun(RunBase):
    class Method(models.TextChoices):
        GRID = "grid", "Grid search"
        RANDOM = "random", "Random search"
        WALK_FORWARD = "walk_forward", "Walk-forward"

    method = models.CharField(max_length=12, choices=Method.choices, default=Method.GRID)
    space = models.JSONField(
        default=dict,
        help_text='Grid: {"fast": [5, 10], "slow": [20, 30]}; random: the same lists or '
        '{"fast": {"min": 5, "max": 50}}; empty: from the strategy schema.',
    )
    objective = models.CharField(max_length=32, default="sharpe")
    n_iter = models.PositiveIntegerField(default=50, help_text="Random search: combinations.")
    seed = models.IntegerField(default=0)
    train_bars = models.PositiveIntegerField(null=True, blank=True)
    test_bars = models.PositiveIntegerField(null=True, blank=True)
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)
    combinations = models.PositiveIntegerField(default=0)
    best_parameters = models.JSONField(default=dict, blank=True)
    best_metrics = models.JSONField(default=dict, blank=True)
    walk_forward = models.JSONField(
        default=dict, blank=True, help_text="Per-window parameters and metrics, stitched equity."
    )

    class Meta(RunBase.Meta):
        constraints = [
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="optimization_period"
            )
        ]

    def __str__(self) -> str:
        return f"optimisation #{self.pk} {self.method} {self.strategy}"


class OptimizationResult(models.Model):
    """One evaluated combination of an optimisation."""

    run = models.ForeignKey(OptimizationRun, on_delete=models.CASCADE, related_name="results")
    parameters = models.JSONField()
    metrics = models.JSONField()
    objective = models.FloatField(null=True)
    chunk = models.PositiveIntegerField(default=0)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["run", "-objective"]
        indexes = [models.Index(fields=["run", "objective"], name="optresult_run_objective")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.parameters} {self.objective}"


class OptimizationChunk(models.Model):
    """One chunk of a grid or random search: its combinations, and where it is.

    A search's chunks are stored when it fans out and sent to the ``backtests`` queue a few at
    a time (``TRADEAPP_RESEARCH_CHUNKS_IN_FLIGHT`` per run): each finished chunk sends the next,
    so a long search never fills the queue ahead of another user's runs. A chunk beats while it
    runs; the watchdog sends a chunk whose worker went quiet again on its own, without waiting
    for the rest of the run (``backtests.services.runs_recover_stale``)."""

    class State(models.TextChoices):
        PENDING = "pending", "Pending"
        SENT = "sent", "Sent"
        RUNNING = "running", "Running"
        DONE = "done", "Done"

    run = models.ForeignKey(OptimizationRun, on_delete=models.CASCADE, related_name="chunks")
    index = models.PositiveIntegerField()
    combinations = models.JSONField(help_text="The parameter combinations this chunk evaluates.")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    sends = models.PositiveIntegerField(default=0, help_text="Times the chunk was sent.")
    sent_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    worker = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["run", "index"]
        constraints = [models.UniqueConstraint(fields=["run", "index"], name="optchunk_run_index")]
        indexes = [models.Index(fields=["state", "heartbeat_at"], name="optchunk_state_beat")]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.index} {self.state}"
