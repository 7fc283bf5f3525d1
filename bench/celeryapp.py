"""The product's Celery app plus the scenario-4 reference task, so one worker runs both."""

from __future__ import annotations

import functools
import time

import redis

from bench.settings import BENCH_REDIS_URL
from payshift.celery import app

__all__ = ["app", "bench_noop"]


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(BENCH_REDIS_URL)


@app.task(name="bench_noop", ignore_result=True, acks_late=True)
def bench_noop(sent_at: float) -> None:
    """Does nothing but note when it ran (one RPUSH), so the drain and latency can be measured."""
    _client().rpush("bench:noop", f"{sent_at:.6f} {time.time():.6f}")
