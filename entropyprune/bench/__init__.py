"""Micro-benchmarks (``python -m entropyprune.bench.<name>``); each writes a table and optional JSON."""
