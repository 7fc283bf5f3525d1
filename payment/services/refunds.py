"""Refunds: request, send at most once, settle by polling, webhooks or a person; book each exactly once."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone

from .. import queueing
from ..gateways import base
from ..gateways.registry import gateway_get
from ..models import (
    OPEN_REFUND_STATUSES,
    EventKind,
    EventStatus,
    NotificationKind,
    Payment,
    PaymentTransition,
    Recipient,
    Refund,
    RefundStatus,
    TransitionSource,
    WebhookEvent,
)
from .errors import RefundNotAllowedError
from .events import event_finish, event_mark_dead, event_unmatched, payment_for_event
from .state import (
    CHARGE_SETTLED,
    S,
    deliver_after_commit,
    notification_create,
    payment_lock,
    payment_transition,
)

logger = logging.getLogger("payment.services")


def refund_event_apply(event: WebhookEvent) -> str:
    """refund.* webhooks: close the refund the event is about, or record one made at the gateway.

    The body is a claim. It is mode-checked like a charge, confirmed through the gateway's refund API
    where the event names a refund id, and matched on the refund's identity before its amount.
    """
    payment = _payment_for_refund_event(event)
    if payment is None:
        return event_unmatched(event)
    if not event.body:
        return event_finish(event, EventStatus.PROCESSED, payment=payment, error="body pruned: nothing to apply")
    gateway = gateway_get(event.gateway)
    claim = gateway.parse_event(bytes(event.body))
    claimed_mode = claim.mode or gateway.key_mode()
    if claimed_mode != payment.mode:
        # A test-mode refund never touches a live payment (nor the reverse): a person looks at it.
        event_mark_dead(event.pk, f"{claimed_mode}-mode refund event for a {payment.mode} payment: nothing applied")
        return EventStatus.DEAD
    status, amount, currency = claim.status, claim.amount or 0, claim.currency
    if claim.refund_id:
        # Ask the API before believing the body (Flutterwave's verif-hash proves nothing about it).
        confirmed = gateway.refund_fetch(claim.refund_id)
        if confirmed is not None:
            status = confirmed.status
            amount = confirmed.amount if confirmed.amount is not None else amount
            currency = confirmed.currency or currency
    with transaction.atomic():
        locked = payment_lock(payment.pk)
        if Refund.objects.filter(payment=locked, event=event).exists():
            # This very event already closed a refund: a forced replay or a raced redelivery must not find
            # "no open refund" and book it again as a dashboard refund (payment/tests/test_security.py).
            return event_finish(event, EventStatus.PROCESSED, payment=locked)
        refund, by_identity = _refund_for_claim(locked, refund_id=claim.refund_id,
                                                refund_reference=claim.refund_reference, amount=amount,
                                                currency=currency)
        if refund is not None and status == RefundStatus.FAILED and not by_identity:
            # "A refund of this amount failed" may be about another attempt (one made in the dashboard): it
            # never fails one of ours, or that amount would be refundable again. Polling decides ours.
            return event_finish(event, EventStatus.PROCESSED, payment=locked,
                                 error="refund failure matched only by amount: left for polling")
        if refund is None:
            if status != RefundStatus.PROCESSED or amount <= 0:
                return event_finish(event, EventStatus.PROCESSED, payment=locked,
                                     error="refund event with no open refund: nothing to update")
            # Closed by polling before its webhook came (and the poll could not learn the gateway's names for
            # it): this webhook confirms that refund. Booking it again would count it twice.
            polled_q = Refund.objects.select_for_update().filter(
                payment=locked, status=RefundStatus.PROCESSED, amount=amount, event__isnull=True,
                gateway_refund_reference="")
            if claim.refund_id:
                polled_q = polled_q.filter(gateway_refund_id="")  # one with another id is another refund
            polled = polled_q.order_by("completed_at", "pk").first()
            if polled is not None:
                _refund_identity_learn(polled, refund_id=claim.refund_id, refund_reference=claim.refund_reference)
                Refund.objects.filter(pk=polled.pk).update(event=event)
                return event_finish(event, EventStatus.PROCESSED, payment=locked)
            if locked.status not in CHARGE_SETTLED:
                # Money cannot go back from a charge our books have not seen settle: keep the event (tied to
                # its payment, so it never ages into "no such payment"), tell staff, and apply it once the
                # charge settles (payment_transition releases it).
                return _refund_event_hold(event, locked)
            misfit = _refund_claim_misfit(locked, amount=amount, currency=currency)
            if misfit:
                event_mark_dead(event.pk, f"refund claim does not fit the charge: {misfit}")
                return EventStatus.DEAD
            refund, _created = Refund.objects.get_or_create(
                idempotency_key=base.bounded_key(f"webhook:{event.gateway}:{event.dedupe_key}", 255),
                defaults={"payment": locked, "amount": amount, "currency": currency or locked.refund_currency,
                          "status": RefundStatus.PROCESSING, "reason": "refunded at the gateway",
                          "requested_by": event.gateway},
            )
            logger.warning("refund made at the gateway recorded", extra={"refund_id": refund.pk,
                                                                         "reference": locked.reference})
        _refund_identity_learn(refund, refund_id=claim.refund_id, refund_reference=claim.refund_reference)
        _refund_status_apply(refund, locked, status, event=event)
        return event_finish(event, EventStatus.PROCESSED, payment=locked)


def _payment_for_refund_event(event: WebhookEvent) -> Payment | None:
    if event.reference:
        payment = payment_for_event(event)
        if payment is not None:
            return payment
    if event.gateway_transaction_id:
        # Some refund bodies name only the charge's gateway id (Flutterwave's tx_id).
        return Payment.objects.filter(gateway=event.gateway,
                                      gateway_transaction_id=event.gateway_transaction_id).first()
    return None


def _refund_for_claim(payment: Payment, *, refund_id: str, refund_reference: str, amount: int,
                      currency: str) -> tuple[Refund | None, bool]:
    """The (locked) refund a gateway's statement is about, and whether it matched by identity.

    By the gateway's refund id, then its reference, and only as a last resort by amount among OPEN refunds
    that were sent (a refund still queued cannot be what the gateway talks about) and that no other
    identity already claims.
    """
    mine = Refund.objects.select_for_update().filter(payment=payment)
    if refund_id:
        by_id = mine.filter(gateway_refund_id=refund_id).first()
        if by_id is not None:
            return by_id, True
    if refund_reference:
        by_reference = mine.filter(gateway_refund_reference=refund_reference).first()
        if by_reference is not None:
            return by_reference, True
    if amount <= 0:
        return None, False
    candidates = mine.filter(status__in=OPEN_REFUND_STATUSES, amount=amount).exclude(
        status=RefundStatus.PENDING, submitted_at__isnull=True)
    if currency:
        candidates = candidates.filter(currency=currency)
    if refund_id:
        candidates = candidates.filter(gateway_refund_id="")
    if refund_reference:
        candidates = candidates.filter(gateway_refund_reference="")
    return candidates.order_by("created_at", "pk").first(), False


def _refund_identity_learn(refund: Refund, *, refund_id: str, refund_reference: str) -> None:
    """Remember the gateway's names for a refund, so its later events match it and no other."""
    fields = []
    if refund_id and not refund.gateway_refund_id:
        refund.gateway_refund_id = refund_id
        fields.append("gateway_refund_id")
    if refund_reference and not refund.gateway_refund_reference:
        refund.gateway_refund_reference = refund_reference
        fields.append("gateway_refund_reference")
    if fields:
        refund.save(update_fields=[*fields, "updated_at"])


def _refund_status_apply(refund: Refund, payment: Payment, status: str, *, event: WebhookEvent | None) -> None:
    """Move a locked refund to `status`; a processed refund is booked on its locked payment.

    The booking (amount_refunded) never depends on the payment's state machine: money that went out is
    never refundable again, whatever state the payment is in. The payment's status follows where it may.
    """
    if refund.status in (RefundStatus.PROCESSED, RefundStatus.FAILED) or status == refund.status:
        if event is not None and refund.event_id is None and status == refund.status == RefundStatus.PROCESSED:
            # Closed by polling first: this webhook confirms it (booking it again would count it twice).
            Refund.objects.filter(pk=refund.pk).update(event=event)
        return
    if status == RefundStatus.PROCESSED:
        refund.status = RefundStatus.PROCESSED
        refund.completed_at = timezone.now()
        refund.event = event
        refund.save(update_fields=["status", "completed_at", "event", "updated_at"])
        payment.amount_refunded += refund.amount
        payment.save(update_fields=["amount_refunded", "updated_at"])
        logger.info("refund processed", extra={"refund_id": refund.pk, "reference": payment.reference,
                                               "amount": refund.amount, "amount_refunded": payment.amount_refunded})
        payment_refund_state_sync(payment, event=event, refund=refund)
    elif status == RefundStatus.FAILED:
        refund.status = RefundStatus.FAILED
        refund.completed_at = timezone.now()
        refund.save(update_fields=["status", "completed_at", "updated_at"])
        logger.error("refund failed at the gateway", extra={"refund_id": refund.pk, "reference": payment.reference})
    elif status == RefundStatus.PROCESSING and refund.status in (RefundStatus.PENDING, RefundStatus.UNKNOWN):
        refund.status = RefundStatus.PROCESSING
        refund.save(update_fields=["status", "updated_at"])


def payment_refund_state_sync(payment: Payment, *, event: WebhookEvent | None = None,
                               refund: Refund | None = None) -> PaymentTransition | None:
    """Move a locked payment to (partially_)refunded where its booked refunds say so and the state machine
    allows it. A payment in review stays there until refunded in full (a person decides the rest)."""
    if payment.amount_refunded <= 0:
        return None
    full = payment.amount_refunded >= (payment.amount_paid or payment.amount)
    if payment.status in (S.SUCCESS, S.PARTIALLY_REFUNDED):
        target = S.REFUNDED if full else S.PARTIALLY_REFUNDED
    elif payment.status == S.REVIEW and full:
        target = S.REFUNDED
    else:
        return None
    details: dict[str, Any] = {"amount_refunded": payment.amount_refunded, "currency": payment.refund_currency}
    if refund is not None:
        details.update(refund_id=refund.pk, amount=refund.amount, currency=refund.currency)
    return payment_transition(payment, target, source=TransitionSource.REFUND, event=event, details=details)


def _refund_claim_misfit(payment: Payment, *, amount: int, currency: str) -> str:
    """Why a refund made at the gateway cannot be about this charge ('' when it can)."""
    if currency and currency != payment.refund_currency:
        return f"{currency} refund of a charge paid in {payment.refund_currency}"
    left = (payment.amount_paid or 0) - payment.amount_refunded
    if amount > left:
        return f"refund of {amount} with only {left} left to refund"
    return ""


def _refund_event_hold(event: WebhookEvent, payment: Payment) -> str:
    """A refund of a charge that has not settled in our books: kept for its payment, staff told once."""
    note = f"refund of a charge that is {payment.status} here: kept until it settles"
    status = event_unmatched(event, note, payment=payment)
    if not payment.refund_events_held:
        # Under the payment's lock, as the settling transition reads it: no settle can miss this event.
        Payment.objects.filter(pk=payment.pk).update(refund_events_held=True)
        payment.refund_events_held = True
    notification = notification_create(
        kind=NotificationKind.REFUND_HELD, recipient=Recipient.STAFF, payment=payment, event=event,
        message=f"The gateway reports a refund on {payment.reference}, which is {payment.status} here. The refund is "
                "booked as soon as the payment settles (a review resolved, a verification).")
    if notification is not None:
        deliver_after_commit([notification.pk])
    return status


def refund_events_release(payment_id: int) -> None:
    """After a charge that had refund events held (Payment.refund_events_held) settles: re-dispatch them."""
    waiting = WebhookEvent.objects.filter(kind=EventKind.REFUND, status=EventStatus.UNMATCHED,
                                          payment_id=payment_id)
    event_ids = list(waiting.values_list("pk", flat=True)[:100])
    # Due now: the sweep's own dispatch takes an unmatched event only once its retry time has come.
    WebhookEvent.objects.filter(pk__in=event_ids, status=EventStatus.UNMATCHED).update(next_attempt_at=timezone.now())
    for event_id in event_ids:
        queueing.event_dispatch(event_id, path="sweep")


def refund_request(payment: Payment | int, *, amount: int | None = None, idempotency_key: str,
                   reason: str = "", requested_by: str = "", locked: bool = False) -> Refund:
    """Request a full (amount=None) or partial refund; the same idempotency key returns the same refund.

    The refund goes back in what the gateway says was paid (amount_paid, currency_paid), so a
    currency-mismatch review refunds the customer's own money, in its own currency.
    """
    key = base.bounded_key(idempotency_key, 255)
    with transaction.atomic():
        payment_id = payment.pk if isinstance(payment, Payment) else payment
        row = payment if (locked and isinstance(payment, Payment)) else \
            payment_lock(payment_id)
        existing = Refund.objects.filter(idempotency_key=key).first()
        if existing is not None:
            if existing.payment_id != row.pk or (amount is not None and existing.amount != amount):
                raise RefundNotAllowedError("idempotency key already used for a different refund")
            return existing
        if row.status not in (S.SUCCESS, S.PARTIALLY_REFUNDED, S.REVIEW) or not row.amount_paid:
            raise RefundNotAllowedError(f"payment {row.reference} is {row.status}: nothing to refund")
        refundable = refundable_amount(row)
        amount = refundable if amount is None else amount
        if amount <= 0 or amount > refundable:
            raise RefundNotAllowedError(f"refund of {amount} exceeds the refundable {refundable} "
                                        f"{row.refund_currency} minor units")
        refund = Refund.objects.create(payment=row, amount=amount, currency=row.refund_currency,
                                       idempotency_key=key, reason=reason[:255], requested_by=requested_by[:150])
        transaction.on_commit(lambda: queueing.refund_dispatch(refund.pk))
    logger.info("refund requested", extra={"refund_id": refund.pk, "reference": row.reference, "amount": amount})
    return refund


def refundable_amount(payment: Payment) -> int:
    """What may still be refunded: paid, less booked refunds, less refunds still open (reserved)."""
    reserved = Refund.objects.filter(payment=payment, status__in=OPEN_REFUND_STATUSES).aggregate(
        total=Sum("amount"))["total"] or 0
    return max(0, (payment.amount_paid or 0) - payment.amount_refunded - reserved)


def refund_submit(refund_id: int) -> str:
    """Send a pending refund to the gateway at most once. Returns the refund's status.

    The attempt is committed before the call. Only an answer that clearly refuses the request (a 4xx,
    or a request never sent) makes the refund `failed`; a timeout, a dropped connection, a 5xx or a 2xx we
    cannot read mean it may have been made: `unknown`, amount still reserved, never sent again.
    """
    with transaction.atomic():
        # of=("self",): lock only the refund row here; everywhere else the payment is locked before its
        # refunds, and a joined FOR UPDATE would take them in the other order (deadlock).
        refund = Refund.objects.select_for_update(of=("self",)).select_related("payment").get(pk=refund_id)
        if refund.status != RefundStatus.PENDING or refund.gateway_refund_id or refund.submitted_at:
            return refund.status
        Refund.objects.filter(pk=refund.pk).update(attempts=F("attempts") + 1, submitted_at=timezone.now(),
                                                   updated_at=timezone.now())
    payment = refund.payment
    gateway = gateway_get(payment.gateway)
    try:
        result = gateway.refund(reference=payment.reference, gateway_transaction_id=payment.gateway_transaction_id,
                                amount=refund.amount, currency=refund.currency, note=refund.reason or "refund")
    except base.TransientGatewayError as exc:
        if exc.request_sent:
            return refund_mark_unknown(refund.pk, f"{exc}")
        # Certainly not received by the gateway (connection refused, 429): safe to send again.
        Refund.objects.filter(pk=refund.pk).update(last_error=str(exc)[:2000], submitted_at=None,
                                                   updated_at=timezone.now())
        raise
    except base.GatewayError as exc:
        if not exc.refused:
            return refund_mark_unknown(refund.pk, f"unreadable answer: {exc}")
        Refund.objects.filter(pk=refund.pk, status=RefundStatus.PENDING).update(
            status=RefundStatus.FAILED, last_error=str(exc)[:2000], completed_at=timezone.now(),
            updated_at=timezone.now())
        logger.error("refund refused by the gateway", extra={"refund_id": refund.pk, "error": str(exc)})
        return Refund.objects.filter(pk=refund.pk).values_list("status", flat=True).get()
    except Exception as exc:
        # Whatever broke after the request went out (a bug, an answer no parser expected), it may have worked.
        logger.exception("refund answer could not be handled", extra={"refund_id": refund.pk})
        return refund_mark_unknown(refund.pk, f"{type(exc).__name__}: {exc}")
    with transaction.atomic():
        locked_payment = payment_lock(payment.pk)
        refund = Refund.objects.select_for_update().get(pk=refund.pk)
        _refund_identity_learn(refund, refund_id=result.gateway_refund_id, refund_reference=result.refund_reference)
        _refund_status_apply(refund, locked_payment, result.status, event=None)
        return refund.status


def refund_mark_unknown(refund_id: int, error: str) -> str:
    """The refund may have been made: keep its amount reserved, never send it again, tell staff once."""
    with transaction.atomic():
        # Payment row first, as on every refund path (the notification's foreign key would take it after
        # the refund row otherwise: a lock-order deadlock with a refund webhook).
        payment_id = Refund.objects.filter(pk=refund_id).values_list("payment_id", flat=True).get()
        Payment.objects.select_for_update().filter(pk=payment_id).values_list("pk", flat=True).get()
        moved = Refund.objects.filter(pk=refund_id, status=RefundStatus.PENDING).update(
            status=RefundStatus.UNKNOWN, last_error=f"outcome unknown, never re-sent: {error}"[:2000],
            updated_at=timezone.now())
        refund = Refund.objects.select_related("payment").get(pk=refund_id)
        notification = None
        if moved:
            notification = notification_create(
                kind=NotificationKind.REFUND_UNKNOWN, recipient=Recipient.STAFF, payment=refund.payment,
                alert_key=f"refund-unknown:{refund.pk}",
                message=f"Refund #{refund.pk} of {refund.amount} {refund.currency} on {refund.payment.reference} "
                        f"was sent but its outcome is unknown ({error[:200]}). It will not be sent again; Payshift "
                        "looks for it in the gateway's refund list. Check the gateway's dashboard before any new "
                        "refund.")
    if moved:
        logger.error("refund outcome unknown", extra={"refund_id": refund_id, "error": error})
        if notification is not None:
            deliver_after_commit([notification.pk])
    return refund.status


def refund_poll(refund_id: int) -> str:
    """Ask the gateway about an open refund it may hold: by its id, else among the charge's refunds."""
    refund = Refund.objects.select_related("payment").get(pk=refund_id)
    if refund.status not in (RefundStatus.PROCESSING, RefundStatus.UNKNOWN):
        return refund.status
    gateway = gateway_get(refund.payment.gateway)
    listing: list[base.RefundResult] | None = None
    single: base.RefundResult | None = None
    if refund.gateway_refund_id:
        single = gateway.refund_fetch(refund.gateway_refund_id)
    else:
        listing = gateway.refunds_for_transaction(reference=refund.payment.reference,
                                                  gateway_transaction_id=refund.payment.gateway_transaction_id)
    if single is None and not listing:
        return refund.status
    with transaction.atomic():
        payment = payment_lock(refund.payment_id)
        locked = Refund.objects.select_for_update().get(pk=refund.pk)
        result = single or _refund_pick(locked, listing or [])
        if result is None:
            return locked.status
        _refund_identity_learn(locked, refund_id=result.gateway_refund_id, refund_reference=result.refund_reference)
        _refund_status_apply(locked, payment, result.status, event=None)
        return locked.status


def _refund_pick(refund: Refund, listing: list[base.RefundResult]) -> base.RefundResult | None:
    """Which of the gateway's refunds of this charge is ours: one of the same amount that none of our other
    refunds already owns (under the payment lock, so two polls never claim the same one)."""
    others = Refund.objects.filter(payment_id=refund.payment_id).exclude(pk=refund.pk)
    owned_ids = set(others.exclude(gateway_refund_id="").values_list("gateway_refund_id", flat=True))
    owned_references = set(others.exclude(gateway_refund_reference="").values_list("gateway_refund_reference",
                                                                                     flat=True))
    for candidate in listing:
        if candidate.gateway_refund_id and candidate.gateway_refund_id in owned_ids:
            continue
        if candidate.refund_reference and candidate.refund_reference in owned_references:
            continue
        if candidate.amount is not None and candidate.amount != refund.amount:
            continue
        if candidate.currency and candidate.currency != refund.currency:
            continue
        return candidate
    return None


def refund_settle(refund_id: int, *, to_status: str, note: str, actor: str) -> Refund:
    """A person settles a refund whose outcome is unknown, after checking the gateway's dashboard."""
    if not note.strip():
        raise ValueError("a note is required to settle a refund")
    if to_status not in (RefundStatus.PROCESSED, RefundStatus.FAILED):
        raise ValueError("a refund settles as processed or failed")
    with transaction.atomic():
        refund = Refund.objects.get(pk=refund_id)
        payment = payment_lock(refund.payment_id)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status not in (RefundStatus.UNKNOWN, RefundStatus.PROCESSING):
            raise ValueError(f"refund #{refund.pk} is {refund.status}: nothing to settle")
        Refund.objects.filter(pk=refund.pk).update(last_error=f"settled by {actor[:150]}: {note}"[:2000])
        _refund_status_apply(refund, payment, to_status, event=None)
    logger.warning("refund settled by staff", extra={"refund_id": refund_id, "status": to_status, "actor": actor})
    refund.refresh_from_db()
    return refund
