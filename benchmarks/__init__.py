"""Benchmarks and reproduction runs (not part of the test suite)."""
