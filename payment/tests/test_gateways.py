"""Signature vectors and parsing of recorded payloads for both gateways."""

from __future__ import annotations

import base64
import hashlib
import hmac
from decimal import Decimal
from pathlib import Path

import pytest

from payment.gateways.base import InvalidPayloadError
from payment.gateways.registry import gateway_get
from payment.money import MoneyError, major_to_minor, parse_minor

from .conftest import FLW_HASH, PAYSTACK_KEY, PAYSTACK_OLD_KEY

PAYLOADS = Path(__file__).parent / "payloads"


def load(name: str) -> bytes:
    return (PAYLOADS / name).read_bytes()


def paystack_sig(body: bytes, key: str = PAYSTACK_KEY) -> str:
    return hmac.new(key.encode(), body, hashlib.sha512).hexdigest()


# --- Paystack signatures ------------------------------------------------------------------------------------
def test_paystack_signature_good_over_raw_bytes() -> None:
    body = load("paystack_charge_success.json")  # pretty-printed: re-serialising would change the bytes
    assert gateway_get("paystack").verify_signature(body, {"x-paystack-signature": paystack_sig(body)})


def test_paystack_signature_uppercase_hex_accepted() -> None:
    body = load("paystack_charge_success.json")
    assert gateway_get("paystack").verify_signature(body, {"x-paystack-signature": paystack_sig(body).upper()})


def test_paystack_signature_wrong_key() -> None:
    body = load("paystack_charge_success.json")
    assert not gateway_get("paystack").verify_signature(
        body, {"x-paystack-signature": paystack_sig(body, "sk_test_someone_else")})


def test_paystack_signature_tampered_body() -> None:
    body = load("paystack_charge_success.json")
    sig = paystack_sig(body)
    tampered = body.replace(b'"amount": 10000', b'"amount": 99999')
    assert tampered != body
    assert not gateway_get("paystack").verify_signature(tampered, {"x-paystack-signature": sig})


def test_paystack_signature_over_reserialised_json_fails() -> None:
    import json

    body = load("paystack_charge_success.json")
    reserialised = json.dumps(json.loads(body)).encode()
    assert not gateway_get("paystack").verify_signature(body, {"x-paystack-signature": paystack_sig(reserialised)})


@pytest.mark.parametrize("headers", [{}, {"x-paystack-signature": ""}, {"x-paystack-signature": "zz\u00e9"}])
def test_paystack_signature_missing_or_garbage_header(headers: dict[str, str]) -> None:
    assert not gateway_get("paystack").verify_signature(b"{}", headers)


def test_paystack_signature_empty_secret_fails_closed(settings) -> None:
    from payment.gateways.registry import registry_reset

    settings.PAYSTACK_SECRET_KEY = []
    registry_reset()
    body = b'{"event":"charge.success","data":{}}'
    # An HMAC keyed with the empty string must not pass when no secret is configured.
    assert not gateway_get("paystack").verify_signature(body, {"x-paystack-signature": paystack_sig(body, "")})


def test_paystack_signature_rotated_secret_verifies_and_first_signs() -> None:
    gateway = gateway_get("paystack")
    body = load("paystack_charge_success.json")
    assert gateway.verify_signature(body, {"x-paystack-signature": paystack_sig(body, PAYSTACK_OLD_KEY)})
    assert gateway.sign_webhook(body)["x-paystack-signature"] == paystack_sig(body, PAYSTACK_KEY)


# --- Flutterwave --------------------------------------------------------------------------------------------
def test_flutterwave_verif_hash_good_and_wrong() -> None:
    gateway = gateway_get("flutterwave")
    body = load("flutterwave_charge_completed.json")
    assert gateway.verify_signature(body, {"verif-hash": FLW_HASH})
    assert not gateway.verify_signature(body, {"verif-hash": "nope"})
    assert not gateway.verify_signature(body, {})


def test_flutterwave_signature_header_both_forms() -> None:
    gateway = gateway_get("flutterwave")
    body = load("flutterwave_v4_charge_completed.json")
    mac = base64.b64encode(hmac.new(FLW_HASH.encode(), body, hashlib.sha256).digest()).decode()
    assert gateway.verify_signature(body, {"flutterwave-signature": FLW_HASH})
    assert gateway.verify_signature(body, {"flutterwave-signature": mac})
    assert not gateway.verify_signature(body + b" ", {"flutterwave-signature": mac})  # tampered body
    assert not gateway.verify_signature(body, {"flutterwave-signature": base64.b64encode(b"x" * 32).decode()})


def test_flutterwave_empty_secret_fails_closed(settings) -> None:
    from payment.gateways.registry import registry_reset

    settings.FLUTTERWAVE_WEBHOOK_HASH = [""]
    registry_reset()
    assert not gateway_get("flutterwave").verify_signature(b"{}", {"verif-hash": ""})
    assert not gateway_get("flutterwave").verify_signature(b"{}", {"verif-hash": "anything"})


def test_flutterwave_rotated_hash(settings) -> None:
    from payment.gateways.registry import registry_reset

    settings.FLUTTERWAVE_WEBHOOK_HASH = ["new-hash", "old-hash"]
    registry_reset()
    gateway = gateway_get("flutterwave")
    assert gateway.verify_signature(b"{}", {"verif-hash": "old-hash"})
    assert gateway.sign_webhook(b"{}")["verif-hash"] == "new-hash"


# --- parsing ------------------------------------------------------------------------------------------------
def test_paystack_parse_charge_success_recorded() -> None:
    parsed = gateway_get("paystack").parse_event(load("paystack_charge_success.json"))
    assert parsed.kind == "charge"
    assert (parsed.reference, parsed.gateway_transaction_id, parsed.amount, parsed.currency, parsed.mode) == (
        "qTPrJoy9Bx", "302961", 10000, "NGN", "live")
    assert parsed.dedupe_key == "charge.success:qTPrJoy9Bx:302961:success"


@pytest.mark.parametrize("name,status", [("paystack_refund_processed.json", "processed"),
                                         ("paystack_refund_pending.json", "processing"),
                                         ("paystack_refund_failed.json", "failed")])
def test_paystack_parse_refund_events_string_amounts(name: str, status: str) -> None:
    parsed = gateway_get("paystack").parse_event(load(name))
    assert parsed.kind == "refund"
    assert parsed.reference == "T333467862384823"
    assert parsed.amount == 5000  # "5000" (a string) in the recorded payload is still minor units
    assert parsed.status == status


@pytest.mark.parametrize("name", ["paystack_transfer_success.json", "paystack_charge_dispute_create.json"])
def test_paystack_parse_unhandled_events_are_other(name: str) -> None:
    parsed = gateway_get("paystack").parse_event(load(name))
    assert parsed.kind == "other"


def test_flutterwave_parse_charge_completed_major_units() -> None:
    parsed = gateway_get("flutterwave").parse_event(load("flutterwave_charge_completed.json"))
    assert (parsed.kind, parsed.reference, parsed.gateway_transaction_id, parsed.amount, parsed.status) == (
        "charge", "Links-616626414629", "285959875", 10000, "successful")


def test_flutterwave_parse_fractional_amount_without_float() -> None:
    parsed = gateway_get("flutterwave").parse_event(load("flutterwave_charge_completed_failed.json"))
    assert parsed.amount == 10000075  # 100000.75 NGN
    assert parsed.status == "failed"


def test_flutterwave_parse_v4_shape() -> None:
    parsed = gateway_get("flutterwave").parse_event(load("flutterwave_v4_charge_completed.json"))
    assert (parsed.event, parsed.reference, parsed.gateway_transaction_id, parsed.amount) == (
        "charge.completed", "Links-v4-0001", "chg_5cQz2Nfw3m", 250050)


def test_flutterwave_parse_other_event_ignored() -> None:
    assert gateway_get("flutterwave").parse_event(load("flutterwave_transfer_completed.json")).kind == "other"


@pytest.mark.parametrize("body", [
    b"not json", b"[]", b'{"event": 1, "data": {}}', b'{"event": "charge.success"}',
    b'{"event": "charge.success", "data": {"amount": 100}}',  # no reference
    b'{"event": "charge.success", "data": {"reference": "r", "amount": 1.5}}',  # fractional minor units
    b'{"event": "charge.success", "data": {"reference": "r", "amount": NaN}}',
    b'{"event": "charge.success", "event": "x", "data": {}}',  # duplicate keys
    b"\xff\xfe{}",  # invalid UTF-8
])
def test_paystack_parse_rejects_unexpected_json(body: bytes) -> None:
    with pytest.raises(InvalidPayloadError):
        gateway_get("paystack").parse_event(body)


def test_flutterwave_parse_rejects_amount_with_too_many_decimals() -> None:
    body = b'{"event": "charge.completed", "data": {"id": 1, "tx_ref": "r", "amount": 10.001, "currency": "NGN"}}'
    with pytest.raises(InvalidPayloadError):
        gateway_get("flutterwave").parse_event(body)


def test_money_conversion_exact() -> None:
    assert major_to_minor(Decimal("1500.50"), "NGN") == 150050
    assert major_to_minor(1500, "UGX") == 1500
    assert major_to_minor("0.07", "USD") == 7
    assert parse_minor("5000") == 5000
    with pytest.raises(MoneyError):
        major_to_minor(0.1, "NGN")  # floats are refused outright
    with pytest.raises(MoneyError):
        parse_minor("12.5")
