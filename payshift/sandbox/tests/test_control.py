"""The /_sandbox/ control API: seeding and updating transactions, deliveries, health."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from payshift.sandbox.tests.conftest import FW, PS, Receiver, seed


def test_health(client: TestClient) -> None:
    assert client.get("/_sandbox/health").json() == {"status": "ok"}


def test_create_returns_the_stored_transaction(client: TestClient) -> None:
    txn = seed(client, gateway="paystack", reference="C-1", amount=5000, currency="ghs", email="x@y.z")
    assert txn["created"] is True
    assert isinstance(txn["id"], int)
    assert (txn["status"], txn["amount"], txn["currency"], txn["email"], txn["mode"]) == (
        "success",
        5000,
        "GHS",
        "x@y.z",
        "test",
    )
    assert txn["checkout_url"].endswith(txn["access_code"])
    assert client.get("/_sandbox/transactions/paystack/C-1").json()["id"] == txn["id"]


def test_upsert_updates_status_amount_and_mode(client: TestClient) -> None:
    first = seed(client, gateway="paystack", reference="C-2", amount=5000, status="pending")
    second = seed(client, gateway="paystack", reference="C-2", status="success", amount=6000, mode="live")
    assert second["created"] is False
    assert second["id"] == first["id"]  # Paystack: one id per reference
    data = client.get("/paystack/transaction/verify/C-2", headers=PS).json()["data"]
    assert (data["status"], data["amount"], data["domain"]) == ("success", 6000, "live")
    cleared = seed(client, gateway="paystack", reference="C-2", verify_amount=10)
    assert cleared["verify_amount"] == 10
    cleared = seed(client, gateway="paystack", reference="C-2", verify_amount=None)
    assert cleared["verify_amount"] is None


def test_flutterwave_new_attempt_gets_a_new_id(client: TestClient) -> None:
    failed = seed(client, gateway="flutterwave", reference="C-3", amount=100, status="failed")
    same = seed(client, gateway="flutterwave", reference="C-3", status="pending")
    assert same["id"] == failed["id"]
    paid = seed(client, gateway="flutterwave", reference="C-3", status="success", new_attempt=True)
    assert paid["id"] != failed["id"]
    assert [a["status"] for a in paid["attempts"]] == ["pending", "success"]
    data = client.get(f"/flutterwave/v3/transactions/{paid['id']}/verify", headers=FW).json()["data"]
    assert data["status"] == "successful"


def test_send_webhook(client: TestClient, receiver: Receiver) -> None:
    seed(client, gateway="flutterwave", reference="C-4", amount=100, status="success", send_webhook=True)
    (hook,) = receiver.wait_for(1)
    assert json.loads(hook.body)["data"]["tx_ref"] == "C-4"


@pytest.mark.parametrize(
    "body",
    [
        {"gateway": "stripe", "reference": "x", "amount": 1},
        {"gateway": "paystack", "amount": 1},
        {"gateway": "paystack", "reference": "x"},
        {"gateway": "paystack", "reference": "x", "amount": 1.5},
        {"gateway": "paystack", "reference": "x", "amount": -1},
        {"gateway": "paystack", "reference": "x", "amount": 1, "status": "weird"},
        {"gateway": "paystack", "reference": "x", "amount": 1, "mode": "prod"},
        {"gateway": "paystack", "reference": "x", "amount": 1, "send_webhook": "yes"},
        {"gateway": "flutterwave", "reference": "x", "amount": 1, "status": "reversed"},
        {"gateway": "flutterwave", "reference": "x", "amount": 1, "status": "abandoned", "verify_amount": 1},
    ],
)
def test_create_rejects_bad_input(client: TestClient, body: dict[str, object]) -> None:
    response = client.post("/_sandbox/transactions", json=body)
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str)
    assert client.get("/_sandbox/transactions/flutterwave/x").status_code == 404  # nothing half-made


def test_attempted_flutterwave_tx_ref_cannot_be_abandoned(client: TestClient) -> None:
    seed(client, gateway="flutterwave", reference="C-5", amount=100, status="failed")
    response = client.post(
        "/_sandbox/transactions", json={"gateway": "flutterwave", "reference": "C-5", "status": "abandoned"}
    )
    assert response.status_code == 400


def test_unknown_transaction_is_404(client: TestClient) -> None:
    assert client.get("/_sandbox/transactions/paystack/none").status_code == 404


def test_deliveries_filter_by_reference(client: TestClient, receiver: Receiver) -> None:
    seed(client, gateway="paystack", reference="D-1", amount=100, send_webhook=True)
    seed(client, gateway="paystack", reference="D-2", amount=100, send_webhook=True)
    receiver.wait_for(2)
    from payshift.sandbox.tests.conftest import wait_until

    wait_until(lambda: client.get("/_sandbox/deliveries").json()["count"] == 2)
    only = client.get("/_sandbox/deliveries", params={"reference": "D-2"}).json()
    assert only["count"] == 1 and only["deliveries"][0]["reference"] == "D-2"
    assert json.loads(only["deliveries"][0]["body"])["data"]["reference"] == "D-2"


def test_unknown_gateway_paths_answer_json_envelopes(client: TestClient) -> None:
    paystack = client.get("/paystack/nowhere/at/all", headers=PS)
    assert paystack.status_code == 404
    assert paystack.json()["status"] is False and paystack.json()["message"] == "Not Found"
    assert paystack.json()["code"] == "not_found" and paystack.json()["type"] == "validation_error"
    flutterwave = client.get("/flutterwave/v3/payments", headers=FW)
    assert flutterwave.status_code == 405
    assert flutterwave.json()["status"] == "error"
    assert client.get("/elsewhere").status_code == 404
