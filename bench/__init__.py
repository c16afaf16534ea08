"""Benchmarks: ``make bench`` (``python -m bench.run``) runs every ``bench_*.py`` module here.

Each module exposes ``run(quick: bool = False) -> list[dict]`` returning rows with the keys
``benchmark``, ``ours_s``, ``baseline``, ``baseline_s``, ``ratio`` (baseline_s / ours_s: above 1
means we are faster) and ``note``.
"""
