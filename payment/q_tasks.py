"""Django Q tasks (the fallback queue, ORM broker): the same services as the Celery tasks."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from . import queueing, services
from .gateways.base import TransientGatewayError
from .models import Heartbeat

logger = logging.getLogger("payment.q_tasks")


def process_payment_webhook_q(event_id: int, attempt: int = 0) -> str:
    """Process an event; on a transient failure schedule the next try, and give up (dead) at the limit."""
    try:
        return services.webhook_event_process(event_id, via="django_q")
    except TransientGatewayError as exc:
        if attempt >= settings.PAYSHIFT_Q_MAX_RETRIES:
            services.event_mark_dead(event_id, f"retries exhausted (celery and django q): {exc}")
            return "dead"
        delay = services.backoff_seconds(attempt, base_seconds=settings.PAYSHIFT_Q_RETRY_BASE_SECONDS,
                                         max_seconds=settings.PAYSHIFT_Q_RETRY_MAX_SECONDS)
        services.event_schedule_retry(event_id, timezone.now() + timedelta(seconds=delay))
        queueing.event_hand_to_django_q(event_id, attempt=attempt + 1, delay_seconds=delay)
        return "retry_scheduled"


def verify_payment_status(payment_id: int) -> str:
    return services.payment_verify(payment_id)


def process_refund_q(refund_id: int) -> str:
    try:
        return services.refund_submit(refund_id)
    except TransientGatewayError:
        return "left_for_sweep"  # the periodic check re-dispatches pending refunds


def check_pending_payments_q() -> dict[str, int] | str:
    """Fallback schedule: runs the periodic check only when Celery beat has been silent for a while."""
    services.heartbeat("django_q")  # /readyz reads this to know the cluster is alive
    beat = Heartbeat.objects.filter(name="check_pending_payments").first()
    quiet_for = 3 * settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS
    if beat is not None and beat.at > timezone.now() - timedelta(seconds=quiet_for):
        return "beat_is_alive"
    logger.warning("celery beat silent: django q runs check_pending_payments")
    return services.pending_payments_check()
