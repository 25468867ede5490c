"""Benchmark scripts (run them as scripts: ``python benchmarks/<name>.py``)."""
