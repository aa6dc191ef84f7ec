"""Benchmarks against a PyTorch reference (not part of the test suite)."""
