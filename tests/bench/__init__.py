"""Benchmarks: `python -m tests.bench.NAME`; each prints its figure and its ratio to a baseline."""
