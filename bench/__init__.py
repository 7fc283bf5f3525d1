"""Payshift's benchmark suite: `python -m bench` (or `bench/run`) starts a stack, loads it, writes a report."""
