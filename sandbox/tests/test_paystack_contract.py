"""Field-by-field contract of the Paystack emulation against gateways.md (int minor units everywhere)."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

import pytest
from starlette.testclient import TestClient

from sandbox.tests.conftest import PAYSTACK_KEY, PS, Receiver, fast_config, is_int, paystack_init, seed

ISO_TS = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$"


def assert_transaction_shape(data: dict[str, Any]) -> None:
    """The verify / charge.success `data` fields gateways.md lists, with their types."""
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
    assert response.json() == {"status": False, "message": "Transaction reference not found"}


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
    assert response.json() == {"status": False, "message": "Invalid key"}


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
    assert response.json() == {"status": False, "message": message}


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
    assert again.json() == {"status": False, "message": "Duplicate Transaction Reference"}


def test_refund_create_and_fetch_shapes(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="paystack", reference="R-1", amount=20000, status="success")
    response = client.post(
        "/paystack/refund",
        headers=PS,
        json={
            "transaction": "R-1",
            "amount": 5000,
            "currency": "NGN",
            "customer_note": "sorry",
            "merchant_note": "m",
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] is True
    assert body["message"] == "Refund has been queued for processing"
    data = body["data"]
    assert data["status"] == "pending"
    assert is_int(data["id"]) and is_int(data["amount"]) and data["amount"] == 5000
    assert data["currency"] == "NGN"
    assert isinstance(data["expected_at"], str)
    assert data["customer_note"] == "sorry" and data["merchant_note"] == "m"
    assert data["domain"] == "test"
    transaction = data["transaction"]
    assert transaction["id"] == txn["id"] and is_int(transaction["id"])
    assert transaction["reference"] == "R-1"
    assert is_int(transaction["amount"]) and transaction["amount"] == 20000
    assert transaction["currency"] == "NGN"

    fetched = client.get(f"/paystack/refund/{data['id']}", headers=PS)
    assert fetched.status_code == 200
    assert fetched.json()["status"] is True
    fetched_data = fetched.json()["data"]
    assert fetched_data["id"] == data["id"]
    assert fetched_data["transaction"] == txn["id"]  # fetch answers the bare transaction id
    assert is_int(fetched_data["amount"])
    assert fetched_data["status"] in ("pending", "processed")


def test_refund_is_processed_later_with_a_string_amount_webhook(
    client: TestClient, receiver: Receiver
) -> None:
    seed(client, gateway="paystack", reference="R-2", amount=20000, status="success")
    refund = client.post("/paystack/refund", headers=PS, json={"transaction": "R-2", "amount": 5000}).json()[
        "data"
    ]
    (hook,) = receiver.wait_for(1)
    assert hook.url == "http://payshift.test/payment/webhooks/paystack/"
    expected = hmac.new(PAYSTACK_KEY.encode(), hook.body, hashlib.sha512).hexdigest()
    assert hook.headers["x-paystack-signature"] == expected
    payload = json.loads(hook.body)
    assert payload["event"] == "refund.processed"
    data = payload["data"]
    assert data["status"] == "processed"
    assert data["transaction_reference"] == "R-2"
    assert isinstance(data["refund_reference"], str) and data["refund_reference"]
    assert data["amount"] == "5000"  # a string, as Paystack sends it
    assert data["currency"] == "NGN"
    assert isinstance(data["processor"], str)
    assert data["customer"]["email"] == "customer@example.com"
    assert is_int(data["integration"])
    assert data["domain"] == "test"
    fetched = client.get(f"/paystack/refund/{refund['id']}", headers=PS).json()["data"]
    assert fetched["status"] == "processed"
    assert fetched["refund_reference"] == data["refund_reference"]


def test_refund_by_id_defaults_to_full_and_then_reverses(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="paystack", reference="R-3", amount=7000, status="success")
    response = client.post("/paystack/refund", headers=PS, json={"transaction": txn["id"]})
    assert response.status_code == 200
    assert response.json()["data"]["amount"] == 7000
    receiver.wait_for(1)
    verified = client.get("/paystack/transaction/verify/R-3", headers=PS).json()["data"]
    assert verified["status"] == "reversed"
    again = client.post("/paystack/refund", headers=PS, json={"transaction": "R-3", "amount": 1})
    assert again.status_code == 400


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
