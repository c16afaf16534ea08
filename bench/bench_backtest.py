"""Backtesting: our engine against vectorbt (``Portfolio.from_signals``, numba engine).

All rows use the same synthetic 1-minute bars. A plain random walk does not do here: an SMA
crossover trades about every 50 bars, and 19,000 round trips at 0.1 % a fill shrink the account
to ~1e-17 of its cash, where vectorbt's order-size tolerance (1e-12 units) stops it trading, so
the trade lists would differ for that reason alone. The bars therefore have short-term momentum
(AR(1) one-minute returns, phi 0.5) and a slow pull of the log price back to its start, which
keeps the account alive and the price in a realistic band.

Rows
----
1. One SMA crossover backtest (fast 10, slow 30, fee 0.1 %, next-open fills, all-in) on 1M
   bars, like for like. Ours: ``run_backtest`` end to end (validation, signals, simulation,
   trades frame, equity, every metric). vectorbt on plain arrays (its fastest path): its MA
   indicator, its crossover kernel, the signals shifted one bar, ``Portfolio.from_signals(
   price=open, size=inf, fees=0.001, accumulate=False)``, the trade records and the seven
   metrics we share (total return, Sharpe, Sortino, max drawdown, win rate, profit factor,
   expectancy; a fresh portfolio each run, since vectorbt caches per object). The trades must be
   identical (bars exactly, prices and sizes to 1e-9, the open trade included) and the metrics
   equal to 1e-7 before the ratio is reported. Two more rows: the trade simulation alone on the
   same given signals (``simulate`` + trades frame against ``from_signals`` + trade records),
   and vectorbt given the data's pandas Series, as its documentation does (no metrics on its
   side, one timed run: under pandas 3 its wrapping takes seconds).
2. A sweep of 100 (fast, slow) combinations on 100k bars: ours ``grid_search(n_jobs=2)`` (every
   metric per combination) against vectorbt's broadcast sweep on arrays (``MA.run`` over the
   parameter lists, its crossover kernel on the 2-D arrays, one ``from_signals`` over the 100
   columns, ``total_return`` per column). Total returns must agree to 1e-9. Ratio of
   combinations per second.
3. Memory: peak RSS of a 10,000-combination sweep (n_jobs=2, 100k bars) against one backtest on
   the same bars, each in a fresh interpreter; the sweep's figure is the larger of its parent
   and its biggest worker (``VmHWM`` of the parent, ``RUSAGE_CHILDREN`` for the workers).

Numba (ours and vectorbt's) is warmed up before any timing; every time is the best of three.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from numba import njit

from backtests.engine import open_trade, run_backtest, simulate, trades_frame
from backtests.optimize import grid_search
from strategies.builtin import SMACrossover

REPEAT = 3
FEE = 0.001
CASH = 10_000.0
START_MS = 1_700_006_400_000
ROOT = Path(__file__).resolve().parents[1]


def best_of(fn: Callable[[], object], repeat: int = REPEAT) -> tuple[float, object]:
    """(best wall time in seconds, result of the last run)."""
    best = float("inf")
    result = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


@njit(cache=True)
def _log_path_nb(shocks: np.ndarray, phi: float, pull: float) -> np.ndarray:
    out = np.empty(shocks.shape[0])
    level = 0.0
    ret = 0.0
    for i in range(shocks.shape[0]):
        ret = phi * ret + shocks[i]
        level = level + ret - pull * level
        out[i] = level
    return out


def make_bars(n: int, seed: int = 0) -> pd.DataFrame:
    """n one-minute OHLCV bars (module docstring), close times from 2023-11-15 00:01 UTC."""
    rng = np.random.default_rng(seed)
    close = 30_000.0 * np.exp(_log_path_nb(rng.normal(0.0, 1.5e-3, n), 0.5, 2e-5))
    open_ = np.empty(n)
    open_[0] = 30_000.0
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0.0, 7.5e-4, (2, n)))
    index = pd.to_datetime(START_MS + 60_000 * np.arange(1, n + 1), unit="ms", utc=True)
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * (1.0 + wick[0]),
            "low": np.minimum(open_, close) * (1.0 - wick[1]),
            "close": close,
            "volume": rng.exponential(10.0, n),
        },
        index=index,
    )


# -- vectorbt ----------------------------------------------------------------------------------


def vbt_crossover_signals(
    vbt: object, close: np.ndarray | pd.Series, fast: list[int], slow: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """vectorbt's MA and crossover kernel over the windows (one column per pair); entries and
    exits shifted one bar, so that ``price=open`` fills them at the next open."""
    from vectorbt.generic import nb as generic_nb

    fast_ma = np.asarray(vbt.MA.run(close, fast).ma).reshape(len(close), -1)
    slow_ma = np.asarray(vbt.MA.run(close, slow).ma).reshape(len(close), -1)
    entries = generic_nb.crossed_above_nb(fast_ma, slow_ma)
    exits = generic_nb.crossed_above_nb(slow_ma, fast_ma)
    shifted_entries = np.zeros_like(entries)
    shifted_exits = np.zeros_like(exits)
    shifted_entries[1:] = entries[:-1]
    shifted_exits[1:] = exits[:-1]
    return shifted_entries, shifted_exits


def vbt_portfolio(
    vbt: object, data: pd.DataFrame, entries: np.ndarray, exits: np.ndarray, *, pandas: bool
):
    """All-in long-only portfolio filled at the open, fees on every fill: our settings.

    ``pandas=False`` hands vectorbt plain arrays (its fastest path); ``pandas=True`` the Series
    of the data, as its documentation does (one column only).
    """
    if pandas:
        return vbt.Portfolio.from_signals(
            data["close"], entries[:, 0], exits[:, 0], price=data["open"], size=np.inf,
            fees=FEE, init_cash=CASH, accumulate=False, freq="1min", engine="numba",
        )  # fmt: skip
    close = data["close"].to_numpy()
    price = data["open"].to_numpy()
    if entries.shape[1] > 1:
        close = np.broadcast_to(close[:, None], entries.shape)
        price = np.broadcast_to(price[:, None], entries.shape)
    else:
        entries, exits = entries[:, 0], exits[:, 0]
    return vbt.Portfolio.from_signals(
        close, entries, exits, price=price, size=np.inf, fees=FEE, init_cash=CASH,
        accumulate=False, engine="numba",
    )  # fmt: skip


def check_same_trades(ours: pd.DataFrame, theirs: pd.DataFrame) -> None:
    """Bars equal, prices and sizes within 1e-9 relative, the open trade included; else raise."""
    if len(ours) != len(theirs):
        raise AssertionError(f"trade counts differ: ours {len(ours)}, vectorbt {len(theirs)}")
    is_open = theirs["status"].to_numpy() == 0
    if not np.array_equal(ours["exit_reason"].to_numpy() == "open", is_open):
        raise AssertionError("open trades differ")
    if not np.array_equal(ours["entry_bar"].to_numpy(), theirs["entry_idx"].to_numpy()):
        raise AssertionError("entry bars differ")
    closed = ~is_open
    if not np.array_equal(
        ours["exit_bar"].to_numpy()[closed], theirs["exit_idx"].to_numpy()[closed]
    ):
        raise AssertionError("exit bars differ")
    for mine, other in (("entry_price", "entry_price"), ("exit_price", "exit_price")):
        if not np.allclose(ours[mine], theirs[other], rtol=1e-9, atol=0.0):
            raise AssertionError(f"{mine} differs")
    if not np.allclose(ours["size"], theirs["size"], rtol=1e-9, atol=0.0):
        raise AssertionError("sizes differ")


# -- rows ------------------------------------------------------------------------------------


def vbt_metrics(portfolio: object) -> dict[str, float]:
    """The metrics of ours that vectorbt has, from a fresh portfolio (it caches per object)."""
    trades = portfolio.trades
    return {
        "total_return": float(portfolio.total_return()),
        "sharpe": float(portfolio.sharpe_ratio()),
        "sortino": float(portfolio.sortino_ratio()),
        "max_drawdown": -float(portfolio.max_drawdown()),
        "win_rate": float(trades.closed.win_rate()),
        "profit_factor": float(trades.closed.profit_factor()),
        "expectancy": float(trades.closed.expectancy()),
    }


def check_same_metrics(ours: dict[str, float], theirs: dict[str, float]) -> None:
    for name, value in theirs.items():
        if not np.isclose(ours[name], value, rtol=1e-7, atol=1e-12):
            raise AssertionError(f"{name} differs: ours {ours[name]!r}, vectorbt {value!r}")


def bench_single(vbt: object, n: int) -> list[dict]:
    data = make_bars(n, seed=1)
    params = {"fast": 10, "slow": 30}
    close = data["close"].to_numpy()
    price = data["open"].to_numpy()

    def ours() -> object:
        return run_backtest(data, SMACrossover, params, fee=FEE, cash=CASH)

    def theirs() -> tuple[pd.DataFrame, dict[str, float]]:
        entries, exits = vbt_crossover_signals(vbt, close, [10], [30])
        portfolio = vbt.Portfolio.from_signals(
            close, entries[:, 0], exits[:, 0], price=price, size=np.inf, fees=FEE,
            init_cash=CASH, accumulate=False, freq="1min", engine="numba",
        )  # fmt: skip
        return portfolio.trades.records, vbt_metrics(portfolio)

    def theirs_on_series() -> pd.DataFrame:
        entries, exits = vbt_crossover_signals(vbt, data["close"], [10], [30])
        return vbt_portfolio(vbt, data, entries, exits, pandas=True).trades.records

    signals = SMACrossover.generate_signals(data, params)
    prices = [data[c].to_numpy() for c in ("open", "high", "low", "close")]
    given = np.zeros((n, 1), dtype=bool), np.zeros((n, 1), dtype=bool)
    given[0][1:, 0] = signals[:-1] == 1
    given[1][1:, 0] = signals[:-1] == -1

    def our_simulation() -> pd.DataFrame:
        simulation = simulate(*prices, signals, options={"fee": FEE, "cash": CASH})
        return trades_frame(simulation.trades, data.index, open_trade(simulation.state, close[-1]))

    def their_simulation() -> pd.DataFrame:
        return vbt_portfolio(vbt, data, *given, pandas=False).trades.records

    runs = {
        "ours": ours,
        "vectorbt": theirs,
        "our_simulation": our_simulation,
        "their_simulation": their_simulation,
    }
    for fn in runs.values():
        fn()  # compile and warm up
    times = {}
    results = {}
    for name, fn in runs.items():
        times[name], results[name] = best_of(fn)
    # vectorbt on Series is slow: one warm-up and one timed run.
    theirs_on_series()
    times["series"], results["series"] = best_of(theirs_on_series, repeat=1)

    result = results["ours"]
    records, metrics = results["vectorbt"]
    for name in ("series", "their_simulation"):
        check_same_trades(result.trades, results[name])
    check_same_trades(result.trades, records)
    check_same_metrics(result.metrics, metrics)
    pd.testing.assert_frame_equal(results["our_simulation"], result.trades)
    count = f"{len(result.trades):,} trades identical (bars exact, prices/sizes 1e-9)"
    print(f"   single: {count}; " + ", ".join(f"{k} {v:.4f} s" for k, v in times.items()))

    def verdict(ratio: float) -> str:
        return f"target >= 10x: {'met' if ratio >= 10 else 'NOT met'}"

    ratio = times["vectorbt"] / times["ours"]
    sim_ratio = times["their_simulation"] / times["our_simulation"]
    series_ratio = times["series"] / times["ours"]
    return [
        {
            "benchmark": f"SMA(10/30) backtest, {n:,} 1m bars",
            "ours_s": times["ours"],
            "baseline": "vectorbt on arrays: MA, cross, from_signals, trades, 7 metrics",
            "baseline_s": times["vectorbt"],
            "ratio": ratio,
            "note": f"{count}; total return, Sharpe, Sortino, max DD, win rate, profit factor, "
            f"expectancy equal (1e-7); {verdict(ratio)}",
        },
        {
            "benchmark": f"  simulation only, same signals, {n:,} bars",
            "ours_s": times["our_simulation"],
            "baseline": "from_signals + trade records (arrays)",
            "baseline_s": times["their_simulation"],
            "ratio": sim_ratio,
            "note": f"same trades; ours = simulate + trades frame; {verdict(sim_ratio)}",
        },
        {
            "benchmark": f"  vectorbt given pandas Series, {n:,} bars",
            "ours_s": times["ours"],
            "baseline": "vectorbt on Series: MA, cross, from_signals, trades",
            "baseline_s": times["series"],
            "ratio": series_ratio,
            "note": "same trades, no metrics on their side; its pandas wrapping (pandas 3) "
            "dominates; 1 timed run",
        },
    ]


def sweep_grid() -> tuple[list[int], list[int]]:
    return list(range(2, 22, 2)), list(range(25, 75, 5))  # 10 x 10, every fast < slow


def bench_sweep(vbt: object, n: int) -> dict:
    data = make_bars(n, seed=2)
    fasts, slows = sweep_grid()
    pairs = [(f, s) for f in fasts for s in slows]

    def ours() -> object:
        return grid_search(data, "sma_crossover", {"fast": fasts, "slow": slows}, n_jobs=2,
                           fee=FEE, cash=CASH)  # fmt: skip

    def theirs() -> pd.Series:
        entries, exits = vbt_crossover_signals(
            vbt, data["close"].to_numpy(), [f for f, _ in pairs], [s for _, s in pairs]
        )
        return vbt_portfolio(vbt, data, entries, exits, pandas=False).total_return()

    ours()
    theirs()
    ours_s, result = best_of(ours)
    theirs_s, total = best_of(theirs)
    mine = result.results.set_index(["fast", "slow"])["total_return"]
    expected = np.asarray(total)
    got = np.array([mine[pair] for pair in pairs])
    if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
        raise AssertionError("sweep total returns differ from vectorbt")
    count = len(pairs)
    print(
        f"   sweep: {count} combinations agree; ours {count / ours_s:,.0f}/s, "
        f"vectorbt {count / theirs_s:,.0f}/s",
        flush=True,
    )
    ratio = theirs_s / ours_s
    return {
        "benchmark": f"sweep {count} SMA combos, {n:,} bars, 2 cores",
        "ours_s": ours_s,
        "baseline": "vectorbt broadcast sweep (1 core)",
        "baseline_s": theirs_s,
        "ratio": ratio,
        "note": f"{count / ours_s:,.0f} vs {count / theirs_s:,.0f} combos/s; total returns equal "
        f"(1e-9); ours: every metric per combo; target >= 50x: "
        f"{'met' if ratio >= 50 else 'NOT met'}",
    }


_MEMORY_SCRIPT = """
import json, resource, sys
from bench.bench_backtest import make_bars
from backtests.engine import open_trade, run_backtest, simulate, trades_frame
from backtests.optimize import grid_search
from strategies.builtin import SMACrossover
mode, n, combos = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = make_bars(n, seed=3)
if mode == "single":
    run_backtest(data, SMACrossover, {"fast": 10, "slow": 30})
    rows = 1
else:
    slow = list(range(101, 101 + combos // 100))
    result = grid_search(data, "sma_crossover", {"fast": list(range(1, 101)), "slow": slow},
                         n_jobs=2)
    rows = len(result.results)
    from joblib.externals.loky import get_reusable_executor
    get_reusable_executor().shutdown(wait=True)
with open("/proc/self/status") as status:
    own = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"self_kb": own, "children_kb": children, "rows": rows}))
"""


def _peak(mode: str, n: int, combos: int) -> dict:
    done = subprocess.run(  # noqa: S603 - our own interpreter and script, fixed arguments
        [sys.executable, "-c", _MEMORY_SCRIPT, mode, str(n), str(combos)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=1_800,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(n: int, combos: int) -> dict:
    started = time.perf_counter()
    single = _peak("single", n, 0)
    single_s = time.perf_counter() - started
    started = time.perf_counter()
    sweep = _peak("sweep", n, combos)
    sweep_s = time.perf_counter() - started
    if sweep["rows"] != combos:
        raise AssertionError(f"the sweep evaluated {sweep['rows']} combinations, not {combos}")
    single_mb = single["self_kb"] / 1024
    parent_mb = sweep["self_kb"] / 1024
    worker_mb = sweep["children_kb"] / 1024
    peak_mb = max(parent_mb, worker_mb)
    ratio = peak_mb / single_mb
    print(
        f"   memory: single {single_mb:.0f} MB; sweep parent {parent_mb:.0f} MB, largest "
        f"worker {worker_mb:.0f} MB",
        flush=True,
    )
    return {
        "benchmark": f"peak RSS: sweep of {combos:,} combos vs 1 backtest, {n:,} bars",
        "ours_s": sweep_s,
        "baseline": "one backtest (own process)",
        "baseline_s": single_s,
        "ratio": ratio,
        "note": f"ratio = peak MB ratio (not time): sweep {peak_mb:.0f} MB (parent "
        f"{parent_mb:.0f}, largest worker {worker_mb:.0f}) vs single {single_mb:.0f} MB; "
        f"times are wall s incl. start-up; target <= 2x: {'met' if ratio <= 2 else 'NOT met'}",
    }


def run(quick: bool = False) -> list[dict]:
    """Rows: 1M bars (200k quick) single backtest; 100 combos on 100k bars (20k quick);
    memory of 10,000 combos (1,000 quick) on 100k bars (20k quick)."""
    import vectorbt as vbt

    rows = bench_single(vbt, 200_000 if quick else 1_000_000)
    rows.append(bench_sweep(vbt, 20_000 if quick else 100_000))
    rows.append(bench_memory(20_000 if quick else 100_000, 1_000 if quick else 10_000))
    return rows
