"""Celery tasks: take ids, call services, own the retry policy (docs/architecture.md, retries)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn

from celery import Task, shared_task
from django.utils import timezone

from payment.conf import app_settings

from . import queueing, retries, services
from .gateways.base import TransientGatewayError
from .retries import DB_ERRORS

logger = logging.getLogger("payment.tasks")

# Every task: acks_late + reject_on_worker_lost. A worker killed mid-task leaves the message to be
# redelivered, and the services are idempotent, so redelivery is safe ("a killed worker loses nothing").


@shared_task(name="process_payment_webhook", bind=True, max_retries=None, acks_late=True, reject_on_worker_lost=True)
def process_payment_webhook(self: Task[Any, Any], event_id: int, retake: str = "") -> str:
    def again(kwargs: dict[str, Any], countdown: float, exc: Exception) -> NoReturn:
        raise self.retry(args=(event_id,), kwargs=kwargs, exc=exc, countdown=countdown) from exc

    return _webhook_attempt(event_id, retake=retake, retries_done=self.request.retries, again=again)


@shared_task(name="process_payment_webhooks", acks_late=True, reject_on_worker_lost=True)
def process_payment_webhooks(event_ids: list[int]) -> dict[str, str]:
    """A batch the outbox relay published as one message (payment/outbox.py). Each event is processed as
    process_payment_webhook would; one that needs a retry goes on as its own process_payment_webhook message,
    with that task's retry schedule, so it never holds back the rest; nor does one that fails unexpectedly (the
    sweep retries it, as it would the single task's). A worker killed mid-batch has the whole message
    redelivered (acks_late): the events it finished are no-ops the second time."""
    results: dict[str, str] = {}
    for event_id in event_ids:
        def again(kwargs: dict[str, Any], countdown: float, exc: Exception, event_id: int = event_id) -> NoReturn:
            # retries=1: this attempt was the first; the follow-up continues the same schedule. (`retries` is
            # a send_task option that celery's stub does not list.)
            try:
                process_payment_webhook.apply_async(  # type: ignore[call-arg]
                    args=(event_id,), kwargs=kwargs, countdown=countdown, retries=1)
            except Exception as publish_error:  # the broker went away too: the rest of the batch still runs
                logger.error("retry not published; the sweep will retry", extra={
                    "event_id": event_id, "error": f"{type(publish_error).__name__}: {publish_error}"[:300]})
            raise _Retried from exc

        try:
            results[str(event_id)] = _webhook_attempt(event_id, retake="", retries_done=0, again=again)
        except _Retried:
            results[str(event_id)] = "retrying"
        except Exception:  # the message would fail, and the members after this one wait for the sweep's 15 min
            logger.exception("batch member failed; the sweep will retry", extra={"event_id": event_id})
            results[str(event_id)] = "left_for_sweep"
    return results


class _Retried(Exception):
    """A batch member handed to its own retry message."""


def _webhook_attempt(event_id: int, *, retake: str, retries_done: int,
                     again: Callable[[dict[str, Any], float, Exception], NoReturn]) -> str:
    """One attempt at one event, and the retry policy around it; `again` schedules the next attempt."""
    claim = uuid.uuid4().hex
    try:
        return services.webhook_event_process(event_id, via="celery", claim=claim, retake=retake)
    except DB_ERRORS as exc:
        # The database went away (restart, failover) mid-task: the row is intact and its claim released, or
        # still held under `claim` where the database refused even that; the retry carries `claim`, so it
        # takes the event at once either way.
        decision = retries.database_retry(retries_done)
        if decision.action == "give_up":
            logger.error("database retries exhausted; the sweep will retry", extra={"event_id": event_id})
            raise
        again({"retake": claim}, decision.delay, exc)
    except TransientGatewayError as exc:
        decision = retries.celery_gateway_retry(retries_done, exc.retry_after)
        services.event_schedule_retry(event_id, timezone.now() + timedelta(seconds=decision.delay))
        if decision.action == "hand_over":
            if not queueing.event_hand_to_django_q(event_id, attempt=1, delay_seconds=decision.delay):
                logger.error("handing over to django q failed; the sweep will retry", extra={"event_id": event_id})
            logger.warning("celery retries exhausted, handed to django q",
                           extra={"event_id": event_id, "delay": round(decision.delay, 1)})
            return "handed_to_django_q"
        again({}, decision.delay, exc)


@shared_task(name="check_pending_payments", acks_late=True, reject_on_worker_lost=True)
def check_pending_payments() -> dict[str, int]:
    return services.pending_payments_check()


@shared_task(name="prune_webhook_bodies", acks_late=True, reject_on_worker_lost=True)
def prune_webhook_bodies() -> int:
    return services.events_prune(older_than_days=app_settings.PAYSHIFT_RETENTION_DAYS)


@shared_task(name="verify_payment_task", acks_late=True, reject_on_worker_lost=True)
def verify_payment_task(payment_id: int) -> str:
    return services.payment_verify(payment_id)


@shared_task(name="process_refund_task", bind=True, max_retries=5, acks_late=True, reject_on_worker_lost=True)
def process_refund_task(self: Task[Any, Any], refund_id: int) -> str:
    try:
        return services.refund_submit(refund_id)
    except TransientGatewayError as exc:
        # Only raised when the gateway certainly did not act (see refund_submit): safe to re-send.
        raise self.retry(exc=exc, countdown=retries.refund_retry_delay(self.request.retries, exc.retry_after)) from exc
