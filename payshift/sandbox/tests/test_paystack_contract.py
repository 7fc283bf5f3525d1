"""Field-by-field contract of the Paystack emulation against Paystack's wire format (int minor units everywhere)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from payshift.sandbox.tests.conftest import PAYSTACK_KEY, PS, Receiver, fast_config, is_int, paystack_init, seed

ISO_TS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def assert_error(body: dict[str, Any], message: str, code: str | None = None) -> None:
    """Paystack's error shape: status false, the message, and the code / type / meta.nextStep it adds."""
    assert body["status"] is False and body["message"] == message
    assert body["type"] in ("validation_error", "processor_error", "api_error")
    assert isinstance(body["code"], str) and body["code"]
    assert isinstance(body["meta"]["nextStep"], str)
    if code is not None:
        assert body["code"] == code


def assert_transaction_shape(data: dict[str, Any]) -> None:
    """The verify / charge.success `data` fields Paystack documents, with their types."""
    assert is_int(data["id"])
    assert data["domain"] in ("test", "live")
    assert isinstance(data["status"], str)
    assert isinstance(data["reference"], str)
    assert is_int(data["amount"])
    assert isinstance(data["currency"], str) and len(data["currency"]) == 3
    assert data["paid_at"] is None or isinstance(data["paid_at"], str)
    assert isinstance(data["created_at"], str)
    assert isinstance(data["channel"], str)
    assert isinstance(data["gateway_response"], str)
    assert "metadata" in data
    assert data["fees"] is None or is_int(data["fees"])
    customer = data["customer"]
    assert is_int(customer["id"])
    for key in ("email", "customer_code"):
        assert isinstance(customer[key], str)
    for key in ("first_name", "last_name", "phone"):
        assert key in customer
    assert isinstance(data["authorization"], dict)
    assert "plan" in data


def test_initialize_answers_authorization_url(client: TestClient) -> None:
    response = client.post(
        "/paystack/transaction/initialize",
        headers=PS,
        json={
            "email": "ada@example.com",
            "amount": 500000,
            "reference": "INIT-1",
            "callback_url": "https://s/cb",
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] is True
    assert body["message"] == "Authorization URL created"
    data = body["data"]
    assert set(data) == {"authorization_url", "access_code", "reference"}
    assert data["reference"] == "INIT-1"
    assert data["authorization_url"] == f"http://sandbox.test/checkout/{data['access_code']}"


def test_initialize_generates_a_reference_and_defaults_to_ngn(client: TestClient) -> None:
    response = client.post(
        "/paystack/transaction/initialize", headers=PS, json={"email": "a@b.co", "amount": "5000"}
    )
    reference = response.json()["data"]["reference"]
    assert isinstance(reference, str) and reference
    data = client.get(f"/paystack/transaction/verify/{reference}", headers=PS).json()["data"]
    assert data["currency"] == "NGN"
    assert data["amount"] == 5000


def test_verify_success_has_every_listed_field(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="V-1", amount=250000, currency="GHS", status="success")
    response = client.get("/paystack/transaction/verify/V-1", headers=PS)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] is True
    assert body["message"] == "Verification successful"
    data = body["data"]
    assert_transaction_shape(data)
    assert data["status"] == "success"
    assert data["amount"] == 250000
    assert data["requested_amount"] == 250000
    assert is_int(data["requested_amount"])
    assert data["currency"] == "GHS"
    assert data["domain"] == "test"
    assert is_int(data["fees"])
    assert data["paid_at"] is not None
    assert data["metadata"] == ""  # Paystack sends "" when no metadata was given
    assert {"authorization_code", "bin", "last4", "channel", "reusable", "signature"} <= set(
        data["authorization"]
    )


def test_verify_fresh_initialize_reports_abandoned_with_metadata(client: TestClient) -> None:
    paystack_init(client, "V-2", metadata={"order_id": 42})
    data = client.get("/paystack/transaction/verify/V-2", headers=PS).json()["data"]
    assert_transaction_shape(data)
    assert data["status"] == "abandoned"
    assert data["paid_at"] is None
    assert data["authorization"] == {}
    assert data["fees"] is None
    assert data["metadata"] == {"order_id": 42}


def test_verify_reports_verify_amount_and_requested_amount(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="V-3", amount=10000, verify_amount=9000, status="success")
    data = client.get("/paystack/transaction/verify/V-3", headers=PS).json()["data"]
    assert data["amount"] == 9000
    assert data["requested_amount"] == 10000


@pytest.mark.parametrize("status", ["failed", "abandoned", "pending", "reversed"])
def test_verify_reports_each_outcome_in_data_status(client: TestClient, status: str) -> None:
    seed(client, gateway="paystack", reference=f"S-{status}", amount=1000, status=status)
    body = client.get(f"/paystack/transaction/verify/S-{status}", headers=PS).json()
    assert body["status"] is True  # the call worked; the outcome is data.status
    assert body["data"]["status"] == status


def test_verify_unknown_reference_is_400(client: TestClient) -> None:
    response = client.get("/paystack/transaction/verify/nope", headers=PS)
    assert response.status_code == 400
    assert_error(response.json(), "Transaction reference not found", "transaction_not_found")


def test_live_key_sets_live_domain(make_client: Any) -> None:
    live = "sk_live_payshift_demo_only"
    client = make_client(fast_config(paystack_secret_keys=(PAYSTACK_KEY, live)))
    response = client.post(
        "/paystack/transaction/initialize",
        headers={"Authorization": f"Bearer {live}"},
        json={"email": "a@b.co", "amount": 5000, "reference": "LIVE-1"},
    )
    assert response.status_code == 200
    data = client.get("/paystack/transaction/verify/LIVE-1", headers=PS).json()["data"]
    assert data["domain"] == "live"


ENDPOINTS = [
    ("POST", "/paystack/transaction/initialize"),
    ("GET", "/paystack/transaction/verify/V-1"),
    ("POST", "/paystack/refund"),
    ("GET", "/paystack/refund"),
    ("GET", "/paystack/refund/1"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer sk_test_wrong"},
        {"Authorization": PAYSTACK_KEY},
        {"Authorization": "Bearer "},
    ],
    ids=["missing", "wrong", "no-scheme", "empty"],
)
def test_every_endpoint_refuses_bad_keys(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert_error(response.json(), "Invalid key", "invalid_Key")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"amount": 5000}, "Invalid Email Address Passed"),
        ({"email": "not-an-email", "amount": 5000}, "Invalid Email Address Passed"),
        ({"email": "a@b.co"}, "Invalid Amount Sent"),
        ({"email": "a@b.co", "amount": 50.5}, "Invalid Amount Sent"),
        ({"email": "a@b.co", "amount": 0}, "Invalid Amount Sent"),
        ({"email": "a@b.co", "amount": True}, "Invalid Amount Sent"),
        ({"email": "a@b.co", "amount": 5000, "currency": "JPY"}, "Currency not supported by merchant"),
    ],
)
def test_initialize_rejects_bad_input(client: TestClient, body: dict[str, Any], message: str) -> None:
    response = client.post("/paystack/transaction/initialize", headers=PS, json=body)
    assert response.status_code == 400
    assert_error(response.json(), message)


def test_initialize_rejects_non_json_and_duplicate_reference(client: TestClient) -> None:
    bad = client.post("/paystack/transaction/initialize", headers=PS, content=b"{nope")
    assert bad.status_code == 400
    assert bad.json()["status"] is False
    paystack_init(client, "DUP-1")
    again = client.post(
        "/paystack/transaction/initialize",
        headers=PS,
        json={"email": "a@b.co", "amount": 100, "reference": "DUP-1"},
    )
    assert again.status_code == 400
    assert_error(again.json(), "Duplicate Transaction Reference", "duplicate_reference")


# The OpenAPI spec's required fields (RefundCreateResponse, RefundFetchResponse / RefundListResponseArray).
CREATE_REQUIRED = {
    "transaction", "integration", "deducted_amount", "channel", "merchant_note", "customer_note", "status",
    "refunded_by", "expected_at", "currency", "domain", "amount", "fully_deducted", "id", "createdAt", "updatedAt",
}
CREATE_TRANSACTION_REQUIRED = {
    "id", "domain", "reference", "amount", "paid_at", "channel", "currency", "authorization", "customer", "plan",
    "subaccount", "split", "order_id", "paidAt", "pos_transaction_data", "source", "fees_breakdown",
}
RECORD_REQUIRED = {
    "integration", "transaction", "dispute", "settlement", "id", "domain", "currency", "amount", "status",
    "refunded_at", "refunded_by", "customer_note", "merchant_note", "deducted_amount", "fully_deducted",
    "createdAt", "bank_reference", "transaction_reference", "reason", "customer", "refund_type",
    "transaction_amount", "initiated_by", "refund_channel", "session_id", "collect_account_number",
}
RECORD_CUSTOMER_REQUIRED = {
    "id", "first_name", "last_name", "email", "customer_code", "phone", "metadata", "risk_action",
    "international_format_phone",
}
LIST_META = {"total", "skipped", "perPage", "page", "pageCount", "failedRefundCount"}


def refund_events(receiver: Receiver, count: int) -> list[dict[str, Any]]:
    hooks = receiver.wait_for(count)
    for hook in hooks:
        expected = hmac.new(PAYSTACK_KEY.encode(), hook.body, hashlib.sha512).hexdigest()
        assert hook.headers["x-paystack-signature"] == expected
    return [json.loads(hook.body) for hook in hooks]


def test_refund_create_answers_the_spec_shape(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="paystack", reference="R-1", amount=20000, status="success")
    response = client.post(
        "/paystack/refund",
        headers=PS,
        json={"transaction": "R-1", "amount": 5000, "currency": "NGN", "customer_note": "sorry", "merchant_note": "m"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] is True
    assert body["message"] == "Refund has been queued for processing"
    data = body["data"]
    assert set(data) >= CREATE_REQUIRED
    assert set(data["transaction"]) >= CREATE_TRANSACTION_REQUIRED
    assert data["status"] == "pending"
    assert is_int(data["id"]) and is_int(data["amount"]) and data["amount"] == 5000
    assert data["fully_deducted"] is False  # a boolean in the create answer
    assert is_int(data["deducted_amount"]) and data["channel"] is None
    assert data["currency"] == "NGN" and data["domain"] == "test"
    assert isinstance(data["expected_at"], str) and isinstance(data["refunded_by"], str)
    assert data["customer_note"] == "sorry" and data["merchant_note"] == "m"
    transaction = data["transaction"]
    assert transaction["id"] == txn["id"] and is_int(transaction["id"])
    assert transaction["reference"] == "R-1"
    assert is_int(transaction["amount"]) and transaction["amount"] == 20000
    assert transaction["currency"] == "NGN"


def test_refund_create_fills_paystacks_default_notes(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="R-NOTES", amount=20000, status="success")
    data = client.post("/paystack/refund", headers=PS, json={"transaction": "R-NOTES"}).json()["data"]
    assert data["customer_note"] == "Refund for transaction R-NOTES"
    assert data["merchant_note"] == f"Refund for transaction R-NOTES by {data['refunded_by']}"
    assert "@" in data["refunded_by"]


def test_refund_fetch_has_the_spec_fields(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="paystack", reference="R-F", amount=20000, status="success")
    created = client.post("/paystack/refund", headers=PS, json={"transaction": "R-F", "amount": 5000}).json()["data"]
    fetched = client.get(f"/paystack/refund/{created['id']}", headers=PS)
    assert fetched.status_code == 200
    assert fetched.json()["status"] is True
    data = fetched.json()["data"]
    assert set(data) >= RECORD_REQUIRED
    assert set(data["customer"]) >= RECORD_CUSTOMER_REQUIRED
    assert data["id"] == created["id"]
    assert data["transaction"] == txn["id"]  # fetch answers the bare transaction id
    assert data["transaction_reference"] == "R-F"
    assert is_int(data["amount"]) and data["transaction_amount"] == 20000
    assert data["refund_type"] == "partial"
    assert is_int(data["fully_deducted"])  # an integer here, unlike the create answer
    assert data["status"] in ("pending", "processing", "processed")


def test_refund_moves_pending_processing_processed_with_signed_webhooks(
    client: TestClient, receiver: Receiver
) -> None:
    seed(client, gateway="paystack", reference="R-2", amount=20000, status="success")
    refund = client.post("/paystack/refund", headers=PS, json={"transaction": "R-2", "amount": 5000}).json()["data"]
    events = refund_events(receiver, 3)
    assert [e["event"] for e in events] == ["refund.pending", "refund.processing", "refund.processed"]
    assert receiver.requests[0].url == "http://payshift.test/payment/webhooks/paystack/"
    for event in events:
        data = event["data"]
        assert data["status"] == event["event"].removeprefix("refund.")
        assert data["transaction_reference"] == "R-2"
        assert data["amount"] == "5000"  # a string, as Paystack sends it
        assert data["currency"] == "NGN" and data["domain"] == "test"
        assert isinstance(data["processor"], str) and is_int(data["integration"])
        assert data["customer"]["email"] == "customer@example.com"
        assert "id" not in data  # Paystack's samples carry no refund id here
    assert events[0]["data"]["refund_reference"] is None  # null until processed
    assert events[1]["data"]["refund_reference"] is None
    processed = events[2]["data"]
    assert isinstance(processed["refund_reference"], str) and processed["refund_reference"]
    fetched = client.get(f"/paystack/refund/{refund['id']}", headers=PS).json()["data"]
    assert fetched["status"] == "processed"
    assert fetched["refund_reference"] == processed["refund_reference"]
    assert fetched["fully_deducted"] == 1 and fetched["deducted_amount"] == 5000
    assert isinstance(fetched["refunded_at"], str)


def test_refund_by_id_defaults_to_full_and_then_reverses(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="paystack", reference="R-3", amount=7000, status="success")
    response = client.post("/paystack/refund", headers=PS, json={"transaction": txn["id"]})
    assert response.status_code == 200
    assert response.json()["data"]["amount"] == 7000
    assert refund_events(receiver, 3)[-1]["event"] == "refund.processed"
    verified = client.get("/paystack/transaction/verify/R-3", headers=PS).json()["data"]
    assert verified["status"] == "reversed"
    again = client.post("/paystack/refund", headers=PS, json={"transaction": "R-3", "amount": 1})
    assert again.status_code == 400


def test_refund_list_filters_by_transaction_and_pages(client: TestClient) -> None:
    one = seed(client, gateway="paystack", reference="L-1", amount=30000, status="success")
    seed(client, gateway="paystack", reference="L-2", amount=30000, status="success")
    ids = [
        client.post("/paystack/refund", headers=PS, json={"transaction": ref, "amount": 1000}).json()["data"]["id"]
        for ref in ("L-1", "L-2", "L-1")
    ]
    response = client.get("/paystack/refund", headers=PS, params={"transaction": one["id"]})
    assert response.status_code == 200
    body = response.json()
    assert body["status"] is True and isinstance(body["message"], str)
    assert [r["id"] for r in body["data"]] == [ids[2], ids[0]]  # newest first, only L-1's
    for row in body["data"]:
        assert set(row) >= RECORD_REQUIRED
        assert row["transaction"] == one["id"] and row["transaction_reference"] == "L-1"
    assert set(body["meta"]) == LIST_META  # the spec forbids other meta keys
    assert body["meta"]["total"] == 2 and body["meta"]["perPage"] == "50"  # perPage is a string in the spec

    paged = client.get("/paystack/refund", headers=PS, params={"perPage": 2, "page": 2}).json()
    assert [r["id"] for r in paged["data"]] == [ids[0]]
    assert (paged["meta"]["total"], paged["meta"]["skipped"], paged["meta"]["page"], paged["meta"]["pageCount"]) == (
        3, 2, 2, 2)
    assert client.get("/paystack/refund", headers=PS, params={"transaction": "L-2"}).json()["meta"]["total"] == 1
    for bad in ({"perPage": "0"}, {"page": "x"}, {"from": "yesterday"}):
        refused = client.get("/paystack/refund", headers=PS, params=bad)
        assert refused.status_code == 400 and refused.json()["status"] is False


@pytest.mark.parametrize("outcome", ["failed", "needs-attention"])
def test_refund_fault_ends_failed_or_needs_attention(client: TestClient, receiver: Receiver, outcome: str) -> None:
    seed(client, gateway="paystack", reference=f"RF-{outcome}", amount=20000, status="success")
    assert client.post("/_sandbox/faults", json={"refund_outcome": outcome}).status_code == 200
    refund = client.post(
        "/paystack/refund", headers=PS, json={"transaction": f"RF-{outcome}", "amount": 5000}
    ).json()["data"]
    events = refund_events(receiver, 3)
    assert [e["event"] for e in events] == ["refund.pending", "refund.processing", f"refund.{outcome}"]
    last = events[2]["data"]
    assert last["status"] == outcome
    view = client.get(f"/_sandbox/transactions/paystack/RF-{outcome}").json()
    if outcome == "failed":
        assert isinstance(last["refund_reference"], str)  # the failed sample carries one
        assert view["refunded_amount"] == 0  # the money was never taken: refundable again
        return
    # needs-attention, like Paystack's sample, names the refund and its notes; it then waits for a nudge.
    assert last["id"] == str(refund["id"])
    assert last["customer_note"] == refund["customer_note"] and last["merchant_note"] == refund["merchant_note"]
    assert view["refunds"][0]["status"] == "needs-attention"
    nudged = client.post(f"/_sandbox/refunds/paystack/{refund['id']}/advance")
    assert nudged.status_code == 200 and nudged.json()["status"] == "processed"
    assert refund_events(receiver, 4)[3]["event"] == "refund.processed"


def test_refund_moves_only_when_nudged_without_auto_advance(
    make_client: Any, receiver: Receiver
) -> None:
    client = make_client(fast_config(refund_auto_advance=False))
    seed(client, gateway="paystack", reference="N-1", amount=20000, status="success")
    refund = client.post("/paystack/refund", headers=PS, json={"transaction": "N-1", "amount": 500}).json()["data"]
    assert [e["event"] for e in refund_events(receiver, 1)] == ["refund.pending"]
    advance = f"/_sandbox/refunds/paystack/{refund['id']}/advance"
    assert client.post(advance).json()["status"] == "processing"
    assert client.post(advance, json={"status": "processed"}).json()["status"] == "processed"
    assert [e["event"] for e in refund_events(receiver, 3)][1:] == ["refund.processing", "refund.processed"]
    assert client.post(advance).status_code == 409  # final
    assert client.post("/_sandbox/refunds/paystack/999/advance").status_code == 404
    assert client.post("/_sandbox/refunds/stripe/1/advance").status_code == 404
    other = client.post("/paystack/refund", headers=PS, json={"transaction": "N-1", "amount": 500}).json()["data"]
    assert client.post(f"/_sandbox/refunds/paystack/{other['id']}/advance", json={"status": "x"}).status_code == 409
    assert client.post(f"/_sandbox/refunds/paystack/{other['id']}/advance", json={"status": 1}).status_code == 400


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"transaction": "missing"}, 404),
        ({"transaction": "R-4", "amount": 20001}, 400),
        ({"transaction": "R-4", "amount": -5}, 400),
        ({"transaction": "R-4", "amount": 10.5}, 400),
        ({"transaction": "R-4", "currency": "USD"}, 400),
        ({"transaction": "R-4-failed"}, 400),
    ],
)
def test_refund_rejects_bad_requests(client: TestClient, body: dict[str, Any], status: int) -> None:
    seed(client, gateway="paystack", reference="R-4", amount=20000, status="success")
    seed(client, gateway="paystack", reference="R-4-failed", amount=20000, status="failed")
    response = client.post("/paystack/refund", headers=PS, json=body)
    assert response.status_code == status
    assert response.json()["status"] is False
    assert isinstance(response.json()["message"], str)


def test_refunds_cannot_exceed_the_remaining_amount(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="R-5", amount=10000, status="success")
    assert (
        client.post("/paystack/refund", headers=PS, json={"transaction": "R-5", "amount": 6000}).status_code
        == 200
    )
    over = client.post("/paystack/refund", headers=PS, json={"transaction": "R-5", "amount": 4001})
    assert over.status_code == 400
    assert (
        client.post("/paystack/refund", headers=PS, json={"transaction": "R-5", "amount": 4000}).status_code
        == 200
    )


def test_refund_fetch_unknown_is_404(client: TestClient) -> None:
    response = client.get("/paystack/refund/999", headers=PS)
    assert response.status_code == 404
    assert response.json()["status"] is False


def test_charge_success_webhook_contract(client: TestClient, receiver: Receiver) -> None:
    seed(client, gateway="paystack", reference="W-1", amount=150050, status="success", send_webhook=True)
    (hook,) = receiver.wait_for(1)
    assert hook.headers["content-type"] == "application/json"
    payload = json.loads(hook.body)
    assert set(payload) == {"event", "data"}  # and no event id: Paystack sends none
    assert payload["event"] == "charge.success"
    data = payload["data"]
    assert_transaction_shape(data)
    assert data["status"] == "success"
    assert data["amount"] == 150050
    assert data["reference"] == "W-1"
    assert data["requested_amount"] == 150050


def test_no_webhook_for_failed_paystack_charges(client: TestClient, receiver: Receiver) -> None:
    seed(client, gateway="paystack", reference="W-2", amount=100, status="failed", send_webhook=True)
    seed(client, gateway="paystack", reference="W-3", amount=100, status="success", send_webhook=True)
    hooks = receiver.wait_for(1)
    assert [json.loads(h.body)["data"]["reference"] for h in hooks] == ["W-3"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/paystack/refund/%C2%B2", None, 404),  # "²" passes str.isdigit() but not int()
        ("GET", "/paystack/refund?perPage=%C2%B2", None, 400),
        ("GET", "/paystack/refund?page=" + "9" * 5000, None, 400),
        ("POST", "/paystack/refund", {"transaction": "\u00b2"}, 404),
        ("POST", "/paystack/refund", {"transaction": "R-U", "amount": "\u00b2"}, 400),
    ],
)
def test_odd_digits_are_4xx_not_500(
    client: TestClient, method: str, path: str, body: dict[str, Any] | None, status: int
) -> None:
    seed(client, gateway="paystack", reference="R-U", amount=1000, status="success")
    response = client.request(method, path, headers=PS, json=body)
    assert response.status_code == status
    assert response.json()["status"] is False
