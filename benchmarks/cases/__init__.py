"""Benchmark cases, one module per capability; each registers itself with @case."""
