"""Write-side domain logic: receive events, process them, move payments forward, refund, reconcile."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, InterfaceError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from payment.conf import app_settings

from . import metrics, signals
from .gateways import base
from .gateways.registry import gateway_get
from .models import (
    OPEN_REFUND_STATUSES,
    EventKind,
    EventStatus,
    Heartbeat,
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    PaymentTransition,
    Recipient,
    Refund,
    RefundStatus,
    ReviewReason,
    TransitionSource,
    WebhookEvent,
)

logger = logging.getLogger("payment.services")

S = PaymentStatus

# The forward-only state machine (docs/architecture.md has the diagram). `failed` and `abandoned` are not
# final: Flutterwave sends a webhook per failed attempt and an abandoned Paystack checkout can still be paid.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    S.PENDING: frozenset({S.SUCCESS, S.FAILED, S.ABANDONED, S.REVIEW}),
    S.ABANDONED: frozenset({S.SUCCESS, S.FAILED, S.REVIEW}),
    S.FAILED: frozenset({S.SUCCESS, S.REVIEW}),
    S.SUCCESS: frozenset({S.REVERSED, S.REFUNDED, S.PARTIALLY_REFUNDED}),
    S.PARTIALLY_REFUNDED: frozenset({S.PARTIALLY_REFUNDED, S.REFUNDED, S.REVERSED}),
    # Only a person (or a refund) moves a payment out of review: no gateway event can.
    S.REVIEW: frozenset({S.SUCCESS, S.FAILED, S.REFUNDED, S.PARTIALLY_REFUNDED}),
    S.REFUNDED: frozenset(),
    S.REVERSED: frozenset(),
}
_REVIEW_EXITS = frozenset({TransitionSource.STAFF, TransitionSource.REFUND})
# Statuses in which a charge event can still change something (else it is "already applied").
OPEN_STATUSES = frozenset({S.PENDING, S.FAILED, S.ABANDONED})

_CUSTOMER_NOTIFICATIONS: dict[str, str] = {
    S.SUCCESS: NotificationKind.PAYMENT_SUCCEEDED,
    S.FAILED: NotificationKind.PAYMENT_FAILED,
    S.REFUNDED: NotificationKind.PAYMENT_REFUNDED,
    S.PARTIALLY_REFUNDED: NotificationKind.PAYMENT_REFUNDED,
}


# --- errors -----------------------------------------------------------------------------------------------
class SignatureError(Exception):
    """Missing or wrong signature, or no secret configured (fail closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SourceNotAllowedError(Exception):
    """The client address is not among the gateway's published addresses (allowlist enabled)."""


class RefundNotAllowedError(Exception):
    """A refund the payment cannot take (state, amount, or a conflicting idempotency key)."""


class PaymentCreateError(Exception):
    """The payment could not be created or handed to the gateway's checkout."""


# --- ingest -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReceiveResult:
    outcome: str  # "stored", "duplicate" or "ignored"
    event_id: int | None
    parsed: base.ParsedEvent


def _safe_headers(headers: Mapping[str, str], secret_headers: frozenset[str]) -> dict[str, str]:
    """Headers worth keeping for debugging, with signatures and credentials replaced by a marker."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in ("cookie", "authorization", "proxy-authorization") or key in secret_headers:
            kept[key] = "[redacted]"
        elif len(kept) < 40:
            kept[key] = value[:256]
    return kept


def webhook_receive(*, gateway_name: str, body: bytes, headers: Mapping[str, str],
                    source_ip: str | None) -> ReceiveResult:
    """Authenticate, parse and durably store one delivery, then hand it to a queue after commit.

    Raises UnknownGatewayError, SourceNotAllowedError, SignatureError or base.InvalidPayloadError; lets
    database errors through (the edge answers 503 so the gateway retries).
    """
    from . import queueing

    gateway = gateway_get(gateway_name)
    if gateway_name in app_settings.PAYSHIFT_IP_ALLOWLIST_GATEWAYS and source_ip not in gateway.published_ips:
        raise SourceNotAllowedError(source_ip or "unknown")
    if not gateway.webhook_secrets():
        raise SignatureError("no_secret")
    if not gateway.verify_signature(body, headers):
        raise SignatureError("bad_signature")
    parsed = _storable(gateway.parse_event(body))
    ignored = parsed.kind == EventKind.OTHER
    event = WebhookEvent(
        gateway=gateway_name,
        event=parsed.event,
        kind=parsed.kind,
        body=body,
        headers=_safe_headers(headers, gateway.secret_headers),
        source_ip=source_ip,
        dedupe_key=_bounded_key(parsed.dedupe_key),
        reference=parsed.reference,
        gateway_transaction_id=parsed.gateway_transaction_id,
        mode=parsed.mode if parsed.mode in ("test", "live") else "",
        # Optimistically "queued": the happy path is one INSERT; a failed hand-off sets it back.
        status=EventStatus.IGNORED if ignored else EventStatus.QUEUED,
        processed_at=timezone.now() if ignored else None,
    )
    # Under autocommit (the webhook view's mode) one INSERT is its own transaction: no BEGIN/COMMIT round
    # trips on the hot path (bench/, issue 6). Inside a caller's transaction a savepoint contains a duplicate.
    in_transaction = transaction.get_connection().in_atomic_block
    try:
        with transaction.atomic() if in_transaction else contextlib.nullcontext():
            event.save(force_insert=True)
    except IntegrityError:
        # The unique (gateway, dedupe_key) constraint: a resend, a replay or a concurrent twin.
        if not WebhookEvent.objects.filter(gateway=gateway_name, dedupe_key=event.dedupe_key).exists():
            raise
        metrics.EVENTS_DUPLICATE.labels(gateway_name).inc()
        logger.info("webhook duplicate", extra=_log_fields(parsed))
        return ReceiveResult("duplicate", None, parsed)
    metrics.EVENTS_RECEIVED.labels(gateway_name, parsed.event if not ignored else "other").inc()
    logger.info("webhook ignored" if ignored else "webhook received",
                extra={**_log_fields(parsed), "event_id": event.pk})
    if not ignored:
        # Publish only once the row is committed (at once under autocommit, the webhook view's mode).
        transaction.on_commit(lambda: queueing.event_dispatch(event.pk, log_fields=_log_fields(parsed)))
    return ReceiveResult("ignored" if ignored else "stored", event.pk, parsed)


def _storable(parsed: base.ParsedEvent) -> base.ParsedEvent:
    """Refuse identifiers no database stores as text (NUL, unpaired surrogates): a 400, not a 503 that the
    gateway would resend for ever (found by payment/tests/test_fuzz.py). The raw body is bytes: unaffected."""
    for item in dataclasses.fields(parsed):
        value = getattr(parsed, item.name)
        if isinstance(value, str) and ("\x00" in value or (not value.isascii() and not _encodable(value))):
            raise base.InvalidPayloadError(f"{item.name} holds a NUL or an unpaired surrogate")
    return parsed


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bounded_key(key: str) -> str:
    return key if len(key) <= 255 else key[:190] + ":" + hashlib.sha256(key.encode()).hexdigest()


def _log_fields(parsed: base.ParsedEvent) -> dict[str, Any]:
    return {"gateway": parsed.gateway, "event": parsed.event, "reference": parsed.reference}


# --- processing -------------------------------------------------------------------------------------------
_CLAIMABLE = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.FAILED, EventStatus.UNMATCHED)


def webhook_event_process(event_id: int, *, via: str, force: bool = False, claim: str = "",
                          retake: str = "") -> str:
    """Process one stored event; safe to run twice or concurrently. Returns the event's status.

    `claim` is this attempt's token (new for every attempt; generated when empty). `retake` is the token of
    the attempt this one retries: it may take back a claim that a database error kept from being released.
    Raises base.TransientGatewayError when a retry can fix it, and database errors (the claim released when
    the database allows it); the caller owns the retry policy and hands `claim` to its retry as `retake`.
    """
    claim = claim or uuid.uuid4().hex
    statuses = [*_CLAIMABLE, EventStatus.PROCESSED, EventStatus.DEAD] if force else _CLAIMABLE
    # A `processing` event belongs to the attempt running it; only a stale claim (that worker died) or the
    # retry that attempt handed its token to takes it over, so two workers never verify one event at once.
    # Each claim writes a new token, so a duplicate of that retry message finds the token gone.
    stuck = timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
    claimable = Q(status__in=statuses) | Q(status=EventStatus.PROCESSING, updated_at__lt=stuck)
    if retake:
        claimable |= Q(status=EventStatus.PROCESSING, claim_token=retake)
    if force:
        claimable |= Q(status=EventStatus.PROCESSING)
    claimed = WebhookEvent.objects.filter(claimable, pk=event_id).update(
        status=EventStatus.PROCESSING, attempts=F("attempts") + 1, dispatched_via=via, claim_token=claim,
        updated_at=timezone.now()
    )
    if not claimed:
        # Already processed, ignored or dead (or unknown): "already applied" is a no-op (docs/architecture.md).
        current = WebhookEvent.objects.filter(pk=event_id).values_list("status", flat=True).first()
        return current or "missing"
    try:
        event = WebhookEvent.objects.get(pk=event_id)
        handler = _EVENT_HANDLERS.get(event.kind)
        if handler is None:
            return _event_finish(event, EventStatus.IGNORED)
        return handler(event)
    except base.TransientGatewayError as exc:
        metrics.EVENTS_FAILED.labels(event.gateway, "true").inc()
        if event.attempts >= app_settings.PAYSHIFT_MAX_EVENT_ATTEMPTS:
            # A ceiling across every path (Celery, Django Q, sweep), so nothing retries for ever unseen.
            event_mark_dead(event.pk, f"gave up after {event.attempts} attempts: {exc}")
            return EventStatus.DEAD
        _event_fail(event_id, str(exc), claim=claim, log_fields={"gateway": event.gateway,
                                                                 "reference": event.reference})
        raise
    except (base.PermanentGatewayError, base.InvalidPayloadError) as exc:
        metrics.EVENTS_FAILED.labels(event.gateway, "false").inc()
        event_mark_dead(event.pk, f"permanent: {exc}")
        return EventStatus.DEAD
    except (DatabaseError, InterfaceError) as exc:
        # Release the claim so the caller's retry (seconds away) can take it, not the sweep in 15 minutes.
        # Where the database refuses even that, the claim keeps our token and that retry retakes it.
        try:
            _event_fail(event_id, f"database error: {type(exc).__name__}: {exc}", claim=claim, reconnect=True)
        except (DatabaseError, InterfaceError) as release_error:
            logger.warning("claim not released: the retry retakes it by its token",
                           extra={"event_id": event_id, "error": f"{type(release_error).__name__}: {release_error}"})
        raise


def _event_finish(event: WebhookEvent, status: str, *, error: str = "", payment: Payment | None = None) -> str:
    now = timezone.now()
    fields: dict[str, Any] = {"status": status, "last_error": error[:2000], "updated_at": now,
                              "next_attempt_at": None}
    if status in (EventStatus.PROCESSED, EventStatus.IGNORED):
        fields["processed_at"] = now
    if payment is not None:
        fields["payment"] = payment
    WebhookEvent.objects.filter(pk=event.pk).update(**fields)
    if status == EventStatus.PROCESSED:
        metrics.PROCESS_LATENCY.labels(event.gateway).observe((now - event.received_at).total_seconds())
    metrics.EVENTS_PROCESSED.labels(event.gateway, status).inc()
    logger.info("webhook %s", status, extra={"event_id": event.pk, "gateway": event.gateway,
                                             "event": event.event, "reference": event.reference,
                                             "error": error or None})
    return status


def _event_fail(event_id: int, error: str, *, claim: str, log_fields: Mapping[str, Any] | None = None,
                reconnect: bool = False) -> None:
    """Give up this attempt's claim (only if it is still ours): the event is `failed` and claimable again.
    With `reconnect`, a database error gets one more try on a new connection (the error that made us
    release usually broke this one); the second error is raised."""
    def release() -> int:
        return WebhookEvent.objects.filter(pk=event_id, status=EventStatus.PROCESSING, claim_token=claim).update(
            status=EventStatus.FAILED, claim_token="", last_error=error[:2000], updated_at=timezone.now())

    try:
        released = release()
    except (DatabaseError, InterfaceError):
        connection = transaction.get_connection()
        if not reconnect or connection.in_atomic_block:
            raise
        connection.close()
        released = release()
    logger.warning("webhook attempt failed", extra={"event_id": event_id, **(log_fields or {}), "error": error,
                                                    "claim_released": bool(released)})


def event_schedule_retry(event_id: int, at: Any) -> None:
    WebhookEvent.objects.filter(pk=event_id).exclude(
        status__in=[EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.DEAD]
    ).update(status=EventStatus.FAILED, next_attempt_at=at, updated_at=timezone.now())


def event_mark_dead(event_id: int, error: str) -> None:
    """Retries exhausted or a permanent failure: a person must look. Logged at error, staff notified."""
    with transaction.atomic():
        updated = WebhookEvent.objects.filter(pk=event_id).exclude(
            status__in=[EventStatus.PROCESSED, EventStatus.IGNORED, EventStatus.DEAD]
        ).update(status=EventStatus.DEAD, last_error=error[:2000], updated_at=timezone.now(),
                 next_attempt_at=None)
        if not updated:
            return
        event = WebhookEvent.objects.get(pk=event_id)
        payment = event.payment or Payment.objects.filter(reference=event.reference, gateway=event.gateway).first()
        notification = _notification_create(
            kind=NotificationKind.EVENT_DEAD, recipient=Recipient.STAFF, payment=payment, event=event,
            message=f"Webhook event #{event.pk} ({event.gateway} {event.event}, reference "
                    f"{event.reference or '-'}) needs a person: {error[:300]}",
        )
    metrics.EVENTS_PROCESSED.labels(event.gateway, EventStatus.DEAD).inc()
    logger.error("webhook dead", extra={"event_id": event.pk, "gateway": event.gateway, "event": event.event,
                                        "reference": event.reference, "error": error})
    if notification is not None:
        _deliver_after_commit([notification.pk])


def _payment_for_event(event: WebhookEvent) -> Payment | None:
    return Payment.objects.filter(reference=event.reference, gateway=event.gateway).first()


def _charge_event_apply(event: WebhookEvent) -> str:
    payment = _payment_for_event(event)
    if payment is None:
        # The webhook beat our own INSERT (or the reference is not ours): keep it, retry it later.
        return _event_unmatched(event)
    if payment.status not in OPEN_STATUSES:
        return _event_finish(event, EventStatus.PROCESSED, payment=payment, error="")
    gateway = gateway_get(event.gateway)
    # Verify before locking: never hold a row lock (or SQLite's write lock) across a network call. The
    # decision is re-taken under the lock, so two racing workers still give one transition.
    verification = gateway.verify_transaction(reference=payment.reference,
                                              gateway_transaction_id=event.gateway_transaction_id)
    if verification.outcome == base.OUTCOME_PENDING and event.body:
        claimed = gateway.parse_event(bytes(event.body)).outcome
        if claimed == base.OUTCOME_SUCCESS:
            # The webhook says paid, the API is not final yet: retry later rather than close the event,
            # or a payment paid after its TTL would stay abandoned for good.
            raise base.TransientGatewayError(f"{event.gateway} still reports {verification.raw_status!r}",
                                             request_sent=False)
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        error = _verification_apply(locked, verification, source=TransitionSource.WEBHOOK, event=event,
                                    claimed_mode=event.mode)
        return _event_finish(event, EventStatus.PROCESSED, payment=locked, error=error)


def _decide(payment: Payment, verification: base.Verification, *, claimed_mode: str = "",
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


def _verification_apply(payment: Payment, verification: base.Verification, *, source: str,
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
    target, review_reason, details = _decide(payment, verification, claimed_mode=claimed_mode,
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


def payment_transition(payment: Payment, to_status: str, *, source: str, event: WebhookEvent | None = None,
                       details: Mapping[str, Any] | None = None, review_reason: str | None = None,
                       reason: str = "", actor: str = "") -> PaymentTransition | None:
    """Move a LOCKED payment forward, with its audit row and notification rows, in the caller's transaction.

    Returns None (and changes nothing) when the move is not allowed by the state machine.
    """
    from_status = payment.status
    allowed = ALLOWED_TRANSITIONS.get(from_status, frozenset())
    if to_status not in allowed or (from_status == S.REVIEW and source not in _REVIEW_EXITS):
        logger.info("transition refused", extra={"reference": payment.reference, "from": from_status,
                                                  "to": to_status, "source": source})
        return None
    now = timezone.now()
    payment.status = to_status
    if to_status == S.REVIEW:
        payment.review_reason = review_reason or ""
    if to_status == S.SUCCESS and payment.paid_at is None:
        payment.paid_at = now
    payment.last_verified_at = now
    payment.save(update_fields=["status", "review_reason", "paid_at", "amount_paid", "currency_paid",
                                "gateway_transaction_id", "amount_refunded", "last_verified_at", "updated_at"])
    transition = PaymentTransition.objects.create(
        payment=payment, from_status=from_status, to_status=to_status, source=source, event=event,
        reason=reason[:255] or (review_reason or ""), details=dict(details or {}), actor=actor[:150],
    )
    notification_ids = []
    kind = _CUSTOMER_NOTIFICATIONS.get(to_status)
    if kind is not None:
        n = _notification_create(kind=kind, recipient=Recipient.CUSTOMER, payment=payment, transition=transition,
                                 message=_customer_message(payment, to_status, details or {}))
        notification_ids.append(n.pk if n else None)
    if to_status == S.REVIEW:
        n = _notification_create(
            kind=NotificationKind.PAYMENT_REVIEW, recipient=Recipient.STAFF, payment=payment,
            transition=transition,
            message=f"Payment {payment.reference} is in review ({review_reason}): {dict(details or {})}",
        )
        notification_ids.append(n.pk if n else None)
    logger.info("payment transition", extra={"reference": payment.reference, "gateway": payment.gateway,
                                             "from": from_status, "to": to_status, "source": source,
                                             "event_id": event.pk if event else None})
    transaction.on_commit(lambda: transition_hooks_run(transition.pk))
    if to_status in _CHARGE_SETTLED and from_status not in _CHARGE_SETTLED:
        payment_id = payment.pk
        transaction.on_commit(lambda: _refund_events_release(payment_id))
    return transition


def _customer_message(payment: Payment, status: str, details: Mapping[str, Any]) -> str:
    from .money import minor_to_major

    def money(amount: int, currency: str) -> str:
        return f"{minor_to_major(amount, currency)} {currency}"

    amount = money(payment.amount, payment.currency)
    if status in (S.REFUNDED, S.PARTIALLY_REFUNDED):
        # The amount of THIS refund (a customer refunded twice gets two emails, each with its own amount).
        currency = str(details.get("currency") or payment.refund_currency)
        refunded = details.get("amount")
        if not isinstance(refunded, int):
            refunded = payment.amount_refunded
            return (f"Refunds of {money(refunded, currency)} in total on your payment {payment.reference} "
                    "have been issued.")
        return f"A refund of {money(refunded, currency)} on your payment {payment.reference} has been issued."
    messages: dict[str, str] = {
        S.SUCCESS: f"We received your payment of {amount} (reference {payment.reference}).",
        S.FAILED: f"Your payment of {amount} (reference {payment.reference}) did not go through.",
    }
    return messages.get(status, f"Your payment {payment.reference} of {amount} is now {status}.")


def _notification_create(**fields: Any) -> Notification | None:
    """Insert once; the unique constraints make a second insert for the same transition a no-op."""
    try:
        with transaction.atomic():
            return Notification.objects.create(**fields)
    except IntegrityError:
        return None


def transition_hooks_run(transition_id: int) -> None:
    """After commit: deliver the transition's notifications and send the host application's signals."""
    now = timezone.now()
    taken_over = now - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
    claimed = PaymentTransition.objects.filter(pk=transition_id, hooks_done_at__isnull=True).filter(
        Q(hooks_started_at__isnull=True) | Q(hooks_started_at__lt=taken_over)).update(hooks_started_at=now)
    if not claimed:
        return  # done, or another process is running them right now
    transition = PaymentTransition.objects.select_related("payment").get(pk=transition_id)
    from .notifications import notification_deliver

    for notification in transition.notifications.select_related("payment", "event").filter(
            delivered_at__isnull=True):
        notification_deliver(notification)
    payment = transition.payment
    for signal in (signals.payment_transitioned, signals.BY_STATUS.get(transition.to_status)):
        if signal is None:
            continue
        for receiver, result in signal.send_robust(sender=Payment, payment=payment, transition=transition):
            if isinstance(result, Exception):
                logger.error("signal receiver failed", extra={"reference": payment.reference,
                                                              "receiver": getattr(receiver, "__qualname__", ""),
                                                              "error": repr(result)})
    PaymentTransition.objects.filter(pk=transition_id).update(hooks_done_at=timezone.now())


def _deliver_after_commit(notification_ids: list[int]) -> None:
    from .notifications import notification_deliver

    def deliver() -> None:
        for n in Notification.objects.select_related("payment", "event").filter(pk__in=notification_ids):
            notification_deliver(n)

    transaction.on_commit(deliver)


def _refund_event_apply(event: WebhookEvent) -> str:
    """refund.* webhooks: close the refund the event is about, or record one made at the gateway.

    The body is a claim. It is mode-checked like a charge, confirmed through the gateway's refund API
    where the event names a refund id, and matched on the refund's identity before its amount.
    """
    payment = _payment_for_refund_event(event)
    if payment is None:
        return _event_unmatched(event)
    if not event.body:
        return _event_finish(event, EventStatus.PROCESSED, payment=payment, error="body pruned: nothing to apply")
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
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if Refund.objects.filter(payment=locked, event=event).exists():
            # This very event already closed a refund: a forced replay or a raced redelivery must not find
            # "no open refund" and book it again as a dashboard refund (payment/tests/test_security.py).
            return _event_finish(event, EventStatus.PROCESSED, payment=locked)
        refund, by_identity = _refund_for_claim(locked, refund_id=claim.refund_id,
                                                refund_reference=claim.refund_reference, amount=amount,
                                                currency=currency)
        if refund is not None and status == RefundStatus.FAILED and not by_identity:
            # "A refund of this amount failed" may be about another attempt (one made in the dashboard): it
            # never fails one of ours, or that amount would be refundable again. Polling decides ours.
            return _event_finish(event, EventStatus.PROCESSED, payment=locked,
                                 error="refund failure matched only by amount: left for polling")
        if refund is None:
            if status != RefundStatus.PROCESSED or amount <= 0:
                return _event_finish(event, EventStatus.PROCESSED, payment=locked,
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
                return _event_finish(event, EventStatus.PROCESSED, payment=locked)
            if locked.status not in _CHARGE_SETTLED:
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
        return _event_finish(event, EventStatus.PROCESSED, payment=locked)


# Statuses in which our books hold the charge's money (a refund of it can be booked without a person).
_CHARGE_SETTLED = frozenset({S.SUCCESS, S.PARTIALLY_REFUNDED, S.REFUNDED, S.REVERSED})


def _payment_for_refund_event(event: WebhookEvent) -> Payment | None:
    if event.reference:
        payment = _payment_for_event(event)
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
        _payment_refund_state_sync(payment, event=event, refund=refund)
    elif status == RefundStatus.FAILED:
        refund.status = RefundStatus.FAILED
        refund.completed_at = timezone.now()
        refund.save(update_fields=["status", "completed_at", "updated_at"])
        logger.error("refund failed at the gateway", extra={"refund_id": refund.pk, "reference": payment.reference})
    elif status == RefundStatus.PROCESSING and refund.status in (RefundStatus.PENDING, RefundStatus.UNKNOWN):
        refund.status = RefundStatus.PROCESSING
        refund.save(update_fields=["status", "updated_at"])


def _payment_refund_state_sync(payment: Payment, *, event: WebhookEvent | None = None,
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
    status = _event_unmatched(event, note, payment=payment)
    notification = _notification_create(
        kind=NotificationKind.REFUND_HELD, recipient=Recipient.STAFF, payment=payment, event=event,
        message=f"The gateway reports a refund on {payment.reference}, which is {payment.status} here. The refund is "
                "booked as soon as the payment settles (a review resolved, a verification).")
    if notification is not None:
        _deliver_after_commit([notification.pk])
    return status


def _event_unmatched(event: WebhookEvent, note: str = "", *, payment: Payment | None = None) -> str:
    """Keep an event we cannot apply yet (no such payment, or a charge not settled): retried while young.

    An event kept for a payment that exists (`payment` set) waits for that payment and never goes dead for
    want of one."""
    WebhookEvent.objects.filter(pk=event.pk).update(
        status=EventStatus.UNMATCHED, updated_at=timezone.now(), last_error=note, payment=payment,
        next_attempt_at=timezone.now() + timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS),
    )
    logger.warning("webhook unmatched", extra={"event_id": event.pk, "gateway": event.gateway,
                                               "reference": event.reference, "error": note or None})
    return EventStatus.UNMATCHED


def _refund_events_release(payment_id: int) -> None:
    """After a charge settles: re-dispatch the refund events that were kept waiting for it."""
    from . import queueing

    waiting = WebhookEvent.objects.filter(kind=EventKind.REFUND, status=EventStatus.UNMATCHED,
                                          payment_id=payment_id)
    event_ids = list(waiting.values_list("pk", flat=True)[:100])
    # Due now: the sweep's own dispatch takes an unmatched event only once its retry time has come.
    WebhookEvent.objects.filter(pk__in=event_ids, status=EventStatus.UNMATCHED).update(next_attempt_at=timezone.now())
    for event_id in event_ids:
        queueing.event_dispatch(event_id, path="sweep")


_EVENT_HANDLERS: dict[str, Callable[[WebhookEvent], str]] = {
    EventKind.CHARGE: _charge_event_apply,
    EventKind.REFUND: _refund_event_apply,
}


# --- verification outside webhooks (callback, reconciliation, staff) --------------------------------------
def payment_verify(payment_id: int, *, source: str = TransitionSource.RECONCILE,
                   allow_unpaid_final: bool = True, min_interval: float | None = None,
                   timeout: float | None = None) -> str:
    """Ask the gateway about one payment and apply the answer under the row lock. Returns the status.

    With `min_interval`, the gateway is asked only if nobody verified this payment in that many seconds:
    the claim is a conditional UPDATE of last_verified_at, so it holds across web processes (anonymous
    reloads of the callback cannot become a stream of API calls). `timeout` bounds the API call.
    """
    payment = Payment.objects.get(pk=payment_id)
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
    with transaction.atomic():
        locked = Payment.objects.select_for_update().get(pk=payment.pk)
        if verification is not None:
            _verification_apply(locked, verification, source=source, allow_unpaid_final=allow_unpaid_final)
        elif allow_unpaid_final and locked.status == S.PENDING:
            payment_transition(locked, S.ABANDONED, source=source, reason="unknown to the gateway after TTL")
        Payment.objects.filter(pk=locked.pk).update(last_verified_at=timezone.now())
        return locked.status


# --- initiation -------------------------------------------------------------------------------------------
_REFERENCE_MAX = 100  # Payment.reference's column


def payment_create(*, gateway_name: str, amount: int, currency: str, email: str,
                   callback_url: str | Callable[[str], str], reference: str | None = None,
                   metadata: Mapping[str, Any] | None = None, user: Any = None, order: Any = None) -> Payment:
    """Create the pending row FIRST (so no webhook can beat it), then ask the gateway for a checkout.

    `callback_url` may be a function of the new reference: the customer's link back carries a token
    signed over it (payment/links.py).
    """
    import uuid

    gateway = gateway_get(gateway_name)
    if amount <= 0:
        raise PaymentCreateError("amount must be a positive number of minor units")
    if reference is not None and not 0 < len(reference) <= _REFERENCE_MAX:
        raise PaymentCreateError("a reference has 1 to 100 characters")
    try:
        with transaction.atomic():
            payment = Payment.objects.create(
                reference=reference or f"PS-{uuid.uuid4().hex[:20]}", gateway=gateway_name, amount=amount,
                currency=currency.upper(), mode=gateway.key_mode(), customer_email=email,
                metadata=dict(metadata or {}), user=user, order=order,
            )
    except IntegrityError as exc:
        raise PaymentCreateError(f"reference {reference!r} is already used") from exc
    try:
        session = gateway.initialize_checkout(reference=payment.reference, amount=amount,
                                              currency=payment.currency, email=email,
                                              callback_url=callback_url if isinstance(callback_url, str)
                                              else callback_url(payment.reference), metadata=payment.metadata)
    except base.GatewayError as exc:
        logger.error("checkout initialisation failed", extra={"reference": payment.reference, "error": str(exc)})
        raise PaymentCreateError(str(exc)) from exc
    Payment.objects.filter(pk=payment.pk).update(checkout_url=session.checkout_url)
    payment.checkout_url = session.checkout_url
    return payment


# --- refunds ----------------------------------------------------------------------------------------------
def refund_request(payment: Payment | int, *, amount: int | None = None, idempotency_key: str,
                   reason: str = "", requested_by: str = "", locked: bool = False) -> Refund:
    """Request a full (amount=None) or partial refund; the same idempotency key returns the same refund.

    The refund goes back in what the gateway says was paid (amount_paid, currency_paid), so a
    currency-mismatch review refunds the customer's own money, in its own currency.
    """
    from . import queueing

    key = base.bounded_key(idempotency_key, 255)
    with transaction.atomic():
        payment_id = payment.pk if isinstance(payment, Payment) else payment
        row = payment if (locked and isinstance(payment, Payment)) else \
            Payment.objects.select_for_update().get(pk=payment_id)
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
        locked_payment = Payment.objects.select_for_update().get(pk=payment.pk)
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
            notification = _notification_create(
                kind=NotificationKind.REFUND_UNKNOWN, recipient=Recipient.STAFF, payment=refund.payment,
                alert_key=f"refund-unknown:{refund.pk}",
                message=f"Refund #{refund.pk} of {refund.amount} {refund.currency} on {refund.payment.reference} "
                        f"was sent but its outcome is unknown ({error[:200]}). It will not be sent again; Payshift "
                        "looks for it in the gateway's refund list. Check the gateway's dashboard before any new "
                        "refund.")
    if moved:
        logger.error("refund outcome unknown", extra={"refund_id": refund_id, "error": error})
        if notification is not None:
            _deliver_after_commit([notification.pk])
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
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
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
        payment = Payment.objects.select_for_update().get(pk=refund.payment_id)
        refund = Refund.objects.select_for_update().get(pk=refund_id)
        if refund.status not in (RefundStatus.UNKNOWN, RefundStatus.PROCESSING):
            raise ValueError(f"refund #{refund.pk} is {refund.status}: nothing to settle")
        Refund.objects.filter(pk=refund.pk).update(last_error=f"settled by {actor[:150]}: {note}"[:2000])
        _refund_status_apply(refund, payment, to_status, event=None)
    logger.warning("refund settled by staff", extra={"refund_id": refund_id, "status": to_status, "actor": actor})
    refund.refresh_from_db()
    return refund


# --- staff actions ----------------------------------------------------------------------------------------
def payment_review_resolve(payment_id: int, *, to_status: str, note: str, actor: str) -> PaymentTransition:
    """A person closes a review: success (accept the money as is) or failed; a note is required."""
    if not note.strip():
        raise ValueError("a note is required to resolve a review")
    if to_status not in (S.SUCCESS, S.FAILED):
        raise ValueError("a review resolves to success or failed")
    with transaction.atomic():
        payment = Payment.objects.select_for_update().get(pk=payment_id)
        if payment.status != S.REVIEW:
            raise ValueError(f"payment {payment.reference} is {payment.status}, not in review")
        transition = payment_transition(payment, to_status, source=TransitionSource.STAFF, reason=note,
                                        actor=actor, details={"review_reason": payment.review_reason})
        if transition is None:
            raise ValueError("transition refused")
        if to_status == S.SUCCESS:
            # Refunds booked while it was in review now show in its status.
            _payment_refund_state_sync(payment)
        return transition


# --- replay and retention ---------------------------------------------------------------------------------
_REPLAYABLE = (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.FAILED, EventStatus.DEAD,
               EventStatus.UNMATCHED)


def event_requeue(event_id: int, *, force: bool = False) -> bool:
    """Make an event eligible for processing again (replay). A processed event only with force: even then
    the payment state machine decides, so a replay can never move a payment backwards or notify twice."""
    statuses = [*_REPLAYABLE, EventStatus.PROCESSED] if force else list(_REPLAYABLE)
    updated = WebhookEvent.objects.filter(pk=event_id, status__in=statuses).exclude(kind=EventKind.OTHER).update(
        status=EventStatus.QUEUED, next_attempt_at=None, updated_at=timezone.now())
    if updated:
        logger.info("webhook requeued", extra={"event_id": event_id, "force": force})
    return bool(updated)


def events_prune(*, older_than_days: int, dry_run: bool = False, batch_size: int = 1000) -> int:
    """Drop raw bodies and headers of finished events; keep the rows and their dedupe keys.

    Paystack signatures carry no timestamp, so a captured delivery stays valid forever: the dedupe key
    is the only replay defence, and it must outlive the payload (docs/gateway-facts.md, Paystack).
    """
    cutoff = timezone.now() - timedelta(days=older_than_days)
    candidates = WebhookEvent.objects.filter(status__in=[EventStatus.PROCESSED, EventStatus.IGNORED],
                                             received_at__lt=cutoff, pruned_at__isnull=True)
    if dry_run:
        return candidates.count()
    pruned = 0
    for ids in _id_batches(candidates, batch_size):
        pruned += WebhookEvent.objects.filter(pk__in=ids, pruned_at__isnull=True).update(
            body=b"", headers={}, pruned_at=timezone.now())
    logger.info("webhook bodies pruned", extra={"count": pruned, "older_than_days": older_than_days})
    return pruned


def gateway_silence_alerts(now: Any = None) -> list[str]:
    """Alert staff when a gateway sent nothing for a while although payments are waiting on it."""
    from .gateways.registry import gateway_names

    now = now or timezone.now()
    window = timedelta(seconds=app_settings.PAYSHIFT_GATEWAY_SILENCE_SECONDS)
    silent = []
    for name in gateway_names():
        waiting = Payment.objects.filter(gateway=name, status=S.PENDING, created_at__lt=now - window).exists()
        heard = WebhookEvent.objects.filter(gateway=name, received_at__gte=now - window).exists()
        if not waiting or heard:
            continue
        bucket = now.strftime("%Y-%m-%dT%H")
        with transaction.atomic():
            notification = _notification_create(
                kind=NotificationKind.GATEWAY_SILENT, recipient=Recipient.STAFF, alert_key=f"silent:{name}:{bucket}",
                message=f"No webhook from {name} for {int(window.total_seconds() // 60)} minutes while payments "
                        "are pending. Check the gateway's status page and the webhook URL in its dashboard.")
            if notification is not None:
                silent.append(name)
                logger.error("gateway silent", extra={"gateway": name})
                _deliver_after_commit([notification.pk])
    return silent


# --- reconciliation ---------------------------------------------------------------------------------------
def backoff_seconds(attempt: int, *, base_seconds: float, max_seconds: float) -> float:
    """Exponential backoff with full jitter (so a burst of failures does not retry in lockstep)."""
    ceiling = min(max_seconds, base_seconds * (2 ** attempt))
    return random.uniform(ceiling / 2, ceiling)


def heartbeat(name: str) -> None:
    Heartbeat.objects.update_or_create(name=name, defaults={"at": timezone.now()})


def lease_acquire(name: str, seconds: float) -> bool:
    """A database lease, so two schedulers (beat and the Django Q fallback) never run a job at once."""
    now = timezone.now()
    # Created concurrently by another scheduler? The conditional UPDATE below still decides.
    with contextlib.suppress(IntegrityError):
        Heartbeat.objects.get_or_create(name=name, defaults={"at": now - timedelta(seconds=seconds + 1)})
    return bool(Heartbeat.objects.filter(name=name, at__lt=now - timedelta(seconds=seconds)).update(at=now))


def lease_release(name: str) -> None:
    Heartbeat.objects.filter(name=name).update(at=timezone.now() - timedelta(days=1))


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

    from . import queueing

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
    for event_id in _ids_in_batches(WebhookEvent.objects.filter(queueing.sweep_due(now))):
        if out_of_time():
            break
        queueing.event_dispatch(event_id, path="sweep")
        counts["swept"] += 1
    # 2. Unmatched events: retry while young, then hand to a person.
    window_start = now - timedelta(seconds=app_settings.PAYSHIFT_UNMATCHED_RETRY_SECONDS)
    unmatched = WebhookEvent.objects.filter(status=EventStatus.UNMATCHED)
    # Events kept for a payment that exists (a refund of a charge not settled yet) wait for it instead.
    for event_id in _ids_in_batches(unmatched.filter(received_at__lt=window_start, payment__isnull=True)):
        if out_of_time():
            break
        event_mark_dead(event_id, "no payment with this reference appeared in time")
        counts["dead"] += 1
    due = unmatched.filter(received_at__gte=window_start).filter(
        Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now))
    for event_id in _ids_in_batches(due):
        if out_of_time():
            break
        queueing.event_dispatch(event_id, path="sweep")
        counts["unmatched_retried"] += 1
    # 3. Signals and notifications whose process died after commit, and deliveries that failed.
    for transition_id in _ids_in_batches(
            PaymentTransition.objects.filter(hooks_done_at__isnull=True, created_at__lt=stale)):
        if out_of_time():
            break
        transition_hooks_run(transition_id)
        counts["hooks"] += 1
    from .notifications import notification_deliver

    undelivered = Notification.objects.filter(
        delivered_at__isnull=True, created_at__lt=stale, delivery_attempts__lt=app_settings.PAYSHIFT_NOTIFICATION_TRIES,
    ).filter(Q(transition__isnull=True) | Q(transition__hooks_done_at__isnull=False))
    for notification_id in _ids_in_batches(undelivered):
        if out_of_time():
            break
        notification = Notification.objects.select_related("payment", "event").get(pk=notification_id)
        notification_deliver(notification)
        counts["notifications"] += 1
    # 4. Refunds: lost tasks (never submitted), submissions whose process died before the gateway's answer was
    # recorded (they may have been made: unknown, never re-sent), and gateway-side progress.
    for refund_id in _ids_in_batches(Refund.objects.filter(status=RefundStatus.PENDING, updated_at__lt=stale,
                                                           gateway_refund_id="", submitted_at__isnull=True)):
        if out_of_time():
            break
        queueing.refund_dispatch(refund_id)
        counts["refunds"] += 1
    for refund_id in _ids_in_batches(Refund.objects.filter(status=RefundStatus.PENDING, submitted_at__lt=stuck)):
        if out_of_time():
            break
        refund_mark_unknown(refund_id, "the submitting process stopped before the gateway's answer was recorded")
        counts["refunds_unknown"] += 1
    open_at_gateway = Refund.objects.filter(status__in=[RefundStatus.PROCESSING, RefundStatus.UNKNOWN],
                                            updated_at__lt=stale)
    for refund_id in _ids_in_batches(open_at_gateway):
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


def _id_batches(queryset: Any, batch_size: int = 500) -> Any:
    """Yield lists of primary keys by keyset pagination: a huge backlog never loads at once."""
    last = 0
    while True:
        ids = list(queryset.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return
        yield ids
        last = ids[-1]


def _ids_in_batches(queryset: Any, batch_size: int = 500) -> Any:
    for ids in _id_batches(queryset, batch_size):
        yield from ids
