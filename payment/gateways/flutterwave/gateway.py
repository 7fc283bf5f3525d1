"""Flutterwave webhook authentication, event parsing, and API client (verify, payments, refund)."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from django.conf import settings
from django.utils import timezone

from payment.gateways import base
from payment.gateways.registry import register
from payment.money import MoneyError, major_to_minor, minor_to_major

HASH_HEADER = "verif-hash"
SIGNATURE_HEADER = "flutterwave-signature"

_OUTCOMES = {
    "successful": base.OUTCOME_SUCCESS,
    "succeeded": base.OUTCOME_SUCCESS,  # v4 wording (UNVERIFIED in gateways.md)
    "failed": base.OUTCOME_FAILED,
    "cancelled": base.OUTCOME_ABANDONED,
}

_REFUND_STATUSES = {"completed": "processed", "successful": "processed", "failed": "failed"}

_CHARGE_EVENTS = frozenset({"charge.completed"})


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


@register
class FlutterwaveGateway(base.Gateway):
    name = "flutterwave"
    secret_headers = frozenset({HASH_HEADER, SIGNATURE_HEADER})
    secret_setting = "FLUTTERWAVE_WEBHOOK_HASH"
    base_url_setting = "FLUTTERWAVE_BASE_URL"

    def webhook_secrets(self) -> list[str]:
        return [s for s in settings.FLUTTERWAVE_WEBHOOK_HASH if s]

    def api_key(self) -> str:
        keys = [k for k in settings.FLUTTERWAVE_SECRET_KEY if k]
        if not keys:
            raise base.PermanentGatewayError("FLUTTERWAVE_SECRET_KEY is not configured", sent=False)
        return keys[0]

    def key_mode(self) -> str:
        keys = [k for k in settings.FLUTTERWAVE_SECRET_KEY if k]
        return "test" if not keys or _is_test_key(keys[0]) else "live"

    def configured_key_modes(self) -> dict[str, set[str]]:
        public = settings.FLUTTERWAVE_PUBLIC_KEY
        public_keys = [k.strip() for k in (public.split(",") if isinstance(public, str) else public) if k.strip()]
        return {"FLUTTERWAVE_SECRET_KEY": {"test" if _is_test_key(k) else "live"
                                           for k in settings.FLUTTERWAVE_SECRET_KEY if k},
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
                # Two reported meanings (gateways.md, UNVERIFIED): the hash verbatim, or base64 of
                # HMAC-SHA256(raw body) keyed with it. Accept either.
                given = signature.strip().encode("utf-8", "replace")
                mac = base64.b64encode(hmac.new(secret_bytes, body, hashlib.sha256).digest())
                ok = hmac.compare_digest(secret_bytes, given) or ok
                ok = hmac.compare_digest(mac, given) or ok
        return ok

    def parse_event(self, body: bytes) -> base.ParsedEvent:
        # v3: {"event", "data"}; v4: {"id": "wbk_...", "type", "data"} (UNVERIFIED shape).
        name, data = base.envelope(body, name_keys=("event", "type"))
        if name not in _CHARGE_EVENTS:
            return base.ignored_event(self.name, name, body, data.get("tx_ref"))
        reference = base.as_str(data.get("tx_ref")) or base.as_str(data.get("reference"))
        if not reference:
            raise base.InvalidPayloadError("charge.completed without data.tx_ref")
        currency = base.as_str(data.get("currency"), 3).upper()
        amount = _amount(data.get("amount"), currency or "NGN", "data.amount")
        transaction_id = base.as_str(data.get("id"), 64)
        status = base.as_str(data.get("status"), 32)
        return base.ParsedEvent(
            gateway=self.name,
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
            reference=base.as_str(data.get("tx_ref")),
            gateway_transaction_id=base.as_str(data.get("id"), 64),
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
        status = base.as_str(data.get("status"), 32).lower()
        return base.RefundResult(gateway_refund_id=base.as_str(data.get("id"), 64),
                                 status=_REFUND_STATUSES.get(status, "processing"))

    def callback_reference(self, query: Mapping[str, str]) -> tuple[str, str]:
        return (query.get("tx_ref") or "")[:100], (query.get("transaction_id") or "")[:64]
