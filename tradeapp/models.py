"""The platform's own rows: per-user limits (``tradeapp.limits`` reads them)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

_DEFAULT = "Empty: the installation's default ({})."


class UserLimits(models.Model):
    """One user's own limits, each empty for "the installation's default" (the
    ``TRADEAPP_LIMIT_*`` settings). Edited by staff on the user's admin page; a user without a
    row has every default. Zero refuses that kind of request altogether."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="limits"
    )
    concurrent_runs = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="research runs at once",
        help_text="Backtests and optimisations queued or running at the same time. "
        + _DEFAULT.format("TRADEAPP_LIMIT_CONCURRENT_RUNS"),
    )  # fmt: skip
    combinations = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="combinations per optimisation",
        help_text="A grid's size, random search's draws, a walk-forward window's grid. "
        + _DEFAULT.format("TRADEAPP_LIMIT_COMBINATIONS"),
    )  # fmt: skip
    bars = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="bars per run",
        help_text="Bars a backtest or optimisation may cover ((end - start) / timeframe). "
        + _DEFAULT.format("TRADEAPP_LIMIT_BARS"),
    )  # fmt: skip
    bots = models.PositiveIntegerField(
        null=True, blank=True, verbose_name="bots",
        help_text="Bots the user may own. " + _DEFAULT.format("TRADEAPP_LIMIT_BOTS"),
    )  # fmt: skip
    note = models.CharField(
        max_length=200, blank=True, help_text="Why this user has other limits (for staff)."
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "per-user limits"
        verbose_name_plural = "per-user limits"
        ordering = ["user__username"]

    def __str__(self) -> str:
        return f"limits of {self.user}"
