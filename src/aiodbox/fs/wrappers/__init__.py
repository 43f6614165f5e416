"""Stackable FS wrappers: latency, randomfail, stats."""
