"""Reference views for scenario 1: what a bare Django view and a minimal hand-written ingest cost."""

from __future__ import annotations

import functools
import hashlib
import hmac

import redis
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from bench.settings import BENCH_PAYSTACK_KEY, BENCH_REDIS_URL

TABLE = "bench_minimal_event"
CREATE_TABLE = f"CREATE TABLE IF NOT EXISTS {TABLE} (id bigserial PRIMARY KEY, body bytea NOT NULL, " \
               "received_at timestamptz NOT NULL DEFAULT now())"


@functools.cache
def _client() -> redis.Redis:
    # One pool per process, made on first use (after gunicorn forks), like kombu's producer pool.
    return redis.Redis.from_url(BENCH_REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)


@csrf_exempt
def bare(request: HttpRequest) -> HttpResponse:
    """The floor: Django's request cycle and middleware, nothing else."""
    return JsonResponse({"status": "ok"})


@csrf_exempt
def minimal_ingest(request: HttpRequest) -> HttpResponse:
    """The least a durable webhook edge can do: HMAC on the raw body, one INSERT, one LPUSH."""
    body = request.body
    expected = hmac.new(BENCH_PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()
    if not hmac.compare_digest(expected, request.headers.get("x-paystack-signature", "")):
        return JsonResponse({"status": "bad_signature"}, status=401)
    with connection.cursor() as cursor:
        cursor.execute(f"INSERT INTO {TABLE} (body) VALUES (%s) RETURNING id", [body])  # noqa: S608
        row = cursor.fetchone()
    _client().lpush("bench:minimal", row[0] if row else 0)
    return JsonResponse({"status": "stored"})
