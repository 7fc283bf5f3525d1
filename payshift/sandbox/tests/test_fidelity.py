"""Fidelity gaps closed: read endpoints, form bodies, Paystack's error shape, log/channels/phone, the checkout page."""

from __future__ import annotations

from starlette.testclient import TestClient

from payshift.sandbox.tests.conftest import FW, PS, Receiver, flutterwave_init, paystack_init, seed

FORM = {**PS, "Content-Type": "application/x-www-form-urlencoded"}


def test_paystack_fetch_transaction_by_id(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="F-1", amount=40_000, status="success")
    verified = client.get("/paystack/transaction/verify/F-1", headers=PS).json()["data"]
    fetched = client.get(f"/paystack/transaction/{verified['id']}", headers=PS)
    assert fetched.status_code == 200
    assert fetched.json()["data"] == verified and fetched.json()["message"] == "Transaction retrieved"
    missing = client.get("/paystack/transaction/999", headers=PS)
    assert missing.status_code == 404 and missing.json()["code"] == "transaction_not_found"


def test_paystack_list_transactions_pages_with_meta(client: TestClient) -> None:
    for index in range(5):
        seed(client, gateway="paystack", reference=f"L-{index}", amount=1000 + index,
             status="failed" if index == 2 else "success")
    page = client.get("/paystack/transaction?perPage=2&page=2", headers=PS).json()
    assert [row["reference"] for row in page["data"]] == ["L-2", "L-1"]  # newest first
    assert page["meta"] == {"total": 5, "total_volume": 1000 + 1001 + 1003 + 1004, "skipped": 2, "perPage": 2,
                            "page": 2, "pageCount": 3}
    failed = client.get("/paystack/transaction?status=failed&per_page=10", headers=PS).json()
    assert [row["reference"] for row in failed["data"]] == ["L-2"] and failed["meta"]["perPage"] == 10
    assert client.get("/paystack/transaction?amount=1004", headers=PS).json()["meta"]["total"] == 1
    assert client.get("/paystack/transaction?page=0", headers=PS).status_code == 400


def test_flutterwave_list_transactions_has_every_attempt(client: TestClient) -> None:
    seed(client, gateway="flutterwave", reference="FL-1", amount=10_000, status="failed")
    seed(client, gateway="flutterwave", reference="FL-1", status="success", new_attempt=True)
    seed(client, gateway="flutterwave", reference="FL-2", amount=5_000, status="success", currency="GHS")
    body = client.get("/flutterwave/v3/transactions", headers=FW).json()
    assert body["status"] == "success" and body["meta"]["page_info"] == {"total": 3, "current_page": 1,
                                                                          "total_pages": 1}
    assert [(row["tx_ref"], row["status"]) for row in body["data"]] == [
        ("FL-2", "successful"), ("FL-1", "successful"), ("FL-1", "failed")]
    assert body["data"][0]["amount"] == 50 and body["data"][0]["currency"] == "GHS"
    only = client.get("/flutterwave/v3/transactions?tx_ref=FL-1&status=failed", headers=FW).json()
    assert [row["status"] for row in only["data"]] == ["failed"]
    assert client.get("/flutterwave/v3/transactions?page=x", headers=FW).status_code == 400


def test_paystack_accepts_form_encoded_initialize_and_refund(client: TestClient) -> None:
    metadata = '{"order": 7}'
    response = client.post("/paystack/transaction/initialize", headers=FORM,
                           content=f"email=ada%40example.com&amount=50000&reference=FORM-1&metadata={metadata}"
                                   "&channels[]=card&channels[]=ussd")
    assert response.status_code == 200, response.text
    data = client.get("/paystack/transaction/verify/FORM-1", headers=PS).json()["data"]
    assert data["amount"] == 50000 and data["metadata"] == {"order": 7}
    seed(client, gateway="paystack", reference="FORM-1", status="success")
    refund = client.post("/paystack/refund", headers=FORM, content="transaction=FORM-1&amount=2000")
    assert refund.status_code == 200 and refund.json()["data"]["amount"] == 2000
    bad = client.post("/paystack/refund", headers=FORM, content="amount=1")
    assert bad.status_code == 400 and bad.json()["message"] == "Transaction reference or id is required"


def test_paystack_errors_carry_code_type_and_meta(client: TestClient) -> None:
    paystack_init(client, "ERR-1")
    duplicate = client.post("/paystack/transaction/initialize", headers=PS,
                            json={"email": "a@b.co", "amount": 100, "reference": "ERR-1"}).json()
    assert duplicate == {
        "status": False,
        "message": "Duplicate Transaction Reference",
        "meta": {"nextStep": "Try and create the Transaction or Charge with a new reference"},
        "type": "validation_error",
        "code": "duplicate_reference",
    }
    unauthorised = client.get("/paystack/refund", headers={"Authorization": "Bearer nope"}).json()
    assert unauthorised["code"] == "invalid_Key" and unauthorised["type"] == "validation_error"
    overloaded = client.get("/paystack/refund", headers={**PS, "X-Sandbox-Fault": "error=502"}).json()
    assert overloaded["type"] == "api_error" and overloaded["meta"]["nextStep"]
    # Flutterwave keeps its own envelope.
    assert client.get("/flutterwave/v3/refunds/1", headers=FW).json() == {
        "status": "error", "message": "No refund was found for this id", "data": None}


def test_paystack_log_is_an_object_once_the_customer_acts(client: TestClient, receiver: Receiver) -> None:
    code = paystack_init(client, "LOG-1", callback_url="https://shop.test/cb")
    assert client.get("/paystack/transaction/verify/LOG-1", headers=PS).json()["data"]["log"] is None
    client.post(f"/checkout/{code}", data={"action": "pay"})
    log = client.get("/paystack/transaction/verify/LOG-1", headers=PS).json()["data"]["log"]
    assert log["success"] is True and log["attempts"] == 1 and isinstance(log["start_time"], int)
    assert [step["type"] for step in log["history"]] == ["action", "success"]
    failed_code = paystack_init(client, "LOG-2", callback_url="https://shop.test/cb")
    client.post(f"/checkout/{failed_code}", data={"action": "fail"})
    failed = client.get("/paystack/transaction/verify/LOG-2", headers=PS).json()["data"]["log"]
    assert failed["success"] is False and failed["errors"] == 1


def test_paystack_channels_are_selectable(client: TestClient, receiver: Receiver) -> None:
    code = paystack_init(client, "CH-1", channels=["ussd", "bank_transfer"], callback_url="https://shop.test/cb")
    page = client.get(f"/checkout/{code}").text
    assert 'value="ussd"' in page and 'value="bank_transfer"' in page and 'value="card"' not in page
    assert client.post(f"/checkout/{code}", data={"action": "pay", "channel": "card"}).status_code == 400
    client.post(f"/checkout/{code}", data={"action": "pay", "channel": "bank_transfer"})
    data = client.get("/paystack/transaction/verify/CH-1", headers=PS).json()["data"]
    assert data["channel"] == "bank_transfer" and data["authorization"]["channel"] == "bank_transfer"
    assert data["authorization"]["reusable"] is False
    seed(client, gateway="paystack", reference="CH-2", amount=500, status="success", channel="ussd")
    assert client.get("/paystack/transaction/verify/CH-2", headers=PS).json()["data"]["channel"] == "ussd"
    assert client.post("/_sandbox/transactions", json={"gateway": "paystack", "reference": "CH-3", "amount": 1,
                                                        "channel": "pigeon"}).status_code == 400
    bad = client.post("/paystack/transaction/initialize", headers=PS,
                      json={"email": "a@b.co", "amount": 100, "channels": ["pigeon"]})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_channels"


def test_flutterwave_payment_options_and_an_integer_phone_are_kept(client: TestClient, receiver: Receiver) -> None:
    code = flutterwave_init(client, "PH-1", customer={"email": "ada@example.com", "name": "Ada L",
                                                      "phonenumber": 2348012345678},
                            payment_options="ussd, banktransfer")
    assert 'value="bank_transfer"' in client.get(f"/checkout/{code}").text
    client.post(f"/checkout/{code}", data={"action": "pay", "channel": "bank_transfer"})
    hook = receiver.wait_for(1)[0]
    assert b'"phone_number":"2348012345678"' in hook.body and b'"payment_type":"bank_transfer"' in hook.body
    assert b'"card"' not in hook.body  # no card object for a bank transfer
    tx_id = client.get("/_sandbox/transactions/flutterwave/PH-1").json()["id"]
    data = client.get(f"/flutterwave/v3/transactions/{tx_id}/verify", headers=FW).json()["data"]
    assert data["customer"]["phone_number"] == "2348012345678" and data["payment_type"] == "bank_transfer"
    bad = client.post("/flutterwave/v3/payments", headers=FW, json={
        "tx_ref": "PH-2", "amount": 10, "redirect_url": "https://s/r", "customer": {"email": "a@b.co"},
        "payment_options": "pigeon"})
    assert bad.status_code == 400


def test_checkout_page_shows_no_outcome_before_a_button_is_pressed(client: TestClient) -> None:
    code = paystack_init(client, "PAGE-1")
    page = client.get(f"/checkout/{code}").text
    assert '<dd id="status">awaiting payment</dd>' in page and "abandoned" not in page
    # The API still answers what Paystack answers for an untouched checkout.
    assert client.get("/paystack/transaction/verify/PAGE-1", headers=PS).json()["data"]["status"] == "abandoned"
    done = client.post(f"/checkout/{code}", data={"action": "abandon"}).text  # no callback: the outcome page
    assert '<dd id="status">abandoned</dd>' in done


def test_flutterwave_checkout_page_awaits_payment_too(client: TestClient) -> None:
    code = flutterwave_init(client, "PAGE-2")
    assert '<dd id="status">awaiting payment</dd>' in client.get(f"/checkout/{code}").text


