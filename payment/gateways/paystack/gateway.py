"""Paystack signature check, event parsing, and API client (verify, initialize, refund)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from django.utils import timezone

from payment.conf import app_settings
from payment.gateways import base
from payment.gateways.registry import register
from payment.money import MoneyError, parse_minor

SIGNATURE_HEADER = "x-paystack-signature"

# data.status of GET /transaction/verify -> neutral outcome. Paystack's non-final states
# (ongoing, pending, processing, queued) and anything unknown stay "pending": never grant on a guess.
_OUTCOMES = {
    "success": base.OUTCOME_SUCCESS,
    "failed": base.OUTCOME_FAILED,
    "abandoned": base.OUTCOME_ABANDONED,
    "reversed": base.OUTCOME_REVERSED,
}

# Dedupe keys longer than this are hashed whole (the column holds 255).
_KEY_LIMIT = 200
_UNBOUNDED = 1 << 30
# GET /refund paging: perPage per request, and how many pages we read before giving up rather than
# return a list that may be missing a refund.
_LIST_PAGE_SIZE = 100
_LIST_MAX_PAGES = 20

_REFUND_STATUSES = {
    "pending": "processing",
    "processing": "processing",
    "needs-attention": "processing",
    "processed": "processed",
    "failed": "failed",
}


def _charge_event(name: str, data: dict[str, Any]) -> base.ParsedEvent:
    reference = base.as_id(data.get("reference"))
    if not reference:
        raise base.InvalidPayloadError("charge event without data.reference")
    try:
        amount = parse_minor(data.get("amount"))
    except MoneyError as exc:
        raise base.InvalidPayloadError(f"data.amount: {exc}") from exc
    transaction_id = base.as_id(data.get("id"), 64)
    status = base.as_str(data.get("status"), 32)
    return base.ParsedEvent(
        gateway="paystack",
        event=name,
        kind="charge",
        # Paystack sends no event id: the key is built from what identifies the fact.
        dedupe_key=f"{name}:{reference}:{transaction_id}:{status}",
        reference=reference,
        gateway_transaction_id=transaction_id,
        status=status,
        amount=amount,
        currency=base.as_str(data.get("currency"), 3).upper(),
        mode=base.as_str(data.get("domain"), 4),
        outcome=_OUTCOMES.get(status, base.OUTCOME_PENDING),
    )


def _key(*parts: object) -> str:
    """A dedupe key from whole identifiers: cut ones would let two long references share a key."""
    key = ":".join(base.as_str(part, _UNBOUNDED) for part in parts)
    if len(key) <= _KEY_LIMIT:
        return key
    return f"{base.as_str(parts[0])}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _transaction_id(value: object) -> str:
    """The charge id a refund object names: a bare id (fetch, list) or a nested object (create)."""
    if isinstance(value, dict):
        value = value.get("id")
    return base.as_id(value, 64)


def _refund_event(name: str, data: dict[str, Any]) -> base.ParsedEvent:
    raw_reference = data.get("transaction_reference")
    reference = base.as_id(raw_reference)
    if not reference:
        raise base.InvalidPayloadError("refund event without data.transaction_reference")
    try:
        # Paystack refund amounts are sometimes strings ("5000"): still minor units.
        amount = parse_minor(data.get("amount"))
    except MoneyError as exc:
        raise base.InvalidPayloadError(f"data.amount: {exc}") from exc
    status = base.as_str(data.get("status"), 32)
    # refund_reference is null until the refund is processed; some bodies also carry the refund's id
    # (docs/adding-a-gateway.md, "Refunds at the gateway edge").
    refund_reference = base.as_id(data.get("refund_reference"), 64)
    refund_id = base.as_id(data.get("id"), 64)
    return base.ParsedEvent(
        gateway="paystack",
        event=name,
        kind="refund",
        # Without an id or a refund reference (pending/processing bodies) two refunds of one amount on one
        # charge look alike: nothing in such a body tells them apart.
        dedupe_key=_key(name, raw_reference, data.get("id"), data.get("refund_reference"), amount, status),
        reference=reference,
        gateway_transaction_id=_transaction_id(data.get("transaction")),
        status=_REFUND_STATUSES.get(status, "processing"),
        amount=amount,
        currency=base.as_str(data.get("currency"), 3).upper(),
        mode=base.as_str(data.get("domain"), 4),
        refund_reference=refund_reference,
        refund_id=refund_id,
    )


def _refund_result(data: dict[str, Any], fallback_id: str = "") -> base.RefundResult:
    """A refund object of the create, fetch or list answer."""
    try:
        amount: int | None = parse_minor(data.get("amount"))
    except MoneyError:
        amount = None
    status = base.as_str(data.get("status"), 32)
    return base.RefundResult(
        gateway_refund_id=base.as_id(data.get("id"), 64) or fallback_id,
        status=_REFUND_STATUSES.get(status, "processing"),
        amount=amount,
        refund_reference=base.as_id(data.get("refund_reference"), 64),
        currency=base.as_str(data.get("currency"), 3).upper(),
    )


def _page_count(meta: object) -> int | None:
    value = meta.get("pageCount") if isinstance(meta, dict) else None
    try:
        return parse_minor(value)
    except MoneyError:
        return None


# Dispatch table: event name -> parser. Anything else is authentic but ignored.
_PARSERS = {
    "charge.success": _charge_event,
    "refund.pending": _refund_event,
    "refund.processing": _refund_event,
    "refund.processed": _refund_event,
    "refund.failed": _refund_event,
    "refund.needs-attention": _refund_event,
}


def _key_list(value: str | list[str]) -> list[str]:
    return [k.strip() for k in (value.split(",") if isinstance(value, str) else value) if k.strip()]


@register
class PaystackGateway(base.Gateway):
    name = "paystack"
    secret_headers = frozenset({SIGNATURE_HEADER})
    published_ips = ("52.31.139.75", "52.49.173.169", "52.214.14.220")
    secret_setting = "PAYSTACK_SECRET_KEY"
    base_url_setting = "PAYSTACK_BASE_URL"
    charge_event = "charge.success"
    # `authorization` of charge bodies: the reusable card token and the card's digits.
    redacted_fields = frozenset({"authorization_code", "bin", "last4", "exp_month", "exp_year", "signature",
                                 "account_name"})
    demo_settings = {"PAYSTACK_SECRET_KEY": "sk_test_payshift_demo_do_not_use_in_production",
                     "PAYSTACK_PUBLIC_KEY": "pk_test_payshift_demo"}
    sandbox_path = "paystack"
    refund_event = "refund.processed"
    # Two keys: the suite's rotation tests sign with the first and verify with either.
    test_settings = {"PAYSTACK_SECRET_KEY": ["sk_test_unit_0123456789abcdef", "sk_test_unit_old_key_rotated"],
                     "PAYSTACK_BASE_URL": "https://api.paystack.test"}

    def webhook_secrets(self) -> list[str]:
        # There is no separate webhook secret: the API secret key signs.
        return [s for s in app_settings.PAYSTACK_SECRET_KEY if s]

    def api_key(self) -> str:
        secrets = self.webhook_secrets()
        if not secrets:
            raise base.PermanentGatewayError("PAYSTACK_SECRET_KEY is not configured", sent=False)
        return secrets[0]

    def key_mode(self) -> str:
        secrets = self.webhook_secrets()
        return "live" if secrets and secrets[0].startswith("sk_live_") else "test"

    def configured_key_modes(self) -> dict[str, set[str]]:
        return {"PAYSTACK_SECRET_KEY": {"live" if s.startswith("sk_live_") else "test" for s in self.webhook_secrets()},
                "PAYSTACK_PUBLIC_KEY": {"live" if s.startswith("pk_live_") else "test"
                                        for s in _key_list(app_settings.PAYSTACK_PUBLIC_KEY)}}

    def verify_signature(self, body: bytes, headers: Mapping[str, str]) -> bool:
        provided = headers.get(SIGNATURE_HEADER, "")
        if not provided:
            return False
        provided_bytes = provided.strip().lower().encode("utf-8", "replace")
        ok = False
        for secret in self.webhook_secrets():
            expected = hmac.new(secret.encode(), body, hashlib.sha512).hexdigest().encode()
            # Check every key (rotation) without short-circuiting on the first match.
            ok = hmac.compare_digest(expected, provided_bytes) or ok
        return ok

    def parse_event(self, body: bytes) -> base.ParsedEvent:
        name, data = base.envelope(body)
        parser = _PARSERS.get(name)
        if parser is None:
            return base.ignored_event(self.name, name, body, data.get("reference"))
        return parser(name, data)

    def sign_webhook(self, body: bytes) -> dict[str, str]:
        secret = self.api_key()
        return {
            "content-type": "application/json",
            SIGNATURE_HEADER: hmac.new(secret.encode(), body, hashlib.sha512).hexdigest(),
        }

    def build_test_webhook(self, *, event: str, reference: str, transaction_id: str, status: str,
                           amount: int, currency: str, mode: str, email: str) -> dict[str, Any]:
        now = timezone.now().isoformat().replace("+00:00", "Z")
        if event.startswith("refund.") and event not in _PARSERS:
            known = ", ".join(e for e in _PARSERS if e.startswith("refund."))
            raise base.UnbuildableEventError(f"paystack sends no {event}; its refund events: {known}")
        if event.startswith("refund."):
            return {
                "event": event,
                "data": {
                    "status": event.removeprefix("refund."),
                    "transaction_reference": reference,
                    "refund_reference": f"RF{transaction_id}" if event == "refund.processed" else None,
                    "amount": str(amount),
                    "currency": currency,
                    "processor": "card",
                    "customer": {"first_name": "Ada", "last_name": "Obi", "email": email},
                    "integration": 412829,
                    "domain": mode,
                },
            }
        return {
            "event": event,
            "data": {
                "id": int(transaction_id) if transaction_id.isdigit() else transaction_id,
                "domain": mode,
                "status": status,
                "reference": reference,
                "amount": amount,
                "message": None,
                "gateway_response": "Successful" if status == "success" else "Declined",
                "paid_at": now,
                "created_at": now,
                "channel": "card",
                "currency": currency,
                "ip_address": "41.58.0.1",
                "metadata": 0,
                "fees": None,
                "customer": {
                    "id": 84312,
                    "first_name": "Ada",
                    "last_name": "Obi",
                    "email": email,
                    "customer_code": "CUS_payshiftdemo",
                    "phone": None,
                    "metadata": None,
                    "risk_action": "default",
                },
                "authorization": {
                    "authorization_code": "AUTH_payshiftdemo",
                    "bin": "408408",
                    "last4": "4081",
                    "exp_month": "12",
                    "exp_year": "2030",
                    "channel": "card",
                    "card_type": "visa",
                    "bank": "TEST BANK",
                    "country_code": "NG",
                    "brand": "visa",
                    "reusable": True,
                    "signature": "SIG_payshiftdemo",
                },
                "plan": {},
            },
        }

    def verify_transaction(self, *, reference: str, gateway_transaction_id: str = "") -> base.Verification:
        payload = self.api_request("GET", f"transaction/verify/{quote(reference, safe='')}", "verify")
        data = payload.get("data")
        # Top-level status only says the call worked; the outcome is data.status.
        if payload.get("status") is not True or not isinstance(data, dict):
            raise base.PermanentGatewayError("paystack verify: unexpected answer shape")
        try:
            amount = parse_minor(data.get("amount"))
        except MoneyError as exc:
            raise base.PermanentGatewayError(f"paystack verify: data.amount: {exc}") from exc
        raw_status = base.as_str(data.get("status"), 32)
        return base.Verification(
            reference=base.as_id(data.get("reference")),
            gateway_transaction_id=base.as_id(data.get("id"), 64),
            outcome=_OUTCOMES.get(raw_status, base.OUTCOME_PENDING),
            amount=amount,
            currency=base.as_str(data.get("currency"), 3).upper(),
            mode=base.as_str(data.get("domain"), 4),
            raw_status=raw_status,
            paid_at=base.as_str(data.get("paid_at"), 40),
        )

    def initialize_checkout(self, *, reference: str, amount: int, currency: str, email: str,
                            callback_url: str, metadata: Mapping[str, Any]) -> base.CheckoutSession:
        payload = self.api_request(
            "POST",
            "transaction/initialize",
            "initialize",
            json={"email": email, "amount": amount, "currency": currency, "reference": reference,
                  "callback_url": callback_url, "metadata": dict(metadata)},
        )
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("authorization_url"), str):
            raise base.PermanentGatewayError("paystack initialize: no authorization_url")
        return base.CheckoutSession(checkout_url=data["authorization_url"],
                                    gateway_reference=base.as_str(data.get("access_code")))

    def refund(self, *, reference: str, gateway_transaction_id: str, amount: int, currency: str,
               note: str) -> base.RefundResult:
        payload = self.api_request(
            "POST",
            "refund",
            "refund",
            json={"transaction": reference, "amount": amount, "currency": currency, "merchant_note": note},
        )
        data = payload.get("data")
        if payload.get("status") is not True or not isinstance(data, dict):
            raise base.PermanentGatewayError("paystack refund: unexpected answer shape")
        return _refund_result(data)

    def refund_fetch(self, gateway_refund_id: str) -> base.RefundResult | None:
        payload = self.api_request("GET", f"refund/{quote(gateway_refund_id, safe='')}", "refund_fetch")
        data = payload.get("data")
        if payload.get("status") is not True or not isinstance(data, dict):
            raise base.PermanentGatewayError("paystack refund fetch: unexpected answer shape")
        return _refund_result(data, fallback_id=gateway_refund_id)

    def refunds_for_transaction(self, *, reference: str,
                                gateway_transaction_id: str) -> list[base.RefundResult] | None:
        transaction_id = gateway_transaction_id or self.verify_transaction(reference=reference).gateway_transaction_id
        if not transaction_id:
            raise base.PermanentGatewayError("paystack refund list: no transaction id to ask about")
        found: list[base.RefundResult] = []
        for page in range(1, _LIST_MAX_PAGES + 1):
            # `transaction` is Paystack's documented filter, though its OpenAPI spec lists only perPage,
            # page, from and to: every row is checked here too, so a server that ignores it is still right.
            payload = self.api_request("GET", "refund", "refund_list", params={
                "transaction": transaction_id, "perPage": _LIST_PAGE_SIZE, "page": page})
            rows = payload.get("data")
            if payload.get("status") is not True or not isinstance(rows, list):
                raise base.PermanentGatewayError("paystack refund list: unexpected answer shape")
            for row in rows:
                if isinstance(row, dict) and (
                        _transaction_id(row.get("transaction")) == transaction_id
                        or (reference and base.as_id(row.get("transaction_reference")) == reference)):
                    found.append(_refund_result(row))
            page_count = _page_count(payload.get("meta"))
            last = page >= page_count if page_count is not None else len(rows) < _LIST_PAGE_SIZE
            if last or not rows:
                return found
        raise base.PermanentGatewayError(
            f"paystack refund list: more than {_LIST_MAX_PAGES} pages for transaction {transaction_id}")

    def callback_reference(self, query: Mapping[str, str]) -> tuple[str, str]:
        return (query.get("reference") or query.get("trxref") or "")[:100], ""

    # -- recorded examples (the shapes of Paystack's documented answers) ----------------------------------
    def example_verify_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> base.RecordedAnswer:
        return base.RecordedAnswer("GET", f"{self.base_url()}transaction/verify/{quote(reference, safe='')}", {
            "status": True, "message": "Verification successful", "data": {
                "id": int(transaction_id), "domain": "test", "status": "success", "reference": reference,
                "receipt_number": None, "amount": amount, "message": None, "gateway_response": "Successful",
                "paid_at": "2024-08-22T09:15:02.000Z", "created_at": "2024-08-22T09:14:24.000Z", "channel": "card",
                "currency": currency, "ip_address": "197.210.54.33", "metadata": "", "fees": 10283,
                "authorization": {"authorization_code": "AUTH_uh8bcl3zbn", "bin": "408408", "last4": "4081",
                                  "exp_month": "12", "exp_year": "2030", "channel": "card", "reusable": True},
                "customer": {"id": 181873746, "email": "demo@test.com", "customer_code": "CUS_1rkzaqsv4rrhqo6"},
                "requested_amount": amount, "paidAt": "2024-08-22T09:15:02.000Z"}})

    def example_refund_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> base.RecordedAnswer:
        return base.RecordedAnswer("POST", f"{self.base_url()}refund", {
            "status": True, "message": "Refund has been queued for processing", "data": {
                "transaction": {"id": int(transaction_id), "domain": "test", "reference": reference,
                                "amount": amount, "currency": currency, "channel": "card"},
                "integration": 412829, "deducted_amount": 0, "channel": None, "status": "pending",
                "merchant_note": f"Refund for transaction {reference}", "refunded_by": "test@me.com",
                "currency": currency, "domain": "test", "amount": amount, "fully_deducted": False,
                "id": 3018284, "createdAt": "2021-12-07T09:21:17.122Z"}})

    def example_callback_query(self, *, reference: str, transaction_id: str) -> dict[str, str]:
        # Paystack appends both names for the one reference, and no transaction id.
        return {"trxref": reference, "reference": reference}
