"""Health and metrics: what /readyz and /metrics probe and publish (writes gauges, contacts the broker)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from celery import current_app
from django.db import connection
from django.db.models import Min
from django.utils import timezone

from . import metrics
from .conf import app_settings
from .models import EVENT_UNFINISHED, Heartbeat, Payment, PaymentStatus, WebhookEvent
from .queueing import broker_reachable, circuit
from .selectors import inbox_summary

UNFINISHED = sorted(EVENT_UNFINISHED)


def backlog_gauges_update() -> None:
    now = timezone.now()
    counts = dict.fromkeys(UNFINISHED, 0)
    for status in UNFINISHED:
        counts[status] = WebhookEvent.objects.filter(status=status).count()
    for status, count in counts.items():
        metrics.INBOX_BACKLOG.labels(status).set(count)
    oldest = WebhookEvent.objects.filter(status__in=UNFINISHED).aggregate(m=Min("received_at"))["m"]
    metrics.OLDEST_UNPROCESSED_SECONDS.set((now - oldest).total_seconds() if oldest else 0)
    pending = Payment.objects.filter(status=PaymentStatus.PENDING).aggregate(m=Min("created_at"))["m"]
    metrics.OLDEST_PENDING_PAYMENT_SECONDS.set((now - pending).total_seconds() if pending else 0)


def readiness() -> dict[str, dict[str, Any]]:
    parts: dict[str, dict[str, Any]] = {}
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        parts["database"] = {"ok": True, "vendor": connection.vendor}
    except Exception as exc:
        parts["database"] = {"ok": False, "error": type(exc).__name__}
    parts["broker"] = _broker_state()
    if parts["database"]["ok"]:
        parts["inbox"] = inbox_summary()
    try:
        beat = Heartbeat.objects.filter(name="django_q").first()
        fresh = beat is not None and beat.at > timezone.now() - timedelta(
            seconds=3 * app_settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS)
        parts["django_q"] = {"ok": fresh, "last_seen": beat.at.isoformat() if beat else None}
    except Exception as exc:
        parts["django_q"] = {"ok": False, "error": type(exc).__name__}
    return parts


def _broker_state() -> dict[str, Any]:
    """One bounded round trip; none while the publish circuit is open. A probe that waited out kombu's retry
    interval (2 s) or a socket with no timeout would fail the load balancer's own probe timeout and hold a
    web thread while the broker is dead (payment/tests/test_queueing.py)."""

    transport = (current_app.conf.broker_url or "").split("://", 1)[0]
    if circuit.is_open():
        return {"ok": False, "transport": transport, "error": "circuit_open"}
    try:
        broker_reachable()
    except Exception as exc:
        circuit.trip()  # the next webhook need not find out the same way
        return {"ok": False, "transport": transport, "error": type(exc).__name__}
    return {"ok": True, "transport": transport}
