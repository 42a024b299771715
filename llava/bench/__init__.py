"""Micro-benchmarks (``python -m llava.bench.<name>``); each writes a table and optional JSON."""
