"""Signed customer links: a payment's result page and its gateway callback, readable only with the token."""

from __future__ import annotations

from django.core import signing
from django.http import HttpRequest
from django.urls import reverse

# The salt keeps these signatures from being valid anywhere else SECRET_KEY signs (sessions, other apps).
# Rotating DJANGO_SECRET_KEY invalidates the links already handed out (Signer honours SECRET_KEY_FALLBACKS).
_SALT = "payment.links.customer"


def _signer() -> signing.Signer:
    return signing.Signer(salt=_SALT)


def payment_link_token(reference: str) -> str:
    """The token that proves a request comes from whoever was given this payment's link."""
    signer = _signer()
    return signer.sign(reference).rsplit(signer.sep, 1)[1]


def payment_link_token_valid(reference: str, token: str) -> bool:
    """True only for this reference's own token (constant-time compare inside Signer.unsign)."""
    signer = _signer()
    try:
        return signer.unsign(f"{reference}{signer.sep}{token}") == reference
    except signing.BadSignature:
        return False


def payment_result_link(reference: str, *, request: HttpRequest | None = None) -> str:
    """The customer's result page for one payment: a path, or an absolute URL when given the request."""
    path = reverse("payment:result", args=[reference, payment_link_token(reference)])
    return request.build_absolute_uri(path) if request is not None else path


def payment_callback_link(gateway: str, reference: str, *, request: HttpRequest | None = None) -> str:
    """Where the gateway sends the customer back; gateways append their own query (reference, status)."""
    path = reverse("payment:callback", args=[gateway, payment_link_token(reference)])
    return request.build_absolute_uri(path) if request is not None else path
