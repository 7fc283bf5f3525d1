"""The host project's Python API (payment.api) and the settings a host writes as the gateways show them."""

from __future__ import annotations

import json
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.contrib.auth import get_user_model
from django.test import Client

from payment import api, links, services
from payment.gateways.base import json_dumps
from payment.models import Payment, PaymentStatus, WebhookEvent

from .conftest import PAYSTACK_API, paystack_charge, paystack_verify_answer, signed_post

pytestmark = pytest.mark.django_db


@pytest.fixture
def order() -> Any:
    # Any model of the host's stands for its order; the auth user is one every project has.
    return get_user_model().objects.create_user("order-42", "buyer@example.com", "pw")


def _initialize_route() -> respx.Route:
    return respx.post(f"{PAYSTACK_API}/transaction/initialize").mock(side_effect=lambda request: httpx.Response(
        200, content=json_dumps({"status": True, "message": "Authorization URL created", "data": {
            "authorization_url": f"https://checkout.paystack.test/{json.loads(request.content)['reference']}",
            "access_code": "ac", "reference": json.loads(request.content)["reference"]}})))


@respx.mock
def test_payment_start_ties_the_payment_to_the_hosts_order(order: Any, settings: Any) -> None:
    settings.PAYSHIFT_PUBLIC_URL = "https://shop.example.com"
    route = _initialize_route()
    checkout = api.payment_start(order=order, amount=250000, currency="ngn", email="buyer@example.com",
                                 gateway="paystack")
    payment = Payment.objects.get(reference=checkout.reference)
    assert payment.order == order and (payment.amount, payment.currency) == (250000, "NGN")
    assert checkout.checkout_url == f"https://checkout.paystack.test/{checkout.reference}"
    sent = json.loads(route.calls.last.request.content)
    # The gateway sends the customer back to an absolute, signed callback; the result link is signed too.
    assert sent["callback_url"] == "https://shop.example.com" + links.payment_callback_link("paystack",
                                                                                              checkout.reference)
    assert checkout.result_url == "https://shop.example.com" + links.payment_result_link(checkout.reference)
    view = api.payment_get(checkout.reference)
    assert (view.status, view.order, view.paid, view.refundable) == ("pending", order, False, 0)
    assert [p.reference for p in api.payments_for(order)] == [checkout.reference]


@respx.mock
@pytest.mark.parametrize("kwargs, message", [
    ({"gateway": "stripe"}, "unknown gateway"),
    ({"amount": 0}, "positive"),
    ({"reference": "x" * 101}, "1 to 100 characters"),
])
def test_payment_start_refuses_bad_requests_with_payment_error(order: Any, kwargs: dict[str, Any],
                                                               message: str) -> None:
    _initialize_route()
    request = {"order": order, "amount": 1000, "currency": "NGN", "email": "b@example.com", "gateway": "paystack",
               **kwargs}
    with pytest.raises(api.PaymentError, match=message):
        api.payment_start(**request)


@respx.mock
def test_payment_start_with_a_used_reference_is_a_payment_error(order: Any) -> None:
    _initialize_route()
    api.payment_start(order=order, amount=1000, currency="NGN", email="b@example.com", gateway="paystack",
                      reference="ORDER-42")
    with pytest.raises(api.PaymentError, match="already used"):
        api.payment_start(order=order, amount=1000, currency="NGN", email="b@example.com", gateway="paystack",
                          reference="ORDER-42")
    assert Payment.objects.filter(reference="ORDER-42").count() == 1


def test_payment_get_unknown_reference_is_a_payment_error() -> None:
    with pytest.raises(api.PaymentError):
        api.payment_get("nope")


def test_payment_refund_is_once_per_idempotency_key(order: Any) -> None:
    Payment.objects.create(reference="API-RF", gateway="paystack", amount=500000, currency="NGN", mode="test",
                           customer_email="b@example.com", status=PaymentStatus.SUCCESS, amount_paid=500000)
    with mock.patch("payment.queueing.refund_dispatch"):
        first = api.payment_refund("API-RF", idempotency_key="order-42-return-1", amount=100000, reason="return")
        again = api.payment_refund("API-RF", idempotency_key="order-42-return-1", amount=100000, reason="return")
        with pytest.raises(api.PaymentError, match="exceeds"):
            api.payment_refund("API-RF", idempotency_key="order-42-return-2", amount=450000)
    assert first == again and (first.amount, first.currency, first.status) == (100000, "NGN", "pending")
    assert api.payment_get("API-RF").refundable == 400000


@respx.mock
def test_payment_succeeded_receiver_runs_once_per_transition(client: Client,
                                                             django_capture_on_commit_callbacks: Any) -> None:
    """Duplicates, a racing callback verify and a forced replay: the host's receiver runs once."""
    calls: list[tuple[str, int]] = []

    def fulfil(sender: Any, payment: Payment, transition: Any, **kwargs: Any) -> None:
        calls.append((payment.reference, transition.pk))

    api.payment_succeeded.connect(fulfil, dispatch_uid="test-fulfil")
    try:
        Payment.objects.create(reference="API-ONCE", gateway="paystack", amount=500000, currency="NGN",
                               mode="test", customer_email="b@example.com")
        respx.get(f"{PAYSTACK_API}/transaction/verify/API-ONCE").mock(return_value=httpx.Response(
            200, content=json_dumps(paystack_verify_answer("API-ONCE"))))
        for _ in range(3):
            assert signed_post(client, "paystack", paystack_charge("API-ONCE")).status_code == 200
        event = WebhookEvent.objects.get(reference="API-ONCE")
        with django_capture_on_commit_callbacks(execute=True):
            services.webhook_event_process(event.pk, via="test")
            services.payment_verify(Payment.objects.get(reference="API-ONCE").pk, source="callback")
            services.webhook_event_process(event.pk, via="replay", force=True)
    finally:
        api.payment_succeeded.disconnect(dispatch_uid="test-fulfil")
    assert len(calls) == 1 and calls[0][0] == "API-ONCE"


# --- settings written as the gateways' dashboards show them -------------------------------------------------
@pytest.mark.parametrize("written", ["sk_test_host_key", "sk_test_host_key, sk_test_old", ["sk_test_host_key"]])
def test_a_plain_string_key_authenticates_webhooks(client: Client, settings: Any, written: Any) -> None:
    from payment.gateways.registry import registry_reset

    settings.PAYSTACK_SECRET_KEY = written
    registry_reset()
    assert signed_post(client, "paystack", paystack_charge("API-KEY")).status_code == 200


def test_every_payshift_setting_has_a_default_without_any_setting(settings: Any) -> None:
    from payment.conf import AppSettings, app_settings

    for name in AppSettings.names():
        if hasattr(settings, name):
            delattr(settings, name)
    values = {name: getattr(app_settings, name) for name in AppSettings.names()}
    assert values["PAYSHIFT_WEBHOOK_MAX_BYTES"] == 1024 * 1024
    assert values["PAYSTACK_SECRET_KEY"] == [] and values["PAYSHIFT_ENABLED_GATEWAYS"] is None
    with pytest.raises(AttributeError):
        app_settings.PAYSHIFT_WEBHOOK_MAX_BYTES = 5


def test_every_payshift_setting_is_documented() -> None:
    from pathlib import Path

    from payment.conf import AppSettings

    doc = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert [name for name in AppSettings.names() if f"`{name}`" not in doc] == []
