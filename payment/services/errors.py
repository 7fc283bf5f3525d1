"""The refusals services raise: each ends in Error and carries what the edge needs to answer."""

from __future__ import annotations

import logging

logger = logging.getLogger("payment.services")


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
