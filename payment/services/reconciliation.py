"""The periodic safety net (check_pending_payments): sweep, retry, re-verify, one function per step."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from django.db import connection
from django.db.models import F, Q
from django.utils import timezone

from payment.conf import app_settings

from .. import queueing
from ..gateways import base
from ..models import (
    EventKind,
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
from .state import CHARGE_SETTLED, S, transition_hooks_run
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
    retry_time = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
    # Young events, and refund events held for a charge that has settled since, whatever their age: the settle
    # releases those itself after commit, and this is the net for a release that never ran (its process died)
    # or a hold the settle could not see (written by a version without Payment.refund_events_held).
    due = unmatched.filter(retry_time).filter(
        Q(received_at__gte=window_start)
        | Q(kind=EventKind.REFUND, payment__isnull=False, payment__status__in=CHARGE_SETTLED))
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
    abandoned payments can still turn successful (a later attempt), but only within the TTL.

    The gateway calls of a batch overlap (PAYSHIFT_RECONCILE_CONCURRENCY threads), paced by the gateway's
    client rate limit (payment/gateways/ratelimit.py); each call still goes through payment_verify, so the
    lock, the forward-only rule and allow_unpaid_final are the same as one at a time.
    """
    recheck = now - timedelta(seconds=app_settings.PAYSHIFT_PENDING_RECHECK_SECONDS)
    ttl_cutoff = now - timedelta(seconds=app_settings.PAYSHIFT_PENDING_TTL_SECONDS)
    candidates = Payment.objects.filter(
        Q(status=S.PENDING, created_at__gte=now - timedelta(days=30))
        | Q(status__in=[S.ABANDONED, S.FAILED], created_at__gte=ttl_cutoff),
        created_at__lt=recheck,
    ).filter(Q(last_verified_at__isnull=True) | Q(last_verified_at__lt=recheck))
    batch_size = app_settings.PAYSHIFT_RECONCILE_BATCH_SIZE
    verifier = _Verifier(ttl_cutoff, budget, counts, _reconcile_concurrency())
    try:
        while not budget.spent():
            batch = list(candidates.order_by(F("last_verified_at").asc(nulls_first=True), "id")
                         .only(*_VERIFY_FIELDS)[:batch_size])
            if not batch:
                return
            # The whole batch is done (every last_verified_at written) before the next SELECT, or the rows
            # still in flight would be picked again.
            verifier.run(batch)
    finally:
        verifier.close()


def _reconcile_concurrency() -> int:
    """Threads for the verifications: 1 on SQLite (one writer at a time, nothing to overlap with) and inside a
    caller's transaction (other threads' connections could not see its rows, nor share its locks)."""
    if connection.vendor == "sqlite" or connection.in_atomic_block:
        return 1
    return max(1, app_settings.PAYSHIFT_RECONCILE_CONCURRENCY)


# What payment_verify reads of a row before its call, so a batch's rows save it a SELECT each.
_VERIFY_FIELDS = ("id", "created_at", "status", "reference", "gateway", "amount", "currency", "mode")


class _Verifier:
    """Verifies batches of payment rows (`_VERIFY_FIELDS`), in order, on `threads` threads kept for the run.

    Threads are started once (their DB connections and HTTP connections are reused from batch to batch) and
    each closes its own DB connection when it ends; a row is started only while the budget lasts. The first
    unexpected error stops the run and is raised in the caller, as one at a time it would be.
    """

    def __init__(self, ttl_cutoff: datetime, budget: _Budget, counts: dict[str, int], threads: int) -> None:
        self.ttl_cutoff = ttl_cutoff
        self.budget = budget
        self.counts = counts
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._checked: list[int] = []
        self._queue: queue.Queue[Payment | None] = queue.Queue()
        self._threads = [threading.Thread(target=self._work, name=f"reconcile-{n}", daemon=True)
                         for n in range(threads if threads > 1 else 0)]
        for thread in self._threads:
            thread.start()

    def run(self, batch: list[Payment]) -> None:
        try:
            if not self._threads:
                for row in batch:
                    if self.budget.spent():
                        return
                    self._verify(row)
                return
            for row in batch:
                self._queue.put(row)
            self._queue.join()
            if self._failure is not None:
                raise self._failure
        finally:
            self._checks_record()

    def _checks_record(self) -> None:
        # One UPDATE (one commit) for the batch's checks instead of one per payment: most answers change
        # nothing, and a commit each was the largest cost of a check. Lost if the process dies first: those
        # payments are simply checked again.
        with self._lock:
            checked, self._checked = self._checked, []
        if checked:
            Payment.objects.filter(pk__in=checked).update(last_verified_at=timezone.now())

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        try:
            while (row := self._queue.get()) is not None:
                try:
                    if self._failure is None and not self.budget.spent():
                        self._verify(row)
                except BaseException as exc:  # handed to the caller's thread and raised there
                    with self._lock:
                        self._failure = self._failure or exc
                finally:
                    self._queue.task_done()
            self._queue.task_done()
        finally:
            connection.close()

    def _verify(self, row: Payment) -> None:
        payment_id, status = row.pk, row.status
        expired = row.created_at < self.ttl_cutoff
        try:
            # Before the TTL only good news is applied: the customer may still be on the checkout page.
            new_status = payment_verify(payment_id, allow_unpaid_final=expired and status == S.PENDING,
                                        record_check=False, read=row)
        except base.GatewayError as exc:
            # Checked too (a failing gateway must not keep one payment at the head of the queue).
            logger.warning("reconcile verify failed", extra={"payment_id": payment_id, "error": str(exc)})
            self._count(payment_id, "errors")
            return
        self._count(payment_id, "verified", "expired" if expired and new_status != status else "")

    def _count(self, payment_id: int, *names: str) -> None:
        with self._lock:
            self._checked.append(payment_id)
            for name in names:
                if name:
                    self.counts[name] += 1


# The steps, in order: the cheap safety nets first, the gateway-bound re-verification last (it uses what
# is left of the budget).
_STEPS: tuple[Callable[[datetime, _Budget, dict[str, int]], None], ...] = (
    _inbox_sweep, _unmatched_retry, _side_effects_retry, _refunds_follow_up, _silent_gateways,
    _pending_payments_verify,
)
