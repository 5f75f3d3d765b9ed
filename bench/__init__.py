"""Benchmarks: ``make bench`` runs every ``bench/bench_*.py`` and saves ``bench/results.json``."""
