"""Django Q tasks (the fallback queue, ORM broker): the same services as the Celery tasks."""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from payment.conf import app_settings

from . import queueing, retries, services
from .gateways.base import TransientGatewayError
from .models import Heartbeat
from .retries import DB_ERRORS

logger = logging.getLogger("payment.q_tasks")

# An in-process wait (the database refused even the retry's schedule) stays far below Q_CLUSTER's timeout.
IN_PROCESS_WAIT_MAX_SECONDS = 5.0


def process_payment_webhook_q(event_id: int, attempt: int = 0, retake: str = "", db_attempt: int = 0) -> str:
    """Process an event; on a transient failure schedule the next try, and give up (dead) at the limit.

    `attempt` counts gateway failures (they end in `dead`), `db_attempt` database errors (they never do);
    `retake` is the claim token of the attempt a database error interrupted (see webhook_event_process)."""
    claim = uuid.uuid4().hex
    try:
        return services.webhook_event_process(event_id, via="django_q", claim=claim, retake=retake)
    except DB_ERRORS as exc:
        return _database_retry(event_id, attempt=attempt, retake=claim, db_attempt=db_attempt, error=exc)
    except TransientGatewayError as exc:
        decision = retries.django_q_gateway_retry(attempt, exc.retry_after)
        if decision.action == "give_up":
            services.event_mark_dead(event_id, f"retries exhausted (celery and django q): {exc}")
            return "dead"
        services.event_schedule_retry(event_id, timezone.now() + timedelta(seconds=decision.delay))
        queueing.event_hand_to_django_q(event_id, attempt=attempt + 1, delay_seconds=decision.delay)
        return "retry_scheduled"


def process_payment_webhooks_q(event_ids: list[int]) -> dict[str, str]:
    """A batch the outbox relay handed to Django Q as one task (the broker was down): each event as
    process_payment_webhook_q would, each with its own retry schedule. A cluster worker killed mid-batch has
    the task delivered again (Q_CLUSTER's retry); the events it finished are no-ops the second time.

    The cluster ends a task at its timeout by raising SystemExit wherever the task is (between a sent
    notification and its mark, say), and a batch of slow verifications outlasts it where one event does not:
    a member starts only within half of that timeout, and the rest go on as a new batch task."""
    results: dict[str, str] = {}
    deadline = time.monotonic() + _batch_budget_seconds()
    for position, event_id in enumerate(event_ids):
        if position and time.monotonic() >= deadline:
            rest = [int(i) for i in event_ids[position:]]
            # Not handed on only when the database refuses the task too: the rows are `queued`, the sweep's.
            outcome = "handed_on" if queueing.events_hand_to_django_q(rest) else "left_for_sweep"
            results.update({str(i): outcome for i in rest})
            break
        try:
            results[str(event_id)] = process_payment_webhook_q(int(event_id))
        except Exception:  # one event's surprise must not keep the rest from running: the sweep retries it
            logger.exception("batch member failed; the sweep will retry", extra={"event_id": event_id})
            results[str(event_id)] = "left_for_sweep"
    return results


def _batch_budget_seconds() -> float:
    """How long a batch task may go on starting members: half of Q_CLUSTER's timeout (none: no limit)."""
    timeout = (getattr(settings, "Q_CLUSTER", None) or {}).get("timeout")
    return float(timeout) / 2 if timeout else math.inf


def _database_retry(event_id: int, *, attempt: int, retake: str, db_attempt: int, error: Exception) -> str:
    """The Celery task's policy for a database that went away: retry with backoff, holding on to the claim,
    and never drop the event. Normally a Schedule row carries the retry; when the database refuses that
    too, this worker waits (briefly: the cluster cannot take work without its ORM broker anyway)."""
    decision = retries.database_retry(db_attempt)
    if decision.action == "give_up":
        logger.error("database retries exhausted; the sweep will retry",
                     extra={"event_id": event_id, "error": f"{type(error).__name__}: {error}"})
        return "left_for_sweep"
    delay = decision.delay
    if not connection.in_atomic_block:
        close_old_connections()  # drop the connection the error broke; the next query opens a new one
    if queueing.event_hand_to_django_q(event_id, attempt=attempt, delay_seconds=delay, retake=retake,
                                       db_attempt=db_attempt + 1):
        logger.warning("database error, retry scheduled", extra={"event_id": event_id, "delay": round(delay, 1),
                                                                 "error": f"{type(error).__name__}: {error}"})
        return "db_retry_scheduled"
    time.sleep(min(delay, IN_PROCESS_WAIT_MAX_SECONDS))
    return process_payment_webhook_q(event_id, attempt, retake, db_attempt + 1)


def verify_payment_status(payment_id: int) -> str:
    return services.payment_verify(payment_id)


def process_refund_q(refund_id: int) -> str:
    try:
        return services.refund_submit(refund_id)
    except TransientGatewayError:
        return "left_for_sweep"  # the periodic check re-dispatches pending refunds


def _cluster_age() -> timedelta:
    """How long ago the cluster this worker belongs to first ran the fallback schedule. A cluster's workers
    are children of one sentinel process that outlives worker recycling, so host and parent pid name it."""
    now = timezone.now()
    name = f"django_q_up:{socket.gethostname()[:40]}:{os.getppid()}"
    row, created = Heartbeat.objects.get_or_create(name=name, defaults={"at": now})
    if created:  # one row per cluster start: forget those of clusters long gone
        Heartbeat.objects.filter(name__startswith="django_q_up:", at__lt=now - timedelta(days=7)).exclude(
            name=name).delete()
    return now - row.at


def check_pending_payments_q() -> dict[str, int] | str:
    """Fallback schedule: runs the periodic check only when Celery beat has been silent for a while."""
    services.heartbeat("django_q")  # /readyz reads this to know the cluster is alive
    beat = Heartbeat.objects.filter(name="check_pending_payments").first()
    quiet_for = 3 * app_settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS
    if beat is not None and beat.at > timezone.now() - timedelta(seconds=quiet_for):
        return "beat_is_alive"
    # Silent since the later of beat's last run and this cluster's start: a fresh stack runs this schedule
    # before beat's first tick (one interval after beat starts), which is no silence.
    if _cluster_age() < timedelta(seconds=quiet_for):
        return "waiting_for_beat"
    logger.warning("celery beat silent: django q runs check_pending_payments")
    return services.pending_payments_check()
