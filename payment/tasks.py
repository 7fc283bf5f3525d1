"""Celery tasks: take ids, call services, own the retry policy (docs/architecture.md, retries)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

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
    claim = uuid.uuid4().hex
    try:
        return services.webhook_event_process(event_id, via="celery", claim=claim, retake=retake)
    except DB_ERRORS as exc:
        # The database went away (restart, failover) mid-task: the row is intact and its claim released, or
        # still held under `claim` where the database refused even that; the retry carries `claim`, so it
        # takes the event at once either way.
        decision = retries.database_retry(self.request.retries)
        if decision.action == "give_up":
            logger.error("database retries exhausted; the sweep will retry", extra={"event_id": event_id})
            raise
        raise self.retry(args=(event_id,), kwargs={"retake": claim}, exc=exc, countdown=decision.delay) from exc
    except TransientGatewayError as exc:
        decision = retries.celery_gateway_retry(self.request.retries)
        services.event_schedule_retry(event_id, timezone.now() + timedelta(seconds=decision.delay))
        if decision.action == "hand_over":
            if not queueing.event_hand_to_django_q(event_id, attempt=1, delay_seconds=decision.delay):
                logger.error("handing over to django q failed; the sweep will retry", extra={"event_id": event_id})
            logger.warning("celery retries exhausted, handed to django q",
                           extra={"event_id": event_id, "delay": round(decision.delay, 1)})
            return "handed_to_django_q"
        raise self.retry(exc=exc, countdown=decision.delay) from exc


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
        raise self.retry(exc=exc, countdown=retries.refund_retry_delay(self.request.retries)) from exc
