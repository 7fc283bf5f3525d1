"""Acme's webhook check, event parsing and API client: the whole of a third gateway, in its own folder.

Nothing outside this folder names it: the registry loads it through PAYSHIFT_GATEWAY_MODULES, its settings
(ACME_SECRET_KEY, ACME_WEBHOOK_SECRET, ACME_BASE_URL) are read through `Gateway.setting`, and
payment/tests/test_gateway_contract.py runs the contract suite and a full webhook flow over it.
Its wire format is deliberately unlike Paystack's and Flutterwave's: `{"id", "type", "payment"|"refund"}`
envelopes with an event id, amounts as `{"minor", "currency"}` objects, `livemode` for the mode.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from django.utils import timezone

from payment.gateways import base
from payment.gateways.registry import register
from payment.money import MoneyError, parse_minor

SIGNATURE_HEADER = "x-acme-signature"

# payment.state -> neutral outcome; anything else (authorised, processing, unknown words) stays pending.
_OUTCOMES = {
    "captured": base.OUTCOME_SUCCESS,
    "declined": base.OUTCOME_FAILED,
    "expired": base.OUTCOME_ABANDONED,
    "reversed": base.OUTCOME_REVERSED,
}
# refund.state -> models.RefundStatus value.
_REFUND_STATUSES = {"pending": "processing", "settled": "processed", "rejected": "failed"}
# Webhook status words of test_webhook's --status -> Acme's payment states.
_TEST_STATES = {"success": "captured", "failed": "declined"}


def _money(value: object, where: str) -> tuple[int, str]:
    """(minor units, currency) of an `{"minor": 500000, "currency": "NGN"}` object."""
    if not isinstance(value, dict):
        raise base.InvalidPayloadError(f"{where} is not an amount object")
    try:
        minor = parse_minor(value.get("minor"))
    except MoneyError as exc:
        raise base.InvalidPayloadError(f"{where}.minor: {exc}") from exc
    return minor, base.as_str(value.get("currency"), 3).upper()


def _mode(payload: Mapping[str, Any]) -> str:
    return "live" if payload.get("livemode") is True else "test"


def _payment_event(event_id: str, name: str, payload: dict[str, Any]) -> base.ParsedEvent:
    data = payload.get("payment")
    if not isinstance(data, dict):
        raise base.InvalidPayloadError(f"{name} without a 'payment' object")
    reference = base.as_id(data.get("merchant_reference"))
    if not reference:
        raise base.InvalidPayloadError(f"{name} without payment.merchant_reference")
    amount, currency = _money(data.get("amount"), "payment.amount")
    state = base.as_str(data.get("state"), 32)
    return base.ParsedEvent(
        gateway=AcmeGateway.name, event=name, kind="charge",
        # Acme names every event and resends it under the same id.
        dedupe_key=base.bounded_key(f"{name}:{event_id}", 255),
        reference=reference, gateway_transaction_id=base.as_id(data.get("id"), 64), status=state,
        amount=amount, currency=currency, mode=_mode(payload), outcome=_OUTCOMES.get(state, base.OUTCOME_PENDING))


def _refund_event(event_id: str, name: str, payload: dict[str, Any]) -> base.ParsedEvent:
    data = payload.get("refund")
    if not isinstance(data, dict):
        raise base.InvalidPayloadError(f"{name} without a 'refund' object")
    refund_id = base.as_id(data.get("id"), 64)
    if not refund_id:
        raise base.InvalidPayloadError(f"{name} without refund.id")
    amount, currency = _money(data.get("amount"), "refund.amount")
    return base.ParsedEvent(
        gateway=AcmeGateway.name, event=name, kind="refund",
        dedupe_key=base.bounded_key(f"{name}:{event_id}", 255),
        reference=base.as_id(data.get("merchant_reference")),
        gateway_transaction_id=base.as_id(data.get("payment_id"), 64),
        status=_REFUND_STATUSES.get(base.as_str(data.get("state"), 32), "processing"),
        amount=amount, currency=currency, mode=_mode(payload), refund_id=refund_id)


# Dispatch table: event type -> parser. Anything else is authentic but ignored.
_PARSERS: dict[str, Callable[[str, str, dict[str, Any]], base.ParsedEvent]] = {
    "payment.captured": _payment_event,
    "payment.declined": _payment_event,
    "refund.pending": _refund_event,
    "refund.settled": _refund_event,
    "refund.rejected": _refund_event,
}


def _refund_result(data: object, currency: str = "") -> base.RefundResult:
    if not isinstance(data, dict) or not base.as_id(data.get("id"), 64):
        raise base.PermanentGatewayError("acme refund: unexpected answer shape")
    amount: int | None = None
    # An answer without a readable amount leaves it unknown, never guessed.
    with contextlib.suppress(base.InvalidPayloadError):
        amount, currency = _money(data.get("amount"), "refund.amount")
    return base.RefundResult(gateway_refund_id=base.as_id(data.get("id"), 64),
                             status=_REFUND_STATUSES.get(base.as_str(data.get("state"), 32), "processing"),
                             amount=amount, currency=currency)


def _key_mode(key: str) -> str:
    return "live" if key.startswith("acme_live_") else "test"


@register
class AcmeGateway(base.Gateway):
    name = "acme"
    secret_headers = frozenset({SIGNATURE_HEADER})
    secret_setting = "ACME_WEBHOOK_SECRET"
    base_url_setting = "ACME_BASE_URL"
    base_url_default = "https://api.acme.example/v1"
    charge_event = "payment.captured"
    refund_event = "refund.settled"
    redacted_fields = frozenset({"pan_last4", "card_fingerprint"})
    demo_settings = {"ACME_SECRET_KEY": "acme_test_payshift_demo", "ACME_WEBHOOK_SECRET": "acme_payshift_demo_hook"}
    test_settings = {"ACME_SECRET_KEY": "acme_test_unit_key",
                     "ACME_WEBHOOK_SECRET": ["acme-unit-webhook-secret", "acme-unit-webhook-secret-old"],
                     "ACME_BASE_URL": "https://api.acme.test/v1"}

    def webhook_secrets(self) -> list[str]:
        return self.setting_list("ACME_WEBHOOK_SECRET")

    def api_key(self) -> str:
        keys = self.setting_list("ACME_SECRET_KEY")
        if not keys:
            raise base.PermanentGatewayError("ACME_SECRET_KEY is not configured", sent=False)
        return keys[0]

    def key_mode(self) -> str:
        keys = self.setting_list("ACME_SECRET_KEY")
        return _key_mode(keys[0]) if keys else "test"

    def configured_key_modes(self) -> dict[str, set[str]]:
        return {"ACME_SECRET_KEY": {_key_mode(k) for k in self.setting_list("ACME_SECRET_KEY")}}

    def verify_signature(self, body: bytes, headers: Mapping[str, str]) -> bool:
        provided = headers.get(SIGNATURE_HEADER, "").strip().lower().encode("utf-8", "replace")
        if not provided:
            return False
        ok = False
        for secret in self.webhook_secrets():
            expected = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest().encode()
            ok = hmac.compare_digest(expected, provided) or ok  # every key checked (rotation)
        return ok

    def sign_webhook(self, body: bytes) -> dict[str, str]:
        secrets = self.webhook_secrets()
        if not secrets:
            raise base.PermanentGatewayError("ACME_WEBHOOK_SECRET is not configured", sent=False)
        return {"content-type": "application/json",
                SIGNATURE_HEADER: hmac.new(secrets[0].encode(), body, hashlib.sha256).hexdigest()}

    def parse_event(self, body: bytes) -> base.ParsedEvent:
        payload = base.json_loads_strict(body)
        if not isinstance(payload, dict):
            raise base.InvalidPayloadError("acme event is not a JSON object")
        name, event_id = payload.get("type"), base.as_id(payload.get("id"), 200)
        if not isinstance(name, str) or not name or len(name) > 100 or not event_id:
            raise base.InvalidPayloadError("acme event without a string 'type' and an 'id'")
        parser = _PARSERS.get(name)
        if parser is None:
            return base.ignored_event(self.name, name, body, "")
        return parser(event_id, name, payload)

    def build_test_webhook(self, *, event: str, reference: str, transaction_id: str, status: str,
                           amount: int, currency: str, mode: str, email: str) -> dict[str, Any]:
        parser = _PARSERS.get(event)
        if parser is None:
            raise base.UnbuildableEventError(f"acme sends no {event}; its events: {', '.join(_PARSERS)}")
        # The same fact gets the same event id, so a resend is a duplicate as at Acme.
        event_id = "evt_" + hashlib.sha256(f"{event}:{reference}:{transaction_id}:{status}".encode()).hexdigest()[:24]
        money = {"minor": amount, "currency": currency}
        envelope = {"id": event_id, "type": event, "livemode": mode == "live",
                    "created": timezone.now().isoformat().replace("+00:00", "Z")}
        if parser is _refund_event:
            return {**envelope, "refund": {"id": f"re_{transaction_id}", "payment_id": transaction_id,
                                           "merchant_reference": reference, "amount": money,
                                           "state": event.removeprefix("refund.")}}
        return {**envelope, "payment": {
            "id": transaction_id, "merchant_reference": reference, "amount": money,
            "state": _TEST_STATES.get(status, status),
            "customer": {"email": email},
            "card": {"brand": "visa", "pan_last4": "4242", "card_fingerprint": "fp_payshift_acme"}}}

    def verify_transaction(self, *, reference: str, gateway_transaction_id: str = "") -> base.Verification:
        payload = self.api_request("GET", f"payments/{quote(reference, safe='')}", "verify")
        data = payload.get("payment")
        if not isinstance(data, dict):
            raise base.PermanentGatewayError("acme verify: unexpected answer shape")
        try:
            amount, currency = _money(data.get("amount"), "payment.amount")
        except base.InvalidPayloadError as exc:
            raise base.PermanentGatewayError(f"acme verify: {exc}") from exc
        state = base.as_str(data.get("state"), 32)
        return base.Verification(
            reference=base.as_id(data.get("merchant_reference")), gateway_transaction_id=base.as_id(data.get("id"), 64),
            outcome=_OUTCOMES.get(state, base.OUTCOME_PENDING), amount=amount, currency=currency,
            mode=_mode(data), raw_status=state, paid_at=base.as_str(data.get("captured_at"), 40))

    def initialize_checkout(self, *, reference: str, amount: int, currency: str, email: str,
                            callback_url: str, metadata: Mapping[str, Any]) -> base.CheckoutSession:
        payload = self.api_request("POST", "checkouts", "initialize", json={
            "merchant_reference": reference, "amount": {"minor": amount, "currency": currency},
            "customer_email": email, "return_url": callback_url, "metadata": dict(metadata)})
        data = payload.get("checkout")
        if not isinstance(data, dict) or not isinstance(data.get("url"), str):
            raise base.PermanentGatewayError("acme checkouts: no url")
        return base.CheckoutSession(checkout_url=data["url"], gateway_reference=base.as_str(data.get("id")))

    def refund(self, *, reference: str, gateway_transaction_id: str, amount: int, currency: str,
               note: str) -> base.RefundResult:
        if not gateway_transaction_id:
            raise base.PermanentGatewayError("acme refund needs the payment id", sent=False)
        payload = self.api_request("POST", f"payments/{quote(gateway_transaction_id, safe='')}/refunds", "refund",
                                   json={"amount": {"minor": amount, "currency": currency}, "reason": note})
        return _refund_result(payload.get("refund"), currency)

    def callback_reference(self, query: Mapping[str, str]) -> tuple[str, str]:
        return (query.get("merchant_reference") or "")[:100], (query.get("payment_id") or "")[:64]

    # -- recorded examples ---------------------------------------------------------------------------------
    def example_verify_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> base.RecordedAnswer:
        return base.RecordedAnswer("GET", f"{self.base_url()}payments/{quote(reference, safe='')}", {"payment": {
            "id": transaction_id, "merchant_reference": reference, "state": "captured", "livemode": False,
            "amount": {"minor": amount, "currency": currency}, "captured_at": "2026-11-26T05:00:00Z",
            "card": {"brand": "visa", "pan_last4": "4242", "card_fingerprint": "fp_payshift_acme"}}})

    def example_refund_answer(self, *, reference: str, transaction_id: str, amount: int,
                              currency: str) -> base.RecordedAnswer:
        return base.RecordedAnswer("POST", f"{self.base_url()}payments/{quote(transaction_id, safe='')}/refunds",
                                   {"refund": {"id": "re_7001", "payment_id": transaction_id, "state": "pending",
                                               "amount": {"minor": amount, "currency": currency}}}, status=201)

    def example_callback_query(self, *, reference: str, transaction_id: str) -> dict[str, str]:
        return {"merchant_reference": reference, "payment_id": transaction_id}
