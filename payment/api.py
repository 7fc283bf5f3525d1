"""Payshift's public Python API for the host project: start a payment for one of your objects, read it,
refund it. Stable and typed; everything else in the app is internal.

The signals (sent after commit, at least once, see payment.signals) are re-exported here: connect a receiver
to `payment_succeeded` to fulfil an order. Their arguments: `sender=Payment`, `payment` (the Payment row,
`payment.order` is your object), `transition` (the PaymentTransition; key idempotent work on `transition.pk`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.http import HttpRequest

from . import links, services
from .conf import app_settings
from .gateways.registry import UnknownGatewayError, gateway_names
from .models import Payment, Refund
from .signals import (
    payment_abandoned,
    payment_failed,
    payment_refunded,
    payment_reversed,
    payment_review,
    payment_succeeded,
    payment_transitioned,
)

__all__ = [
    "Checkout", "PaymentError", "PaymentView", "RefundView", "payment_abandoned", "payment_failed",
    "payment_get", "payment_refund", "payment_refunded", "payment_reversed", "payment_review", "payment_start",
    "payment_succeeded", "payment_transitioned", "payments_for",
]


class PaymentError(Exception):
    """The request cannot be carried out (unknown gateway, bad amount, a refund the payment cannot take ...)."""


@dataclass(frozen=True)
class Checkout:
    reference: str
    checkout_url: str  # send the customer here: the gateway's hosted checkout
    result_url: str  # the customer's signed result page (absolute when a request or PAYSHIFT_PUBLIC_URL is known)


@dataclass(frozen=True)
class RefundView:
    id: int
    amount: int  # minor units of `currency`
    currency: str
    status: str  # pending, processing, unknown, processed, failed


@dataclass(frozen=True)
class PaymentView:
    reference: str
    gateway: str
    status: str  # pending, success, failed, abandoned, reversed, refunded, partially_refunded, review
    amount: int  # expected, minor units
    currency: str
    amount_paid: int | None  # what the gateway's API reported, in `currency_paid`
    currency_paid: str
    amount_refunded: int
    refundable: int
    paid_at: datetime | None
    order: Model | None
    refunds: tuple[RefundView, ...]

    @property
    def paid(self) -> bool:
        """The money arrived and is ours to keep (partially refunded counts: part of it is)."""
        return self.status in ("success", "partially_refunded")


def payment_start(*, order: Model | None, amount: int, currency: str, email: str, gateway: str,
                  request: HttpRequest | None = None, reference: str | None = None,
                  metadata: Mapping[str, Any] | None = None) -> Checkout:
    """Create a pending payment for `order` (any model instance of yours, or None) and its checkout link.

    `amount` is in minor units (kobo, pesewas, cents). The gateway sends the customer back to Payshift's
    callback, which verifies and shows the signed result page; your `payment_succeeded` receiver fulfils.
    The callback URL is absolute: built from `request`, else from the PAYSHIFT_PUBLIC_URL setting.
    """
    if gateway not in gateway_names():
        raise PaymentError(f"unknown gateway {gateway!r}; enabled: {', '.join(gateway_names())}")
    if order is not None and order.pk is None:
        raise PaymentError("save the order before starting its payment")

    def callback(reference_: str) -> str:
        return _absolute(links.payment_callback_link(gateway, reference_), request)

    try:
        payment = services.payment_create(gateway_name=gateway, amount=amount, currency=currency, email=email,
                                          callback_url=callback, reference=reference, metadata=metadata,
                                          order=order)
    except (services.PaymentCreateError, UnknownGatewayError) as exc:
        raise PaymentError(str(exc)) from exc
    return Checkout(reference=payment.reference, checkout_url=payment.checkout_url,
                    result_url=_absolute(links.payment_result_link(payment.reference), request))


def payment_get(reference: str) -> PaymentView:
    """One payment by its reference; PaymentError when there is none."""
    payment = Payment.objects.filter(reference=reference).select_related("order_type").first()
    if payment is None:
        raise PaymentError(f"no payment with reference {reference!r}")
    return _view(payment)


def payments_for(order: Model) -> list[PaymentView]:
    """Every payment started for `order`, oldest first (a customer may try twice)."""
    found = Payment.objects.filter(order_type=ContentType.objects.get_for_model(order), order_id=str(order.pk))
    return [_view(p) for p in found.order_by("created_at", "pk")]


def payment_refund(reference: str, *, idempotency_key: str, amount: int | None = None, reason: str = "",
                   requested_by: str = "") -> RefundView:
    """Refund `amount` minor units (None: everything still refundable) of a paid payment, at most once per
    `idempotency_key` (the same key returns the same refund, never a second one). The gateway is called by
    a worker after commit; the refund's status follows in payment_get().refunds."""
    payment = Payment.objects.filter(reference=reference).first()
    if payment is None:
        raise PaymentError(f"no payment with reference {reference!r}")
    try:
        refund = services.refund_request(payment.pk, amount=amount, idempotency_key=idempotency_key,
                                         reason=reason, requested_by=requested_by or "api")
    except services.RefundNotAllowedError as exc:
        raise PaymentError(str(exc)) from exc
    return _refund_view(refund)


def _absolute(path: str, request: HttpRequest | None) -> str:
    if request is not None:
        return request.build_absolute_uri(path)
    base = app_settings.PAYSHIFT_PUBLIC_URL.rstrip("/")
    return f"{base}{path}" if base else path


def _refund_view(refund: Refund) -> RefundView:
    return RefundView(id=refund.pk, amount=refund.amount, currency=refund.currency, status=refund.status)


def _view(payment: Payment) -> PaymentView:
    return PaymentView(
        reference=payment.reference, gateway=payment.gateway, status=payment.status, amount=payment.amount,
        currency=payment.currency, amount_paid=payment.amount_paid, currency_paid=payment.refund_currency,
        amount_refunded=payment.amount_refunded, refundable=services.refundable_amount(payment),
        paid_at=payment.paid_at, order=payment.order if payment.order_type_id else None,
        refunds=tuple(_refund_view(r) for r in payment.refunds.order_by("created_at", "pk")),
    )
