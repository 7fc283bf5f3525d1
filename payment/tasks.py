"""Celery tasks: take ids, call services, own the retry policy (docs/architecture.md, retries)."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from celery import Task, shared_task
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from payment.conf import app_settings

from . import queueing, services
from .gateways.base import TransientGatewayError

logger = logging.getLogger("payment.tasks")

DB_ERRORS = (OperationalError, InterfaceError)
DB_RETRIES = 10

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
        # takes the event at once either way. Past the limit the sweep re-dispatches it once it is stale.
        if self.request.retries >= DB_RETRIES:
            logger.error("database retries exhausted; the sweep will retry", extra={"event_id": event_id})
            raise
        countdown = services.backoff_seconds(min(self.request.retries, 5), base_seconds=1.0, max_seconds=30.0)
        raise self.retry(args=(event_id,), kwargs={"retake": claim}, exc=exc, countdown=countdown) from exc
    except TransientGatewayError as exc:
        attempt = self.request.retries
        if attempt >= app_settings.PAYSHIFT_CELERY_MAX_RETRIES:
            # Celery's budget is spent: Django Q continues on a longer schedule.
            delay = services.backoff_seconds(0, base_seconds=app_settings.PAYSHIFT_Q_RETRY_BASE_SECONDS,
                                             max_seconds=app_settings.PAYSHIFT_Q_RETRY_MAX_SECONDS)
            services.event_schedule_retry(event_id, timezone.now() + timedelta(seconds=delay))
            if not queueing.event_hand_to_django_q(event_id, attempt=1, delay_seconds=delay):
                logger.error("handing over to django q failed; the sweep will retry", extra={"event_id": event_id})
            logger.warning("celery retries exhausted, handed to django q",
                           extra={"event_id": event_id, "delay": round(delay, 1)})
            return "handed_to_django_q"
        countdown = services.backoff_seconds(attempt, base_seconds=app_settings.PAYSHIFT_CELERY_RETRY_BASE_SECONDS,
                                             max_seconds=app_settings.PAYSHIFT_CELERY_RETRY_MAX_SECONDS)
        services.event_schedule_retry(event_id, timezone.now() + timedelta(seconds=countdown))
        raise self.retry(exc=exc, countdown=countdown) from exc


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
        countdown = services.backoff_seconds(self.request.retries,
                                             base_seconds=app_settings.PAYSHIFT_CELERY_RETRY_BASE_SECONDS,
                                             max_seconds=app_settings.PAYSHIFT_CELERY_RETRY_MAX_SECONDS)
        raise self.retry(exc=exc, countdown=countdown) from exc
