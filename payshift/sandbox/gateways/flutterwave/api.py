"""Flutterwave v3 in the sandbox: API handlers and routes, response shapes (major units), attempts, refunds."""

from __future__ import annotations

import asyncio
import secrets
from datetime import date
from decimal import Decimal
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from payshift.sandbox.api import ApiCall, ApiError, GatewayApi, ascii_int, read_json
from payshift.sandbox.gateways.flutterwave import webhooks
from payshift.sandbox.money import AmountError, major_to_minor, minor_to_major
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import Charge, Checkout, Refund, Store, StoreFullError, TransactionSpec, iso, utcnow
from payshift.sandbox.webhooks import Webhook

NAME = "flutterwave"
REFUND_FINAL_STATUSES = frozenset({"completed", "failed"})
ACCOUNT_ID = 17_321
WALLET_ID = 74_639
LIST_PAGE_SIZE = 20  # GET /refunds answers 20 a page (page_info.page_size in Flutterwave's example)
# Real Flutterwave answers "No transaction was found for this id" for unknown ids and
# tx_refs; its docs give no status code, and reports show it with a 400. We answer
# 404 so a missing transaction is distinguishable from a malformed request; clients
# should key on the envelope (status "error") and treat any 4xx the same way.
NOT_FOUND_STATUS = 404
NOT_FOUND_MESSAGE = "No transaction was found for this id"

def mode_for_key(key: str) -> str:
    # Flutterwave marks test keys in the prefix (FLWSECK_TEST-); live keys are FLWSECK-.
    return "test" if "_TEST" in key.split("-", 1)[0] else "live"


API = GatewayApi(
    name=NAME,
    error_body=lambda _status, message, _code, _next_step: {"status": "error", "message": message, "data": None},
    keys=lambda config: config.setting(NAME, "secret_keys"),
    mode_for_key=mode_for_key,
    unauthorised_message="Invalid authorization key",
)

# Flutterwave webhooks every attempt, failed ones included; one tx_ref may get several ids.
CHECKOUT_ACTIONS = (
    ("pay", "Pay successfully"),
    ("fail", "Fail"),
    ("abandon", "Abandon"),
    ("fail-then-pay", "Fail once, then pay"),
)

# Neutral status -> Flutterwave's word. Flutterwave has no "reversed", and an abandoned
# (cancelled) checkout creates no transaction at all, so neither is a charge status here.
_STATUS = {"success": "successful", "failed": "failed", "pending": "pending"}
_PROCESSOR_RESPONSE = {
    "success": "Approved by Financial Institution",
    "failed": "Declined by Financial Institution",
    "pending": "Pending validation",
}


# payment_type values a checkout can end with (Flutterwave's words); `card` is the default.
CHANNELS = ("card", "account", "ussd", "bank_transfer", "mobilemoneyghana", "mpesa")
# /v3/payments' payment_options names -> the payment_type the transaction then reports.
_PAYMENT_OPTIONS = {"banktransfer": "bank_transfer", "mobilemoneyghana": "mobilemoneyghana", **{c: c for c in CHANNELS}}


def _new_flw_ref() -> str:
    return f"FLW-MOCK-{secrets.token_hex(16)}"


def _phone(raw: Any) -> str | None:
    """customer.phonenumber as sent: a string, or a number (kept as its digits, not dropped)."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return str(raw)
    return raw if isinstance(raw, str) and raw else None


def _payment_options(raw: Any) -> tuple[str, ...]:
    """`payment_options` ("card, ussd, banktransfer") as payment types; unknown names are refused."""
    if raw in (None, ""):
        return ()
    if not isinstance(raw, str):
        raise ApiError(400, "payment_options must be a comma-separated string")
    names = [part.strip().lower() for part in raw.split(",") if part.strip()]
    unknown = [name for name in names if name not in _PAYMENT_OPTIONS]
    if unknown:
        raise ApiError(400, f"Unknown payment option(s): {', '.join(unknown)}")
    return tuple(dict.fromkeys(_PAYMENT_OPTIONS[name] for name in names))


def payment_type(checkout: Checkout) -> str:
    return checkout.channel or (checkout.channels[0] if checkout.channels else "card")


# ---- shapes -------------------------------------------------------------------------------------


def _major(minor: int, currency: str) -> Decimal:
    return minor_to_major(minor, currency)


def _app_fee(amount: int) -> int:
    """1.4% local card fee in minor units, rounded half up with integer maths."""
    return (amount * 140 + 5000) // 10000


def _card(charge: Charge, *, with_token: bool) -> dict[str, Any]:
    card: dict[str, Any] = {
        "first_6digits": "553188",
        "last_4digits": "2950",
        "issuer": "MASTERCARD  CREDIT",
        "country": "NG",
        "type": "MASTERCARD",
        "expiry": "09/32",
    }
    if with_token:
        card["token"] = f"flw-t1nf-{charge.gateway_ref[-24:]}-m03k"
    return card


def _customer(checkout: Checkout) -> dict[str, Any]:
    return {
        "id": checkout.customer.id,
        "name": checkout.customer.name or "Anonymous customer",
        "phone_number": checkout.customer.phone,
        "email": checkout.email,
        "created_at": iso(checkout.created_at),
    }


def transaction_data(
    checkout: Checkout, charge: Charge, *, amount: int | None = None, webhook: bool = False
) -> dict[str, Any]:
    """`data` of verify and of charge.completed; every amount is a major-unit JSON number."""
    reported = charge.reported_amount if amount is None else amount
    fee = _app_fee(reported) if charge.status == "success" else 0
    data: dict[str, Any] = {
        "id": charge.id,
        "tx_ref": charge.reference,
        "flw_ref": charge.gateway_ref,
        "device_fingerprint": "N/A",
        "amount": _major(reported, charge.currency),
        "currency": charge.currency,
        "charged_amount": _major(reported, charge.currency),
        "app_fee": _major(fee, charge.currency),
        "merchant_fee": 0,
        "processor_response": _PROCESSOR_RESPONSE[charge.status],
        "auth_model": "PIN",
        "ip": "127.0.0.1",
        "narration": "CARD Transaction ",
        "status": _STATUS[charge.status],
        "payment_type": payment_type(checkout),
        "created_at": iso(charge.created_at),
        "account_id": ACCOUNT_ID,
    }
    card = payment_type(checkout) == "card"
    if webhook:
        data["customer"] = _customer(checkout)
        if card:
            data["card"] = _card(charge, with_token=False)
        return data
    if card:
        data["card"] = _card(charge, with_token=True)
    data["meta"] = checkout.metadata if checkout.metadata != "" else None
    data["amount_settled"] = _major(reported - fee if charge.status == "success" else 0, charge.currency)
    data["customer"] = _customer(checkout)
    return data


def charge_completed_webhook(runtime: Runtime, checkout: Checkout, charge: Charge) -> Webhook:
    # webhook_amount_delta makes the body disagree with verify, which stays truthful.
    amount = charge.reported_amount + runtime.faults.webhook_amount_delta
    if runtime.config.setting(NAME, "webhook_format") == "legacy":
        return webhooks.legacy_charge(runtime, checkout, charge, amount)
    data = transaction_data(checkout, charge, amount=amount, webhook=True)
    return webhooks.build(runtime, "charge.completed", charge.reference, data, webhooks.event_type(checkout))


# ---- API handlers -------------------------------------------------------------------------------


def _parse_major(raw: Any, currency: str) -> int:
    if raw is None or isinstance(raw, bool) or not isinstance(raw, int | Decimal | str):
        raise ApiError(400, "Invalid amount")
    try:
        minor = major_to_minor(raw, currency)
    except AmountError as exc:
        raise ApiError(400, f"Invalid amount: {exc}") from None
    if minor <= 0:
        raise ApiError(400, "Invalid amount")
    return minor


async def payments(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = await read_json(request)
    tx_ref = body.get("tx_ref")
    if not isinstance(tx_ref, str) or not tx_ref:
        raise ApiError(400, "tx_ref is required")
    currency = body.get("currency") or "NGN"
    if not isinstance(currency, str) or len(currency) != 3 or not currency.isalpha():
        raise ApiError(400, "Invalid currency")
    currency = currency.upper()
    amount = _parse_major(body.get("amount"), currency)
    redirect_url = body.get("redirect_url")
    if not isinstance(redirect_url, str) or not redirect_url:
        raise ApiError(400, "redirect_url is required")
    customer = body.get("customer")
    if (
        not isinstance(customer, dict)
        or not isinstance(customer.get("email"), str)
        or "@" not in customer["email"]
    ):
        raise ApiError(400, "customer.email is required")
    runtime = call.runtime
    with runtime.store.lock:
        if (NAME, tx_ref) in runtime.store.checkouts:
            raise ApiError(400, "Duplicate Transaction Reference")
        # No transaction id yet: Flutterwave creates one per payment attempt.
        try:
            checkout = runtime.store.add_checkout(
                gateway=NAME,
                reference=tx_ref,
                access_code=secrets.token_hex(12),
                amount=amount,
                currency=currency,
                email=customer["email"],
                mode=call.mode,
                callback_url=redirect_url,
                metadata=body.get("meta", ""),
                customer_name=customer.get("name") if isinstance(customer.get("name"), str) else None,
                customer_phone=_phone(customer.get("phonenumber")),
                channels=_payment_options(body.get("payment_options")),
            )
        except StoreFullError as exc:
            raise ApiError(503, f"Transactions are busy, try again later ({exc})") from None
    link = f"{runtime.config.public_url}/checkout/{checkout.access_code}"
    return 200, {"status": "success", "message": "Hosted Link", "data": {"link": link}}


def _verified(checkout: Checkout, charge: Charge) -> tuple[int, dict[str, Any]]:
    data = transaction_data(checkout, charge)
    return 200, {"status": "success", "message": "Transaction fetched successfully", "data": data}


def _charge_by_id(store: Store, raw_id: str) -> tuple[Checkout, Charge]:
    charge_id = ascii_int(raw_id)
    charge = store.charges.get((NAME, charge_id)) if charge_id is not None else None
    if charge is None:
        raise ApiError(NOT_FOUND_STATUS, NOT_FOUND_MESSAGE)
    return store.checkouts[(NAME, charge.reference)], charge


async def verify(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    store = call.runtime.store
    with store.lock:
        checkout, charge = _charge_by_id(store, request.path_params["transaction_id"])
        return _verified(checkout, charge)


async def verify_by_reference(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    tx_ref = request.query_params.get("tx_ref")
    if not tx_ref:
        raise ApiError(400, "tx_ref is required")
    store = call.runtime.store
    with store.lock:
        checkout = store.checkouts.get((NAME, tx_ref))
        attempts = store.attempts(checkout) if checkout else []
        if checkout is None or not attempts:
            raise ApiError(NOT_FOUND_STATUS, NOT_FOUND_MESSAGE)
        # With several attempts on one tx_ref, the successful one is what a merchant needs to see.
        chosen = next((c for c in reversed(attempts) if c.status == "success"), attempts[-1])
        return _verified(checkout, chosen)


def _refund_data(refund: Refund) -> dict[str, Any]:
    """The v3 refund object (POST .../refund, GET /refunds/{id}, the refund webhook): amount_refunded is
    a major-unit number, and there is no tx_ref and no currency in it (payment/tests/payloads/flutterwave/)."""
    return {
        "id": refund.id,
        "account_id": ACCOUNT_ID,
        "tx_id": refund.charge_id,
        "flw_ref": refund.gateway_ref,
        "wallet_id": WALLET_ID,
        "amount_refunded": _major(refund.amount, refund.currency),
        "status": refund.status,
        "destination": "payment_source",
        "meta": {"source": "availablebalance"},
        "comments": refund.merchant_note,
        "created_at": iso(refund.created_at),
    }


def _refund_row(refund: Refund) -> dict[str, Any]:
    """One row of GET /refunds: the list names the charge transaction_id and the note comment."""
    return {
        "id": refund.id,
        "amount_refunded": _major(refund.amount, refund.currency),
        "status": refund.status,
        "flw_ref": refund.gateway_ref,
        "comment": refund.merchant_note,
        "settlement_id": None,
        "meta": {"source": "availablebalance"},
        "created_at": iso(refund.created_at),
        "account_id": ACCOUNT_ID,
        "transaction_id": refund.charge_id,
    }


async def refund(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = await read_json(request)
    comments = body.get("comments")
    if comments is not None and not isinstance(comments, str):
        raise ApiError(400, "Invalid comments")
    runtime = call.runtime
    store = runtime.store
    with store.lock:
        _checkout, charge = _charge_by_id(store, request.path_params["transaction_id"])
        if charge.status != "success":
            raise ApiError(400, "Only successful transactions can be refunded")
        if charge.refundable == 0:
            raise ApiError(400, "Transaction has been fully refunded")
        amount = (
            charge.refundable if body.get("amount") is None else _parse_major(body["amount"], charge.currency)
        )
        if amount > charge.refundable:
            raise ApiError(400, "Refund amount cannot be greater than the remaining refundable amount")
        # "processing" is Flutterwave's transient refund state; it ends "completed" or "failed" later.
        try:
            record = store.add_refund(
                charge,
                amount,
                "processing",
                final_statuses=REFUND_FINAL_STATUSES,
                merchant_note=comments,
                outcome=runtime.faults.refund_outcome,
                gateway_ref=f"URF_{secrets.token_hex(8)}",
            )
        except StoreFullError as exc:
            raise ApiError(503, f"Refunds are busy, try again later ({exc})") from None
        data = _refund_data(record)
    if runtime.config.refund_auto_advance:
        runtime.spawn(_refund_lifecycle(runtime, record.id))
    return 200, {"status": "success", "message": "Transaction refund initiated", "data": data}


def _refund_by_path(store: Store, raw_id: str) -> Refund:
    refund_id = ascii_int(raw_id)
    record = store.refunds.get((NAME, refund_id)) if refund_id is not None else None
    if record is None:
        raise ApiError(NOT_FOUND_STATUS, "No refund was found for this id")
    return record


async def refund_fetch(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    store = call.runtime.store
    with store.lock:
        data = _refund_data(_refund_by_path(store, request.path_params["refund_id"]))
    return 200, {"status": "success", "message": "Refund fetched", "data": data}


def _query_date(request: Request, name: str) -> date | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    try:
        return date.fromisoformat(raw[:10])
    except ValueError:
        raise ApiError(400, f"Invalid {name} date, use YYYY-MM-DD") from None


async def refund_list(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    """GET /refunds: newest first, 20 a page; filters `from`/`to` (dates), `status`, `currency`, `page`.
    Flutterwave documents no filter by transaction: clients look at transaction_id themselves."""
    page = ascii_int(request.query_params.get("page") or "1", max_digits=7)
    if page is None or page < 1:
        raise ApiError(400, "Invalid page")
    since, until = _query_date(request, "from"), _query_date(request, "to")
    status = request.query_params.get("status")
    currency = (request.query_params.get("currency") or "").upper()
    store = call.runtime.store
    with store.lock:
        rows = [
            r
            for r in reversed(store.refunds.values())
            if r.gateway == NAME
            and (not status or r.status == status)
            and (not currency or r.currency == currency)
            and (since is None or r.created_at.date() >= since)
            and (until is None or r.created_at.date() <= until)
        ]
        data = [_refund_row(r) for r in rows[(page - 1) * LIST_PAGE_SIZE : page * LIST_PAGE_SIZE]]
    page_info = {
        "total": len(rows),
        "current_page": page,
        "total_pages": max(1, -(-len(rows) // LIST_PAGE_SIZE)),
        "page_size": LIST_PAGE_SIZE,
    }
    return 200, {"status": "success", "message": "Refunds fetched", "meta": {"page_info": page_info}, "data": data}


def _transaction_row(checkout: Checkout, charge: Charge) -> dict[str, Any]:
    """One row of GET /v3/transactions: the verify `data` without `meta` and `account_id` (the list example)."""
    row = transaction_data(checkout, charge)
    del row["meta"], row["account_id"]
    return row


TRANSACTION_PAGE_SIZE = 10  # GET /v3/transactions answers 10 a page (page_info in Flutterwave's example)


async def transaction_list(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    """GET /v3/transactions: every attempt (transaction id), newest first, 10 a page; filters `from`/`to`
    (dates), `status`, `tx_ref`, `customer_email`, `currency`, `page`."""
    page = ascii_int(request.query_params.get("page") or "1", max_digits=7)
    if page is None or page < 1:
        raise ApiError(400, "Invalid page")
    since, until = _query_date(request, "from"), _query_date(request, "to")
    status = request.query_params.get("status") or None
    tx_ref = request.query_params.get("tx_ref") or None
    email = (request.query_params.get("customer_email") or "").lower()
    currency = (request.query_params.get("currency") or "").upper()
    store = call.runtime.store
    with store.lock:
        rows = [
            (checkout, charge)
            for (gateway, _charge_id), charge in reversed(store.charges.items())
            if gateway == NAME
            and (checkout := store.checkouts.get((NAME, charge.reference))) is not None
            and (status is None or _STATUS[charge.status] == status)
            and (tx_ref is None or charge.reference == tx_ref)
            and (not email or checkout.email.lower() == email)
            and (not currency or charge.currency == currency)
            and (since is None or charge.created_at.date() >= since)
            and (until is None or charge.created_at.date() <= until)
        ]
        start = (page - 1) * TRANSACTION_PAGE_SIZE
        data = [_transaction_row(checkout, charge) for checkout, charge in rows[start : start + TRANSACTION_PAGE_SIZE]]
    page_info = {
        "total": len(rows),
        "current_page": page,
        "total_pages": max(1, -(-len(rows) // TRANSACTION_PAGE_SIZE)),
    }
    return 200, {"status": "success", "message": "Transactions fetched", "meta": {"page_info": page_info}, "data": data}


ADVANCE_TARGETS = ("completed", "failed")


def refund_advance(runtime: Runtime, record: Refund, target: str | None = None) -> None:
    """Finish a processing refund: completed (with the refund.completed webhook) or failed.

    Flutterwave has no needs-attention: that planned ending fails. The caller holds store.lock.
    """
    if record.final:
        raise ValueError(f"refund {record.id} is already {record.status}")
    status = target or ("completed" if not record.outcome else "failed")
    if status not in ADVANCE_TARGETS:
        raise ValueError(f"a Flutterwave refund ends completed or failed, not {status!r}")
    record.status = status
    record.processed_at = record.updated_at = utcnow()
    if status == "failed":
        # No failure webhook: v3 documents only refund.completed; polling (GET /refunds/{id}) finds it.
        runtime.store.charges[(NAME, record.charge_id)].refunded -= record.amount
        return
    hook = webhooks.build(runtime, "refund.completed", record.reference, _refund_data(record), None)
    runtime.send_webhooks([hook])


async def _refund_lifecycle(runtime: Runtime, refund_id: int) -> None:
    await asyncio.sleep(runtime.config.refund_delay_ms / 1000)
    with runtime.store.lock:
        record = runtime.store.refunds.get((NAME, refund_id))
        if record is not None and not record.final:  # gone, or already finished by a nudge
            refund_advance(runtime, record)


ROUTES: list[Route] = [
    API.route("/v3/payments", payments, ["POST"]),
    API.route("/v3/transactions", transaction_list, ["GET"]),
    API.route("/v3/transactions/verify_by_reference", verify_by_reference, ["GET"]),
    API.route("/v3/transactions/{transaction_id}/verify", verify, ["GET"]),
    API.route("/v3/transactions/{transaction_id}/refund", refund, ["POST"]),
    API.route("/v3/refunds", refund_list, ["GET"]),
    API.route("/v3/refunds/{refund_id}", refund_fetch, ["GET"]),
]


# ---- checkout and control -----------------------------------------------------------------------


def complete_checkout(runtime: Runtime, checkout: Checkout, action: str) -> list[tuple[str, str]]:
    """Apply the customer's choice; answer the redirect query (status, tx_ref, transaction_id)."""
    plan = {"pay": ["success"], "fail": ["failed"], "fail-then-pay": ["failed", "success"], "abandon": []}
    if action not in plan:
        raise ValueError(f"unknown action {action!r}")
    store = runtime.store
    batch: list[Webhook] = []
    with store.lock:
        last: Charge | None = None
        for status in plan[action]:
            last = store.add_charge(checkout, status, gateway_ref=_new_flw_ref())
            batch.append(charge_completed_webhook(runtime, checkout, last))
        if last is None:
            checkout.status = "abandoned"
    runtime.send_webhooks(batch)
    if last is None:
        return [("status", "cancelled"), ("tx_ref", checkout.reference)]  # cancelled carries no id
    return [
        ("status", _STATUS[last.status]),
        ("tx_ref", checkout.reference),
        ("transaction_id", str(last.id)),
    ]


def control_upsert(runtime: Runtime, spec: TransactionSpec) -> tuple[Checkout, bool]:
    """Create or update a tx_ref for tests; `new_attempt` adds a transaction id. ValueError = bad input."""
    if spec.status == "reversed":
        raise ValueError("Flutterwave has no reversed status")
    if spec.channel is not None and spec.channel not in CHANNELS:
        raise ValueError(f"a Flutterwave payment_type is one of {', '.join(CHANNELS)}")
    store = runtime.store
    batch: list[Webhook] = []
    with store.lock:
        checkout = store.checkouts.get((NAME, spec.reference))
        created = checkout is None
        charge = store.latest_charge(checkout) if checkout else None
        status = spec.status or ("success" if created or spec.new_attempt else None)
        # Check everything before changing anything, so a refused request leaves no trace.
        if created and spec.amount is None:
            raise ValueError("amount is required to create a transaction")
        if status == "abandoned" and charge is not None:
            raise ValueError("a tx_ref with attempts cannot be abandoned; add a failed attempt instead")
        if spec.verify_amount_given and charge is None and status in (None, "abandoned"):
            raise ValueError("verify_amount needs an attempt (a status other than abandoned)")
        if checkout is None:
            checkout = store.add_checkout(
                gateway=NAME,
                reference=spec.reference,
                access_code=secrets.token_hex(12),
                amount=spec.amount or 0,
                currency=spec.currency or "NGN",
                email=spec.email or "customer@example.com",
                mode=spec.mode or mode_for_key(runtime.config.setting(NAME, "secret_keys")[0]),
                callback_url=spec.callback_url,
                metadata=spec.metadata if spec.metadata is not None else "",
            )
            checkout.channel = spec.channel
        else:
            spec.apply_to_checkout(checkout)
        if status == "abandoned":
            checkout.status = "abandoned"  # no attempt, so no transaction id, as at Flutterwave
        elif status and (charge is None or spec.new_attempt):
            charge = store.add_charge(checkout, status, gateway_ref=_new_flw_ref())
        elif charge is not None:
            charge.amount = checkout.amount
            charge.currency = checkout.currency
            charge.mode = checkout.mode
            if status:
                store.set_charge_status(checkout, charge, status)
        if spec.verify_amount_given and charge is not None:
            charge.verify_amount = spec.verify_amount
        if spec.send_webhook and charge is not None:
            batch.append(charge_completed_webhook(runtime, checkout, charge))
    runtime.send_webhooks(batch)
    return checkout, created
