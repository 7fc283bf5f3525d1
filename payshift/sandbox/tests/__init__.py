"""Tests for the gateway sandbox (run without Django: `pytest sandbox/tests -p no:django`)."""
