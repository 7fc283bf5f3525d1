"""The product's Celery app plus the scenario-4 reference tasks (a no-op, and the worker half of the hand-written
minimal pipeline), so one worker runs them all."""

from __future__ import annotations

import functools
import json
import time
from urllib.parse import quote

import httpx
import redis
from django.db import connection, transaction

from bench.settings import BENCH_REDIS_URL
from payshift.celery import app

__all__ = ["app", "bench_minimal_settle", "bench_noop"]


@functools.cache
def _client() -> redis.Redis:
    return redis.Redis.from_url(BENCH_REDIS_URL)


@app.task(name="bench_noop", ignore_result=True, acks_late=True)
def bench_noop(sent_at: float) -> None:
    """Does nothing but note when it ran (one RPUSH), so the drain and latency can be measured."""
    _client().rpush("bench:noop", f"{sent_at:.6f} {time.time():.6f}")


@functools.cache
def _paystack() -> httpx.Client:
    # One keep-alive client per worker child (made after the fork), at the gateway the product is pointed at.
    # Imported here: the product's gateway configuration needs Django's settings loaded.
    from payment.gateways.registry import gateway_get

    gateway = gateway_get("paystack")
    return httpx.Client(base_url=gateway.base_url(), timeout=10.0,
                        headers={"Authorization": f"Bearer {gateway.api_key()}"})


@app.task(name="bench_minimal_settle", ignore_result=True, acks_late=True)
def bench_minimal_settle(event_id: int) -> None:
    """The least the worker side of a pipeline can do for one Paystack charge webhook: read the stored body, ask
    the gateway's verify API, and, if it says paid for at least the amount, move the pending payment to success
    and write one row for the customer's notice, in one transaction. No claim, audit row, retry policy, mode or
    currency check, or forward-only state machine: the yardstick for what those cost (bench/README.md)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT body FROM bench_minimal_event WHERE id = %s", [event_id])
        row = cursor.fetchone()
    if row is None:
        return
    reference = json.loads(bytes(row[0]))["data"]["reference"]
    answer = _paystack().get(f"transaction/verify/{quote(reference, safe='')}").json()["data"]
    if answer.get("status") != "success":
        return
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("UPDATE payment_payment SET status = 'success', amount_paid = %s, paid_at = now(), "
                       "last_verified_at = now(), updated_at = now() "
                       "WHERE reference = %s AND status = 'pending' AND amount <= %s RETURNING id",
                       [answer["amount"], reference, answer["amount"]])
        paid = cursor.fetchone()
        if paid is not None:
            cursor.execute("INSERT INTO bench_minimal_settled (payment_id, event_id) VALUES (%s, %s)",
                           [paid[0], event_id])
