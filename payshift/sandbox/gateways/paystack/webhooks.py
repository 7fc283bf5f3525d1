"""Paystack's webhooks: the {event, data} envelope signed with HMAC-SHA512 of the exact body bytes."""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

from payshift.sandbox.gateways.paystack.shapes import INTEGRATION_ID, NAME, transaction_data
from payshift.sandbox.money import dumps
from payshift.sandbox.state import Charge, Checkout, Refund
from payshift.sandbox.webhooks import Webhook

if TYPE_CHECKING:
    from payshift.sandbox.runtime import Runtime


# Paystack's own refund samples write the amount as a number for these statuses and as a string otherwise.
_INT_AMOUNT_STATUSES = frozenset({"failed", "needs-attention"})


def paystack_signature(body: bytes, secret_key: str) -> str:
    """x-paystack-signature: lowercase hex HMAC-SHA512 of the raw body, keyed with the secret key."""
    return hmac.new(secret_key.encode(), body, hashlib.sha512).hexdigest()


def build(runtime: Runtime, event: str, reference: str, data: dict[str, Any]) -> Webhook:
    body = dumps({"event": event, "data": data})
    # Paystack signs with the account's (first) secret key; there is no separate webhook secret.
    signing_key = runtime.config.setting(NAME, "secret_keys")[0]
    headers = {"content-type": "application/json", "x-paystack-signature": paystack_signature(body, signing_key)}
    return Webhook(NAME, runtime.config.webhook_url(NAME), event, reference, body, headers)


def charge_success(runtime: Runtime, checkout: Checkout, charge: Charge) -> Webhook:
    # webhook_amount_delta makes the body disagree with verify, which stays truthful.
    amount = charge.reported_amount + runtime.faults.webhook_amount_delta
    data = transaction_data(checkout, charge, amount=amount)
    data["source"] = {
        "type": "api",
        "source": "merchant_api",
        "entry_point": "transaction_initialize",
        "identifier": None,
    }
    return build(runtime, "charge.success", charge.reference, data)


def refund_event(runtime: Runtime, refund: Refund, checkout: Checkout) -> Webhook:
    """refund.<status>, shaped like Paystack's samples: the amount a string (a number in the failed and
    needs-attention samples), refund_reference null until processed, and only needs-attention carrying the
    refund's id and notes (and no processor)."""
    first, _, last = (checkout.customer.name or "").partition(" ")
    data: dict[str, Any] = {
        "status": refund.status,
        "transaction_reference": refund.reference,
        "refund_reference": refund.refund_reference,
        "amount": refund.amount if refund.status in _INT_AMOUNT_STATUSES else str(refund.amount),
        "currency": refund.currency,
        "processor": "mpgs_zen",
        "customer": {"first_name": first or None, "last_name": last or None, "email": checkout.email},
        "integration": INTEGRATION_ID,
        "domain": refund.mode,
    }
    if refund.status == "needs-attention":
        del data["processor"]
        data.update(id=str(refund.id), customer_note=refund.customer_note, merchant_note=refund.merchant_note)
    return build(runtime, f"refund.{refund.status}", refund.reference, data)
