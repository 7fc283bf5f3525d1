"""The payment state machine: forward-only moves, each with its audit row and notification rows, and the
side effects (channels, signals) run after commit."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from django.db import DatabaseError, IntegrityError, router, transaction
from django.db.models import Q, QuerySet
from django.db.transaction import TransactionManagementError
from django.dispatch import Signal
from django.utils import timezone

from payment.conf import app_settings

from .. import signals
from ..models import (
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    PaymentTransition,
    Recipient,
    TransitionSource,
    WebhookEvent,
)
from ..money import minor_to_major
from ..notifications import NOTIFICATION_DELIVERED, notification_deliver, notification_send, notifications_mark
from ..sql import Prepared, Together, insert_compiled, save_signals_connected

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


# Statuses in which our books hold the charge's money (a refund of it can be booked without a person).
CHARGE_SETTLED = frozenset({S.SUCCESS, S.PARTIALLY_REFUNDED, S.REFUNDED, S.REVERSED})


_CUSTOMER_NOTIFICATIONS: dict[str, str] = {
    S.SUCCESS: NotificationKind.PAYMENT_SUCCEEDED,
    S.FAILED: NotificationKind.PAYMENT_FAILED,
    S.REFUNDED: NotificationKind.PAYMENT_REFUNDED,
    S.PARTIALLY_REFUNDED: NotificationKind.PAYMENT_REFUNDED,
}


def payment_transition(payment: Payment, to_status: str, *, source: str, event: WebhookEvent | None = None,
                       details: Mapping[str, Any] | None = None, review_reason: str | None = None,
                       reason: str = "", actor: str = "") -> PaymentTransition | None:
    """Move a LOCKED payment forward, with its audit row and notification rows, in the caller's transaction.
    (Locked: read with payment_lock in this transaction. Its fields are the truth the move is decided and
    written on, the flag of held refund events included.)

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
    release_refund_events = (payment.refund_events_held and to_status in CHARGE_SETTLED
                             and from_status not in CHARGE_SETTLED)
    if release_refund_events:
        payment.refund_events_held = False
    _payment_save(payment, now, release_refund_events=release_refund_events)
    # Born claimed: this process runs the hooks right after commit (below), so the row is written with the
    # claim that transition_hooks_run would otherwise take in a separate UPDATE. A process that dies after
    # commit leaves hooks_done_at empty, and the sweep takes the claim over once it is stale, as it does for
    # a runner that died while sending.
    transition = PaymentTransition(
        payment=payment, from_status=from_status, to_status=to_status, source=source, event=event,
        reason=reason[:255] or (review_reason or ""), details=dict(details or {}), actor=actor[:150],
        hooks_started_at=now,
    )
    insert_compiled(transition)
    notifications = []
    kind = _CUSTOMER_NOTIFICATIONS.get(to_status)
    if kind is not None:
        notifications.append(_transition_notification(
            kind=kind, recipient=Recipient.CUSTOMER, payment=payment, transition=transition,
            message=_customer_message(payment, to_status, details or {})))
    if to_status == S.REVIEW:
        notifications.append(_transition_notification(
            kind=NotificationKind.PAYMENT_REVIEW, recipient=Recipient.STAFF, payment=payment,
            transition=transition,
            message=f"Payment {payment.reference} is in review ({review_reason}): {dict(details or {})}",
        ))
    logger.info("payment transition", extra={"reference": payment.reference, "gateway": payment.gateway,
                                             "from": from_status, "to": to_status, "source": source,
                                             "event_id": event.pk if event else None})
    transaction.on_commit(lambda: _claimed_hooks_run(transition, notifications))
    if release_refund_events:
        # Only when refund events were held for it (the flag is written under this same lock), so a settle
        # costs no search for them. A process that dies before this runs leaves them to the sweep, which
        # retries held refund events of settled charges whatever their age (services/reconciliation.py).
        payment_id = payment.pk
        # Refunds build on this module (they move payments): importing them here breaks that cycle.
        from .refunds import refund_events_release  # noqa: PLC0415

        transaction.on_commit(lambda: refund_events_release(payment_id))
    return transition


_TRANSITION_FIELDS = ("status", "review_reason", "paid_at", "amount_paid", "currency_paid", "gateway_transaction_id",
                      "amount_refunded", "last_verified_at", "updated_at")


@functools.cache
def _payment_save_statement(*, release_refund_events: bool) -> Prepared[Payment]:
    def build(v: dict[str, Any]) -> tuple[QuerySet[Payment], dict[str, Any]]:
        values = {name: v[name] for name in _TRANSITION_FIELDS}
        if release_refund_events:
            values["refund_events_held"] = False
        return Payment.objects.filter(pk=v["pk"]), values

    return Prepared(Payment, "update", build, {"pk": "id", **{name: name for name in _TRANSITION_FIELDS}})


def _payment_save(payment: Payment, now: datetime, *, release_refund_events: bool) -> None:
    """payment.save(update_fields=...) of what a transition changes, as one statement compiled once (the host's
    save signals, if it listens to them, get the ORM's save)."""
    payment.updated_at = now
    if save_signals_connected(Payment):
        payment.save(update_fields=[*_TRANSITION_FIELDS, "refund_events_held"])
        return
    values = {"pk": payment.pk, **{name: getattr(payment, name) for name in _TRANSITION_FIELDS}}
    if not _payment_save_statement(release_refund_events=release_refund_events).update(values):
        raise DatabaseError(f"payment {payment.pk} was not saved: no such row")


_PAYMENT_LOCK = Prepared(Payment, "rows", lambda v: Payment.objects.select_for_update().filter(pk=v["pk"]),
                         {"pk": "id"})


def payment_lock(payment_id: int) -> Payment:
    """The payment, read and locked (SELECT ... FOR UPDATE) in the caller's transaction; every decision about
    a payment's state is taken on the row this returns."""
    using = router.db_for_write(Payment)
    if transaction.get_autocommit(using):
        raise TransactionManagementError("payment_lock outside a transaction would lock nothing")
    rows = _PAYMENT_LOCK.rows({"pk": payment_id}, using=using)
    if not rows:
        raise Payment.DoesNotExist(f"no payment {payment_id}")
    return rows[0]


def _customer_message(payment: Payment, status: str, details: Mapping[str, Any]) -> str:
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


def notification_create(**fields: Any) -> Notification | None:
    """Insert once; the unique constraints make a second insert for the same transition a no-op."""
    try:
        with transaction.atomic():
            return Notification.objects.create(**fields)
    except IntegrityError:
        return None


def _transition_notification(**fields: Any) -> Notification:
    """A notification of a transition created in this same transaction: none can exist for it yet, so no
    savepoint (notification_create's) is needed; the unique constraint still stands guard. The row is born
    with its first delivery attempt claimed, for the runner that delivers it after commit."""
    notification = Notification(delivery_attempts=1, **fields)
    insert_compiled(notification)
    return notification


def transition_hooks_run(transition_id: int) -> None:
    """Deliver a transition's notifications and send the host application's signals, once: for hooks nobody
    ran (their process died after commit) or whose claim is stale. The claim is a conditional UPDATE."""
    now = timezone.now()
    taken_over = now - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS)
    claimed = PaymentTransition.objects.filter(pk=transition_id, hooks_done_at__isnull=True).filter(
        Q(hooks_started_at__isnull=True) | Q(hooks_started_at__lt=taken_over)).update(hooks_started_at=now)
    if not claimed:
        return  # done, or another process is running them right now
    transition = PaymentTransition.objects.select_related("payment").get(pk=transition_id)
    for notification in transition.notifications.select_related("payment", "event").filter(
            delivered_at__isnull=True):
        notification_deliver(notification)
    _signals_send(transition)
    PaymentTransition.objects.filter(pk=transition_id).update(hooks_done_at=timezone.now())


def _claimed_hooks_run(transition: PaymentTransition, notifications: list[Notification]) -> None:
    """After commit, in the process that made the transition: the rows were written claimed (transition and
    first delivery attempts) and are still in memory, so nothing is read back; the outcomes are written in
    one transaction, before the signals when a receiver is connected (a slow receiver must not widen the
    window in which a crash resends a delivered notification)."""
    outcomes = {n.pk: notification_send(n) for n in notifications}
    if _signals_connected(transition):
        notifications_mark(outcomes)
        _signals_send(transition)
        _HOOKS_DONE.update({"pk": transition.pk, "now": timezone.now()})
        return
    now = timezone.now()
    if len(outcomes) == 1 and not next(iter(outcomes.values())):
        # The usual case, one notification delivered: its mark and the transition's in one statement.
        _DELIVERED_AND_HOOKS_DONE.update({"pk": next(iter(outcomes)), "now": now}, {"pk": transition.pk, "now": now})
        return
    with transaction.atomic():
        notifications_mark(outcomes)
        _HOOKS_DONE.update({"pk": transition.pk, "now": now})


_HOOKS_DONE = Prepared(PaymentTransition, "update",
                       lambda v: (PaymentTransition.objects.filter(pk=v["pk"]), {"hooks_done_at": v["now"]}),
                       {"pk": "id", "now": "hooks_done_at"})
_DELIVERED_AND_HOOKS_DONE = Together(NOTIFICATION_DELIVERED, _HOOKS_DONE)


def _transition_signals(transition: PaymentTransition) -> list[Signal]:
    by_status = signals.BY_STATUS.get(transition.to_status)
    return [signals.payment_transitioned, *([by_status] if by_status is not None else [])]


def _signals_connected(transition: PaymentTransition) -> bool:
    return any(signal.has_listeners(Payment) for signal in _transition_signals(transition))


def _signals_send(transition: PaymentTransition) -> None:
    payment = transition.payment
    for signal in _transition_signals(transition):
        for receiver, result in signal.send_robust(sender=Payment, payment=payment, transition=transition):
            if isinstance(result, Exception):
                logger.error("signal receiver failed", extra={"reference": payment.reference,
                                                              "receiver": getattr(receiver, "__qualname__", ""),
                                                              "error": repr(result)})


def deliver_after_commit(notification_ids: list[int]) -> None:
    def deliver() -> None:
        for n in Notification.objects.select_related("payment", "event").filter(pk__in=notification_ids):
            notification_deliver(n)

    transaction.on_commit(deliver)
