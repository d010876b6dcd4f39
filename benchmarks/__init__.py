"""Benchmarks: ``python -m benchmarks``, the same as ``splitfed bench``; results in benchmarks/results/."""
