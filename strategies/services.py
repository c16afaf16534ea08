"""Writes of the strategies app."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from strategies.models import StrategyPreset


@transaction.atomic
def preset_create(
    *,
    name: str,
    strategy: str,
    parameters: dict[str, Any] | None = None,
    owner: Any = None,
    description: str = "",
) -> StrategyPreset:
    """Create a preset (``owner=None``: shared) after full validation.

    Raises ``django.core.exceptions.ValidationError`` for an unknown strategy, parameters the
    strategy refuses (naming the parameter) or a name already used by that owner.
    """
    preset = StrategyPreset(
        name=name,
        strategy=strategy,
        parameters={} if parameters is None else parameters,
        owner=owner,
        description=description,
    )
    preset.full_clean()
    preset.save()
    return preset


@transaction.atomic
def preset_update(*, preset: StrategyPreset, **changes: Any) -> StrategyPreset:
    """Change ``name``, ``strategy``, ``parameters``, ``owner`` or ``description`` of a preset,
    validated as on creation."""
    allowed = {"name", "strategy", "parameters", "owner", "description"}
    unknown = set(changes) - allowed
    if unknown:
        raise TypeError(f"preset_update() got unexpected field(s): {', '.join(sorted(unknown))}")
    for field, value in changes.items():
        setattr(preset, field, value)
    preset.full_clean()
    preset.save()
    return preset
