"""Every strategy by name: the built-ins plus those of ``settings.TRADEAPP_STRATEGY_MODULES``.

``get_strategy(name)`` returns the class, ``available()`` the names. User modules are imported
on first use (and again whenever the setting's value changes, e.g. under a test's settings
override; ``reload()`` forces it). Each listed module contributes every concrete
``BaseStrategy`` subclass it defines itself (imported classes are not collected twice) that has a
``name``; ``strategies.base`` explains how to write one. A module that cannot be imported,
defines no strategy, reuses a built-in's or another module's name, or declares defaults its own
schema refuses raises ``StrategyModuleError`` naming the module. ``manage.py check`` reports the
same error at start-up (``strategies.E001``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import threading
from collections.abc import Iterable
from types import ModuleType

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from strategies.base import BaseStrategy, StrategyParameterError
from strategies.builtin import BUILTIN_STRATEGIES

__all__ = [
    "StrategyModuleError",
    "UnknownStrategyError",
    "available",
    "builtin_names",
    "create_strategy",
    "get_strategy",
    "load_strategy_modules",
    "reload",
    "strategies_in_module",
]

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class UnknownStrategyError(KeyError):
    """No strategy of that name; the message lists the available ones."""

    def __init__(self, name: object, available_names: Iterable[str]) -> None:
        self.name = name
        self.available = sorted(available_names)
        super().__init__(
            f"unknown strategy {name!r}; available: {', '.join(self.available) or 'none'}"
        )

    def __str__(self) -> str:
        # KeyError would print the repr of the message, quotes included.
        return str(self.args[0])


class StrategyModuleError(ImproperlyConfigured):
    """A module of ``TRADEAPP_STRATEGY_MODULES`` cannot contribute its strategies."""

    def __init__(self, module: str, message: str) -> None:
        self.module = module
        super().__init__(f"strategy module {module!r} (TRADEAPP_STRATEGY_MODULES): {message}")


_lock = threading.Lock()
# (the module list it was loaded for, name -> class); None until first use.
_state: tuple[tuple[str, ...], dict[str, type[BaseStrategy]]] | None = None


def builtin_names() -> list[str]:
    return sorted(BUILTIN_STRATEGIES)


def strategies_in_module(module: ModuleType) -> list[type[BaseStrategy]]:
    """The concrete, named ``BaseStrategy`` subclasses defined in ``module`` itself."""
    return [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseStrategy)
        and obj.__module__ == module.__name__
        and not inspect.isabstract(obj)
        and obj.name
    ]


def _check_strategy(path: str, cls: type[BaseStrategy], taken: dict[str, str]) -> None:
    label = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(cls.name, str) or not NAME_RE.match(cls.name):
        raise StrategyModuleError(
            path,
            f"{label}.name {cls.name!r} is not a valid strategy name (lowercase letters, digits "
            "and _, starting with a letter, at most 64 characters)",
        )
    if cls.name in BUILTIN_STRATEGIES:
        raise StrategyModuleError(
            path, f"{label} is named {cls.name!r}, which is a built-in strategy; rename it"
        )
    if cls.name in taken:
        raise StrategyModuleError(
            path, f"{label} is named {cls.name!r}, which {taken[cls.name]} already uses; rename it"
        )
    try:
        defaults = cls.clean_parameters({})
        cls.warmup(defaults)
    except (StrategyParameterError, TypeError, ValueError) as exc:
        raise StrategyModuleError(path, f"{label}: its default parameters fail: {exc}") from exc


def load_strategy_modules(modules: Iterable[str]) -> dict[str, type[BaseStrategy]]:
    """Import ``modules`` and return their strategies by name (built-ins not included)."""
    found: dict[str, type[BaseStrategy]] = {}
    taken: dict[str, str] = {}
    for path in dict.fromkeys(modules):
        try:
            module = importlib.import_module(path)
        except Exception as exc:  # any import-time failure of user code
            raise StrategyModuleError(
                path, f"cannot be imported: {type(exc).__name__}: {exc}"
            ) from exc
        classes = strategies_in_module(module)
        if not classes:
            raise StrategyModuleError(
                path,
                "defines no strategy (a concrete subclass of strategies.base.BaseStrategy with "
                "a name)",
            )
        for cls in classes:
            _check_strategy(path, cls, taken)
            found[cls.name] = cls
            taken[cls.name] = f"{cls.__module__}.{cls.__qualname__}"
    return found


def _configured_modules() -> tuple[str, ...]:
    if not settings.configured:  # a notebook or a joblib worker without Django: built-ins only
        return ()
    value = getattr(settings, "TRADEAPP_STRATEGY_MODULES", ())
    if isinstance(value, str):
        value = value.split(",")
    return tuple(dict.fromkeys(m.strip() for m in value if m and m.strip()))


def _strategies() -> dict[str, type[BaseStrategy]]:
    global _state  # noqa: PLW0603 - the registry is this module's state, guarded by _lock
    modules = _configured_modules()
    state = _state
    if state is not None and state[0] == modules:
        return state[1]
    with _lock:
        if _state is None or _state[0] != modules:
            _state = (modules, {**BUILTIN_STRATEGIES, **load_strategy_modules(modules)})
        return _state[1]


def reload() -> list[str]:
    """Forget the loaded user strategies and load them again from the setting; the names."""
    global _state  # noqa: PLW0603
    with _lock:
        _state = None
    return available()


def available() -> list[str]:
    """Names of every registered strategy (built-ins and user modules), sorted."""
    return sorted(_strategies())


def get_strategy(name: str) -> type[BaseStrategy]:
    """The strategy class registered as ``name``; ``UnknownStrategyError`` (a ``KeyError``)
    listing the available names otherwise."""
    strategies = _strategies()
    try:
        return strategies[name]
    except (KeyError, TypeError):
        raise UnknownStrategyError(name, strategies) from None


def create_strategy(name: str, parameters: dict | None = None) -> BaseStrategy:
    """An instance of strategy ``name`` with validated ``parameters`` (defaults filled in)."""
    return get_strategy(name)(parameters)
