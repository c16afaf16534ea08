"""The strategy core (base, built-ins, kernels, lookahead) runs without Django.

``tests/test_pure_modules.py`` covers ``kernels*.py`` and ``indicators.py`` by its patterns; the
modules below are Django-free too, so that a backtest in a joblib worker, a benchmark or a
notebook can use any strategy. Same two checks: the imports in the source, and a fresh
interpreter that imports them and must not load the service stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.test_pure_modules import FORBIDDEN_PACKAGES, ROOT, forbidden_imports

CORE = ["strategies.base", "strategies.builtin", "strategies.kernels", "strategies.lookahead"]
PURE = {*CORE, "strategies.indicators"}


@pytest.mark.parametrize("module", CORE)
def test_strategy_core_has_no_forbidden_import(module: str) -> None:
    path = ROOT.joinpath(*module.split(".")).with_suffix(".py")
    assert forbidden_imports(path.read_text(encoding="utf-8"), module, PURE) == []


def test_strategy_core_imports_without_service_stack() -> None:
    script = (
        "import importlib, json, sys\n"
        f"for name in {CORE!r}:\n"
        "    importlib.import_module(name)\n"
        "from strategies.builtin import BUILTIN_STRATEGIES\n"
        "from strategies.lookahead import random_walk_ohlcv\n"
        "data = random_walk_ohlcv(200)\n"
        "for cls in BUILTIN_STRATEGIES.values():\n"
        "    cls({}).process_data(data)\n"
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
    assert not leaked, f"the strategy core loaded {sorted(leaked)}"
