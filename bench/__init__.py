"""The benchmark suite: `.venv/bin/python bench/run.py` (see docs/PERFORMANCE.md)."""
