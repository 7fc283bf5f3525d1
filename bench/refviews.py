"""Reference views: what a bare Django view and a minimal hand-written ingest cost (scenario 1), and the web half
of the hand-written minimal pipeline (scenario 4; its task is bench/celeryapp.py)."""

from __future__ import annotations

import functools
import hashlib
import hmac

import redis
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bench.celeryapp import bench_minimal_settle
from bench.settings import BENCH_PAYSTACK_KEY, BENCH_REDIS_URL

TABLE = "bench_minimal_event"
CREATE_TABLE = f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body bytea NOT NULL, " \
               "received_at timestamptz NOT NULL DEFAULT now())"
# The minimal pipeline's stand-in for the notification: one row per payment it settled.
SETTLED_TABLE = "bench_minimal_settled"
CREATE_SETTLED_TABLE = f"CREATE TABLE IF NOT EXISTS {SETTLED_TABLE} (payment_id bigint PRIMARY KEY, " \
                       "event_id bigint NOT NULL, settled_at timestamptz NOT NULL DEFAULT now())"


@functools.cache
def _client() -> redis.Redis:
    # One pool per process, made on first use (after gunicorn forks), like kombu's producer pool.
    return redis.Redis.from_url(BENCH_REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)


@csrf_exempt
def bare(request: HttpRequest) -> HttpResponse:
    """The floor: Django's request cycle and middleware, nothing else."""
    return JsonResponse({"status": "ok"})


def _stored(request: HttpRequest) -> int | None:
    """HMAC on the raw body, then one INSERT: the stored row's id, None for a bad signature."""
    body = request.body
    expected = hmac.new(BENCH_PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-paystack-signature", "")):
        return None
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (body) VALUES (%s) RETURNING id", [body])  # noqa: S608
        row = cursor.fetchone()
    return int(row[0]) if row else 0


@csrf_exempt
def minimal_ingest(request: HttpRequest) -> HttpResponse:
    """The least a durable webhook edge can do: HMAC on the raw body, one INSERT, one LPUSH."""
    stored = _stored(request)
    if stored is None:
        return JsonResponse({"status": "bad_signature"}, status=401)
    _client().lpush("bench:minimal", stored)
    return JsonResponse({"status": "stored"})


@csrf_exempt
def minimal_pipeline(request: HttpRequest) -> HttpResponse:
    """The web half of the least a whole pipeline can do: HMAC, one INSERT, one Celery message per webhook
    (no outbox, no batching, no fallback queue)."""
    stored = _stored(request)
    if stored is None:
        return JsonResponse({"status": "bad_signature"}, status=401)
    bench_minimal_settle.apply_async(args=(stored,), queue="webhooks", routing_key="webhooks")
    return JsonResponse({"status": "stored"})
