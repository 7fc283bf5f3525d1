"""Paystack's API in the sandbox: handlers and routes, checkout outcomes, refunds and their lifecycle."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from payshift.sandbox.api import ApiCall, ApiError, GatewayApi, ascii_int, read_json
from payshift.sandbox.gateways.paystack import webhooks
from payshift.sandbox.gateways.paystack.shapes import (
    CHANNELS,
    CURRENCIES,
    INTEGRATION_EMAIL,
    NAME,
    REFUND_FINAL_STATUSES,
    error_body,
    mode_for_key,
    refund_created,
    refund_record,
    transaction_data,
)
from payshift.sandbox.money import AmountError, parse_minor
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import Charge, Checkout, Refund, Store, StoreFullError, TransactionSpec, utcnow
from payshift.sandbox.webhooks import Webhook

API = GatewayApi(
    name=NAME,
    error_body=error_body,
    keys=lambda config: config.setting(NAME, "secret_keys"),
    mode_for_key=mode_for_key,
    unauthorised_message="Invalid key",
)

# Paystack has no charge.failed event: only success produces a webhook.
CHECKOUT_ACTIONS = (("pay", "Pay successfully"), ("fail", "Fail"), ("abandon", "Abandon"))
_ACTION_STATUS = {"pay": "success", "fail": "failed", "abandon": "abandoned"}
_BUSY = "Try again in a few seconds"


# ---- API handlers -------------------------------------------------------------------------------


def _channels(raw: Any) -> tuple[str, ...]:
    """initialize's `channels`: the payment channels offered; a form body may send one as a plain string."""
    if raw is None or raw == "":
        return ()
    items = [raw] if isinstance(raw, str) else raw
    if not isinstance(items, list) or not all(isinstance(item, str) and item in CHANNELS for item in items):
        raise ApiError(400, f"Invalid channels: use any of {', '.join(CHANNELS)}", code="invalid_channels")
    return tuple(dict.fromkeys(items))


async def initialize(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = await read_json(request, accept_form=True)
    email = body.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise ApiError(400, "Invalid Email Address Passed", code="invalid_email")
    try:
        amount = parse_minor(body.get("amount"))
    except AmountError:
        raise ApiError(400, "Invalid Amount Sent", code="invalid_amount") from None
    if amount <= 0:
        raise ApiError(400, "Invalid Amount Sent", code="invalid_amount")
    currency = body.get("currency") or "NGN"
    if not isinstance(currency, str) or currency.upper() not in CURRENCIES:
        raise ApiError(400, "Currency not supported by merchant", code="unsupported_currency")
    reference = body.get("reference") or secrets.token_hex(5)
    if not isinstance(reference, str | int) or isinstance(reference, bool):
        raise ApiError(400, "Invalid reference", code="invalid_reference")
    callback_url = body.get("callback_url")
    if callback_url is not None and not isinstance(callback_url, str):
        raise ApiError(400, "Invalid callback_url", code="invalid_callback_url")
    channels = _channels(body.get("channels"))
    runtime = call.runtime
    with runtime.store.lock:
        if (NAME, str(reference)) in runtime.store.checkouts:
            raise ApiError(
                400,
                "Duplicate Transaction Reference",
                code="duplicate_reference",
                next_step="Try and create the Transaction or Charge with a new reference",
            )
        try:
            checkout = runtime.store.add_checkout(
                gateway=NAME,
                reference=str(reference),
                access_code=secrets.token_urlsafe(12),
                amount=amount,
                currency=currency.upper(),
                email=email,
                mode=call.mode,
                callback_url=callback_url or None,
                metadata=_metadata(body.get("metadata")),
                channels=channels,
            )
        except StoreFullError as exc:
            raise ApiError(503, f"Transactions are busy, try again later ({exc})", next_step=_BUSY) from None
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
            raise ApiError(
                400,
                "Transaction reference not found",
                code="transaction_not_found",
                next_step="Ensure that you're passing the reference of a transaction that exists on this integration",
            )
        data = transaction_data(checkout, charge)
    return 200, {"status": True, "message": "Verification successful", "data": data}


async def transaction_fetch(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    """GET /transaction/{id}: the same `data` as verify, found by the integer transaction id."""
    transaction_id = ascii_int(request.path_params["transaction_id"])
    store = call.runtime.store
    with store.lock:
        charge = store.charges.get((NAME, transaction_id)) if transaction_id is not None else None
        if charge is None:
            raise ApiError(404, "Transaction not found", code="transaction_not_found")
        data = transaction_data(store.checkouts[(NAME, charge.reference)], charge)
    return 200, {"status": True, "message": "Transaction retrieved", "data": data}


_LIST_STATUSES = frozenset({"success", "failed", "abandoned", "reversed"})


async def transaction_list(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    """GET /transaction: newest first, `perPage` (or the spec's `per_page`) / `page` / `from` / `to` /
    `status` / `customer` / `amount` / `channel`; `meta` has the spec's paging fields and total_volume."""
    per_page = _query_int(request, "perPage", 0, 1000) or _query_int(request, "per_page", 50, 1000)
    page = _query_int(request, "page", 1, 10**6)
    since, until = _query_time(request, "from"), _query_time(request, "to")
    status = request.query_params.get("status") or None
    if status is not None and status not in _LIST_STATUSES:
        raise ApiError(400, "Invalid status", code="invalid_params")
    raw_amount = request.query_params.get("amount") or None
    amount = ascii_int(raw_amount) if raw_amount else None
    if raw_amount and amount is None:
        raise ApiError(400, "Invalid amount", code="invalid_params")
    channel = request.query_params.get("channel") or None
    customer = request.query_params.get("customer") or None
    store = call.runtime.store
    with store.lock:
        rows = [
            (checkout, charge)
            for checkout in reversed(store.checkouts.values())
            if checkout.gateway == NAME
            and (charge := store.latest_charge(checkout)) is not None
            and (status is None or charge.status == status)
            and (amount is None or charge.reported_amount == amount)
            and (channel is None or (checkout.channel or "card") == channel)
            and (customer is None or customer in (str(checkout.customer.id), checkout.customer.code))
            and (since is None or charge.created_at >= since)
            and (until is None or charge.created_at <= until)
        ]
        skipped = (page - 1) * per_page
        data = [transaction_data(checkout, charge) for checkout, charge in rows[skipped : skipped + per_page]]
        volume = sum(charge.reported_amount for _checkout, charge in rows if charge.status == "success")
    meta = {
        "total": len(rows),
        "total_volume": volume,
        "skipped": skipped,
        "perPage": per_page,
        "page": page,
        "pageCount": max(1, -(-len(rows) // per_page)),
    }
    return 200, {"status": True, "message": "Transactions retrieved", "data": data, "meta": meta}


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
    body = await read_json(request, accept_form=True)
    transaction = body.get("transaction")
    if transaction in (None, ""):
        raise ApiError(400, "Transaction reference or id is required", code="missing_params")
    amount: int | None = None
    if body.get("amount") not in (None, ""):
        try:
            amount = parse_minor(body["amount"])
        except AmountError:
            raise ApiError(400, "Invalid amount", code="invalid_amount") from None
        if amount <= 0:
            raise ApiError(400, "Invalid amount", code="invalid_amount")
    for note in ("customer_note", "merchant_note"):
        if body.get(note) is not None and not isinstance(body[note], str):
            raise ApiError(400, f"Invalid {note}", code="invalid_params")
    runtime = call.runtime
    store = runtime.store
    with store.lock:
        found = _find_charge(store, transaction)
        if found is None:
            raise ApiError(404, "Transaction not found", code="transaction_not_found")
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
                final_statuses=REFUND_FINAL_STATUSES,
                # Paystack's defaults when no notes are given (its create sample).
                customer_note=body.get("customer_note") or f"Refund for transaction {charge.reference}",
                merchant_note=body.get("merchant_note")
                or f"Refund for transaction {charge.reference} by {INTEGRATION_EMAIL}",
                outcome=runtime.faults.refund_outcome,
            )
        except StoreFullError as exc:
            raise ApiError(503, f"Refunds are busy, try again later ({exc})", next_step=_BUSY) from None
        steps = 1 if refund.outcome == "needs-attention" else 2
        refund.expected_at = refund.created_at + timedelta(milliseconds=steps * runtime.config.refund_delay_ms)
        data = refund_created(refund, checkout, charge)
        webhook = webhooks.refund_event(runtime, refund, checkout)
    runtime.send_webhooks([webhook])
    if runtime.config.refund_auto_advance:
        runtime.spawn(_refund_lifecycle(runtime, refund.id))
    return 200, {"status": True, "message": "Refund has been queued for processing", "data": data}


def _refund_by_path(store: Store, raw_id: str) -> Refund:
    refund_id = ascii_int(raw_id)
    refund = store.refunds.get((NAME, refund_id)) if refund_id is not None else None
    if refund is None:
        raise ApiError(404, "Refund not found", code="refund_not_found")
    return refund


async def refund_fetch(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    store = call.runtime.store
    with store.lock:
        data = refund_record(_refund_by_path(store, request.path_params["refund_id"]), store)
    return 200, {"status": True, "message": "Refund retrieved", "data": data}


def _query_int(request: Request, name: str, default: int, limit: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = ascii_int(raw, max_digits=7)
    if value is None or not 1 <= value <= limit:
        raise ApiError(400, f"Invalid {name}", code="invalid_params")
    return value


def _query_time(request: Request, name: str) -> datetime | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise ApiError(400, f"Invalid {name} date", code="invalid_params") from None
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
        data = [refund_record(r, store) for r in rows[skipped : skipped + per_page]]
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
    runtime.send_webhooks([webhooks.refund_event(runtime, refund, checkout)])


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
    API.route("/transaction/initialize", initialize, ["POST"]),
    API.route("/transaction/verify/{reference}", verify, ["GET"]),
    API.route("/transaction", transaction_list, ["GET"]),
    API.route("/transaction/{transaction_id}", transaction_fetch, ["GET"]),
    API.route("/refund", refund_create, ["POST"]),
    API.route("/refund", refund_list, ["GET"]),
    API.route("/refund/{refund_id}", refund_fetch, ["GET"]),
]


# ---- checkout and control -----------------------------------------------------------------------


def complete_checkout(runtime: Runtime, checkout: Checkout, action: str) -> list[tuple[str, str]]:
    """Apply the customer's choice; answer the callback query (trxref and reference, as Paystack does)."""
    status = _ACTION_STATUS.get(action)
    if status is None:
        raise ValueError(f"unknown action {action!r}")
    store = runtime.store
    batch: list[Webhook] = []
    with store.lock:
        charge = store.latest_charge(checkout) or store.add_charge(checkout, status)
        store.set_charge_status(checkout, charge, status)
        if status == "success":
            charge.amount = checkout.amount
            batch.append(webhooks.charge_success(runtime, checkout, charge))
    runtime.send_webhooks(batch)
    return [("trxref", checkout.reference), ("reference", checkout.reference)]


def control_upsert(runtime: Runtime, spec: TransactionSpec) -> tuple[Checkout, bool]:
    """Create or update a transaction for tests; ValueError explains a bad request."""
    if spec.channel is not None and spec.channel not in CHANNELS:
        raise ValueError(f"a Paystack channel is one of {', '.join(CHANNELS)}")
    store = runtime.store
    batch: list[Webhook] = []
    with store.lock:
        checkout = store.checkouts.get((NAME, spec.reference))
        created = checkout is None
        if checkout is None:
            if spec.amount is None:
                raise ValueError("amount is required to create a transaction")
            checkout = store.add_checkout(
                gateway=NAME,
                reference=spec.reference,
                access_code=secrets.token_urlsafe(12),
                amount=spec.amount,
                currency=spec.currency or "NGN",
                email=spec.email or "customer@example.com",
                mode=spec.mode or mode_for_key(runtime.config.setting(NAME, "secret_keys")[0]),
                callback_url=spec.callback_url,
                metadata=_metadata(spec.metadata),
            )
            checkout.channel = spec.channel
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
            batch.append(webhooks.charge_success(runtime, checkout, charge))
    runtime.send_webhooks(batch)
    return checkout, created
