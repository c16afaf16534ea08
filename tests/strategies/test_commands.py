"""manage.py check_lookahead."""

from __future__ import annotations

import os
import subprocess
import sys
from io import StringIO

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError

USER_MODULE = "tests.strategies.user_strategies"


@pytest.fixture(autouse=True)
def _user_modules(settings):
    settings.TRADEAPP_STRATEGY_MODULES = [USER_MODULE]


def run(*args: str) -> str:
    out = StringIO()
    call_command("check_lookahead", *args, stdout=out)
    return out.getvalue()


def test_check_lookahead_command_passes_every_builtin(settings) -> None:
    settings.TRADEAPP_STRATEGY_MODULES = []
    output = run("--all", "--bars", "400", "--cuts", "8")
    for name in (
        "sma_crossover",
        "ema_crossover",
        "rsi_reversion",
        "macd_crossover",
        "bollinger_reversion",
        "donchian_breakout",
    ):
        assert f"PASS {name} " in output
    assert "FAIL" not in output


def test_check_lookahead_command_all_includes_user_strategies() -> None:
    out = StringIO()
    with pytest.raises(CommandError, match=r"lookahead detected in peek_ahead$"):
        call_command("check_lookahead", "--all", "--bars", "200", "--cuts", "4", stdout=out)
    assert "PASS close_above_sma" in out.getvalue()


def test_check_lookahead_command_with_parameters_and_seed() -> None:
    output = run(
        "macd_crossover",
        "--params",
        '{"fast": 5, "slow": 13, "signal": 4}',
        "--bars",
        "300",
        "--seed",
        "3",
    )
    assert output.startswith("PASS macd_crossover {'fast': 5, 'slow': 13, 'signal': 4}")


def test_check_lookahead_command_fails_a_cheating_user_strategy() -> None:
    out = StringIO()
    with pytest.raises(CommandError, match="lookahead detected in peek_ahead"):
        call_command("check_lookahead", "close_above_sma", "peek_ahead", stdout=out)
    output = out.getvalue()
    assert "PASS close_above_sma" in output
    assert "FAIL peek_ahead" in output
    assert "signals at bar" in output


@pytest.mark.parametrize(
    "args, message",
    [
        (["no_such"], "unknown strategy 'no_such'; available: bollinger_reversion"),
        (["sma_crossover", "--params", "{fast: 5}"], "--params is not valid JSON"),
        (["sma_crossover", "--params", "[5]"], "--params must be a JSON object"),
        (["sma_crossover", "--params", '{"fast": 40}'], "parameter 'fast': fast (40) must be"),
        (["sma_crossover", "ema_crossover", "--params", "{}"], "applies to one strategy"),
        (["sma_crossover", "--bars", "20"], "--bars 20 is too few for sma_crossover"),
        ([], "name a strategy or give --all"),
    ],
)
def test_check_lookahead_command_rejects_bad_input(args, message) -> None:
    with pytest.raises(CommandError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(*args)


def test_check_lookahead_command_exits_non_zero_for_a_cheat() -> None:
    env = {
        **os.environ,
        "TRADEAPP_STRATEGY_MODULES": USER_MODULE,
        "TRADEAPP_VAR_DIR": str(django_settings.VAR_DIR),
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "check_lookahead", "peek_ahead", "--bars", "200"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "FAIL peek_ahead" in done.stdout
    assert "lookahead detected in peek_ahead" in done.stderr
