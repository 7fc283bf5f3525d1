"""Flutterwave webhook authentication, event parsing, and API client (verify, payments, refunds)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import Mapping
from datetime import date, timedelta
from typing import Any
from urllib.parse import quote

from django.utils import timezone

from payment.conf import app_settings
from payment.gateways import base
from payment.gateways.registry import register
from payment.money import MoneyError, major_to_minor, minor_to_major

HASH_HEADER = "verif-hash"
SIGNATURE_HEADER = "flutterwave-signature"

_OUTCOMES = {
    "successful": base.OUTCOME_SUCCESS,
    "succeeded": base.OUTCOME_SUCCESS,  # v4 wording (unverified)
    "failed": base.OUTCOME_FAILED,
    "cancelled": base.OUTCOME_ABANDONED,
}

# Flutterwave's refund words: "completed" plus per-channel variants ("completed-mpgs", "completed-momo",
# ...), "complete", "successful", v4's "succeeded"; non-final ones such as "processing" or "pending-momo"
# and anything unknown stay "processing" (docs/adding-a-gateway.md, "Refunds at the gateway edge").
_REFUND_DONE = frozenset({"completed", "complete", "successful", "succeeded"})

# Dedupe keys longer than this are hashed whole (the column holds 255).
_KEY_LIMIT = 200
_UNBOUNDED = 1 << 30
# GET /refunds paging: how many pages we read before giving up rather than return a list that may be
# missing a refund.
_LIST_MAX_PAGES = 20


def _refund_status(raw: object) -> str:
    word = base.as_str(raw, 32).lower()
    if word in _REFUND_DONE or word.startswith("completed-"):
        return "processed"
    return "failed" if word == "failed" else "processing"


def _key(*parts: object) -> str:
    """A dedupe key from whole identifiers: cut ones would let two long ids share a key."""
    key = ":".join(base.as_str(part, _UNBOUNDED) for part in parts)
    if len(key) <= _KEY_LIMIT:
        return key
    return f"{base.as_str(parts[0])}:sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def _refund_charge_id(data: Mapping[str, Any]) -> object:
    # The refund object says tx_id; the list rows say transaction_id; v4 says charge_id.
    return next((data[k] for k in ("tx_id", "transaction_id", "charge_id") if data.get(k) is not None), None)


def _amount(value: object, currency: str, where: str) -> int | None:
    if value is None:
        return None
    try:
        return major_to_minor(value, currency)
    except MoneyError as exc:
        raise base.InvalidPayloadError(f"{where}: {exc}") from exc


def _is_test_key(key: str) -> bool:
    # Flutterwave test keys read FLWSECK_TEST-... / FLWPUBK_TEST-...; live keys have no _TEST part.
    return "_TEST" in key.upper()


def _charge_event(name: str, data: dict[str, Any]) -> base.ParsedEvent:
    reference = base.as_id(data.get("tx_ref")) or base.as_id(data.get("reference"))
    if not reference:
        raise base.InvalidPayloadError("charge.completed without data.tx_ref")
    currency = base.as_str(data.get("currency"), 3).upper()
    amount = _amount(data.get("amount"), currency or "NGN", "data.amount")
    transaction_id = base.as_id(data.get("id"), 64)
    status = base.as_str(data.get("status"), 32)
    return base.ParsedEvent(
        gateway="flutterwave",
        event=name,
        kind="charge",
        # Every attempt (failed ones too) has its own transaction id, so failed-then-successful
        # attempts on one tx_ref are distinct events; a resend of one attempt is a duplicate.
        dedupe_key=f"{name}:{reference}:{transaction_id}:{status}",
        reference=reference,
        gateway_transaction_id=transaction_id,
        status=status,
        amount=amount,
        currency=currency,
        outcome=_OUTCOMES.get(status, base.OUTCOME_PENDING),
    )


def _refund_event(name: str, data: dict[str, Any]) -> base.ParsedEvent:
    # The refund object: id, tx_id, flw_ref, amount_refunded (major units), status, created_at; no
    # tx_ref and no currency (payment/tests/payloads/flutterwave/, docs/adding-a-gateway.md).
    refund_id = base.as_id(data.get("id"), 64)
    charge_id = _refund_charge_id(data)
    if not refund_id and not base.as_str(charge_id):
        raise base.InvalidPayloadError(f"{name} without data.id or data.tx_id")
    currency = base.as_str(data.get("currency"), 3).upper()
    # Minor units need the currency's exponent: without one the amount is left unknown, not guessed.
    amount = _amount(data.get("amount_refunded"), currency, "data.amount_refunded") if currency else None
    status = base.as_str(data.get("status"), 32)
    return base.ParsedEvent(
        gateway="flutterwave",
        event=name,
        kind="refund",
        # Each refund has its own id, so two refunds of one amount on one charge are two events.
        dedupe_key=_key(name, data.get("id"), charge_id, data.get("status")),
        reference=base.as_id(data.get("tx_ref")),
        gateway_transaction_id=base.as_id(charge_id, 64),
        status=_refund_status(status),
        amount=amount,
        currency=currency,
        refund_reference=base.as_id(data.get("flw_ref"), 64),
        refund_id=refund_id,
    )

# Dispatch table: event name -> parser. Anything else is authentic but ignored.
_PARSERS = {
    "charge.completed": _charge_event,
    "refund.completed": _refund_event,
    "refund.failed": _refund_event,
}


def _refund_webhook(event: str, *, transaction_id: str, major: object, now: str) -> dict[str, Any]:
    """A refund event as Flutterwave sends it: the refund object, which names the charge by id only (no
    tx_ref, no currency; payment/tests/payloads/flutterwave/refund_completed.json)."""
    if _PARSERS.get(event) is not _refund_event:
        raise base.UnbuildableEventError(
            f"flutterwave sends no {event}; its refund events: "
            f"{', '.join(e for e, parser in _PARSERS.items() if parser is _refund_event)}")
    charge_id = int(transaction_id) if transaction_id.isdigit() else transaction_id
    # A refund id of its own, stable per charge: a resend of the test event stays a duplicate.
    refund_id = int(hashlib.sha256(f"refund:{transaction_id}".encode()).hexdigest()[:8], 16)
    return {
        "event": event,
        "data": {
            "id": refund_id, "account_id": 17321, "tx_id": charge_id, "flw_ref": f"URF_{transaction_id}",
            "wallet_id": 74639, "amount_refunded": major, "status": event.removeprefix("refund."),
            "destination": "payment_source", "meta": {"source": "availablebalance"}, "created_at": now,
        },
    }


@register
class FlutterwaveGateway(base.Gateway):
    name = "flutterwave"
    secret_headers = frozenset({HASH_HEADER, SIGNATURE_HEADER})
    secret_setting = "FLUTTERWAVE_WEBHOOK_HASH"
    base_url_setting = "FLUTTERWAVE_BASE_URL"
    charge_event = "charge.completed"
    # `card` of charge bodies.
    redacted_fields = frozenset({"first_6digits", "last_4digits", "expiry", "token"})
    demo_settings = {"FLUTTERWAVE_SECRET_KEY": "FLWSECK_TEST-payshiftdemo-do-not-use-X",
                     "FLUTTERWAVE_PUBLIC_KEY": "FLWPUBK_TEST-payshiftdemo-X",
                     "FLUTTERWAVE_WEBHOOK_HASH": "payshift-demo-webhook-hash"}
    sandbox_path = "flutterwave/v3"
    refund_event = "refund.completed"
    # verif-hash is the dashboard secret itself (see verify_signature).
    body_signed = False
    test_settings = {"FLUTTERWAVE_SECRET_KEY": ["FLWSECK_TEST-unit-0123456789-X"],
                     "FLUTTERWAVE_WEBHOOK_HASH": ["unit-webhook-hash"],
                     "FLUTTERWAVE_BASE_URL": "https://api.flutterwave.test/v3"}

    def webhook_secrets(self) -> list[str]:
        return [s for s in app_settings.FLUTTERWAVE_WEBHOOK_HASH if s]

    def api_key(self) -> str:
        keys = [k for k in app_settings.FLUTTERWAVE_SECRET_KEY if k]
        if not keys:
            raise base.PermanentGatewayError("FLUTTERWAVE_SECRET_KEY is not configured", sent=False)
        return keys[0]

    def key_mode(self) -> str:
        keys = [k for k in app_settings.FLUTTERWAVE_SECRET_KEY if k]
        return "test" if not keys or _is_test_key(keys[0]) else "live"

    def configured_key_modes(self) -> dict[str, set[str]]:
        public = app_settings.FLUTTERWAVE_PUBLIC_KEY
        public_keys = [k.strip() for k in (public.split(",") if isinstance(public, str) else public) if k.strip()]
        return {"FLUTTERWAVE_SECRET_KEY": {"test" if _is_test_key(k) else "live"
                                           for k in app_settings.FLUTTERWAVE_SECRET_KEY if k},
                "FLUTTERWAVE_PUBLIC_KEY": {"test" if _is_test_key(k) else "live" for k in public_keys}}

    def verify_signature(self, body: bytes, headers: Mapping[str, str]) -> bool:
        # verif-hash is the dashboard secret sent back verbatim: it proves the sender knows the secret,
        # nothing about the body, which is why every charge is re-verified through the API.
        verbatim = headers.get(HASH_HEADER, "")
        signature = headers.get(SIGNATURE_HEADER, "")
        if not verbatim and not signature:
            return False
        ok = False
        for secret in self.webhook_secrets():
            secret_bytes = secret.encode()
            if verbatim:
                ok = hmac.compare_digest(secret_bytes, verbatim.encode("utf-8", "replace")) or ok
            if signature:
                # Two reported meanings (unverified): the hash verbatim, or base64 of
                # HMAC-SHA256(raw body) keyed with it. Accept either.
                given = signature.strip().encode("utf-8", "replace")
                mac = base64.b64encode(hmac.new(secret_bytes, body, hashlib.sha256).digest())
                ok = hmac.compare_digest(secret_bytes, given) or ok
                ok = hmac.compare_digest(mac, given) or ok
        return ok

    def parse_event(self, body: bytes) -> base.ParsedEvent:
        # v3: {"event", "data"}; v4: {"id": "wbk_...", "type", "data"} (UNVERIFIED shape).
        name, data = base.envelope(body, name_keys=("event", "type"))
        parser = _PARSERS.get(name)
        if parser is None:
            return base.ignored_event(self.name, name, body, data.get("tx_ref"))
        return parser(name, data)

    def sign_webhook(self, body: bytes) -> dict[str, str]:
        secrets = self.webhook_secrets()
        if not secrets:
            raise base.PermanentGatewayError("FLUTTERWAVE_WEBHOOK_HASH is not configured")
        return {"content-type": "application/json", HASH_HEADER: secrets[0]}

    def build_test_webhook(self, *, event: str, reference: str, transaction_id: str, status: str,
                           amount: int, currency: str, mode: str, email: str) -> dict[str, Any]:
        major = minor_to_major(amount, currency)
        flw_status = {"success": "successful"}.get(status, status)
        now = timezone.now().isoformat().replace("+00:00", "Z")
        if event.startswith("refund."):
            return _refund_webhook(event, transaction_id=transaction_id, major=major, now=now)
        return {
            "event": event,
            "data": {
                "id": int(transaction_id) if transaction_id.isdigit() else transaction_id,
                "tx_ref": reference,
                "flw_ref": f"FLW-MOCK-{transaction_id}",
                "device_fingerprint": "N/A",
                "amount": major,
                "currency": currency,
                "charged_amount": major,
                "app_fee": minor_to_major(amount * 14 // 1000, currency),
                "merchant_fee": 0,
                "processor_response": "Approved by Financial Institution" if flw_status == "successful"
                else "Declined",
                "auth_model": "PIN",
                "ip": "41.58.0.1",
                "narration": "CARD Transaction ",
                "status": flw_status,
                "payment_type": "card",
                "created_at": now,
                "account_id": 17321,
                "customer": {"id": 215604089, "name": "Ada Obi", "phone_number": None, "email": email,
                             "created_at": now},
                "card": {"first_6digits": "553188", "last_4digits": "2950", "issuer": "MASTERCARD",
                         "country": "NG", "type": "MASTERCARD", "expiry": "09/32"},
            },
            "event.type": "CARD_TRANSACTION",
        }

    def verify_transaction(self, *, reference: str, gateway_transaction_id: str = "") -> base.Verification:
        if gateway_transaction_id:
            path = f"transactions/{quote(gateway_transaction_id, safe='')}/verify"
            payload = self.api_request("GET", path, "verify")
        else:
            payload = self.api_request("GET", "transactions/verify_by_reference", "verify_by_reference",
                                       params={"tx_ref": reference})
        data = payload.get("data")
        if payload.get("status") != "success" or not isinstance(data, dict):
            raise base.PermanentGatewayError("flutterwave verify: unexpected answer shape")
        currency = base.as_str(data.get("currency"), 3).upper()
        try:
            amount = major_to_minor(data.get("amount"), currency or "NGN")
        except MoneyError as exc:
            raise base.PermanentGatewayError(f"flutterwave verify: data.amount: {exc}") from exc
        raw_status = base.as_str(data.get("status"), 32)
        return base.Verification(
            reference=base.as_id(data.get("tx_ref")),
            gateway_transaction_id=base.as_id(data.get("id"), 64),
            outcome=_OUTCOMES.get(raw_status, base.OUTCOME_PENDING),
            amount=amount,
            currency=currency,
            # The verify answer carries no mode: a test key can only see test transactions.
            mode=self.key_mode(),
            raw_status=raw_status,
            paid_at=base.as_str(data.get("created_at"), 40),
        )

    def initialize_checkout(self, *, reference: str, amount: int, currency: str, email: str,
                            callback_url: str, metadata: Mapping[str, Any]) -> base.CheckoutSession:
        body = {"tx_ref": reference, "amount": minor_to_major(amount, currency), "currency": currency,
                "redirect_url": callback_url, "customer": {"email": email}, "meta": dict(metadata)}
        payload = self.api_request("POST", "payments", "initialize", content=base.json_dumps(body),
                                   headers_extra={"Content-Type": "application/json"})
        data = payload.get("data")
        if not isinstance(data, dict) or not isinstance(data.get("link"), str):
            raise base.PermanentGatewayError("flutterwave payments: no link")
        return base.CheckoutSession(checkout_url=data["link"])

    def refund(self, *, reference: str, gateway_transaction_id: str, amount: int, currency: str,
               note: str) -> base.RefundResult:
        if not gateway_transaction_id:
            raise base.PermanentGatewayError("flutterwave refund needs the transaction id", sent=False)
        body = {"amount": minor_to_major(amount, currency), "comments": note}
        payload = self.api_request("POST", f"transactions/{quote(gateway_transaction_id, safe='')}/refund",
                                   "refund", content=base.json_dumps(body),
                                   headers_extra={"Content-Type": "application/json"})
        data = payload.get("data")
        if payload.get("status") != "success" or not isinstance(data, dict):
            raise base.PermanentGatewayError("flutterwave refund: unexpected answer shape")
        return self._refund_result(data, currency)

    def refund_fetch(self, gateway_refund_id: str) -> base.RefundResult | None:
        payload = self.api_request("GET", f"refunds/{quote(gateway_refund_id, safe='')}", "refund_fetch")
        data = payload.get("data")
        if payload.get("status") != "success" or not isinstance(data, dict):
            raise base.PermanentGatewayError("flutterwave refund fetch: unexpected answer shape")
        currency = base.as_str(data.get("currency"), 3).upper()
        charge_id = base.as_id(_refund_charge_id(data), 64)
        if not currency and charge_id:
            # The refund object carries no currency: the charge it refunds does.
            with contextlib.suppress(base.PermanentGatewayError):
                currency = self.verify_transaction(reference="", gateway_transaction_id=charge_id).currency
        return self._refund_result(data, currency, fallback_id=gateway_refund_id)

    def refunds_for_transaction(self, *, reference: str,
                                gateway_transaction_id: str) -> list[base.RefundResult] | None:
        # The charge gives the currency (refund rows have none), its id and its date for the `from` filter.
        charge = self.verify_transaction(reference=reference, gateway_transaction_id=gateway_transaction_id)
        charge_id = gateway_transaction_id or charge.gateway_transaction_id
        if not charge_id:
            raise base.PermanentGatewayError("flutterwave refund list: no transaction id to ask about")
        params: dict[str, str | int] = {"currency": charge.currency}
        with contextlib.suppress(ValueError):
            # A day early: `from` is a calendar date, and Flutterwave's day (WAT) may start before ours.
            params["from"] = (date.fromisoformat(charge.paid_at[:10]) - timedelta(days=1)).isoformat()
        found: list[base.RefundResult] = []
        for page in range(1, _LIST_MAX_PAGES + 1):
            # No documented filter names the charge: every row is checked against its id here.
            payload = self.api_request("GET", "refunds", "refund_list", params={**params, "page": page})
            rows = payload.get("data")
            if payload.get("status") != "success" or not isinstance(rows, list):
                raise base.PermanentGatewayError("flutterwave refund list: unexpected answer shape")
            for row in rows:
                if isinstance(row, dict) and base.as_id(_refund_charge_id(row), 64) == charge_id:
                    found.append(self._refund_result(row, charge.currency))
            info = payload.get("meta", {}).get("page_info") if isinstance(payload.get("meta"), dict) else None
            total_pages = info.get("total_pages") if isinstance(info, dict) else None
            if not rows or not isinstance(total_pages, int) or isinstance(total_pages, bool) or page >= total_pages:
                return found
        raise base.PermanentGatewayError(
            f"flutterwave refund list: more than {_LIST_MAX_PAGES} pages for transaction {charge_id}")

    def _refund_result(self, data: dict[str, Any], currency: str, fallback_id: str = "") -> base.RefundResult:
        """A refund object (create, fetch, list row); amount_refunded is in major units of `currency`."""
        currency = base.as_str(data.get("currency"), 3).upper() or currency
        amount: int | None = None
        if currency and data.get("amount_refunded") is not None:
            with contextlib.suppress(MoneyError):
                amount = major_to_minor(data.get("amount_refunded"), currency)
        return base.RefundResult(
            gateway_refund_id=base.as_id(data.get("id"), 64) or fallback_id,
            status=_refund_status(data.get("status")),
            amount=amount,
            refund_reference=base.as_id(data.get("flw_ref"), 64),
            currency=currency,
        )

    def callback_reference(self, query: Mapping[str, str]) -> tuple[str, str]:
        return (query.get("tx_ref") or "")[:100], (query.get("transaction_id") or "")[:64]

    # -- recorded examples (the shapes of Flutterwave's documented v3 answers) -----------------------------
    def example_verify_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> base.RecordedAnswer:
        major = minor_to_major(amount, currency)
        path = f"transactions/{quote(transaction_id, safe='')}/verify"
        return base.RecordedAnswer("GET", f"{self.base_url()}{path}", {
            "status": "success", "message": "Transaction fetched successfully", "data": {
                "id": int(transaction_id), "tx_ref": reference, "flw_ref": "FLW-MOCK-1", "device_fingerprint": "N/A",
                "amount": major, "currency": currency, "charged_amount": major, "app_fee": 0, "merchant_fee": 0,
                "processor_response": "Approved. Successful", "auth_model": "PIN", "ip": "41.58.0.1",
                "narration": "CARD Transaction ", "status": "successful", "payment_type": "card",
                "created_at": "2026-11-26T05:00:00.000Z", "account_id": 17321, "amount_settled": major,
                "card": {"first_6digits": "553188", "last_4digits": "2950", "issuer": "MASTERCARD",
                         "type": "MASTERCARD", "expiry": "09/32"},
                "meta": None, "customer": {"id": 215604089, "name": "Ada Obi", "email": "ada@example.com"}}})

    def example_refund_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> base.RecordedAnswer:
        path = f"transactions/{quote(transaction_id, safe='')}/refund"
        return base.RecordedAnswer("POST", f"{self.base_url()}{path}", {
            "status": "success", "message": "Transaction refund initiated", "data": {
                "id": 75923, "account_id": 73362, "tx_id": int(transaction_id), "flw_ref": "URF_1577867664541_3572735",
                "wallet_id": 74639, "amount_refunded": minor_to_major(amount, currency), "status": "completed",
                "destination": "payment_source", "meta": {"source": "availablebalance"},
                "created_at": "2021-01-24T09:18:37.366Z"}})

    def example_callback_query(self, *, reference: str, transaction_id: str) -> dict[str, str]:
        return {"status": "successful", "tx_ref": reference, "transaction_id": transaction_id}
