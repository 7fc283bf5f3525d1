"""Hosted checkout: the page, each button, the redirect back, and the webhooks each outcome sends."""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import parse_qsl, urlsplit

import pytest
from starlette.testclient import TestClient

from payshift.sandbox.tests.conftest import FW, PAYSTACK_KEY, PS, Receiver, flutterwave_init, paystack_init, seed


def redirect_query(location: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(location).query)


def test_paystack_checkout_flow_end_to_end(client: TestClient, receiver: Receiver) -> None:
    code = paystack_init(client, "FLOW-1", amount=150050, callback_url="https://shop.test/cb?cart=9")
    page = client.get(f"/checkout/{code}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    for text in ("1,500.50", "NGN", "FLOW-1", "ada@example.com"):
        assert text in page.text
    for button in ('id="pay"', 'id="fail"', 'id="abandon"'):
        assert button in page.text
    assert 'id="fail-then-pay"' not in page.text  # Paystack has no failed-attempt webhooks to show

    submitted = client.post(f"/checkout/{code}", data={"action": "pay"})
    assert submitted.status_code == 302
    location = submitted.headers["location"]
    assert location.startswith("https://shop.test/cb?")
    assert redirect_query(location) == [("cart", "9"), ("trxref", "FLOW-1"), ("reference", "FLOW-1")]

    verified = client.get("/paystack/transaction/verify/FLOW-1", headers=PS).json()["data"]
    assert verified["status"] == "success"
    assert verified["amount"] == 150050

    (hook,) = receiver.wait_for(1)
    assert hook.url == "http://payshift.test/payment/webhooks/paystack/"
    signature = hmac.new(PAYSTACK_KEY.encode(), hook.body, hashlib.sha512).hexdigest()
    assert hmac.compare_digest(hook.headers["x-paystack-signature"], signature)
    payload = json.loads(hook.body)
    assert payload["event"] == "charge.success"
    assert payload["data"]["reference"] == "FLOW-1"
    assert payload["data"]["id"] == verified["id"]
    deliveries = client.get("/_sandbox/deliveries", params={"reference": "FLOW-1"}).json()["deliveries"]
    assert [(d["event"], d["status_code"], d["attempt"]) for d in deliveries] == [("charge.success", 200, 1)]


@pytest.mark.parametrize(("action", "status"), [("fail", "failed"), ("abandon", "abandoned")])
def test_paystack_fail_and_abandon_send_no_webhook(
    client: TestClient, receiver: Receiver, action: str, status: str
) -> None:
    code = paystack_init(client, f"NO-HOOK-{action}", callback_url="https://shop.test/cb")
    submitted = client.post(f"/checkout/{code}", data={"action": action})
    assert submitted.status_code == 302
    assert redirect_query(submitted.headers["location"]) == [
        ("trxref", f"NO-HOOK-{action}"),
        ("reference", f"NO-HOOK-{action}"),
    ]
    data = client.get(f"/paystack/transaction/verify/NO-HOOK-{action}", headers=PS).json()["data"]
    assert data["status"] == status
    client.post("/_sandbox/transactions", json={"gateway": "paystack", "reference": "MARK", "amount": 1})
    assert receiver.requests == []


def test_abandoned_paystack_checkout_can_be_paid_later(client: TestClient, receiver: Receiver) -> None:
    code = paystack_init(client, "LATER-1", callback_url="https://shop.test/cb")
    client.post(f"/checkout/{code}", data={"action": "abandon"})
    page = client.get(f"/checkout/{code}")
    assert 'id="pay"' in page.text
    client.post(f"/checkout/{code}", data={"action": "pay"})
    assert (
        client.get("/paystack/transaction/verify/LATER-1", headers=PS).json()["data"]["status"] == "success"
    )
    receiver.wait_for(1)
    paid_page = client.get(f"/checkout/{code}")
    assert 'id="pay"' not in paid_page.text
    assert client.post(f"/checkout/{code}", data={"action": "pay"}).status_code == 409


def test_flutterwave_page_shows_all_four_buttons(client: TestClient) -> None:
    code = flutterwave_init(client, "FPAGE-1", amount=1500.5)
    page = client.get(f"/checkout/{code}")
    for text in ("1,500.50", "NGN", "FPAGE-1", "ada@example.com"):
        assert text in page.text
    for button in ("pay", "fail", "abandon", "fail-then-pay"):
        assert f'id="{button}"' in page.text


def test_flutterwave_pay_redirects_with_the_transaction_id(client: TestClient, receiver: Receiver) -> None:
    code = flutterwave_init(client, "FPAY-1")
    submitted = client.post(f"/checkout/{code}", data={"action": "pay"})
    assert submitted.status_code == 302
    location = submitted.headers["location"]
    assert location.startswith("https://shop.test/flw/return?")
    query = dict(redirect_query(location))
    assert query["status"] == "successful" and query["tx_ref"] == "FPAY-1"
    verified = client.get(f"/flutterwave/v3/transactions/{query['transaction_id']}/verify", headers=FW).json()
    assert verified["data"]["status"] == "successful"
    assert verified["data"]["amount"] == 1500.5
    (hook,) = receiver.wait_for(1)
    payload = json.loads(hook.body)
    assert payload["event"] == "charge.completed"
    assert payload["data"]["id"] == int(query["transaction_id"])


def test_flutterwave_fail_sends_a_failed_webhook(client: TestClient, receiver: Receiver) -> None:
    code = flutterwave_init(client, "FFAIL-1")
    query = dict(
        redirect_query(client.post(f"/checkout/{code}", data={"action": "fail"}).headers["location"])
    )
    assert query["status"] == "failed" and "transaction_id" in query
    (hook,) = receiver.wait_for(1)
    assert json.loads(hook.body)["data"]["status"] == "failed"


def test_flutterwave_abandon_is_cancelled_without_id_or_webhook(
    client: TestClient, receiver: Receiver
) -> None:
    code = flutterwave_init(client, "FCANCEL-1")
    query = redirect_query(client.post(f"/checkout/{code}", data={"action": "abandon"}).headers["location"])
    assert query == [("status", "cancelled"), ("tx_ref", "FCANCEL-1")]
    lookup = client.get("/flutterwave/v3/transactions/verify_by_reference?tx_ref=FCANCEL-1", headers=FW)
    assert lookup.status_code == 404
    assert receiver.requests == []


def test_flutterwave_fail_once_then_pay(client: TestClient, receiver: Receiver) -> None:
    code = flutterwave_init(client, "FRETRY-1")
    query = dict(
        redirect_query(client.post(f"/checkout/{code}", data={"action": "fail-then-pay"}).headers["location"])
    )
    assert query["status"] == "successful"
    first, second = receiver.wait_for(2)
    failed, paid = json.loads(first.body)["data"], json.loads(second.body)["data"]
    assert (failed["status"], paid["status"]) == ("failed", "successful")
    assert failed["tx_ref"] == paid["tx_ref"] == "FRETRY-1"
    assert failed["id"] != paid["id"]
    assert paid["id"] == int(query["transaction_id"])
    by_ref = client.get("/flutterwave/v3/transactions/verify_by_reference?tx_ref=FRETRY-1", headers=FW).json()
    assert by_ref["data"]["id"] == paid["id"]
    old = client.get(f"/flutterwave/v3/transactions/{failed['id']}/verify", headers=FW).json()
    assert old["data"]["status"] == "failed"


def test_checkout_escapes_everything(client: TestClient) -> None:
    code = paystack_init(client, "<script>alert(1)</script>", amount=100)
    page = client.get(f"/checkout/{code}").text
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_checkout_unknown_code_and_bad_action(client: TestClient) -> None:
    assert client.get("/checkout/nope").status_code == 404
    assert client.post("/checkout/nope", data={"action": "pay"}).status_code == 404
    code = paystack_init(client, "BAD-ACTION")
    assert client.post(f"/checkout/{code}", data={"action": "fail-then-pay"}).status_code == 400
    assert client.post(f"/checkout/{code}", data={}).status_code == 400


def test_checkout_without_callback_shows_the_outcome(client: TestClient) -> None:
    txn = seed(client, gateway="paystack", reference="NOCB-1", amount=100, status="pending")
    response = client.post(f"/checkout/{txn['access_code']}", data={"action": "pay"})
    assert response.status_code == 200
    assert "NOCB-1" in response.text


def test_zero_decimal_currency_display(client: TestClient) -> None:
    txn = seed(
        client, gateway="flutterwave", reference="UGX-1", amount=25000, currency="UGX", status="abandoned"
    )
    assert txn["id"] is None  # an abandoned Flutterwave checkout has no transaction id
    page = client.get(f"/checkout/{txn['access_code']}").text
    assert "25,000" in page and "25,000.00" not in page
