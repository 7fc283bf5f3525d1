"""Verification: ask the gateway what really happened and apply it to the locked payment."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from payment.conf import app_settings

from ..gateways import base
from ..gateways.registry import gateway_get
from ..models import (
    EventStatus,
    Payment,
    ReviewReason,
    TransitionSource,
    WebhookEvent,
)
from .events import event_finish, event_unmatched, payment_seen
from .refunds import refund_request
from .state import OPEN_STATUSES, S, payment_lock, payment_transition

logger = logging.getLogger("payment.services")


def charge_event_apply(event: WebhookEvent) -> str:
    payment = payment_seen(event)
    if payment is None:
        # The webhook beat our own INSERT (or the reference is not ours): keep it, retry it later.
        return event_unmatched(event)
    if payment.status not in OPEN_STATUSES:
        return event_finish(event, EventStatus.PROCESSED, payment=payment, error="")
    gateway = gateway_get(event.gateway)
    # Verify before locking: never hold a row lock (or SQLite's write lock) across a network call. The
    # decision is re-taken under the lock, so two racing workers still give one transition. (The event's
    # reference is the payment's: that is how it was found.)
    verification = gateway.verify_transaction(reference=event.reference,
                                              gateway_transaction_id=event.gateway_transaction_id)
    if verification.outcome == base.OUTCOME_PENDING and event.body:
        claimed = gateway.parse_event(bytes(event.body)).outcome
        if claimed == base.OUTCOME_SUCCESS:
            # The webhook says paid, the API is not final yet: retry later rather than close the event,
            # or a payment paid after its TTL would stay abandoned for good.
            raise base.TransientGatewayError(f"{event.gateway} still reports {verification.raw_status!r}",
                                             request_sent=False)
    with transaction.atomic():
        locked = payment_lock(payment.pk)
        before = locked.status
        error = verification_apply(locked, verification, source=TransitionSource.WEBHOOK, event=event,
                                    claimed_mode=event.mode)
        return event_finish(event, EventStatus.PROCESSED, payment=locked, error=error,
                            logged=locked.status != before)


def verification_decide(payment: Payment, verification: base.Verification, *, claimed_mode: str = "",
            allow_unpaid_final: bool = True) -> tuple[str | None, str | None, dict[str, Any]]:
    """(target status, review reason, audit details) for what the gateway's API reported."""
    details: dict[str, Any] = {"verified_amount": verification.amount, "verified_currency": verification.currency,
                               "verified_mode": verification.mode, "gateway_status": verification.raw_status}
    outcome = verification.outcome
    if outcome == base.OUTCOME_SUCCESS:
        if (claimed_mode and claimed_mode != payment.mode) or verification.mode != payment.mode:
            return S.REVIEW, ReviewReason.MODE_MISMATCH, details
        if verification.currency != payment.currency:
            return S.REVIEW, ReviewReason.CURRENCY_MISMATCH, details
        if verification.amount < payment.amount:
            return S.REVIEW, ReviewReason.AMOUNT_MISMATCH, {**details, "underpaid_by": payment.amount -
                                                            verification.amount}
        if verification.amount > payment.amount:
            details["overpaid_by"] = verification.amount - payment.amount
        return S.SUCCESS, None, details
    if outcome == base.OUTCOME_REVERSED:
        return S.REVERSED, None, details
    if allow_unpaid_final and outcome == base.OUTCOME_FAILED:
        return S.FAILED, None, details
    if allow_unpaid_final and outcome == base.OUTCOME_ABANDONED:
        return S.ABANDONED, None, details
    return None, None, details


def verification_apply(payment: Payment, verification: base.Verification, *, source: str,
                        event: WebhookEvent | None = None, claimed_mode: str = "",
                        allow_unpaid_final: bool = True) -> str:
    """Apply a verification to a locked payment. Returns an error note ('' when all is well)."""
    if verification.reference != payment.reference:
        # Flutterwave's verif-hash says nothing about the body: an id pointing at someone else's
        # transaction must not grant this payment anything.
        logger.error("verification reference mismatch", extra={
            "reference": payment.reference, "verified_reference": verification.reference,
            "event_id": event.pk if event else None})
        return "verification reference mismatch: nothing applied"
    target, review_reason, details = verification_decide(payment, verification, claimed_mode=claimed_mode,
                                             allow_unpaid_final=allow_unpaid_final)
    if target is None:
        return ""
    if target in (S.SUCCESS, S.REVIEW):
        payment.amount_paid = verification.amount
        payment.currency_paid = verification.currency
        if verification.gateway_transaction_id:
            payment.gateway_transaction_id = verification.gateway_transaction_id
    transition = payment_transition(payment, target, source=source, event=event, details=details,
                                    review_reason=review_reason)
    if transition is None:
        return f"late event: {payment.status} -> {target} is not a forward move"
    if target == S.SUCCESS and details.get("overpaid_by") and app_settings.PAYSHIFT_REFUND_OVERPAYMENT:
        refund_request(payment, amount=details["overpaid_by"], idempotency_key=f"overpaid:{payment.pk}",
                       reason="automatic refund of overpayment", requested_by="payshift", locked=True)
    return ""


def _nothing_to_apply(payment: Payment, verification: base.Verification | None, *,
                      allow_unpaid_final: bool) -> bool:
    """True when the answer can move no payment of this amount, currency and mode (those never change), so
    the locked row's status does not matter: a pending answer, an unpaid one not yet final, or "not found"
    for a payment that is not pending or may not be abandoned yet (a status only ever moves forward)."""
    if verification is None:
        return not (allow_unpaid_final and payment.status == S.PENDING)
    if verification.reference != payment.reference:
        return False  # verification_apply logs it, under the lock
    return verification_decide(payment, verification, allow_unpaid_final=allow_unpaid_final)[0] is None


def payment_verify(payment_id: int, *, source: str = TransitionSource.RECONCILE,
                   allow_unpaid_final: bool = True, min_interval: float | None = None,
                   timeout: float | None = None, record_check: bool = True, read: Payment | None = None) -> str:
    """Ask the gateway about one payment and apply the answer under the row lock. Returns the status.

    With `min_interval`, the gateway is asked only if nobody verified this payment in that many seconds:
    the claim is a conditional UPDATE of last_verified_at, so it holds across web processes (anonymous
    reloads of the callback cannot become a stream of API calls). `timeout` bounds the API call.
    When the answer changes nothing, the status returned is the one read before the call, and with
    `record_check=False` last_verified_at is left to the caller (reconciliation writes a batch's at once).
    `read` is the row as the caller just read it (reconciliation's batch), to save a SELECT: a status read
    a little earlier only ever lags behind (statuses move forward), and the lock re-reads it where it counts.
    """
    payment = read if read is not None and read.pk == payment_id else Payment.objects.get(pk=payment_id)
    if payment.status not in OPEN_STATUSES:
        return payment.status
    if min_interval is not None:
        now = timezone.now()
        claimed = Payment.objects.filter(pk=payment.pk, status__in=OPEN_STATUSES).filter(
            Q(last_verified_at__isnull=True) | Q(last_verified_at__lte=now - timedelta(seconds=min_interval))
        ).update(last_verified_at=now)
        if not claimed:
            return Payment.objects.values_list("status", flat=True).get(pk=payment.pk)
    gateway = gateway_get(payment.gateway)
    try:
        with base.api_timeout(timeout) if timeout is not None else contextlib.nullcontext():
            verification = gateway.verify_transaction(reference=payment.reference)
    except base.NotFoundAtGatewayError:
        verification = None  # the customer never reached the checkout
    if _nothing_to_apply(payment, verification, allow_unpaid_final=allow_unpaid_final):
        # Most reconciled payments: still pending, or unknown to the gateway before the TTL. No transition
        # can follow whatever the row's status is by now, so no lock: one UPDATE instead of a transaction.
        if record_check:
            Payment.objects.filter(pk=payment.pk).update(last_verified_at=timezone.now())
        return payment.status
    with transaction.atomic():
        locked = payment_lock(payment.pk)
        if verification is not None:
            verification_apply(locked, verification, source=source, allow_unpaid_final=allow_unpaid_final)
        elif allow_unpaid_final and locked.status == S.PENDING:
            payment_transition(locked, S.ABANDONED, source=source, reason="unknown to the gateway after TTL")
        Payment.objects.filter(pk=locked.pk).update(last_verified_at=timezone.now())
        return locked.status
