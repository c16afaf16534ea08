"""The strategy registry: built-ins, user modules from settings, clear errors."""

from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest

from strategies import registry
from strategies.apps import check_strategy_modules
from strategies.base import Action, BaseStrategy, Parameter
from strategies.builtin import BUILTIN_STRATEGIES, SMACrossover
from strategies.registry import (
    StrategyModuleError,
    UnknownStrategyError,
    available,
    create_strategy,
    get_strategy,
)
from tests.strategies.conftest import frame_from_close
from tests.strategies.user_strategies import CloseAboveSMA, PeekAhead

USER_MODULE = "tests.strategies.user_strategies"
BUILTINS = [
    "bollinger_reversion",
    "donchian_breakout",
    "ema_crossover",
    "macd_crossover",
    "rsi_reversion",
    "sma_crossover",
]


@pytest.fixture(autouse=True)
def _no_user_modules(settings):
    settings.TRADEAPP_STRATEGY_MODULES = []


def fake_module(monkeypatch, name: str, *classes: type[BaseStrategy]) -> str:
    """Register an importable module ``name`` that defines ``classes``."""
    module = types.ModuleType(name)
    for cls in classes:
        cls.__module__ = name
        setattr(module, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, name, module)
    return name


def strategy_named(name: str, **attrs) -> type[BaseStrategy]:
    def warmup(cls, parameters):
        return 0

    def generate_signals(cls, ohlcv, parameters):
        return np.zeros(len(ohlcv), dtype=np.int8)

    namespace = {
        "name": name,
        "warmup": classmethod(warmup),
        "generate_signals": classmethod(generate_signals),
        **attrs,
    }
    return type(f"Strategy_{name}", (BaseStrategy,), namespace)


def test_registry_available_lists_the_builtins() -> None:
    assert available() == BUILTINS
    assert registry.builtin_names() == BUILTINS
    assert get_strategy("sma_crossover") is SMACrossover
    assert all(get_strategy(name) is cls for name, cls in BUILTIN_STRATEGIES.items())


def test_registry_unknown_name_lists_available() -> None:
    with pytest.raises(UnknownStrategyError) as caught:
        get_strategy("sma_crosover")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == f"unknown strategy 'sma_crosover'; available: {', '.join(BUILTINS)}"
    with pytest.raises(KeyError):
        get_strategy(None)


def test_registry_discovers_user_module_from_settings(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [USER_MODULE]
    # Only the classes the module defines: not the SMACrossover it imports, not the unnamed helper.
    assert available() == sorted([*BUILTINS, "close_above_sma", "peek_ahead"])
    assert get_strategy("close_above_sma") is CloseAboveSMA
    assert get_strategy("peek_ahead") is PeekAhead


def test_registry_user_strategy_is_usable_end_to_end(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [USER_MODULE]
    strategy = create_strategy("close_above_sma", {"n": 3})
    assert strategy.parameters == {"n": 3}
    frame = frame_from_close([10, 10, 10, 10, 10, 12])
    signal = strategy.process_data(frame)
    assert signal.action is Action.BUY
    assert signal.strategy == "close_above_sma"
    assert signal.indicators["sma"] == pytest.approx(32 / 3)
    assert strategy.get_indicators()["sma"]["values"][:2] == [None, None]


def test_registry_follows_setting_changes_and_reload(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [USER_MODULE]
    assert "close_above_sma" in available()
    settings.TRADEAPP_STRATEGY_MODULES = []
    assert "close_above_sma" not in available()
    settings.TRADEAPP_STRATEGY_MODULES = f"{USER_MODULE}, {USER_MODULE}"  # env-style string
    assert registry.reload() == sorted([*BUILTINS, "close_above_sma", "peek_ahead"])


def test_registry_missing_module_gives_a_clear_error(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = ["tests.strategies.no_such_module"]
    with pytest.raises(StrategyModuleError) as caught:
        get_strategy("sma_crossover")
    assert caught.value.module == "tests.strategies.no_such_module"
    assert str(caught.value).startswith(
        "strategy module 'tests.strategies.no_such_module' (TRADEAPP_STRATEGY_MODULES): "
        "cannot be imported: ModuleNotFoundError"
    )


def test_registry_module_failing_on_import_names_module_and_cause(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = ["tests.strategies.user_strategies_broken"]
    with pytest.raises(StrategyModuleError, match="user_strategies_broken") as caught:
        available()
    assert "No module named 'tradeapp_no_such_dependency'" in str(caught.value)
    errors = check_strategy_modules()
    assert [e.id for e in errors] == ["strategies.E001"]
    assert errors[0].obj == "tests.strategies.user_strategies_broken"


def test_registry_system_check_passes_with_a_good_module(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [USER_MODULE]
    assert check_strategy_modules() == []


def test_registry_refuses_a_builtin_name(settings, monkeypatch) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [
        fake_module(monkeypatch, "fake_collision", strategy_named("sma_crossover"))
    ]
    with pytest.raises(StrategyModuleError, match="which is a built-in strategy; rename it"):
        available()


def test_registry_refuses_a_name_used_by_another_module(settings, monkeypatch) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [
        USER_MODULE,
        fake_module(monkeypatch, "fake_duplicate", strategy_named("close_above_sma")),
    ]
    with pytest.raises(StrategyModuleError, match=r"user_strategies\.CloseAboveSMA already uses"):
        available()


class _BadDefaults(BaseStrategy):
    """Its own defaults break its cross-parameter rule."""

    name = "bad_defaults"
    parameter_specs = (Parameter("n", int, 5), Parameter("m", int, 3))

    @classmethod
    def validate_parameters(cls, parameters: dict) -> None:
        if parameters["n"] >= parameters["m"]:
            raise ValueError("n must be less than m")

    @classmethod
    def warmup(cls, parameters: dict) -> int:
        return 0

    @classmethod
    def generate_signals(cls, ohlcv: pd.DataFrame, parameters: dict) -> np.ndarray:
        return np.zeros(len(ohlcv), dtype=np.int8)


@pytest.mark.parametrize(
    "cls, message",
    [
        (strategy_named("Bad Name"), "is not a valid strategy name"),
        (_BadDefaults, "its default parameters fail: bad_defaults: n must be less than m"),
    ],
)
def test_registry_refuses_invalid_user_strategies(settings, monkeypatch, cls, message) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [fake_module(monkeypatch, "fake_invalid", cls)]
    with pytest.raises(StrategyModuleError, match=message):
        available()


def test_registry_refuses_a_module_without_strategies(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = ["tests.support"]
    with pytest.raises(StrategyModuleError, match="defines no strategy"):
        available()


def test_registry_user_strategy_without_numba_is_wrapped_like_builtins(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = [USER_MODULE]
    cls = get_strategy("close_above_sma")
    frame = frame_from_close(np.linspace(10, 20, 12))
    signals = cls.generate_signals(frame)
    assert signals.dtype == np.int8  # the float Series it returns is converted
    with pytest.raises(ValueError, match="naive"):
        cls.generate_signals(frame.tz_localize(None))
