"""Benchmarks of a real trainyard deployment; results in bench/RESULTS.md."""
