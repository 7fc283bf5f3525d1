"""Paystack's wire shapes: transaction, refund and error bodies (amounts int minor units everywhere)."""

from __future__ import annotations

import hashlib
from typing import Any

from payshift.sandbox.state import Charge, Checkout, Refund, Store, iso

NAME = "paystack"
CURRENCIES = frozenset({"NGN", "GHS", "ZAR", "KES", "USD", "XOF", "EGP", "RWF"})
INTEGRATION_ID = 463_433
# The integration's own login: Paystack names it in refunded_by and the default merchant_note.
INTEGRATION_EMAIL = "merchant@payshift.test"
REFUND_FINAL_STATUSES = frozenset({"processed", "failed"})

_GATEWAY_RESPONSE = {
    "success": "Successful",
    "failed": "Declined",
    "abandoned": "The transaction was not completed",
    "pending": "Transaction in progress",
    "reversed": "Successful",
}

# What each payment channel leaves in `authorization` (the non-card rows follow Paystack's documented samples;
# `bank` and `signature` are strings for every channel, as the spec's VerifyResponse types them).
_CARD_AUTHORIZATION = {
    "bin": "408408",
    "last4": "4081",
    "exp_month": "12",
    "exp_year": "2030",
    "card_type": "visa ",
    "bank": "TEST BANK",
    "brand": "visa",
    "reusable": True,
}
_CHANNEL_AUTHORIZATION: dict[str, dict[str, Any]] = {
    "card": _CARD_AUTHORIZATION,
    "bank": {
        "bin": "000XXX",
        "last4": "X000",
        "exp_month": "12",
        "exp_year": "9999",
        "card_type": "",
        "bank": "Zenith Bank",
        "brand": "Zenith Emandate",
        "reusable": True,
    },
    "ussd": {
        "bin": "XXXXXX",
        "last4": "XXXX",
        "exp_month": "01",
        "exp_year": "2099",
        "card_type": "offline",
        "bank": "Guaranty Trust Bank",
        "brand": "offline",
        "reusable": False,
    },
    "bank_transfer": {
        "bin": "008XXX",
        "last4": "X553",
        "exp_month": "12",
        "exp_year": "9999",
        "card_type": "transfer",
        "bank": "Wema Bank",
        "brand": "Managed Account",
        "reusable": False,
    },
    "mobile_money": {
        "bin": "055XXX",
        "last4": "X987",
        "exp_month": "12",
        "exp_year": "9999",
        "card_type": "",
        "bank": "MTN",
        "brand": "Mtn",
        "reusable": False,
    },
    "qr": {
        "bin": "XXXXXX",
        "last4": "XXXX",
        "exp_month": "12",
        "exp_year": "9999",
        "card_type": "",
        "bank": "TEST BANK",
        "brand": "qr",
        "reusable": False,
    },
}
CHANNELS = tuple(_CHANNEL_AUTHORIZATION)
_CHANNEL_WORDS = {
    "card": "card",
    "bank": "bank account",
    "ussd": "USSD",
    "bank_transfer": "bank transfer",
    "mobile_money": "mobile money",
    "qr": "QR code",
}

# Paystack's error `type`: its docs name validation_error for a request it refuses, api_error for its own failures.
_ERROR_TYPE = {401: "validation_error", 404: "validation_error", 429: "api_error"}
_ERROR_CODE = {400: "invalid_params", 401: "invalid_Key", 404: "not_found", 429: "rate_limited"}
_NEXT_STEP = {
    400: "Check the request parameters and try again",
    404: "Ensure that the identifier is of a record on this integration",
    429: "Wait a moment, then try again",
}


def mode_for_key(key: str) -> str:
    """Paystack's `domain`: live keys start sk_live_, everything else is test."""
    return "live" if key.startswith("sk_live_") else "test"


def error_body(status: int, message: str, code: str | None, next_step: str | None) -> dict[str, Any]:
    """Paystack's error shape: status false, message, meta.nextStep, type and code (see the spec's Error)."""
    kind = _ERROR_TYPE.get(status, "validation_error" if status < 500 else "api_error")
    return {
        "status": False,
        "message": message,
        "meta": {"nextStep": next_step or _NEXT_STEP.get(status, "Try again later")},
        "type": kind,
        "code": code or _ERROR_CODE.get(status, "unknown"),
    }


def fees(amount: int, currency: str) -> int:
    """Local card fee in minor units, integer maths: 1.5% (+100 NGN from 2,500 NGN), capped at 2,000 NGN."""
    if currency != "NGN":
        return (amount * 390 + 5000) // 10000
    fee = (amount * 150 + 5000) // 10000 + (10_000 if amount >= 250_000 else 0)
    return min(fee, 200_000)


def channel_of(checkout: Checkout) -> str:
    return checkout.channel or (checkout.channels[0] if checkout.channels else "card")


def customer_data(checkout: Checkout) -> dict[str, Any]:
    first, _, last = (checkout.customer.name or "").partition(" ")
    return {
        "id": checkout.customer.id,
        "first_name": first or None,
        "last_name": last or None,
        "email": checkout.email,
        "customer_code": checkout.customer.code,
        "phone": checkout.customer.phone,
        "metadata": None,
        "risk_action": "default",
        "international_format_phone": None,
    }


def authorization(charge: Charge, channel: str) -> dict[str, Any]:
    if charge.status not in ("success", "reversed"):
        return {}  # Paystack sends an empty object until the customer has paid
    tag = hashlib.sha256(f"{charge.id}".encode()).hexdigest()
    return {
        "authorization_code": f"AUTH_{tag[:10]}",
        **{key: value for key, value in _CHANNEL_AUTHORIZATION[channel].items() if key != "reusable"},
        "channel": channel,
        "country_code": "NG",
        "reusable": _CHANNEL_AUTHORIZATION[channel]["reusable"],
        "signature": f"SIG_{tag[10:30]}",
        "account_name": None,
        "receiver_bank_account_number": None,
        "receiver_bank": None,
    }


def checkout_log(charge: Charge, channel: str) -> dict[str, Any] | None:
    """The checkout session's `log`; null while the customer has not acted (a fresh initialize)."""
    if charge.status in ("abandoned", "pending"):
        return None
    words = _CHANNEL_WORDS[channel]
    paid = charge.status in ("success", "reversed")
    history = [
        {"type": "action", "message": f"Attempted to pay with {words}", "time": 3},
        (
            {"type": "success", "message": f"Successfully paid with {words}", "time": 4}
            if paid
            else {"type": "error", "message": "Error: Declined", "time": 4}
        ),
    ]
    return {
        "start_time": int(charge.created_at.timestamp()),
        "time_spent": 4,
        "attempts": 1,
        "errors": 0 if paid else 1,
        "success": paid,
        "mobile": False,
        "input": [],
        "history": history,
    }


def transaction_data(checkout: Checkout, charge: Charge, amount: int | None = None) -> dict[str, Any]:
    """`data` of verify, fetch, each list row and charge.success."""
    reported = charge.reported_amount if amount is None else amount
    paid = charge.status in ("success", "reversed")
    channel = channel_of(checkout)
    return {
        "id": charge.id,
        "domain": charge.mode,
        "status": charge.status,
        "reference": charge.reference,
        "receipt_number": None,
        "amount": reported,
        "message": None,
        "gateway_response": _GATEWAY_RESPONSE[charge.status],
        "helpdesk_link": None,
        "paid_at": iso(charge.paid_at),
        "created_at": iso(charge.created_at),
        "channel": channel,
        "currency": charge.currency,
        "ip_address": "127.0.0.1",
        "metadata": checkout.metadata,
        "log": checkout_log(charge, channel),
        "fees": fees(reported, charge.currency) if paid else None,
        "fees_split": None,
        "authorization": authorization(charge, channel),
        "customer": customer_data(checkout),
        "plan": None,
        "split": {},
        "order_id": None,
        "paidAt": iso(charge.paid_at),
        "createdAt": iso(charge.created_at),
        "requested_amount": checkout.amount,
        "pos_transaction_data": None,
        "source": None,
        "fees_breakdown": None,
        "connect": None,
        "transaction_date": iso(charge.created_at),
        "plan_object": {},
        "subaccount": {},
    }


def _refund_common(refund: Refund) -> dict[str, Any]:
    """Fields every refund answer shares (amounts int minor units)."""
    deducted = refund.amount if refund.status == "processed" else 0
    return {
        "integration": INTEGRATION_ID,
        "domain": refund.mode,
        "currency": refund.currency,
        "amount": refund.amount,
        "status": refund.status,
        "deducted_amount": deducted,
        "refunded_by": INTEGRATION_EMAIL,
        "customer_note": refund.customer_note,
        "merchant_note": refund.merchant_note,
        "expected_at": iso(refund.expected_at),
        "id": refund.id,
        "createdAt": iso(refund.created_at),
        "updatedAt": iso(refund.updated_at or refund.created_at),
    }


def refund_created(refund: Refund, checkout: Checkout, charge: Charge) -> dict[str, Any]:
    """`data` of POST /refund: the OpenAPI RefundCreateResponse fields, shaped like Paystack's sample."""
    return {
        **_refund_common(refund),
        "transaction": {
            "id": charge.id,
            "domain": charge.mode,
            "reference": charge.reference,
            "amount": charge.reported_amount,
            "paid_at": iso(charge.paid_at),
            "channel": channel_of(checkout),
            "currency": charge.currency,
            "authorization": {"exp_month": None, "exp_year": None, "account_name": None},
            "customer": {"international_format_phone": None},
            "plan": {},
            "subaccount": {"currency": None},
            "split": {},
            "order_id": None,
            "paidAt": iso(charge.paid_at),
            "pos_transaction_data": None,
            "source": None,
            "fees_breakdown": None,
        },
        "channel": None,
        "fully_deducted": False,  # a boolean here; fetch and list answer 0/1 (the spec's integer)
    }


def refund_record(refund: Refund, store: Store) -> dict[str, Any]:
    """`data` of GET /refund/{id} and each row of GET /refund: every field the spec requires, plus
    `refund_reference`, which the webhooks carry too. The customer's names, phone and metadata are
    strings there (the spec's RefundFetchResponse), "" when unknown."""
    checkout = store.checkouts.get((NAME, refund.reference))
    charge = store.charges.get((NAME, refund.charge_id))
    transaction_amount = charge.reported_amount if charge else refund.amount
    customer = customer_data(checkout) if checkout else {}
    return {
        **_refund_common(refund),
        "transaction": refund.charge_id,
        "dispute": None,
        "settlement": None,
        "refunded_at": iso(refund.processed_at) if refund.status == "processed" else None,
        "fully_deducted": 1 if refund.status == "processed" else 0,
        "bank_reference": None,
        "transaction_reference": refund.reference,
        "reason": refund.customer_note or "",
        "customer": {
            "id": customer.get("id", 0),
            "first_name": customer.get("first_name") or "",
            "last_name": customer.get("last_name") or "",
            "email": customer.get("email", ""),
            "customer_code": customer.get("customer_code", ""),
            "phone": customer.get("phone") or "",
            "metadata": "",
            "risk_action": "default",
            "international_format_phone": "",
        },
        "refund_type": "full" if refund.amount >= transaction_amount else "partial",
        "transaction_amount": transaction_amount,
        "initiated_by": INTEGRATION_EMAIL,
        "refund_channel": channel_of(checkout) if checkout else "card",
        "session_id": None,
        "collect_account_number": refund.status == "needs-attention",
        "refund_reference": refund.refund_reference,
    }
