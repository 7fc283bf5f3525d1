"""Flutterwave's webhooks: the v3 {event, data} envelope, or the older flat body, with the verif-hash header."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from payshift.sandbox.money import dumps, minor_to_major
from payshift.sandbox.state import Charge, Checkout, iso
from payshift.sandbox.webhooks import Webhook

if TYPE_CHECKING:
    from payshift.sandbox.runtime import Runtime

NAME = "flutterwave"
_EVENT_TYPES = {"card": "CARD_TRANSACTION", "account": "ACCOUNT_TRANSACTION", "ussd": "USSD_TRANSACTION"}


def event_type(checkout: Checkout) -> str:
    """The top-level "event.type" charge payloads carry (CARD_TRANSACTION, BANK_TRANSFER_TRANSACTION, ...)."""
    kind = checkout.channel or (checkout.channels[0] if checkout.channels else "card")
    return _EVENT_TYPES.get(kind, f"{kind.upper()}_TRANSACTION")


def _headers(runtime: Runtime) -> dict[str, str]:
    # v3 sends the dashboard's secret hash verbatim: it is not a signature of the body.
    return {"content-type": "application/json", "verif-hash": runtime.config.setting(NAME, "webhook_hash")}


def build(runtime: Runtime, event: str, reference: str, data: dict[str, Any], kind: str | None) -> Webhook:
    """The v3 envelope. Refund samples show no "event.type", so None leaves it out."""
    envelope: dict[str, Any] = {"event": event, "data": data}
    if kind is not None:
        envelope["event.type"] = kind
    return Webhook(NAME, runtime.config.webhook_url(NAME), event, reference, dumps(envelope), _headers(runtime))


def legacy_charge(runtime: Runtime, checkout: Checkout, charge: Charge, amount: int) -> Webhook:
    """The older flat body, for accounts without v3 webhooks: no envelope, camelCase fields at the top
    level (txRef, flwRef, createdAt), `event.type` beside them. Chosen by SANDBOX_FLUTTERWAVE_WEBHOOK_FORMAT."""
    major = minor_to_major(amount, charge.currency)
    customer = checkout.customer
    body = {
        "id": charge.id,
        "txRef": charge.reference,
        "flwRef": charge.gateway_ref,
        "orderRef": f"URF_{charge.gateway_ref[-16:]}",
        "paymentPlan": None,
        "createdAt": iso(charge.created_at),
        "amount": major,
        "charged_amount": major,
        "status": {"success": "successful"}.get(charge.status, charge.status),
        "IP": "127.0.0.1",
        "currency": charge.currency,
        "customer": {
            "id": customer.id,
            "phone": customer.phone,
            "fullName": customer.name or "Anonymous customer",
            "customertoken": None,
            "email": checkout.email,
            "createdAt": iso(checkout.created_at),
            "updatedAt": iso(checkout.created_at),
            "deletedAt": None,
            "AccountId": 17_321,
        },
        "entity": {"card6": "553188", "card_last4": "2950"},
        "event.type": event_type(checkout),
    }
    return Webhook(
        NAME, runtime.config.webhook_url(NAME), "charge.completed", charge.reference, dumps(body), _headers(runtime)
    )
