"""Signature vectors and parsing of recorded payloads for both gateways."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import respx

from payment.gateways.base import InvalidPayloadError, PermanentGatewayError, RefundResult, api_timeout, json_dumps
from payment.gateways.registry import gateway_get, registry_reset
from payment.money import MoneyError, major_to_minor, parse_minor

from .conftest import (
    FLW_API,
    FLW_HASH,
    FLW_KEY,
    PAYSTACK_API,
    PAYSTACK_KEY,
    PAYSTACK_OLD_KEY,
    paystack_charge,
    paystack_verify_answer,
)

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


# --- refunds at the gateway edge ----------------------------------------------------------------------------
def _json(payload: object) -> httpx.Response:
    return httpx.Response(200, content=json_dumps(payload))


def _paystack_row(refund_id: int, transaction: int, reference: str, amount: int, status: str = "processed",
                  refund_reference: str | None = None) -> dict[str, Any]:
    return {"id": refund_id, "transaction": transaction, "transaction_reference": reference, "amount": amount,
            "currency": "NGN", "status": status, "domain": "test", "refund_reference": refund_reference}


def test_paystack_refund_event_pending_has_no_refund_reference() -> None:
    parsed = gateway_get("paystack").parse_event(load("paystack_refund_pending.json"))
    assert (parsed.kind, parsed.reference, parsed.refund_reference, parsed.refund_id) == (
        "refund", "T333467862384823", "", "")
    assert (parsed.status, parsed.amount, parsed.currency) == ("processing", 5000, "NGN")
    assert parsed.mode in ("test", "live")


def test_paystack_refund_event_with_an_id_keeps_id_and_reference_apart() -> None:
    parsed = gateway_get("paystack").parse_event(load("paystack_refund_needs_attention.json"))
    # The body's id is the refund id; its refund_reference is null, so there is no reference yet.
    assert (parsed.refund_id, parsed.refund_reference, parsed.status, parsed.mode) == (
        "3018301", "", "processing", "live")
    processed = gateway_get("paystack").parse_event(load("paystack_refund_processed.json"))
    assert (processed.refund_reference, processed.refund_id, processed.status) == (
        "TRF_x7ao6q9ycvzzyvi", "", "processed")


def _paystack_refund_body(reference: str, refund_id: object = None, refund_reference: object = None) -> bytes:
    data = {"status": "pending", "transaction_reference": reference, "refund_reference": refund_reference,
            "amount": "5000", "currency": "NGN", "domain": "test"}
    if refund_id is not None:
        data["id"] = refund_id
    return json_dumps({"event": "refund.pending", "data": data})


def test_paystack_refund_dedupe_keys_tell_two_refunds_of_one_amount_apart() -> None:
    gateway = gateway_get("paystack")
    first = gateway.parse_event(_paystack_refund_body("T-1", refund_id="11", refund_reference="RF-1"))
    second = gateway.parse_event(_paystack_refund_body("T-1", refund_id="12", refund_reference="RF-1"))
    assert first.dedupe_key != second.dedupe_key
    again = gateway.parse_event(_paystack_refund_body("T-1", refund_id="11", refund_reference="RF-1"))
    assert again.dedupe_key == first.dedupe_key  # a resend is still a duplicate


def test_paystack_refund_dedupe_keys_never_collide_on_long_references() -> None:
    gateway = gateway_get("paystack")
    stem = "R" * 150  # alike well past the 100 characters a stored reference keeps
    keys = {gateway.parse_event(_paystack_refund_body(stem + tail)).dedupe_key for tail in ("a", "b")}
    assert len(keys) == 2
    assert all(len(key) <= 255 for key in keys)


@respx.mock
def test_paystack_refund_fetch_fills_reference_amount_and_currency() -> None:
    respx.get(f"{PAYSTACK_API}/refund/88").mock(return_value=_json({"status": True, "message": "Refund retrieved",
                                                                    "data": _paystack_row(88, 1001, "R-1", 200000,
                                                                                          refund_reference="1320")}))
    result = gateway_get("paystack").refund_fetch("88")
    assert result == RefundResult(gateway_refund_id="88", status="processed", amount=200000,
                                  refund_reference="1320", currency="NGN")


@respx.mock
def test_paystack_refund_create_answer_fills_the_new_fields() -> None:
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=_json({"status": True, "message": "queued", "data": {
        "id": 3018284, "amount": 10000, "currency": "NGN", "status": "pending", "transaction": {"id": 1}}}))
    result = gateway_get("paystack").refund(reference="R-1", gateway_transaction_id="1", amount=10000,
                                            currency="NGN", note="n")
    assert result == RefundResult(gateway_refund_id="3018284", status="processing", amount=10000,
                                  refund_reference="", currency="NGN")


@respx.mock
def test_paystack_refunds_for_transaction_pages_and_checks_every_row() -> None:
    pages = {
        "1": {"status": True, "message": "ok", "meta": {"total": 3, "pageCount": 2, "page": 1, "perPage": "100"},
              "data": [_paystack_row(2, 1001, "R-1", 500, "pending"), _paystack_row(3, 7777, "OTHER", 500)]},
        "2": {"status": True, "message": "ok", "meta": {"total": 3, "pageCount": 2, "page": 2, "perPage": "100"},
              "data": [_paystack_row(1, 1001, "R-1", 500, refund_reference="TRF_1")]},
    }
    route = respx.get(f"{PAYSTACK_API}/refund").mock(
        side_effect=lambda request: _json(pages[request.url.params["page"]]))
    results = gateway_get("paystack").refunds_for_transaction(reference="R-1", gateway_transaction_id="1001")
    # A row of another charge is dropped even when the server ignores the `transaction` filter.
    assert results == [
        RefundResult(gateway_refund_id="2", status="processing", amount=500, currency="NGN"),
        RefundResult(gateway_refund_id="1", status="processed", amount=500, refund_reference="TRF_1", currency="NGN"),
    ]
    assert [dict(call.request.url.params) for call in route.calls] == [
        {"transaction": "1001", "perPage": "100", "page": "1"}, {"transaction": "1001", "perPage": "100", "page": "2"}]


@respx.mock
def test_paystack_refunds_for_transaction_finds_the_id_when_unknown() -> None:
    respx.get(f"{PAYSTACK_API}/transaction/verify/R-9").mock(return_value=_json(
        {"status": True, "message": "Verification successful", "data": paystack_charge("R-9", tx_id=4242)["data"]}))
    route = respx.get(f"{PAYSTACK_API}/refund").mock(return_value=_json(
        {"status": True, "message": "ok", "meta": {"pageCount": 1}, "data": []}))
    assert gateway_get("paystack").refunds_for_transaction(reference="R-9", gateway_transaction_id="") == []
    assert route.calls.last.request.url.params["transaction"] == "4242"


@respx.mock
def test_paystack_refunds_for_transaction_refuses_to_answer_with_a_partial_list() -> None:
    respx.get(f"{PAYSTACK_API}/refund").mock(return_value=_json(
        {"status": True, "message": "ok", "meta": {"pageCount": 500},
         "data": [_paystack_row(1, 1001, "R-1", 500)]}))
    with pytest.raises(PermanentGatewayError, match="more than 20 pages"):
        gateway_get("paystack").refunds_for_transaction(reference="R-1", gateway_transaction_id="1001")


def test_flutterwave_parse_refund_completed_documented_body() -> None:
    parsed = gateway_get("flutterwave").parse_event(load("flutterwave/refund_completed.json"))
    assert (parsed.kind, parsed.event, parsed.status) == ("refund", "refund.completed", "processed")
    assert (parsed.refund_id, parsed.gateway_transaction_id, parsed.refund_reference) == (
        "75923", "908790", "URF_1577867664541_3572735")
    # The refund object names neither the charge reference nor a currency, so the major-unit amount
    # cannot be turned into minor units here: it is left unknown rather than guessed.
    assert (parsed.reference, parsed.currency, parsed.amount, parsed.mode) == ("", "", None, "")


def test_flutterwave_parse_refund_with_a_currency_converts_major_units() -> None:
    body = json_dumps({"event": "refund.completed", "data": {"id": 1, "tx_id": 2, "tx_ref": "Links-1",
                                                            "amount_refunded": Decimal("1500.5"), "currency": "ngn",
                                                            "status": "completed"}})
    parsed = gateway_get("flutterwave").parse_event(body)
    assert (parsed.amount, parsed.currency, parsed.reference) == (150050, "NGN", "Links-1")
    with pytest.raises(InvalidPayloadError):
        gateway_get("flutterwave").parse_event(body.replace(b"1500.5", b"1500.555"))


def test_flutterwave_parse_refund_v4_shape() -> None:
    parsed = gateway_get("flutterwave").parse_event(load("flutterwave/refund_completed_v4.json"))
    assert (parsed.kind, parsed.refund_id, parsed.gateway_transaction_id, parsed.status) == (
        "refund", "ref_Wz8vM2aQ1c", "chg_5cQz2Nfw3m", "processed")


@pytest.mark.parametrize("raw,status", [("completed", "processed"), ("completed-mpgs", "processed"),
                                        ("complete", "processed"), ("successful", "processed"),
                                        ("failed", "failed"), ("pending-momo", "processing"),
                                        ("processing", "processing"), ("pending", "processing"),
                                        ("weird", "processing"), (None, "processing")])
def test_flutterwave_refund_statuses_map_to_neutral_ones(raw: str | None, status: str) -> None:
    body = json_dumps({"event": "refund.completed", "data": {"id": 5, "tx_id": 6, "status": raw}})
    assert gateway_get("flutterwave").parse_event(body).status == status


def test_flutterwave_refund_dedupe_keys_per_refund_and_whole_ids() -> None:
    gateway = gateway_get("flutterwave")

    def key(refund_id: object) -> str:
        body = {"event": "refund.completed", "data": {"id": refund_id, "tx_id": 908790, "amount_refunded": 6900,
                                                      "status": "completed"}}
        parsed = gateway.parse_event(json_dumps(body))
        assert parsed.kind == "refund"
        return parsed.dedupe_key

    assert key(75923) != key(75924)  # two refunds of one amount on one charge
    assert key(75923) == key(75923)
    assert key("9" * 300 + "1") != key("9" * 300 + "2")  # never cut into a collision


@pytest.mark.parametrize("data", [{}, {"status": "completed", "amount_refunded": 1}, {"id": None, "tx_id": None}])
def test_flutterwave_refund_event_without_ids_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(InvalidPayloadError):
        gateway_get("flutterwave").parse_event(json_dumps({"event": "refund.completed", "data": data}))


def _flw_verify(tx_id: int, currency: str = "NGN", created_at: str = "2021-01-24T08:00:00.000Z") -> dict[str, Any]:
    return {"status": "success", "message": "Transaction fetched successfully", "data": {
        "id": tx_id, "tx_ref": "Links-908790", "amount": 20000, "currency": currency, "status": "successful",
        "created_at": created_at}}


@respx.mock
def test_flutterwave_refund_fetch_takes_the_currency_from_the_charge() -> None:
    respx.get(f"{FLW_API}/refunds/75923").mock(return_value=httpx.Response(200, content=load(
        "flutterwave/refund_fetch.json")))
    verify = respx.get(f"{FLW_API}/transactions/908790/verify").mock(return_value=_json(_flw_verify(908790)))
    result = gateway_get("flutterwave").refund_fetch("75923")
    assert result == RefundResult(gateway_refund_id="75923", status="processed", amount=690000,
                                  refund_reference="URF_1577867664541_3572735", currency="NGN")
    assert verify.call_count == 1


@respx.mock
def test_flutterwave_refund_fetch_with_a_currency_asks_nothing_else() -> None:
    respx.get(f"{FLW_API}/refunds/9").mock(return_value=_json({"status": "success", "message": "ok", "data": {
        "id": 9, "tx_id": 1, "amount_refunded": 50, "currency": "UGX", "status": "failed"}}))
    result = gateway_get("flutterwave").refund_fetch("9")
    assert result is not None and (result.status, result.amount, result.currency) == ("failed", 50, "UGX")
    assert len(respx.calls) == 1


@respx.mock
def test_flutterwave_refunds_for_transaction_filters_rows_client_side() -> None:
    respx.get(f"{FLW_API}/transactions/908790/verify").mock(return_value=_json(_flw_verify(908790)))
    route = respx.get(f"{FLW_API}/refunds").mock(return_value=httpx.Response(200, content=load(
        "flutterwave/refunds_list.json")))
    results = gateway_get("flutterwave").refunds_for_transaction(reference="Links-908790",
                                                                 gateway_transaction_id="908790")
    assert results == [
        RefundResult(gateway_refund_id="75925", status="processing", amount=10050,
                     refund_reference="URF_1577867664541_3572790", currency="NGN"),
        RefundResult(gateway_refund_id="75923", status="processed", amount=690000,
                     refund_reference="URF_1577867664541_3572735", currency="NGN"),
    ]
    # From the day before the charge (Flutterwave's day may begin before ours), in its currency.
    assert dict(route.calls.last.request.url.params) == {"currency": "NGN", "from": "2021-01-23", "page": "1"}


@respx.mock
def test_flutterwave_refunds_for_transaction_reads_every_page_or_refuses() -> None:
    respx.get(f"{FLW_API}/transactions/1/verify").mock(return_value=_json(_flw_verify(1)))
    row = {"id": 5, "amount_refunded": 1, "status": "completed", "flw_ref": "URF_5", "transaction_id": 1}
    pages = {"1": [row], "2": [{**row, "id": 6}]}
    respx.get(f"{FLW_API}/refunds").mock(side_effect=lambda request: _json({
        "status": "success", "message": "ok", "data": pages[request.url.params["page"]],
        "meta": {"page_info": {"total": 2, "current_page": 1, "total_pages": 2, "page_size": 1}}}))
    results = gateway_get("flutterwave").refunds_for_transaction(reference="", gateway_transaction_id="1")
    assert results is not None and [r.gateway_refund_id for r in results] == ["5", "6"]

    respx.get(f"{FLW_API}/refunds").mock(return_value=_json({
        "status": "success", "message": "ok", "data": [row],
        "meta": {"page_info": {"total": 9999, "current_page": 1, "total_pages": 9999, "page_size": 1}}}))
    with pytest.raises(PermanentGatewayError, match="more than 20 pages"):
        gateway_get("flutterwave").refunds_for_transaction(reference="", gateway_transaction_id="1")


@respx.mock
def test_flutterwave_refund_answer_fills_reference_amount_currency() -> None:
    respx.post(f"{FLW_API}/transactions/555/refund").mock(return_value=_json({
        "status": "success", "message": "Transaction refund initiated", "data": {
            "id": 9, "tx_id": 555, "flw_ref": "URF_9", "amount_refunded": Decimal("1500.5"),
            "status": "completed-mpgs"}}))
    result = gateway_get("flutterwave").refund(reference="R", gateway_transaction_id="555", amount=150050,
                                               currency="NGN", note="n")
    assert result == RefundResult(gateway_refund_id="9", status="processed", amount=150050,
                                  refund_reference="URF_9", currency="NGN")


# --- the clients against the sandbox: the two sides of each wire format agree ---------------------------------
@pytest.fixture
def sandbox() -> Iterator[tuple[Any, list[tuple[dict[str, str], bytes]]]]:
    """The sandbox app in-process, with this suite's keys; its webhooks are collected, not sent."""
    import warnings

    from payshift.sandbox import SandboxConfig, create_app

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette nudges towards httpx2 for its test client
        from starlette.testclient import TestClient

    hooks: list[tuple[dict[str, str], bytes]] = []

    def receive(request: httpx.Request) -> httpx.Response:
        hooks.append((dict(request.headers), request.read()))
        return httpx.Response(200)

    config = SandboxConfig(paystack_secret_keys=(PAYSTACK_KEY,), flutterwave_secret_keys=(FLW_KEY,),
                           flutterwave_webhook_hash=FLW_HASH, webhook_base_url="http://payshift.test",
                           public_url="http://sandbox.test", refund_delay_ms=20, webhook_retry_delay_ms=20)
    app = create_app(config, webhook_transport=httpx.MockTransport(receive))
    with TestClient(app, base_url="http://sandbox.test") as client:  # one loop for the refund timers
        yield client, hooks


def _wait_for(hooks: list[Any], count: int) -> list[Any]:
    deadline = time.monotonic() + 5
    while len(hooks) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(hooks) >= count, f"{len(hooks)} webhooks, expected {count}"
    return list(hooks)


def _on_sandbox(client: Any, gateway_name: str, prefix: str) -> Any:
    client.base_url = f"http://sandbox.test/{prefix}/"
    gateway = gateway_get(gateway_name)
    gateway._http = client  # the gateway's own request code, answered by the sandbox
    return gateway


def test_paystack_client_and_sandbox_agree_on_refunds(sandbox: Any) -> None:
    client, hooks = sandbox
    txn = client.post("http://sandbox.test/_sandbox/transactions", json={
        "gateway": "paystack", "reference": "SB-PS-1", "amount": 20000, "status": "success"}).json()
    gateway = _on_sandbox(client, "paystack", "paystack")
    created = gateway.refund(reference="SB-PS-1", gateway_transaction_id=str(txn["id"]), amount=5000,
                             currency="NGN", note="sandbox")
    assert (created.status, created.amount, created.currency, created.refund_reference) == (
        "processing", 5000, "NGN", "")
    events = []
    for headers, body in _wait_for(hooks, 3):
        assert gateway.verify_signature(body, headers)
        events.append(gateway.parse_event(body))
    assert [(e.event, e.status) for e in events] == [
        ("refund.pending", "processing"), ("refund.processing", "processing"), ("refund.processed", "processed")]
    assert {(e.kind, e.reference, e.amount, e.currency, e.mode) for e in events} == {
        ("refund", "SB-PS-1", 5000, "NGN", "test")}
    assert events[0].refund_reference == "" and events[2].refund_reference
    assert len({e.dedupe_key for e in events}) == 3
    fetched = gateway.refund_fetch(created.gateway_refund_id)
    assert fetched == RefundResult(gateway_refund_id=created.gateway_refund_id, status="processed", amount=5000,
                                   refund_reference=events[2].refund_reference, currency="NGN")
    # Without the transaction id (the POST's outcome was unknown), found through verify and the list.
    assert gateway.refunds_for_transaction(reference="SB-PS-1", gateway_transaction_id="") == [fetched]


def test_paystack_client_sees_a_failed_sandbox_refund(sandbox: Any) -> None:
    client, hooks = sandbox
    client.post("http://sandbox.test/_sandbox/faults", json={"refund_outcome": "failed"})
    client.post("http://sandbox.test/_sandbox/transactions", json={
        "gateway": "paystack", "reference": "SB-PS-2", "amount": 20000, "status": "success"})
    gateway = _on_sandbox(client, "paystack", "paystack")
    created = gateway.refund(reference="SB-PS-2", gateway_transaction_id="", amount=20000, currency="NGN", note="n")
    last = gateway.parse_event(_wait_for(hooks, 3)[2][1])
    assert (last.event, last.status) == ("refund.failed", "failed")
    fetched = gateway.refund_fetch(created.gateway_refund_id)
    assert fetched is not None and fetched.status == "failed"


def test_flutterwave_client_and_sandbox_agree_on_refunds(sandbox: Any) -> None:
    client, hooks = sandbox
    txn = client.post("http://sandbox.test/_sandbox/transactions", json={
        "gateway": "flutterwave", "reference": "SB-FW-1", "amount": 150050, "status": "success"}).json()
    gateway = _on_sandbox(client, "flutterwave", "flutterwave/v3")
    created = gateway.refund(reference="SB-FW-1", gateway_transaction_id=str(txn["id"]), amount=50025,
                             currency="NGN", note="sandbox")
    assert (created.status, created.amount, created.currency) == ("processing", 50025, "NGN")
    assert created.refund_reference.startswith("URF_")
    ((headers, body),) = _wait_for(hooks, 1)
    assert gateway.verify_signature(body, headers)
    event = gateway.parse_event(body)
    assert (event.kind, event.event, event.status) == ("refund", "refund.completed", "processed")
    assert (event.refund_id, event.gateway_transaction_id, event.refund_reference) == (
        created.gateway_refund_id, str(txn["id"]), created.refund_reference)
    fetched = gateway.refund_fetch(created.gateway_refund_id)
    assert fetched == RefundResult(gateway_refund_id=created.gateway_refund_id, status="processed", amount=50025,
                                   refund_reference=created.refund_reference, currency="NGN")
    assert gateway.refunds_for_transaction(reference="SB-FW-1", gateway_transaction_id=str(txn["id"])) == [fetched]


@respx.mock
def test_the_gateway_client_sends_the_whole_url_and_keeps_no_cookie_an_answer_sets() -> None:
    route = respx.get(url__regex=rf"{PAYSTACK_API}/transaction/verify/.*").mock(return_value=httpx.Response(
        200, json=paystack_verify_answer("R-CK-1"), headers={"Set-Cookie": "__cf_bm=abc; Path=/; HttpOnly"}))
    gateway = gateway_get("paystack")
    gateway.verify_transaction(reference="R-CK-1")
    gateway.verify_transaction(reference="R CK/2")
    first, second = (call.request for call in route.calls)
    assert str(first.url) == f"{PAYSTACK_API}/transaction/verify/R-CK-1"
    assert str(second.url) == f"{PAYSTACK_API}/transaction/verify/R%20CK%2F2"  # the reference stays one segment
    # Keys authenticate each call; a cookie one answer set does not ride along on the next.
    assert "cookie" not in second.headers
    assert first.headers["authorization"] == f"Bearer {PAYSTACK_KEY}"


def _calls_as_sent(gateway: Any) -> list[httpx.Request]:
    """A verify, a verify under a page's time ceiling, a refund (a JSON body) and a refund listing (query
    parameters), each request as it reached the transport."""
    sent: list[httpx.Request] = []
    real = httpx.HTTPTransport.handle_request

    def spy(transport: httpx.HTTPTransport, request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return real(transport, request)

    with mock.patch.object(httpx.HTTPTransport, "handle_request", spy):
        gateway.verify_transaction(reference="R-DT-1")
        with api_timeout(2.5):
            gateway.verify_transaction(reference="R-DT-1")
        gateway.refund(reference="R-DT-1", gateway_transaction_id="1001", amount=100, currency="NGN",
                       note="duplicate charge")
        gateway.refunds_for_transaction(reference="R-DT-1", gateway_transaction_id="1001")
    return sent


def _as_compared(request: httpx.Request) -> tuple[Any, ...]:
    return (request.method, str(request.url), request.headers.raw, request.content, request.extensions["timeout"])


@respx.mock
def test_a_call_goes_straight_to_the_transport_with_what_the_client_would_have_sent() -> None:
    respx.get(url__regex=rf"{PAYSTACK_API}/transaction/verify/.*").mock(
        return_value=httpx.Response(200, json=paystack_verify_answer("R-DT-1")))
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=httpx.Response(200, json={
        "status": True, "message": "Refund has been queued for processing", "data": {
            "id": 77, "status": "pending", "amount": 100, "currency": "NGN", "transaction": {"id": 1001}}}))
    respx.get(f"{PAYSTACK_API}/refund").mock(return_value=httpx.Response(200, json={
        "status": True, "message": "Refunds retrieved", "data": [], "meta": {"pageCount": 1}}))
    gateway = gateway_get("paystack")
    with mock.patch.object(httpx.Client, "send", side_effect=AssertionError("went through the client")):
        direct = _calls_as_sent(gateway)
    gateway._direct = None  # the same calls through the client, for comparison
    through_client = _calls_as_sent(gateway)
    assert len(direct) == len(through_client) == 4
    assert [_as_compared(r) for r in direct] == [_as_compared(r) for r in through_client]
    assert direct[1].extensions["timeout"] == httpx.Timeout(2.5).as_dict()  # the page's ceiling
    assert b'"amount":100' in direct[2].content.replace(b" ", b"")
    assert direct[3].url.params["transaction"] == "1001"


def test_calls_go_through_the_client_when_a_proxy_is_named_or_the_client_was_changed_or_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answer = paystack_verify_answer("R-PX-1")
    calls: list[httpx.Request] = []

    def send(client: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        calls.append(request)
        return httpx.Response(200, json=answer, request=request)

    with mock.patch.object(httpx.Client, "send", send):
        monkeypatch.setenv("HTTPS_PROXY", "http://proxy.internal:3128")
        registry_reset()
        gateway = gateway_get("paystack")
        assert gateway.verify_transaction(reference="R-PX-1").reference == "R-PX-1"
        assert getattr(gateway, "_direct", None) is None and len(calls) == 1  # the client mounts the proxy

        monkeypatch.delenv("HTTPS_PROXY")
        registry_reset()
        gateway = gateway_get("paystack")
        gateway._client().event_hooks["request"].append(lambda request: None)
        gateway.verify_transaction(reference="R-PX-1")
        assert getattr(gateway, "_direct", None) is not None and len(calls) == 2  # only the client runs hooks

        registry_reset()
        gateway = gateway_get("paystack")
        gateway._client().params = httpx.QueryParams({"tenant": "t1"})
        gateway.verify_transaction(reference="R-PX-1")
        assert len(calls) == 3 and calls[-1].url.params["tenant"] == "t1"  # the client merges its params

        registry_reset()
        gateway = gateway_get("paystack")
        gateway._client().close()  # the client refuses to send; its transport alone would not
        gateway.verify_transaction(reference="R-PX-1")
        assert len(calls) == 4
