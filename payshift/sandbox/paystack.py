"""Paystack emulation: API routes, response and webhook shapes, checkout outcomes, refunds."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from payshift.sandbox import webhooks
from payshift.sandbox.api import ApiCall, ApiError, GatewayApi, ascii_int, read_json
from payshift.sandbox.config import paystack_mode_for_key
from payshift.sandbox.money import AmountError, parse_minor
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import Charge, Checkout, Refund, Store, StoreFullError, TransactionSpec, iso, utcnow

NAME = "paystack"
CURRENCIES = frozenset({"NGN", "GHS", "ZAR", "KES", "USD", "XOF", "EGP", "RWF"})
INTEGRATION_ID = 463_433
# The integration's own login: Paystack names it in refunded_by and the default merchant_note.
INTEGRATION_EMAIL = "merchant@payshift.test"

API = GatewayApi(
    name=NAME,
    error_body=lambda message: {"status": False, "message": message},
    keys=lambda config: config.paystack_secret_keys,
    mode_for_key=paystack_mode_for_key,
    unauthorised_message="Invalid key",
)

# Paystack has no charge.failed event: only success produces a webhook.
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


def _refund_created(refund: Refund, checkout: Checkout, charge: Charge) -> dict[str, Any]:
    """`data` of POST /refund: the OpenAPI RefundCreateResponse fields, shaped like Paystack's sample."""
    return {
        **_refund_common(refund),
        "transaction": {
            "id": charge.id,
            "domain": charge.mode,
            "reference": charge.reference,
            "amount": charge.reported_amount,
            "paid_at": iso(charge.paid_at),
            "channel": "card",
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
        "fully_deducted": False,  # a boolean here; fetch and list answer 0/1
    }


def _refund_record(refund: Refund, store: Store) -> dict[str, Any]:
    """`data` of GET /refund/{id} and each row of GET /refund: the spec's required fields, plus
    `refund_reference`, which the webhooks carry too."""
    checkout = store.checkouts[(NAME, refund.reference)]
    charge = store.charges.get((NAME, refund.charge_id))
    transaction_amount = charge.reported_amount if charge else refund.amount
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
        "customer": {**_customer(checkout), "metadata": None},
        "refund_type": "full" if refund.amount >= transaction_amount else "partial",
        "transaction_amount": transaction_amount,
        "initiated_by": INTEGRATION_EMAIL,
        "refund_channel": "card",
        "session_id": None,
        "collect_account_number": refund.status == "needs-attention",
        "refund_reference": refund.refund_reference,
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


def _refund_webhook(runtime: Runtime, refund: Refund, checkout: Checkout) -> webhooks.Webhook:
    """refund.<status>, shaped like Paystack's samples: the amount a string, refund_reference null until
    processed, and only needs-attention carrying the refund's id and notes."""
    first, _, last = (checkout.customer.name or "").partition(" ")
    data: dict[str, Any] = {
        "status": refund.status,
        "transaction_reference": refund.reference,
        "refund_reference": refund.refund_reference,
        "amount": str(refund.amount),
        "currency": refund.currency,
        "processor": "mpgs_zen",
        "customer": {"first_name": first or None, "last_name": last or None, "email": checkout.email},
        "integration": INTEGRATION_ID,
        "domain": refund.mode,
    }
    if refund.status == "needs-attention":
        data.update(id=str(refund.id), customer_note=refund.customer_note, merchant_note=refund.merchant_note)
    return webhooks.build_paystack(runtime, f"refund.{refund.status}", refund.reference, data)


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
        as_id = ascii_int(transaction)
        if as_id is None:
            return None
        transaction = as_id
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
        try:
            refund = store.add_refund(
                charge,
                amount,
                "pending",
                # Paystack's defaults when no notes are given (its create sample).
                customer_note=body.get("customer_note") or f"Refund for transaction {charge.reference}",
                merchant_note=body.get("merchant_note")
                or f"Refund for transaction {charge.reference} by {INTEGRATION_EMAIL}",
                outcome=runtime.faults.refund_outcome,
            )
        except StoreFullError as exc:
            raise ApiError(503, f"Refunds are busy, try again later ({exc})") from None
        steps = 1 if refund.outcome == "needs-attention" else 2
        refund.expected_at = refund.created_at + timedelta(milliseconds=steps * runtime.config.refund_delay_ms)
        data = _refund_created(refund, checkout, charge)
        webhook = _refund_webhook(runtime, refund, checkout)
    runtime.send_webhooks([webhook])
    if runtime.config.refund_auto_advance:
        runtime.spawn(_refund_lifecycle(runtime, refund.id))
    return 200, {"status": True, "message": "Refund has been queued for processing", "data": data}


def _refund_by_path(store: Store, raw_id: str) -> Refund:
    refund_id = ascii_int(raw_id)
    refund = store.refunds.get((NAME, refund_id)) if refund_id is not None else None
    if refund is None:
        raise ApiError(404, "Refund not found")
    return refund


async def refund_fetch(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    store = call.runtime.store
    with store.lock:
        data = _refund_record(_refund_by_path(store, request.path_params["refund_id"]), store)
    return 200, {"status": True, "message": "Refund retrieved", "data": data}


def _query_int(request: Request, name: str, default: int, limit: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = ascii_int(raw, max_digits=7)
    if value is None or not 1 <= value <= limit:
        raise ApiError(400, f"Invalid {name}")
    return value


def _query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"Invalid {name} date") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def refund_list(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    """GET /refund: newest first, `perPage`/`page`/`from`/`to` as the OpenAPI spec has them, plus
    `transaction` (id or reference) and `currency`, the filters Paystack's docs add."""
    per_page = _query_int(request, "perPage", 50, 1000)
    page = _query_int(request, "page", 1, 10**6)
    since, until = _query_time(request, "from"), _query_time(request, "to")
    transaction = request.query_params.get("transaction")
    currency = (request.query_params.get("currency") or "").upper()
    store = call.runtime.store
    with store.lock:
        rows = [
            r
            for r in reversed(store.refunds.values())
            if r.gateway == NAME
            and (not transaction or transaction in (str(r.charge_id), r.reference))
            and (not currency or r.currency == currency)
            and (since is None or r.created_at >= since)
            and (until is None or r.created_at <= until)
        ]
        skipped = (page - 1) * per_page
        data = [_refund_record(r, store) for r in rows[skipped : skipped + per_page]]
    meta = {
        "total": len(rows),
        "skipped": skipped,
        "perPage": str(per_page),  # a string in Paystack's spec
        "page": page,
        "pageCount": max(1, -(-len(rows) // per_page)),
        "failedRefundCount": sum(1 for r in rows if r.status == "failed"),
    }
    return 200, {"status": True, "message": "Refunds retrieved", "data": data, "meta": meta}


# pending -> processing -> the planned ending; needs-attention waits for a nudge, then is processed.
_NEXT_STATUS = {"pending": "processing", "needs-attention": "processed"}
_ENDINGS = {"": "processed", "failed": "failed", "needs-attention": "needs-attention"}
ADVANCE_TARGETS = ("processing", "processed", "failed", "needs-attention")


def refund_advance(runtime: Runtime, refund: Refund, target: str | None = None) -> None:
    """Move a refund one step (or to `target`) and send that status's webhook. ValueError = not allowed.

    The caller holds store.lock; the webhook goes out after it returns.
    """
    if refund.final:
        raise ValueError(f"refund {refund.id} is already {refund.status}")
    status = target or _NEXT_STATUS.get(refund.status) or _ENDINGS[refund.outcome]
    if status not in ADVANCE_TARGETS or status == refund.status:
        raise ValueError(f"a {refund.status} Paystack refund cannot move to {status!r}")
    store = runtime.store
    now = utcnow()
    refund.status = status
    refund.updated_at = now
    charge = store.charges[(NAME, refund.charge_id)]
    checkout = store.checkouts[(NAME, refund.reference)]
    if status in ("processed", "failed"):
        refund.processed_at = now
        refund.refund_reference = refund.refund_reference or (
            f"{secrets.randbelow(10**12):012d}" if status == "processed" else f"TRF_{secrets.token_hex(8)}"
        )
    if status == "failed":
        charge.refunded -= refund.amount  # the money stays with the merchant: refundable again
    still_open = any(not r.final for r in store.refunds_of(charge))
    # A fully refunded Paystack transaction verifies as "reversed" from then on.
    if status == "processed" and charge.refundable == 0 and not still_open:
        store.set_charge_status(checkout, charge, "reversed")
    runtime.send_webhooks([_refund_webhook(runtime, refund, checkout)])


async def _refund_lifecycle(runtime: Runtime, refund_id: int) -> None:
    store = runtime.store
    while True:
        await asyncio.sleep(runtime.config.refund_delay_ms / 1000)
        with store.lock:
            refund = store.refunds.get((NAME, refund_id))
            # Forgotten, finished, waiting for a person, or already nudged past this step by the control API.
            if refund is None or refund.final or refund.status == "needs-attention":
                return
            refund_advance(runtime, refund)


ROUTES: list[Route] = [
    API.route("/paystack/transaction/initialize", initialize, ["POST"]),
    API.route("/paystack/transaction/verify/{reference}", verify, ["GET"]),
    API.route("/paystack/refund", refund_create, ["POST"]),
    API.route("/paystack/refund", refund_list, ["GET"]),
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
