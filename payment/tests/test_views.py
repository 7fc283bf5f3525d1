"""Payment initiation and the customer's callback: row first, then the gateway; verify, never trust the query."""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from django.test import Client

from payment import links, services
from payment.gateways.base import json_dumps
from payment.models import Payment, PaymentStatus

from .conftest import FLW_API, PAYSTACK_API, flutterwave_verify_answer, paystack_verify_answer
from .test_processing import make_payment

pytestmark = pytest.mark.django_db


@respx.mock
def test_payment_create_row_first_then_checkout_link():
    seen: list[str] = []

    def initialize(request: httpx.Request) -> httpx.Response:
        # The pending row exists before the gateway is asked, so no webhook can beat it.
        body = json.loads(request.content)
        seen.append(Payment.objects.get(reference=body["reference"]).status)
        assert body["amount"] == 250000 and body["currency"] == "NGN"
        return httpx.Response(200, content=json_dumps({"status": True, "message": "Authorization URL created",
                                                       "data": {"authorization_url": "https://checkout.test/abc",
                                                                "access_code": "abc", "reference": body["reference"]}}))

    respx.post(f"{PAYSTACK_API}/transaction/initialize").mock(side_effect=initialize)
    payment = services.payment_create(gateway_name="paystack", amount=250000, currency="ngn",
                                      email="ada@example.com", callback_url="http://localhost/cb")
    assert seen == [PaymentStatus.PENDING]
    payment.refresh_from_db()
    assert (payment.checkout_url, payment.currency, payment.mode) == ("https://checkout.test/abc", "NGN", "test")


@respx.mock
def test_payment_create_flutterwave_sends_major_units():
    route = respx.post(f"{FLW_API}/payments").mock(return_value=httpx.Response(200, content=json_dumps(
        {"status": "success", "message": "Hosted Link", "data": {"link": "https://checkout.test/flw"}})))
    services.payment_create(gateway_name="flutterwave", amount=150050, currency="NGN", email="a@b.co",
                            callback_url="http://localhost/cb", reference="FLW-MAJOR")
    body = json.loads(route.calls.last.request.content)
    assert body["amount"] == 1500.5 and body["tx_ref"] == "FLW-MAJOR"


@respx.mock
def test_payment_create_gateway_down_keeps_pending_row_and_raises():
    respx.post(f"{PAYSTACK_API}/transaction/initialize").mock(return_value=httpx.Response(503))
    with pytest.raises(services.PaymentCreateError):
        services.payment_create(gateway_name="paystack", amount=1000, currency="NGN", email="a@b.co",
                                callback_url="http://x/cb", reference="DOWN-1")
    assert Payment.objects.get(reference="DOWN-1").status == PaymentStatus.PENDING


def test_payment_create_rejects_non_positive_amount():
    with pytest.raises(services.PaymentCreateError):
        services.payment_create(gateway_name="paystack", amount=0, currency="NGN", email="a@b.co",
                                callback_url="http://x/cb")


@respx.mock
def test_callback_verifies_and_redirects_to_result(client: Client):
    payment = make_payment("CB-1")
    respx.get(f"{PAYSTACK_API}/transaction/verify/CB-1").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("CB-1"))))
    response = client.get(links.payment_callback_link("paystack", "CB-1"), {"trxref": "CB-1", "reference": "CB-1"})
    assert response.status_code == 302 and response["Location"] == links.payment_result_link("CB-1")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert payment.transitions.get().source == "callback"
    page = client.get(links.payment_result_link("CB-1")).content.decode()
    assert "success" in page and "payment_succeeded" in page


@respx.mock
def test_callback_query_status_is_not_trusted(client: Client):
    """Flutterwave's redirect says status=successful; the API says failed: the API wins."""
    payment = make_payment("CB-FLW", gateway="flutterwave")
    respx.get(f"{FLW_API}/transactions/verify_by_reference").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("CB-FLW", status="failed"))))
    client.get(links.payment_callback_link("flutterwave", "CB-FLW"), {"status": "successful", "tx_ref": "CB-FLW",
                                                                      "transaction_id": "1"})
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED


@respx.mock
def test_callback_gateway_down_still_shows_result(client: Client):
    make_payment("CB-DOWN")
    respx.get(f"{PAYSTACK_API}/transaction/verify/CB-DOWN").mock(side_effect=httpx.ConnectError("down"))
    response = client.get(links.payment_callback_link("paystack", "CB-DOWN"), {"reference": "CB-DOWN"})
    assert response.status_code == 302
    assert "pending" in client.get(response["Location"]).content.decode()


@pytest.mark.parametrize("path,query,status", [
    (links.payment_callback_link("paystack", "NOPE"), {"reference": "NOPE"}, 404),  # signed, but no such payment
    (links.payment_callback_link("paystack", "x").replace("paystack", "stripe"), {"reference": "x"}, 404),
    (links.payment_callback_link("paystack", "x"), {}, 400),
])
def test_callback_bad_input_is_4xx(client: Client, path: str, query: dict[str, str], status: int):
    assert client.get(path, query).status_code == status


def test_checkout_form_bad_input_is_400(client: Client, settings):
    settings.PAYSHIFT_DEMO_PAGES = True
    assert client.post("/payment/checkout/", {"gateway": "paystack", "amount": "abc"}).status_code == 400
    assert client.post("/payment/checkout/", {"gateway": "nope", "amount": "100"}).status_code == 400
    assert client.get("/payment/checkout/").status_code == 405


def test_home_page_renders_without_other_customers_payments(client: Client, settings):
    settings.PAYSHIFT_DEMO_PAGES = True
    make_payment("HOME-1")
    page = client.get("/")
    assert page.status_code == 200 and "HOME-1" not in page.content.decode()
