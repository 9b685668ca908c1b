"""Runtimes: ``inprocess`` (one process, no Flower) and ``flower`` (Flower simulation engine)."""
