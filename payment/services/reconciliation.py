"""The periodic safety net (check_pending_payments): sweep, retry, re-verify, one function per step."""

from __future__ import annotations

import logging
from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from payment.conf import app_settings

from .. import queueing
from ..gateways import base
from ..models import (
    EventStatus,
    Notification,
    Payment,
    PaymentTransition,
    Refund,
    RefundStatus,
    WebhookEvent,
)
from ..notifications import notification_deliver
from .alerts import gateway_silence_alerts
from .events import event_mark_dead
from .refunds import refund_mark_unknown, refund_poll
from .scheduling import heartbeat, ids_in_batches, lease_acquire, lease_release
from .state import S, transition_hooks_run
from .verification import payment_verify

logger = logging.getLogger("payment.services")


def pending_payments_check(*, time_budget_seconds: float = 50.0) -> dict[str, int]:
    """The periodic safety net: re-verify stale pending payments, sweep the inbox, retry unmatched events."""
    heartbeat("check_pending_payments")
    lease = "lease:check_pending_payments"
    if not lease_acquire(lease, time_budget_seconds + 60):
        logger.info("check_pending_payments already running elsewhere")
        return {"skipped": 1}
    try:
        return _pending_payments_check(time_budget_seconds)
    finally:
        lease_release(lease)


def _pending_payments_check(time_budget_seconds: float) -> dict[str, int]:
    import time

    started = time.monotonic()

    def out_of_time() -> bool:
        # Every step shares the budget, so a run always ends before its lease does.
        return time.monotonic() - started >= time_budget_seconds

    now = timezone.now()
    counts = {"verified": 0, "expired": 0, "swept": 0, "unmatched_retried": 0, "dead": 0, "hooks": 0,
              "notifications": 0, "refunds": 0, "refunds_unknown": 0, "errors": 0}
    # 1. Inbox sweep: events a lost publish, a dead worker or a lost retry left behind. `queued` rows are
    # in a broker already, so they wait longer: re-publishing a backlog every minute would only add load.
    stale = now - timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS)
    stuck = now - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
    # event_dispatch(path="sweep") re-checks the same condition in its UPDATE (a worker may claim meanwhile).
    for event_id in ids_in_batches(WebhookEvent.objects.filter(queueing.sweep_due(now))):
        if out_of_time():
            break
        queueing.event_dispatch(event_id, path="sweep")
        counts["swept"] += 1
    # 2. Unmatched events: retry while young, then hand to a person.
    window_start = now - timedelta(seconds=app_settings.PAYSHIFT_UNMATCHED_RETRY_SECONDS)
    unmatched = WebhookEvent.objects.filter(status=EventStatus.UNMATCHED)
    # Events kept for a payment that exists (a refund of a charge not settled yet) wait for it instead.
    for event_id in ids_in_batches(unmatched.filter(received_at__lt=window_start, payment__isnull=True)):
        if out_of_time():
            break
        event_mark_dead(event_id, "no payment with this reference appeared in time")
        counts["dead"] += 1
    due = unmatched.filter(received_at__gte=window_start).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    for event_id in ids_in_batches(due):
        if out_of_time():
            break
        queueing.event_dispatch(event_id, path="sweep")
        counts["unmatched_retried"] += 1
    # 3. Signals and notifications whose process died after commit, and deliveries that failed.
    for transition_id in ids_in_batches(
            PaymentTransition.objects.filter(hooks_done_at__isnull=True, created_at__lt=stale)):
        if out_of_time():
            break
        transition_hooks_run(transition_id)
        counts["hooks"] += 1
    undelivered = Notification.objects.filter(
        delivered_at__isnull=True, created_at__lt=stale, delivery_attempts__lt=app_settings.PAYSHIFT_NOTIFICATION_TRIES,
    ).filter(Q(transition__isnull=True) | Q(transition__hooks_done_at__isnull=False))
    for notification_id in ids_in_batches(undelivered):
        if out_of_time():
            break
        notification = Notification.objects.select_related("payment", "event").get(pk=notification_id)
        notification_deliver(notification)
        counts["notifications"] += 1
    # 4. Refunds: lost tasks (never submitted), submissions whose process died before the gateway's answer was
    # recorded (they may have been made: unknown, never re-sent), and gateway-side progress.
    for refund_id in ids_in_batches(Refund.objects.filter(status=RefundStatus.PENDING, updated_at__lt=stale,
                                                           gateway_refund_id="", submitted_at__isnull=True)):
        if out_of_time():
            break
        queueing.refund_dispatch(refund_id)
        counts["refunds"] += 1
    for refund_id in ids_in_batches(Refund.objects.filter(status=RefundStatus.PENDING, submitted_at__lt=stuck)):
        if out_of_time():
            break
        refund_mark_unknown(refund_id, "the submitting process stopped before the gateway's answer was recorded")
        counts["refunds_unknown"] += 1
    open_at_gateway = Refund.objects.filter(status__in=[RefundStatus.PROCESSING, RefundStatus.UNKNOWN],
                                            updated_at__lt=stale)
    for refund_id in ids_in_batches(open_at_gateway):
        if out_of_time():
            break
        try:
            refund_poll(refund_id)
        except base.GatewayError:
            counts["errors"] += 1
        # Polled: next time after another `stale` interval, so open refunds share the budget fairly.
        Refund.objects.filter(pk=refund_id, status__in=[RefundStatus.PROCESSING, RefundStatus.UNKNOWN]).update(
            updated_at=timezone.now())
    counts["silent_gateways"] = len(gateway_silence_alerts(now))
    # 5. Pending payments nobody told us about, oldest check first, in batches, within a time budget.
    recheck = now - timedelta(seconds=app_settings.PAYSHIFT_PENDING_RECHECK_SECONDS)
    ttl_cutoff = now - timedelta(seconds=app_settings.PAYSHIFT_PENDING_TTL_SECONDS)
    # Failed and abandoned payments can still turn successful (a later attempt), but only within the TTL.
    candidates = Payment.objects.filter(
        Q(status=S.PENDING, created_at__gte=now - timedelta(days=30))
        | Q(status__in=[S.ABANDONED, S.FAILED], created_at__gte=ttl_cutoff),
        created_at__lt=recheck,
    ).filter(Q(last_verified_at__isnull=True) | Q(last_verified_at__lt=recheck))
    batch_size = app_settings.PAYSHIFT_RECONCILE_BATCH_SIZE
    while time.monotonic() - started < time_budget_seconds:
        batch = list(candidates.order_by(F("last_verified_at").asc(nulls_first=True), "id")
                     .values_list("id", "created_at", "status")[:batch_size])
        if not batch:
            break
        for payment_id, created_at, status in batch:
            expired = created_at < ttl_cutoff
            try:
                # Before the TTL only good news is applied: the customer may still be on the checkout page.
                new_status = payment_verify(payment_id, allow_unpaid_final=expired and status == S.PENDING)
                counts["verified"] += 1
                counts["expired"] += int(expired and new_status != status)
            except base.GatewayError as exc:
                counts["errors"] += 1
                Payment.objects.filter(pk=payment_id).update(last_verified_at=timezone.now())
                logger.warning("reconcile verify failed", extra={"payment_id": payment_id, "error": str(exc)})
            if time.monotonic() - started >= time_budget_seconds:
                break
    logger.info("check_pending_payments", extra=counts)
    return counts
