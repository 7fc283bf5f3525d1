"""Field-by-field contract of the Flutterwave v3 emulation: major-unit JSON numbers, envelopes, ids."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
from starlette.testclient import TestClient

from payshift.sandbox.gateways.flutterwave import DEMO_WEBHOOK_HASH as DEMO_FLUTTERWAVE_WEBHOOK_HASH
from payshift.sandbox.tests.conftest import (
    FLUTTERWAVE_KEY,
    FW,
    Receiver,
    fast_config,
    flutterwave_init,
    is_int,
    is_number,
    seed,
    wait_until,
)

NOT_FOUND = {"status": "error", "message": "No transaction was found for this id", "data": None}


def assert_verify_shape(data: dict[str, Any]) -> None:
    """The verify `data` fields Flutterwave documents, with their types."""
    assert is_int(data["id"])
    for key in (
        "tx_ref",
        "flw_ref",
        "currency",
        "processor_response",
        "status",
        "payment_type",
        "created_at",
    ):
        assert isinstance(data[key], str), key
    for key in ("amount", "charged_amount", "app_fee", "merchant_fee", "amount_settled"):
        assert is_number(data[key]), key
    assert {"id", "name", "phone_number", "email"} <= set(data["customer"])
    assert is_int(data["customer"]["id"])
    assert isinstance(data["card"], dict)
    assert "meta" in data


def test_payments_answers_a_hosted_link(client: TestClient) -> None:
    response = client.post(
        "/flutterwave/v3/payments",
        headers=FW,
        json={
            "tx_ref": "P-1",
            "amount": "2500",
            "currency": "NGN",
            "redirect_url": "https://shop.test/r",
            "customer": {"email": "a@b.co"},
        },
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Hosted Link"
    assert body["data"]["link"].startswith("http://sandbox.test/checkout/")


def test_no_transaction_exists_before_an_attempt(client: TestClient) -> None:
    flutterwave_init(client, "P-2")
    response = client.get(
        "/flutterwave/v3/transactions/verify_by_reference", params={"tx_ref": "P-2"}, headers=FW
    )
    assert response.status_code == 404
    assert response.json() == NOT_FOUND


def test_verify_by_id_and_reference_in_major_units(client: TestClient) -> None:
    txn = seed(
        client, gateway="flutterwave", reference="V-1", amount=150050, currency="NGN", status="success"
    )
    by_id = client.get(f"/flutterwave/v3/transactions/{txn['id']}/verify", headers=FW)
    by_ref = client.get("/flutterwave/v3/transactions/verify_by_reference?tx_ref=V-1", headers=FW)
    for response in (by_id, by_ref):
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "success"
        assert body["message"] == "Transaction fetched successfully"
        data = body["data"]
        assert_verify_shape(data)
        assert data["id"] == txn["id"]
        assert data["tx_ref"] == "V-1"
        assert data["status"] == "successful"
        assert data["amount"] == 1500.5
        assert data["charged_amount"] == 1500.5
        assert data["currency"] == "NGN"
        # The exact text, not just a float that happens to compare equal.
        assert b'"amount":1500.5,' in response.content
        fee = Decimal(str(data["app_fee"]))
        assert Decimal(str(data["amount_settled"])) + fee == Decimal("1500.5")


@pytest.mark.parametrize(
    ("currency", "minor", "major", "text"),
    [
        ("UGX", 5000, 5000, b'"amount":5000,'),
        ("NGN", 100000, 1000, b'"amount":1000,'),
        ("KWD", 1234, 1.234, b'"amount":1.234,'),
    ],
)
def test_currency_exponents(client: TestClient, currency: str, minor: int, major: Any, text: bytes) -> None:
    txn = seed(client, gateway="flutterwave", reference=f"E-{currency}", amount=minor, currency=currency)
    response = client.get(f"/flutterwave/v3/transactions/{txn['id']}/verify", headers=FW)
    assert response.json()["data"]["amount"] == major
    assert text in response.content


def test_payments_amount_is_converted_without_float(client: TestClient) -> None:
    # int(float("19.99") * 100) == 1998: the text must go straight to Decimal.
    raw = b'{"tx_ref":"C-1","amount":19.99,"redirect_url":"https://r","customer":{"email":"a@b.co"}}'
    assert client.post("/flutterwave/v3/payments", headers=FW, content=raw).status_code == 200
    view = client.get("/_sandbox/transactions/flutterwave/C-1").json()
    assert view["amount"] == 1999


@pytest.mark.parametrize(
    "body",
    [
        {"amount": 100, "redirect_url": "https://r", "customer": {"email": "a@b.co"}},
        {"tx_ref": "B-1", "redirect_url": "https://r", "customer": {"email": "a@b.co"}},
        {"tx_ref": "B-1", "amount": 10.005, "redirect_url": "https://r", "customer": {"email": "a@b.co"}},
        {
            "tx_ref": "B-1",
            "amount": 10.5,
            "currency": "UGX",
            "redirect_url": "https://r",
            "customer": {"email": "a@b.co"},
        },
        {"tx_ref": "B-1", "amount": -1, "redirect_url": "https://r", "customer": {"email": "a@b.co"}},
        {"tx_ref": "B-1", "amount": "ten", "redirect_url": "https://r", "customer": {"email": "a@b.co"}},
        {"tx_ref": "B-1", "amount": 100, "customer": {"email": "a@b.co"}},
        {"tx_ref": "B-1", "amount": 100, "redirect_url": "https://r"},
        {"tx_ref": "B-1", "amount": 100, "redirect_url": "https://r", "customer": {"email": "nope"}},
        {
            "tx_ref": "B-1",
            "amount": 100,
            "currency": "N1",
            "redirect_url": "https://r",
            "customer": {"email": "a@b.co"},
        },
    ],
)
def test_payments_rejects_bad_input(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/flutterwave/v3/payments", headers=FW, json=body)
    assert response.status_code == 400
    payload = response.json()
    assert payload["status"] == "error" and payload["data"] is None and isinstance(payload["message"], str)


def test_payments_rejects_duplicate_tx_ref(client: TestClient) -> None:
    flutterwave_init(client, "D-1")
    body = {"tx_ref": "D-1", "amount": 1, "redirect_url": "https://r", "customer": {"email": "a@b.co"}}
    response = client.post("/flutterwave/v3/payments", headers=FW, json=body)
    assert response.status_code == 400
    assert response.json() == {"status": "error", "message": "Duplicate Transaction Reference", "data": None}


def test_unknown_ids_and_refs_answer_the_not_found_envelope(client: TestClient) -> None:
    for path in (
        "/flutterwave/v3/transactions/123/verify",
        "/flutterwave/v3/transactions/abc/verify",
        "/flutterwave/v3/transactions/verify_by_reference?tx_ref=missing",
    ):
        response = client.get(path, headers=FW)
        assert response.status_code == 404, path
        assert response.json() == NOT_FOUND
    missing_ref = client.get("/flutterwave/v3/transactions/verify_by_reference", headers=FW)
    assert missing_ref.status_code == 400


ENDPOINTS = [
    ("POST", "/flutterwave/v3/payments"),
    ("GET", "/flutterwave/v3/transactions/1/verify"),
    ("GET", "/flutterwave/v3/transactions/verify_by_reference?tx_ref=x"),
    ("POST", "/flutterwave/v3/transactions/1/refund"),
    ("GET", "/flutterwave/v3/refunds"),
    ("GET", "/flutterwave/v3/refunds/1"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer FLWSECK_TEST-wrong-X"}, {"Authorization": FLUTTERWAVE_KEY}],
    ids=["missing", "wrong", "no-scheme"],
)
def test_every_endpoint_refuses_bad_keys(
    client: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = client.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.json() == {"status": "error", "message": "Invalid authorization key", "data": None}


def test_paystack_key_is_not_a_flutterwave_key(client: TestClient) -> None:
    from payshift.sandbox.tests.conftest import PS

    assert client.get("/flutterwave/v3/transactions/1/verify", headers=PS).status_code == 401


def test_refund_shape_and_limits(client: TestClient) -> None:
    txn = seed(client, gateway="flutterwave", reference="RF-1", amount=100000, status="success")
    response = client.post(
        f"/flutterwave/v3/transactions/{txn['id']}/refund",
        headers=FW,
        json={"amount": 250.25, "comments": "dup"},
    )
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["message"] == "Transaction refund initiated"
    data = body["data"]
    assert is_int(data["id"])
    assert data["tx_id"] == txn["id"]
    assert isinstance(data["flw_ref"], str)
    assert data["amount_refunded"] == 250.25 and is_number(data["amount_refunded"])
    assert isinstance(data["status"], str)
    assert isinstance(data["created_at"], str)
    view = client.get("/_sandbox/transactions/flutterwave/RF-1").json()
    assert view["refunded_amount"] == 25025

    over = client.post(
        f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW, json={"amount": 749.76}
    )
    assert over.status_code == 400
    assert over.json()["status"] == "error"
    rest = client.post(f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW, json={})
    assert rest.status_code == 200
    assert rest.json()["data"]["amount_refunded"] == 749.75
    done = client.post(f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW, json={})
    assert done.status_code == 400


def test_refund_rejects_failed_unknown_and_bad_amounts(client: TestClient) -> None:
    failed = seed(client, gateway="flutterwave", reference="RF-2", amount=1000, status="failed")
    assert client.post(f"/flutterwave/v3/transactions/{failed['id']}/refund", headers=FW).status_code == 400
    assert client.post("/flutterwave/v3/transactions/42/refund", headers=FW).json() == NOT_FOUND
    ok = seed(client, gateway="flutterwave", reference="RF-3", amount=1000, status="success")
    for amount in (0, -1, 1.001, "x", True):
        response = client.post(
            f"/flutterwave/v3/transactions/{ok['id']}/refund", headers=FW, json={"amount": amount}
        )
        assert response.status_code == 400, amount


def test_charge_completed_webhook_contract(client: TestClient, receiver: Receiver) -> None:
    seed(client, gateway="flutterwave", reference="WH-1", amount=150050, status="success", send_webhook=True)
    (hook,) = receiver.wait_for(1)
    assert hook.url == "http://payshift.test/payment/webhooks/flutterwave/"
    assert hook.headers["verif-hash"] == DEMO_FLUTTERWAVE_WEBHOOK_HASH
    assert hook.headers["content-type"] == "application/json"
    payload = json.loads(hook.body)
    assert payload["event"] == "charge.completed"
    data = payload["data"]
    assert is_int(data["id"])
    assert data["tx_ref"] == "WH-1"
    assert isinstance(data["flw_ref"], str)
    assert data["amount"] == 1500.5 and b'"amount":1500.5,' in hook.body
    assert is_number(data["charged_amount"]) and is_number(data["app_fee"])
    assert data["currency"] == "NGN"
    assert data["status"] == "successful"
    assert isinstance(data["payment_type"], str)
    assert isinstance(data["created_at"], str)
    assert {"id", "name", "phone_number", "email"} <= set(data["customer"])
    assert isinstance(data["card"], dict)


def test_failed_attempts_are_webhooked_too(client: TestClient, receiver: Receiver) -> None:
    seed(client, gateway="flutterwave", reference="WH-2", amount=100, status="failed", send_webhook=True)
    (hook,) = receiver.wait_for(1)
    assert json.loads(hook.body)["data"]["status"] == "failed"


def test_verify_by_reference_prefers_the_successful_attempt(client: TestClient) -> None:
    first = seed(client, gateway="flutterwave", reference="A-1", amount=100, status="success")
    second = seed(client, gateway="flutterwave", reference="A-1", status="failed", new_attempt=True)
    assert second["id"] != first["id"]
    assert [a["id"] for a in second["attempts"]] == [first["id"], second["id"]]
    by_ref = client.get("/flutterwave/v3/transactions/verify_by_reference?tx_ref=A-1", headers=FW).json()
    assert by_ref["data"]["id"] == first["id"]
    old = client.get(f"/flutterwave/v3/transactions/{second['id']}/verify", headers=FW).json()
    assert old["data"]["status"] == "failed"


REFUND_OBJECT = {
    "id", "account_id", "tx_id", "flw_ref", "wallet_id", "amount_refunded", "status", "destination", "meta",
    "created_at",
}
LIST_ROW = {"id", "amount_refunded", "status", "flw_ref", "comment", "settlement_id", "meta", "created_at",
            "account_id", "transaction_id"}


def test_refund_completes_later_with_a_verif_hash_webhook(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="flutterwave", reference="RL-1", amount=100000, status="success")
    created = client.post(
        f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW, json={"amount": 250.25, "comments": "c"}
    ).json()["data"]
    assert created["status"] == "processing"  # transient, until completed or failed
    (hook,) = receiver.wait_for(1)
    assert hook.headers["verif-hash"] == DEMO_FLUTTERWAVE_WEBHOOK_HASH
    assert hook.url == "http://payshift.test/payment/webhooks/flutterwave/"
    payload = json.loads(hook.body)
    assert set(payload) == {"event", "data"}
    assert payload["event"] == "refund.completed"
    data = payload["data"]
    assert set(data) >= REFUND_OBJECT
    assert (data["id"], data["tx_id"], data["status"]) == (created["id"], txn["id"], "completed")
    assert data["amount_refunded"] == 250.25 and b'"amount_refunded":250.25,' in hook.body
    assert "currency" not in data and "tx_ref" not in data  # the documented refund object has neither

    fetched = client.get(f"/flutterwave/v3/refunds/{created['id']}", headers=FW)
    assert fetched.status_code == 200
    body = fetched.json()
    assert body["status"] == "success" and isinstance(body["message"], str)
    assert set(body["data"]) >= REFUND_OBJECT
    assert body["data"]["status"] == "completed" and body["data"]["flw_ref"] == created["flw_ref"]
    assert is_number(body["data"]["amount_refunded"])


def test_refund_fetch_unknown_is_the_error_envelope(client: TestClient) -> None:
    for path in ("/flutterwave/v3/refunds/424242", "/flutterwave/v3/refunds/abc"):
        response = client.get(path, headers=FW)
        assert response.status_code == 404
        assert response.json()["status"] == "error" and response.json()["data"] is None


def test_refund_list_rows_pages_and_filters(client: TestClient) -> None:
    one = seed(client, gateway="flutterwave", reference="RL-2", amount=100000, status="success")
    two = seed(client, gateway="flutterwave", reference="RL-3", amount=100000, currency="GHS", status="success")
    for txn, count in ((one, 21), (two, 1)):
        for _ in range(count):
            response = client.post(f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW, json={"amount": 1})
            assert response.status_code == 200
    first = client.get("/flutterwave/v3/refunds", headers=FW).json()
    assert first["status"] == "success"
    assert first["meta"]["page_info"] == {"total": 22, "current_page": 1, "total_pages": 2, "page_size": 20}
    assert len(first["data"]) == 20
    assert set(first["data"][0]) >= LIST_ROW
    assert first["data"][0]["transaction_id"] == two["id"]  # newest first
    second = client.get("/flutterwave/v3/refunds", headers=FW, params={"page": 2}).json()
    assert len(second["data"]) == 2
    ghs = client.get("/flutterwave/v3/refunds", headers=FW, params={"currency": "ghs"}).json()
    assert [r["transaction_id"] for r in ghs["data"]] == [two["id"]]
    today = client.get("/_sandbox/transactions/flutterwave/RL-2").json()["created_at"][:10]
    assert client.get("/flutterwave/v3/refunds", headers=FW, params={"from": today}).json()["meta"][
        "page_info"]["total"] == 22
    assert client.get("/flutterwave/v3/refunds", headers=FW, params={"to": "2000-01-01"}).json()["data"] == []
    for bad in ({"page": "0"}, {"from": "soon"}):
        assert client.get("/flutterwave/v3/refunds", headers=FW, params=bad).status_code == 400


def test_refund_fault_fails_it_without_a_webhook(client: TestClient, receiver: Receiver) -> None:
    txn = seed(client, gateway="flutterwave", reference="RL-4", amount=1000, status="success")
    client.post("/_sandbox/faults", json={"refund_outcome": "failed"})
    created = client.post(f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW).json()["data"]
    wait_until(
        lambda: client.get(f"/flutterwave/v3/refunds/{created['id']}", headers=FW).json()["data"]["status"]
        == "failed"
    )
    time.sleep(0.1)
    assert receiver.requests == []
    assert client.get("/_sandbox/transactions/flutterwave/RL-4").json()["refunded_amount"] == 0  # refundable again


def test_refund_nudged_to_completed_or_failed(make_client: Any, receiver: Receiver) -> None:
    client = make_client(fast_config(refund_auto_advance=False))
    txn = seed(client, gateway="flutterwave", reference="RL-5", amount=1000, status="success")
    ids = [
        client.post(f"/flutterwave/v3/transactions/{txn['id']}/refund", headers=FW, json={"amount": 1}).json()[
            "data"]["id"]
        for _ in range(2)
    ]
    assert client.post(f"/_sandbox/refunds/flutterwave/{ids[0]}/advance").json()["status"] == "completed"
    failed = client.post(f"/_sandbox/refunds/flutterwave/{ids[1]}/advance", json={"status": "failed"})
    assert failed.json()["status"] == "failed"
    (hook,) = receiver.wait_for(1)
    assert json.loads(hook.body)["data"]["id"] == ids[0]
    assert client.post(f"/_sandbox/refunds/flutterwave/{ids[1]}/advance").status_code == 409


@pytest.mark.parametrize(
    "path",
    [
        "/flutterwave/v3/refunds/%C2%B2",  # "²" passes str.isdigit() but not int()
        "/flutterwave/v3/transactions/%C2%B2/verify",
        "/flutterwave/v3/refunds?page=%C2%B2",
        "/flutterwave/v3/refunds?page=" + "9" * 5000,
    ],
)
def test_odd_digits_are_4xx_not_500(client: TestClient, path: str) -> None:
    response = client.get(path, headers=FW)
    assert 400 <= response.status_code < 500
    assert response.json()["status"] == "error"
