"""Named parameter presets of strategies ("RSI 14 tight", "SMA 20/50"), private or shared."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q

from strategies.base import BaseStrategy, StrategyParameterError
from strategies.registry import StrategyModuleError, UnknownStrategyError, get_strategy


class StrategyPresetQuerySet(models.QuerySet):
    def visible_to(self, user: Any) -> StrategyPresetQuerySet:
        """The user's own presets and the shared ones."""
        return self.filter(Q(owner=user) | Q(owner__isnull=True))

    def shared(self) -> StrategyPresetQuerySet:
        return self.filter(owner__isnull=True)

    def for_strategy(self, strategy: str) -> StrategyPresetQuerySet:
        return self.filter(strategy=strategy)


class StrategyPreset(models.Model):
    """A saved set of parameters for one registered strategy.

    ``clean()`` checks the strategy name against the registry and the parameters against the
    strategy's schema, and stores the cleaned parameters (defaults filled in), so a preset keeps
    meaning the same thing when a default changes later.
    """

    name = models.CharField(max_length=100)
    strategy = models.CharField(
        max_length=64,
        db_index=True,
        help_text="Registered strategy name: a built-in or one from TRADEAPP_STRATEGY_MODULES.",
    )
    parameters = models.JSONField(
        default=dict,
        blank=True,
        help_text='A JSON object such as {"fast": 10, "slow": 30}; parameters left out take the '
        "strategy's defaults, which are filled in when the preset is saved.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="strategy_presets",
        help_text="Empty: a shared preset, visible to every user.",
    )
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = StrategyPresetQuerySet.as_manager()

    class Meta:
        ordering = ["strategy", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "strategy", "name"],
                name="strategies_preset_unique_per_owner",
                violation_error_message="This owner already has a preset of that name for "
                "this strategy.",
            ),
            # NULL owners never collide in the constraint above: shared presets need their own.
            models.UniqueConstraint(
                fields=["strategy", "name"],
                condition=Q(owner__isnull=True),
                name="strategies_preset_unique_shared",
                violation_error_message="A shared preset of that name already exists for this "
                "strategy.",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.strategy}: {self.name}" + (" (shared)" if self.owner_id is None else "")

    def clean(self) -> None:
        try:
            strategy_cls = get_strategy(self.strategy)
        except (UnknownStrategyError, StrategyModuleError) as exc:
            raise ValidationError({"strategy": str(exc)}) from exc
        try:
            self.parameters = strategy_cls.clean_parameters(self.parameters)
        except StrategyParameterError as exc:
            raise ValidationError({"parameters": str(exc)}) from exc

    def strategy_class(self) -> type[BaseStrategy]:
        return get_strategy(self.strategy)

    def build(self) -> BaseStrategy:
        """A strategy instance with this preset's parameters (validated again)."""
        return self.strategy_class()(self.parameters)
