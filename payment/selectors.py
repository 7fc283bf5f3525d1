"""Read-side queries: what the views, commands, admin and metrics show."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.db.models import Count, Min
from django.utils import timezone

from .links import payment_result_link
from .models import EVENT_UNFINISHED, EventStatus, Payment, PaymentStatus, Recipient, WebhookEvent

UNFINISHED = sorted(EVENT_UNFINISHED)


def payment_show_data(reference: str) -> dict[str, Any] | None:
    """The JSON object of `payment_show --json` (a fixed contract: docs/operations.md)."""
    payment = Payment.objects.filter(reference=reference).first()
    if payment is None:
        return None
    return {
        "reference": payment.reference,
        "gateway": payment.gateway,
        "status": payment.status,
        "amount": payment.amount,
        "currency": payment.currency,
        "review_reason": payment.review_reason or None,
        "events": [
            {"id": e.pk, "event": e.event, "status": e.status, "received_at": e.received_at.isoformat()}
            for e in WebhookEvent.objects.filter(reference=payment.reference, gateway=payment.gateway)
            .order_by("received_at", "pk")
        ],
        "refunds": [{"id": r.pk, "amount": r.amount, "status": r.status}
                    for r in payment.refunds.order_by("created_at", "pk")],
        "notifications": [{"kind": n.kind, "created_at": n.created_at.isoformat()}
                          for n in payment.notifications.order_by("created_at", "pk")],
    }


def inbox_summary() -> dict[str, Any]:
    """The backlog at a glance: unfinished events by status, the oldest one's age, dead events."""
    now = timezone.now()
    by_status = {row["status"]: row["n"] for row in WebhookEvent.objects.filter(
        status__in=[*UNFINISHED, EventStatus.DEAD]).values("status").annotate(n=Count("pk"))}
    oldest = WebhookEvent.objects.filter(status__in=UNFINISHED).aggregate(m=Min("received_at"))["m"]
    return {
        "ok": True,
        "backlog": sum(n for status, n in by_status.items() if status != EventStatus.DEAD),
        "by_status": by_status,
        "dead": by_status.get(EventStatus.DEAD, 0),
        "oldest_unprocessed_seconds": round((now - oldest).total_seconds(), 1) if oldest else 0,
    }


# --- what a customer may see ------------------------------------------------------------------------------
# A payment held for review is "being checked" to its customer: why (amount, currency, mode) is for staff.
_CUSTOMER_STATUS: dict[str, str] = {PaymentStatus.REVIEW: "being checked",
                                    PaymentStatus.PARTIALLY_REFUNDED: "partially refunded"}


@dataclass(frozen=True)
class CustomerNotification:
    kind: str
    message: str


@dataclass(frozen=True)
class CustomerPayment:
    """The customer-facing facts of one payment: nothing staff-only (review reason, errors, staff alerts)."""

    reference: str
    status: str
    pending: bool
    amount: str
    gateway: str
    link: str  # the signed result page (payment/links.py)
    notifications: tuple[CustomerNotification, ...]


def _customer_payment(payment: Payment, notifications: tuple[CustomerNotification, ...] = ()) -> CustomerPayment:
    return CustomerPayment(
        reference=payment.reference, status=_CUSTOMER_STATUS.get(payment.status, payment.status),
        pending=payment.status == PaymentStatus.PENDING, amount=payment.amount_display, gateway=payment.gateway,
        link=payment_result_link(payment.reference), notifications=notifications,
    )


def payment_customer_view(reference: str) -> CustomerPayment | None:
    """One payment as its customer sees it, with the customer's notifications (never staff alerts)."""
    payment = Payment.objects.filter(reference=reference).first()
    if payment is None:
        return None
    notifications = payment.notifications.filter(recipient=Recipient.CUSTOMER).order_by("created_at", "pk")
    return _customer_payment(payment, tuple(CustomerNotification(n.kind, n.message) for n in notifications))


def payment_customer_list(references: list[str]) -> list[CustomerPayment]:
    """The payments started from one browser session (the demo home page), newest first, in one query."""
    payments = {p.reference: p for p in Payment.objects.filter(reference__in=references)}
    return [_customer_payment(payments[r]) for r in reversed(references) if r in payments]
