"""The one place that chooses a queue: Celery first, Django Q when the broker fails, else the sweep."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from celery import current_app
from django.db.models import Q
from django.utils import timezone

from payment.conf import app_settings

from . import metrics
from .models import EVENT_UNFINISHED, EventStatus, WebhookEvent

logger = logging.getLogger("payment.queueing")


# A healthy broker takes a publish in about a millisecond. One that has been in flight this long means the
# broker hangs (a black-holed port, a stopped process): other requests go to Django Q instead of queueing up
# behind it for the whole publish timeout (bench/ scenario 3, "blackholed").
_HANGING_AFTER_SECONDS = 0.05


class _BrokerCircuit:
    """After a failed publish, skip Celery for a few seconds: a dead broker costs one timeout, not one
    per request, so the webhook endpoint keeps answering fast (issue: Redis stopped -> still 200 quickly).

    When the window is over, a background probe (not a webhook) asks the broker; only a probe that began
    after the latest trip may close the circuit. A slow publish that started before the broker died and
    happened to succeed afterwards changes nothing (payment/tests/test_queueing.py)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open_until = 0.0
        self._generation = 0  # every trip and reset moves it on: a probe's answer counts only within its own
        self._probing = False
        self._inflight: dict[int, float] = {}
        self._tickets = itertools.count(1)

    def begin(self) -> int | None:
        """Before a publish: None to skip the broker, else a ticket to hand to `end()`."""
        now = time.monotonic()
        with self._lock:
            if self._open_until:
                if now < self._open_until:
                    return None
                # Half-open: re-arm the window for everyone and let a background probe decide; no webhook
                # waits on a broker that is probably still dead.
                self._open_until = now + app_settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS
                self._probe_start()
                return None
            if any(now - started > _HANGING_AFTER_SECONDS for started in self._inflight.values()):
                return None
            ticket = next(self._tickets)
            self._inflight[ticket] = now
            return ticket

    def end(self, ticket: int, *, ok: bool) -> None:
        with self._lock:
            self._inflight.pop(ticket, None)
            if not ok:
                self._trip()

    def is_open(self) -> bool:
        return bool(self._open_until) and time.monotonic() < self._open_until

    def trip(self) -> None:
        with self._lock:
            self._trip()

    def reset(self) -> None:
        with self._lock:
            self._generation += 1
            self._open_until = 0.0
            self._inflight.clear()

    def after_fork(self) -> None:
        """In a forked child (Celery's prefork pool) no thread of the parent runs: its publishes in flight
        and its probe would look hung or busy for ever, so the child starts from a clean circuit."""
        self._lock = threading.Lock()
        self._inflight.clear()
        self._probing = False

    def _trip(self) -> None:
        self._generation += 1
        self._open_until = time.monotonic() + app_settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS

    def _probe_start(self) -> None:
        if self._probing:
            return
        self._probing = True
        threading.Thread(target=self._probe, args=(self._generation,), name="broker-probe", daemon=True).start()

    def _probe(self, generation: int) -> None:
        try:
            broker_reachable()
            reachable = True
        except Exception:
            reachable = False
        with self._lock:
            self._probing = False
            if generation != self._generation:
                return  # tripped (or reset) while probing: this answer is older than what we know
            if reachable:
                self._open_until = 0.0
                logger.info("broker reachable again: publishing to Celery")
            else:
                self._trip()


circuit = _BrokerCircuit()
os.register_at_fork(after_in_child=circuit.after_fork)

# The sweep may move back to `queued` only what is unfinished (never a worker's `processed`).
SWEEPABLE = EVENT_UNFINISHED


def sweep_due(now: datetime) -> Q:
    """Events the periodic sweep re-dispatches: what a lost publish, a dead worker or a lost retry left.
    `received` rows unclaimed after PAYSHIFT_SWEEP_AFTER_SECONDS: the relay's hand-off was lost, or they wait
    in a broker's backlog (the relay does not mark what it published, events_dispatch); the sweep publishes
    them once more and marks them `queued`. `queued` rows are in a broker already, and `processing` ones
    belong to a worker, until they are stale."""
    stale = now - timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS)
    stuck = now - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
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


def broker_reachable() -> None:
    """One bounded round trip to the broker, or an exception: connect without kombu's retries (it sleeps 2 s
    before a second try) and open a channel, which on Redis sends a PING; the transport's socket timeouts
    (payshift/settings.py) bound each step, so a black-holed port fails too instead of passing the connect."""
    with current_app.connection_for_write() as conn:
        # kombu takes float seconds here; its stub says int.
        conn.ensure_connection(max_retries=0, timeout=app_settings.PAYSHIFT_BROKER_PUBLISH_TIMEOUT)  # type: ignore[arg-type]
        conn.default_channel  # noqa: B018 (opening it is the check)


def _celery_publish(task_name: str, *args: Any, **options: Any) -> bool:
    ticket = circuit.begin()
    if ticket is None:
        return False
    try:
        # ignore_result: send_task does not know the task's own ignore_result, and with a result backend it
        # would subscribe to the result (Redis pub/sub) before publishing. On a dead Redis that subscribe
        # retries for ~19 s (celery.backends.redis ResultConsumer.reconnect_on_error). Nobody reads results.
        # The host's own Celery app (current_app), never Payshift's: in a host project its worker consumes
        # the default queue, with the host's broker settings.
        # argsrepr: Celery builds the message's printable args with its saferepr, a third of a publish's CPU
        # for a batch of ids (bench/FINDINGS.md); repr() of ints says the same, within saferepr's 1,024.
        text = repr(list(args))
        if len(text) <= 1024:
            options = {"argsrepr": text, "kwargsrepr": "{}", **options}
        current_app.send_task(task_name, args=list(args), retry=False, ignore_result=True, **options)
    except Exception as exc:  # kombu raises many types (OperationalError, OSError, redis errors...)
        circuit.end(ticket, ok=False)
        logger.warning("celery publish failed", extra={"task": task_name, "error": f"{type(exc).__name__}: {exc}"})
        return False
    circuit.end(ticket, ok=True)
    return True


def _django_q_enqueue(func: str, *args: Any, **options: Any) -> bool:
    # django_q's modules load its models, so they need the app registry ready; this module is imported earlier.
    from django_q.tasks import async_task  # noqa: PLC0415

    try:
        async_task(func, *args, **options)
    except Exception as exc:  # the ORM broker fails only when the database does
        logger.error("django q enqueue failed", extra={"task": func, "error": f"{type(exc).__name__}: {exc}"})
        return False
    return True


def _events_publish(ids: list[int]) -> str:
    """The queue choice for one event or a batch: Celery, else Django Q, else "none". A batch is one message
    (process_payment_webhooks) and one Django Q task: with the broker down the relay must keep up with the
    webhooks (bench scenario 3), and a Django Q enqueue is an INSERT."""
    if len(ids) == 1:
        if _celery_publish("process_payment_webhook", ids[0]):
            return "celery"
        if _django_q_enqueue("payment.q_tasks.process_payment_webhook_q", ids[0], task_name=f"event-{ids[0]}"):
            return "django_q"
        return "none"
    if _celery_publish("process_payment_webhooks", ids):
        return "celery"
    return "django_q" if events_hand_to_django_q(ids) else "none"


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
    taken = _events_publish([event_id])
    if taken == "none":
        # Nothing took it: the row stays in the inbox as "received" and the periodic sweep retries it.
        WebhookEvent.objects.filter(pk=event_id, status=EventStatus.QUEUED).update(
            status=EventStatus.RECEIVED, last_error="no queue reachable at dispatch", updated_at=timezone.now())
        logger.error("webhook not dispatched", extra=fields)
        return taken
    metrics.EVENTS_DISPATCHED.labels("sweep" if path == "sweep" else taken).inc()
    logger.info("webhook dispatched", extra={**fields, "queue": taken})
    return taken


def events_dispatch(event_ids: Sequence[int]) -> str:
    """Publish events the webhook view stored (`received`), for the outbox relay. Returns "celery", "django_q"
    or "none" (the rows stay `received` for the sweep, with the reason in `last_error`).

    A published event is not marked: it stays `received` until a worker claims it (`processing`), which is
    usually milliseconds later. Marking it `queued` here cost an UPDATE per batch that rewrote every row of
    the batch (a new 1.5 kB tuple and an entry in each index: status and updated_at are indexed), as much
    PostgreSQL work as the INSERT itself (bench/FINDINGS.md). What the mark bought is a longer wait before
    the sweep publishes an event again, and only for events still unclaimed after
    PAYSHIFT_SWEEP_AFTER_SECONDS: a backlog that old is published once more by the sweep, which marks it
    `queued` (then it waits PAYSHIFT_PROCESSING_STUCK_SECONDS like any queued row), and a worker's claim
    makes the second message a no-op. A relay that dies before or after publishing leaves `received` rows,
    as before: the sweep publishes them."""
    ids = [int(i) for i in event_ids]
    if not ids:
        return "none"
    queue = _events_publish(ids)
    if queue == "none":
        # Nothing took them: the rows stay `received` and the periodic sweep retries them.
        WebhookEvent.objects.filter(pk__in=ids, status=EventStatus.RECEIVED).update(
            last_error="no queue reachable at dispatch", updated_at=timezone.now())
        logger.error("webhooks not dispatched", extra={"event_ids": ids, "path": "ingest"})
        return queue
    metrics.EVENTS_DISPATCHED.labels(queue).inc(len(ids))
    # One line per batch; each event's own line is "webhook received" (payment.services).
    logger.info("webhooks dispatched", extra={"event_ids": ids, "queue": queue, "path": "ingest"})
    return queue


def events_hand_to_django_q(event_ids: Sequence[int]) -> bool:
    """A batch as one Django Q task (process_payment_webhooks_q): from the relay, or a batch task's rest."""
    ids = [int(i) for i in event_ids]
    return _django_q_enqueue("payment.q_tasks.process_payment_webhooks_q", ids,
                             task_name=f"events-{ids[0]}-{ids[-1]}-{len(ids)}")


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
    from django_q.models import Schedule  # noqa: PLC0415  (needs the app registry ready: see _django_q_enqueue)

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
