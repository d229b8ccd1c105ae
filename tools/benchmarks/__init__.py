"""Benchmark topics run by tools/benchmark.py; one module per topic."""
