"""Paystack emulation: API routes, response and webhook shapes, checkout outcomes, refunds."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from sandbox import webhooks
from sandbox.api import ApiCall, ApiError, GatewayApi, read_json
from sandbox.config import paystack_mode_for_key
from sandbox.money import AmountError, parse_minor
from sandbox.runtime import Runtime
from sandbox.state import Charge, Checkout, Refund, Store, TransactionSpec, iso, utcnow

NAME = "paystack"
CURRENCIES = frozenset({"NGN", "GHS", "ZAR", "KES", "USD", "XOF", "EGP", "RWF"})
INTEGRATION_ID = 463_433

API = GatewayApi(
    name=NAME,
    error_body=lambda message: {"status": False, "message": message},
    keys=lambda config: config.paystack_secret_keys,
    mode_for_key=paystack_mode_for_key,
    unauthorised_message="Invalid key",
)

# Paystack has no charge.failed event (gateways.md): only success produces a webhook.
CHECKOUT_ACTIONS = (("pay", "Pay successfully"), ("fail", "Fail"), ("abandon", "Abandon"))
_ACTION_STATUS = {"pay": "success", "fail": "failed", "abandon": "abandoned"}

_GATEWAY_RESPONSE = {
    "success": "Successful",
    "failed": "Declined",
    "abandoned": "The transaction was not completed",
    "pending": "Transaction in progress",
    "reversed": "Successful",
}


# ---- shapes -------------------------------------------------------------------------------------


def _fees(amount: int, currency: str) -> int:
    """Local card fee in minor units, integer maths: 1.5% (+100 NGN from 2,500 NGN), capped at 2,000 NGN."""
    if currency != "NGN":
        return (amount * 390 + 5000) // 10000
    fee = (amount * 150 + 5000) // 10000 + (10_000 if amount >= 250_000 else 0)
    return min(fee, 200_000)


def _customer(checkout: Checkout) -> dict[str, Any]:
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


def _authorization(charge: Charge) -> dict[str, Any]:
    if charge.status not in ("success", "reversed"):
        return {}  # Paystack sends an empty object until a card has been charged
    tag = hashlib.sha256(f"{charge.id}".encode()).hexdigest()
    return {
        "authorization_code": f"AUTH_{tag[:10]}",
        "bin": "408408",
        "last4": "4081",
        "exp_month": "12",
        "exp_year": "2030",
        "channel": "card",
        "card_type": "visa ",
        "bank": "TEST BANK",
        "country_code": "NG",
        "brand": "visa",
        "reusable": True,
        "signature": f"SIG_{tag[10:30]}",
        "account_name": None,
    }


def transaction_data(checkout: Checkout, charge: Charge, amount: int | None = None) -> dict[str, Any]:
    """`data` of verify and of charge.success; amounts are int minor units."""
    reported = charge.reported_amount if amount is None else amount
    paid = charge.status in ("success", "reversed")
    return {
        "id": charge.id,
        "domain": charge.mode,
        "status": charge.status,
        "reference": charge.reference,
        "receipt_number": None,
        "amount": reported,
        "message": None,
        "gateway_response": _GATEWAY_RESPONSE[charge.status],
        "paid_at": iso(charge.paid_at),
        "created_at": iso(charge.created_at),
        "channel": "card",
        "currency": charge.currency,
        "ip_address": "127.0.0.1",
        "metadata": checkout.metadata,
        "log": None,
        "fees": _fees(reported, charge.currency) if paid else None,
        "fees_split": None,
        "authorization": _authorization(charge),
        "customer": _customer(checkout),
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


def _refund_data(refund: Refund, store: Store) -> dict[str, Any]:
    checkout = store.checkouts[(NAME, refund.reference)]
    return {
        "integration": INTEGRATION_ID,
        "domain": refund.mode,
        "amount": refund.amount,
        "currency": refund.currency,
        "deducted_amount": 0,
        "fully_deducted": False,
        "channel": None,
        "status": refund.status,
        "refunded_by": checkout.email,
        "refunded_at": iso(refund.processed_at),
        "expected_at": iso(refund.expected_at),
        "customer_note": refund.customer_note,
        "merchant_note": refund.merchant_note,
        "refund_reference": refund.refund_reference,
        "id": refund.id,
        "createdAt": iso(refund.created_at),
        "updatedAt": iso(refund.processed_at or refund.created_at),
    }


# ---- webhooks -----------------------------------------------------------------------------------


def charge_success_webhook(runtime: Runtime, checkout: Checkout, charge: Charge) -> webhooks.Webhook:
    # webhook_amount_delta makes the body disagree with verify, which stays truthful.
    amount = charge.reported_amount + runtime.faults.webhook_amount_delta
    data = transaction_data(checkout, charge, amount=amount)
    data["source"] = {
        "type": "api",
        "source": "merchant_api",
        "entry_point": "transaction_initialize",
        "identifier": None,
    }
    return webhooks.build_paystack(runtime, "charge.success", charge.reference, data)


def _refund_processed_webhook(runtime: Runtime, refund: Refund, checkout: Checkout) -> webhooks.Webhook:
    first, _, last = (checkout.customer.name or "").partition(" ")
    data = {
        "status": refund.status,
        "transaction_reference": refund.reference,
        "refund_reference": refund.refund_reference,
        "amount": str(refund.amount),  # Paystack sends refund amounts as strings
        "currency": refund.currency,
        "processor": "mpgs_zen",
        "customer": {"first_name": first or None, "last_name": last or None, "email": checkout.email},
        "integration": INTEGRATION_ID,
        "domain": refund.mode,
    }
    return webhooks.build_paystack(runtime, "refund.processed", refund.reference, data)


# ---- API handlers -------------------------------------------------------------------------------


async def initialize(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = await read_json(request)
    email = body.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise ApiError(400, "Invalid Email Address Passed")
    try:
        amount = parse_minor(body.get("amount"))
    except AmountError:
        raise ApiError(400, "Invalid Amount Sent") from None
    if amount <= 0:
        raise ApiError(400, "Invalid Amount Sent")
    currency = body.get("currency") or "NGN"
    if not isinstance(currency, str) or currency.upper() not in CURRENCIES:
        raise ApiError(400, "Currency not supported by merchant")
    reference = body.get("reference") or secrets.token_hex(5)
    if not isinstance(reference, str | int) or isinstance(reference, bool):
        raise ApiError(400, "Invalid reference")
    callback_url = body.get("callback_url")
    if callback_url is not None and not isinstance(callback_url, str):
        raise ApiError(400, "Invalid callback_url")
    runtime = call.runtime
    with runtime.store.lock:
        if (NAME, str(reference)) in runtime.store.checkouts:
            raise ApiError(400, "Duplicate Transaction Reference")
        checkout = runtime.store.add_checkout(
            gateway=NAME,
            reference=str(reference),
            amount=amount,
            currency=currency.upper(),
            email=email,
            mode=call.mode,
            callback_url=callback_url or None,
            metadata=_metadata(body.get("metadata")),
        )
        # An initialised, untouched Paystack transaction verifies as "abandoned" and can still be paid.
        runtime.store.add_charge(checkout, "abandoned")
    return 200, {
        "status": True,
        "message": "Authorization URL created",
        "data": {
            "authorization_url": f"{runtime.config.public_url}/checkout/{checkout.access_code}",
            "access_code": checkout.access_code,
            "reference": checkout.reference,
        },
    }


def _metadata(raw: Any) -> Any:
    # Paystack answers metadata as sent (objects stay objects) and "" when none was given.
    return "" if raw is None else raw


async def verify(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    reference = request.path_params["reference"]
    store = call.runtime.store
    with store.lock:
        checkout = store.checkouts.get((NAME, reference))
        charge = store.latest_charge(checkout) if checkout else None
        if checkout is None or charge is None:
            raise ApiError(400, "Transaction reference not found")
        data = transaction_data(checkout, charge)
    return 200, {"status": True, "message": "Verification successful", "data": data}


def _find_charge(store: Store, transaction: Any) -> tuple[Checkout, Charge] | None:
    """`transaction` may be the id (int or digit string) or the reference, as the real API accepts."""
    if isinstance(transaction, str):
        checkout = store.checkouts.get((NAME, transaction))
        charge = store.latest_charge(checkout) if checkout else None
        if checkout and charge:
            return checkout, charge
        if not transaction.isdigit():
            return None
        transaction = int(transaction)
    if isinstance(transaction, int) and not isinstance(transaction, bool):
        found = store.charges.get((NAME, transaction))
        if found is not None:
            return store.checkouts[(NAME, found.reference)], found
    return None


async def refund_create(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = await read_json(request)
    transaction = body.get("transaction")
    if transaction in (None, ""):
        raise ApiError(400, "Transaction reference or id is required")
    amount: int | None = None
    if body.get("amount") is not None:
        try:
            amount = parse_minor(body["amount"])
        except AmountError:
            raise ApiError(400, "Invalid amount") from None
        if amount <= 0:
            raise ApiError(400, "Invalid amount")
    for note in ("customer_note", "merchant_note"):
        if body.get(note) is not None and not isinstance(body[note], str):
            raise ApiError(400, f"Invalid {note}")
    runtime = call.runtime
    store = runtime.store
    with store.lock:
        found = _find_charge(store, transaction)
        if found is None:
            raise ApiError(404, "Transaction not found")
        checkout, charge = found
        if body.get("currency") and str(body["currency"]).upper() != charge.currency:
            raise ApiError(400, "Currency does not match the transaction currency")
        if charge.status == "reversed" or (charge.status == "success" and charge.refundable == 0):
            raise ApiError(400, "Transaction has been fully reversed")
        if charge.status != "success":
            raise ApiError(400, "Cannot refund a transaction that has not been completed")
        amount = charge.refundable if amount is None else amount
        if amount > charge.refundable:
            raise ApiError(400, "Refund amount cannot be greater than the unrefunded transaction amount")
        refund = store.add_refund(
            charge,
            amount,
            "pending",
            customer_note=body.get("customer_note"),
            merchant_note=body.get("merchant_note"),
        )
        refund.expected_at = refund.created_at + timedelta(milliseconds=runtime.config.refund_delay_ms)
        data = _refund_data(refund, store)
        data["transaction"] = {
            "id": charge.id,
            "domain": charge.mode,
            "reference": charge.reference,
            "amount": charge.reported_amount,
            "paid_at": iso(charge.paid_at),
            "channel": "card",
            "currency": charge.currency,
            "authorization": _authorization(charge),
            "customer": _customer(checkout),
            "plan": {},
            "subaccount": {"currency": None},
            "split": {},
            "order_id": None,
            "paidAt": iso(charge.paid_at),
            "pos_transaction_data": None,
            "source": None,
            "fees_breakdown": None,
        }
    runtime.spawn(_process_refund_later(runtime, refund.id))
    return 200, {"status": True, "message": "Refund has been queued for processing", "data": data}


async def refund_fetch(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    raw_id = request.path_params["refund_id"]
    store = call.runtime.store
    with store.lock:
        refund = store.refunds.get((NAME, int(raw_id))) if raw_id.isdigit() else None
        if refund is None:
            raise ApiError(404, "Refund not found")
        data = _refund_data(refund, store)
        # Fetch answers the transaction as a bare id (the create answer nests an object).
        data["transaction"] = refund.charge_id
        data["dispute"] = None
        data["settlement"] = None
    return 200, {"status": True, "message": "Refund retrieved", "data": data}


async def _process_refund_later(runtime: Runtime, refund_id: int) -> None:
    await asyncio.sleep(runtime.config.refund_delay_ms / 1000)
    store = runtime.store
    with store.lock:
        refund = store.refunds.get((NAME, refund_id))
        if refund is None or refund.status != "pending":
            return
        refund.status = "processed"
        refund.processed_at = utcnow()
        refund.refund_reference = f"{secrets.randbelow(10**12):012d}"
        charge = store.charges[(NAME, refund.charge_id)]
        checkout = store.checkouts[(NAME, refund.reference)]
        still_pending = any(
            r.status == "pending" and r.charge_id == charge.id and r.gateway == NAME
            for r in store.refunds.values()
        )
        # A fully refunded Paystack transaction verifies as "reversed" from then on.
        if charge.refundable == 0 and not still_pending:
            store.set_charge_status(checkout, charge, "reversed")
        webhook = _refund_processed_webhook(runtime, refund, checkout)
    runtime.send_webhooks([webhook])


ROUTES: list[Route] = [
    API.route("/paystack/transaction/initialize", initialize, ["POST"]),
    API.route("/paystack/transaction/verify/{reference}", verify, ["GET"]),
    API.route("/paystack/refund", refund_create, ["POST"]),
    API.route("/paystack/refund/{refund_id}", refund_fetch, ["GET"]),
]


# ---- checkout and control -----------------------------------------------------------------------


def complete_checkout(runtime: Runtime, checkout: Checkout, action: str) -> list[tuple[str, str]]:
    """Apply the customer's choice; answer the callback query (trxref and reference, as Paystack does)."""
    status = _ACTION_STATUS.get(action)
    if status is None:
        raise ValueError(f"unknown action {action!r}")
    store = runtime.store
    batch: list[webhooks.Webhook] = []
    with store.lock:
        charge = store.latest_charge(checkout) or store.add_charge(checkout, status)
        store.set_charge_status(checkout, charge, status)
        if status == "success":
            charge.amount = checkout.amount
            batch.append(charge_success_webhook(runtime, checkout, charge))
    runtime.send_webhooks(batch)
    return [("trxref", checkout.reference), ("reference", checkout.reference)]


def control_upsert(runtime: Runtime, spec: TransactionSpec) -> tuple[Checkout, bool]:
    """Create or update a transaction for tests; ValueError explains a bad request."""
    store = runtime.store
    batch: list[webhooks.Webhook] = []
    with store.lock:
        checkout = store.checkouts.get((NAME, spec.reference))
        created = checkout is None
        if checkout is None:
            if spec.amount is None:
                raise ValueError("amount is required to create a transaction")
            checkout = store.add_checkout(
                gateway=NAME,
                reference=spec.reference,
                amount=spec.amount,
                currency=spec.currency or "NGN",
                email=spec.email or "customer@example.com",
                mode=spec.mode or paystack_mode_for_key(runtime.config.paystack_secret_keys[0]),
                callback_url=spec.callback_url,
                metadata=_metadata(spec.metadata),
            )
            charge = store.add_charge(checkout, spec.status or "success")
        else:
            spec.apply_to_checkout(checkout)
            charge = store.latest_charge(checkout) or store.add_charge(checkout, spec.status or "success")
            if spec.amount is not None:
                charge.amount = spec.amount
            charge.currency = checkout.currency
            charge.mode = checkout.mode
            if spec.status:
                store.set_charge_status(checkout, charge, spec.status)
        if spec.verify_amount_given:
            charge.verify_amount = spec.verify_amount
        if spec.send_webhook and charge.status == "success":
            batch.append(charge_success_webhook(runtime, checkout, charge))
    runtime.send_webhooks(batch)
    return checkout, created
