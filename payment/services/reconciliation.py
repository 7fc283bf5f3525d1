"""The periodic safety net (check_pending_payments): sweep, retry, re-verify, one function per step."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta

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


class _Budget:
    """The run's time budget, shared by every step, so a run always ends before its lease does."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def spent(self) -> bool:
        return time.monotonic() >= self.deadline


def _pending_payments_check(time_budget_seconds: float) -> dict[str, int]:
    budget = _Budget(time_budget_seconds)
    now = timezone.now()
    counts = {"verified": 0, "expired": 0, "swept": 0, "unmatched_retried": 0, "dead": 0, "hooks": 0,
              "notifications": 0, "refunds": 0, "refunds_unknown": 0, "errors": 0}
    for step in _STEPS:
        step(now, budget, counts)
    logger.info("check_pending_payments", extra=counts)
    return counts


def _inbox_sweep(now: datetime, budget: _Budget, counts: dict[str, int]) -> None:
    """Events a lost publish, a dead worker or a lost retry left behind. `queued` rows are in a broker already,
    so they wait longer: re-publishing a backlog every minute would only add load. event_dispatch(path="sweep")
    re-checks the same condition in its UPDATE (a worker may claim the row meanwhile)."""
    for event_id in ids_in_batches(WebhookEvent.objects.filter(queueing.sweep_due(now))):
        if budget.spent():
            return
        queueing.event_dispatch(event_id, path="sweep")
        counts["swept"] += 1


def _unmatched_retry(now: datetime, budget: _Budget, counts: dict[str, int]) -> None:
    """Events with no payment yet: retried while young, then handed to a person. Events kept for a payment that
    exists (a refund of a charge not settled yet) wait for that payment instead."""
    window_start = now - timedelta(seconds=app_settings.PAYSHIFT_UNMATCHED_RETRY_SECONDS)
    unmatched = WebhookEvent.objects.filter(status=EventStatus.UNMATCHED)
    for event_id in ids_in_batches(unmatched.filter(received_at__lt=window_start, payment__isnull=True)):
        if budget.spent():
            return
        event_mark_dead(event_id, "no payment with this reference appeared in time")
        counts["dead"] += 1
    due = unmatched.filter(received_at__gte=window_start).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    for event_id in ids_in_batches(due):
        if budget.spent():
            return
        queueing.event_dispatch(event_id, path="sweep")
        counts["unmatched_retried"] += 1


def _side_effects_retry(now: datetime, budget: _Budget, counts: dict[str, int]) -> None:
    """Signals and notifications whose process died after commit, and deliveries that failed."""
    stale = now - timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS)
    for transition_id in ids_in_batches(
            PaymentTransition.objects.filter(hooks_done_at__isnull=True, created_at__lt=stale)):
        if budget.spent():
            return
        transition_hooks_run(transition_id)
        counts["hooks"] += 1
    undelivered = Notification.objects.filter(
        delivered_at__isnull=True, created_at__lt=stale, delivery_attempts__lt=app_settings.PAYSHIFT_NOTIFICATION_TRIES,
    ).filter(Q(transition__isnull=True) | Q(transition__hooks_done_at__isnull=False))
    for notification_id in ids_in_batches(undelivered):
        if budget.spent():
            return
        notification_deliver(Notification.objects.select_related("payment", "event").get(pk=notification_id))
        counts["notifications"] += 1


def _refunds_follow_up(now: datetime, budget: _Budget, counts: dict[str, int]) -> None:
    """Refunds: lost tasks (never submitted) are dispatched; submissions whose process died before the gateway's
    answer was recorded become `unknown` (they may have been made: never re-sent); open ones are polled."""
    stale = now - timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS)
    stuck = now - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
    for refund_id in ids_in_batches(Refund.objects.filter(status=RefundStatus.PENDING, updated_at__lt=stale,
                                                          gateway_refund_id="", submitted_at__isnull=True)):
        if budget.spent():
            return
        queueing.refund_dispatch(refund_id)
        counts["refunds"] += 1
    for refund_id in ids_in_batches(Refund.objects.filter(status=RefundStatus.PENDING, submitted_at__lt=stuck)):
        if budget.spent():
            return
        refund_mark_unknown(refund_id, "the submitting process stopped before the gateway's answer was recorded")
        counts["refunds_unknown"] += 1
    open_at_gateway = Refund.objects.filter(status__in=[RefundStatus.PROCESSING, RefundStatus.UNKNOWN],
                                            updated_at__lt=stale)
    for refund_id in ids_in_batches(open_at_gateway):
        if budget.spent():
            return
        try:
            refund_poll(refund_id)
        except base.GatewayError:
            counts["errors"] += 1
        # Polled: next time after another interval, so open refunds share the budget fairly.
        Refund.objects.filter(pk=refund_id, status__in=[RefundStatus.PROCESSING, RefundStatus.UNKNOWN]).update(
            updated_at=timezone.now())


def _silent_gateways(now: datetime, budget: _Budget, counts: dict[str, int]) -> None:
    counts["silent_gateways"] = len(gateway_silence_alerts(now))


def _pending_payments_verify(now: datetime, budget: _Budget, counts: dict[str, int]) -> None:
    """Pending payments nobody told us about, oldest check first, in batches, within the budget. Failed and
    abandoned payments can still turn successful (a later attempt), but only within the TTL."""
    recheck = now - timedelta(seconds=app_settings.PAYSHIFT_PENDING_RECHECK_SECONDS)
    ttl_cutoff = now - timedelta(seconds=app_settings.PAYSHIFT_PENDING_TTL_SECONDS)
    candidates = Payment.objects.filter(
        Q(status=S.PENDING, created_at__gte=now - timedelta(days=30))
        | Q(status__in=[S.ABANDONED, S.FAILED], created_at__gte=ttl_cutoff),
        created_at__lt=recheck,
    ).filter(Q(last_verified_at__isnull=True) | Q(last_verified_at__lt=recheck))
    batch_size = app_settings.PAYSHIFT_RECONCILE_BATCH_SIZE
    while not budget.spent():
        batch = list(candidates.order_by(F("last_verified_at").asc(nulls_first=True), "id")
                     .values_list("id", "created_at", "status")[:batch_size])
        if not batch:
            return
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
            if budget.spent():
                return


# The steps, in order: the cheap safety nets first, the gateway-bound re-verification last (it uses what
# is left of the budget).
_STEPS: tuple[Callable[[datetime, _Budget, dict[str, int]], None], ...] = (
    _inbox_sweep, _unmatched_retry, _side_effects_retry, _refunds_follow_up, _silent_gateways,
    _pending_payments_verify,
)
