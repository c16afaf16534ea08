"""Run every benchmark module in ``bench/`` and print one table of ratios.

Usage: ``python -m bench.run [--quick] [--only NAME]`` (NAME: ``aggregation`` or
``bench_aggregation``; repeatable). ``make bench`` runs it with the full sizes.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

COLUMNS = ("benchmark", "ours_s", "baseline", "baseline_s", "ratio", "note")


def discover() -> list[str]:
    """Names (without the ``bench_`` prefix) of the benchmark modules beside this file."""
    folder = Path(__file__).resolve().parent
    return sorted(
        info.name.removeprefix("bench_")
        for info in pkgutil.iter_modules([str(folder)])
        if info.name.startswith("bench_")
    )


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def format_table(rows: Sequence[dict]) -> str:
    """Rows as a fixed-width text table (ratio printed as e.g. ``37.5x``)."""
    cells = []
    for row in rows:
        line = [_cell(row.get(col)) for col in COLUMNS]
        ratio = row.get("ratio")
        line[COLUMNS.index("ratio")] = f"{ratio:.1f}x" if isinstance(ratio, float) else ""
        cells.append(line)
    widths = [max(len(col), *(len(line[i]) for line in cells)) for i, col in enumerate(COLUMNS)]
    lines = [list(COLUMNS), ["-" * w for w in widths], *cells]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this module")
    args = parser.parse_args(argv)

    available = discover()
    wanted = [n.removeprefix("bench_") for n in args.only] if args.only else available
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; have {', '.join(available)}")

    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()}, {'quick' if args.quick else 'full'} sizes",
        flush=True,
    )
    rows: list[dict] = []
    for name in wanted:
        module = importlib.import_module(f"bench.bench_{name}")
        started = time.perf_counter()
        print(f"== {name} ...", flush=True)
        rows += module.run(quick=args.quick)
        print(f"== {name} done in {time.perf_counter() - started:.1f} s", flush=True)
    print()
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
