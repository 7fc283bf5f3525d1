"""The one place that chooses a queue: Celery first, Django Q when the broker fails, else the sweep."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from . import metrics
from .models import EventStatus, WebhookEvent

logger = logging.getLogger("payment.queueing")


class _BrokerCircuit:
    """After a failed publish, skip Celery for a few seconds: a dead broker costs one timeout, not one
    per request, so the webhook endpoint keeps answering fast (issue: Redis stopped -> still 200 quickly)."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._lock = threading.Lock()

    def allows(self) -> bool:
        if not self._open_until:
            return True  # closed: the hot path takes no lock
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return False
            # Half-open: this caller probes the broker and the window re-arms for everyone else, so a dead
            # broker (redis-py retries a refused connect for ~2 s) stalls one request per window, not every
            # thread of the web worker at once (bench/, issue 6). Success closes it (reset), failure trips it.
            self._open_until = now + settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS
            return True

    def trip(self) -> None:
        with self._lock:
            self._open_until = time.monotonic() + settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS

    def reset(self) -> None:
        with self._lock:
            self._open_until = 0.0

    def succeeded(self) -> None:
        """A publish went through: after a trip that was the probe, so the circuit closes."""
        if self._open_until:
            self.reset()


circuit = _BrokerCircuit()

SWEEPABLE = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING, EventStatus.FAILED,
             EventStatus.UNMATCHED)


def _celery_publish(task_name: str, *args: Any, **options: Any) -> bool:
    if not circuit.allows():
        return False
    from payshift.celery import app

    try:
        app.send_task(task_name, args=list(args), retry=False, **options)
    except Exception as exc:  # kombu raises many types (OperationalError, OSError, redis errors...)
        circuit.trip()
        logger.warning("celery publish failed", extra={"task": task_name, "error": f"{type(exc).__name__}: {exc}"})
        return False
    circuit.succeeded()
    return True


def _django_q_enqueue(func: str, *args: Any, **options: Any) -> bool:
    from django_q.tasks import async_task

    try:
        async_task(func, *args, **options)
    except Exception as exc:  # the ORM broker fails only when the database does
        logger.error("django q enqueue failed", extra={"task": func, "error": f"{type(exc).__name__}: {exc}"})
        return False
    return True


def event_dispatch(event_id: int, *, path: str = "ingest", log_fields: dict[str, Any] | None = None) -> str:
    """Hand a stored event to a worker. Returns "celery", "django_q" or "none" (left for the sweep)."""
    fields = {"event_id": event_id, "path": path, **(log_fields or {})}
    if path == "sweep":
        # Mark it queued BEFORE publishing, and only from a state the sweep may take it from: a worker that
        # finishes first must never have its `processed` overwritten.
        moved = WebhookEvent.objects.filter(pk=event_id, status__in=SWEEPABLE).update(
            status=EventStatus.QUEUED, updated_at=timezone.now())
        if not moved:
            return "none"
    taken = "none"
    if _celery_publish("process_payment_webhook", event_id):
        taken = "celery"
    elif _django_q_enqueue("payment.q_tasks.process_payment_webhook_q", event_id, task_name=f"event-{event_id}"):
        taken = "django_q"
    if taken == "none":
        # Nothing took it: the row stays in the inbox as "received" and the periodic sweep retries it.
        WebhookEvent.objects.filter(pk=event_id, status=EventStatus.QUEUED).update(
            status=EventStatus.RECEIVED, last_error="no queue reachable at dispatch", updated_at=timezone.now())
        logger.error("webhook not dispatched", extra=fields)
        return taken
    metrics.EVENTS_DISPATCHED.labels("sweep" if path == "sweep" else taken).inc()
    logger.info("webhook dispatched", extra={**fields, "queue": taken})
    return taken


def event_hand_to_django_q(event_id: int, *, attempt: int = 0, delay_seconds: float = 0.0) -> bool:
    """Celery gave up on a transient failure: Django Q takes over with a longer schedule."""
    if delay_seconds <= 0:
        return _django_q_enqueue("payment.q_tasks.process_payment_webhook_q", event_id, attempt,
                                 task_name=f"event-{event_id}-q{attempt}")
    from django_q.models import Schedule

    try:
        Schedule.objects.create(
            func="payment.q_tasks.process_payment_webhook_q",
            args=f"{int(event_id)},{int(attempt)}",
            schedule_type=Schedule.ONCE,
            repeats=1,
            next_run=timezone.now() + timedelta(seconds=delay_seconds),
            name=f"event-{event_id}-retry-{attempt}",
        )
    except Exception as exc:
        logger.error("django q schedule failed", extra={"event_id": event_id, "error": str(exc)})
        return False
    return True


def refund_dispatch(refund_id: int) -> str:
    if _celery_publish("process_refund_task", refund_id):
        return "celery"
    if _django_q_enqueue("payment.q_tasks.process_refund_q", refund_id):
        return "django_q"
    logger.error("refund not dispatched; the sweep will retry", extra={"refund_id": refund_id})
    return "none"
