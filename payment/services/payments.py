"""Payments started by us, and a person closing a review."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from django.db import IntegrityError, transaction

from ..gateways import base
from ..gateways.registry import gateway_get
from ..models import (
    Payment,
    PaymentTransition,
    TransitionSource,
)
from .errors import PaymentCreateError
from .refunds import payment_refund_state_sync
from .state import S, payment_lock, payment_transition

logger = logging.getLogger("payment.services")


_REFERENCE_MAX = 100  # Payment.reference's column


def payment_create(*, gateway_name: str, amount: int, currency: str, email: str,
                   callback_url: str | Callable[[str], str], reference: str | None = None,
                   metadata: Mapping[str, Any] | None = None, user: Any = None, order: Any = None) -> Payment:
    """Create the pending row FIRST (so no webhook can beat it), then ask the gateway for a checkout.

    `callback_url` may be a function of the new reference: the customer's link back carries a token
    signed over it (payment/links.py).
    """

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
        if reference is not None and Payment.objects.filter(reference=reference).exists():
            raise PaymentCreateError(f"reference {reference!r} is already used") from exc
        raise
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


def payment_review_resolve(payment_id: int, *, to_status: str, note: str, actor: str) -> PaymentTransition:
    """A person closes a review: success (accept the money as is) or failed; a note is required."""
    if not note.strip():
        raise ValueError("a note is required to resolve a review")
    if to_status not in (S.SUCCESS, S.FAILED):
        raise ValueError("a review resolves to success or failed")
    with transaction.atomic():
        payment = payment_lock(payment_id)
        if payment.status != S.REVIEW:
            raise ValueError(f"payment {payment.reference} is {payment.status}, not in review")
        transition = payment_transition(payment, to_status, source=TransitionSource.STAFF, reason=note,
                                        actor=actor, details={"review_reason": payment.review_reason})
        if transition is None:
            raise ValueError("transition refused")
        if to_status == S.SUCCESS:
            # Refunds booked while it was in review now show in its status.
            payment_refund_state_sync(payment)
        return transition
