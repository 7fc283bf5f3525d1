"""The one place that chooses a queue: Celery first, Django Q when the broker fails, else the sweep."""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from . import metrics
from .models import EventStatus, WebhookEvent

logger = logging.getLogger("payment.queueing")


class _BrokerCircuit:
    """After a failed publish, skip Celery for a few seconds: a dead broker costs one timeout, not one
    per request, so the webhook endpoint keeps answering fast (issue: Redis stopped -> still 200 quickly).

    `allows()` hands out a ticket: the generation, which every trip increments. Only a publish that began
    after the latest trip may close the circuit, so a slow publish that started before the broker died and
    happened to succeed afterwards cannot reopen the way to a dead broker (payment/tests/test_queueing.py)."""

    def __init__(self) -> None:
        self._open_until = 0.0
        self._generation = 1  # starts at 1 so that every ticket is truthy
        self._lock = threading.Lock()

    def allows(self) -> int | None:
        """None: skip the broker. Otherwise a ticket to hand back to `succeeded()`."""
        if not self._open_until:
            return self._generation  # closed: the hot path takes no lock
        with self._lock:
            now = time.monotonic()
            if now < self._open_until:
                return None
            # Half-open: this caller probes the broker and the window re-arms for everyone else, so a dead
            # broker stalls one request per window, not every thread of the web worker at once (bench/,
            # issue 6). Success closes it, failure trips it again.
            self._open_until = now + settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS
            return self._generation

    def is_open(self) -> bool:
        return bool(self._open_until) and time.monotonic() < self._open_until

    def trip(self) -> None:
        with self._lock:
            self._generation += 1
            self._open_until = time.monotonic() + settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS

    def reset(self) -> None:
        with self._lock:
            self._open_until = 0.0

    def succeeded(self, ticket: int) -> None:
        """A publish went through. It closes the circuit only if no trip happened since it began."""
        if not self._open_until:
            return
        with self._lock:
            if ticket == self._generation:
                self._open_until = 0.0


circuit = _BrokerCircuit()

SWEEPABLE = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING, EventStatus.FAILED,
             EventStatus.UNMATCHED)


def sweep_due(now: datetime) -> Q:
    """Events the periodic sweep re-dispatches: what a lost publish, a dead worker or a lost retry left.
    `queued` rows are in a broker already, and `processing` ones belong to a worker until they are stale."""
    stale = now - timedelta(seconds=settings.PAYSHIFT_SWEEP_AFTER_SECONDS)
    stuck = now - timedelta(seconds=settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
    return (Q(status=EventStatus.RECEIVED, updated_at__lt=stale)
            | Q(status__in=[EventStatus.QUEUED, EventStatus.PROCESSING], updated_at__lt=stuck)
            | Q(status=EventStatus.FAILED, next_attempt_at__lt=stale)
            | Q(status=EventStatus.FAILED, next_attempt_at__isnull=True, updated_at__lt=stuck))


def _sweep_takeable(now: datetime) -> Q:
    """What the sweep may move back to `queued`, checked in the UPDATE itself: a worker that claimed the row
    since the sweep's query ran has refreshed `updated_at`, so the row no longer matches and stays its own.
    Unmatched events are retried when due (services.pending_payments_check step 2)."""
    return sweep_due(now) | (Q(status=EventStatus.UNMATCHED)
                             & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)))


def _celery_publish(task_name: str, *args: Any, **options: Any) -> bool:
    ticket = circuit.allows()
    if ticket is None:
        return False
    from payshift.celery import app

    try:
        # ignore_result: send_task does not know the task's own ignore_result, and with a result backend it
        # would subscribe to the result (Redis pub/sub) before publishing. On a dead Redis that subscribe
        # retries for ~19 s (celery.backends.redis ResultConsumer.reconnect_on_error). Nobody reads results.
        app.send_task(task_name, args=list(args), retry=False, ignore_result=True, **options)
    except Exception as exc:  # kombu raises many types (OperationalError, OSError, redis errors...)
        circuit.trip()
        logger.warning("celery publish failed", extra={"task": task_name, "error": f"{type(exc).__name__}: {exc}"})
        return False
    circuit.succeeded(ticket)
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
        now = timezone.now()
        moved = WebhookEvent.objects.filter(_sweep_takeable(now), pk=event_id, status__in=SWEEPABLE).update(
            status=EventStatus.QUEUED, updated_at=now)
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


def event_hand_to_django_q(event_id: int, *, attempt: int = 0, delay_seconds: float = 0.0, retake: str = "",
                           db_attempt: int = 0) -> bool:
    """Celery gave up on a transient failure, or a Django Q attempt met a database error: Django Q takes
    over (again) with a longer schedule. `retake`/`db_attempt` carry a database retry's claim and count."""
    args: list[Any] = [int(event_id), int(attempt)]
    if retake or db_attempt:
        args += [str(retake), int(db_attempt)]
    if delay_seconds <= 0:
        return _django_q_enqueue("payment.q_tasks.process_payment_webhook_q", *args,
                                 task_name=f"event-{event_id}-q{attempt}" + (f"-db{db_attempt}" if db_attempt else ""))
    from django_q.models import Schedule

    try:
        Schedule.objects.create(
            func="payment.q_tasks.process_payment_webhook_q",
            # Django Q evaluates this string as a literal tuple; repr() quotes the (hex) token safely.
            args=",".join(repr(a) for a in args),
            schedule_type=Schedule.ONCE,
            repeats=1,
            next_run=timezone.now() + timedelta(seconds=delay_seconds),
            name=f"event-{event_id}-retry-{attempt}" + (f"-db{db_attempt}" if db_attempt else ""),
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
