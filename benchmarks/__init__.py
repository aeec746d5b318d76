"""Benchmark scripts (`python benchmarks/<name>.py`); a package so the import contracts cover them."""
