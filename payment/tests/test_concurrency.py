"""Concurrent duplicates against the real PostgreSQL: the unique constraint, not luck, stores one row."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import Client

from payment.gateways.base import json_dumps
from payment.gateways.registry import gateway_get
from payment.models import WebhookEvent

from .conftest import paystack_charge, require_postgres

pytestmark = pytest.mark.django_db(transaction=True)


def test_webhook_20_concurrent_identical_deliveries_stored_once() -> None:
    require_postgres()
    body = json_dumps(paystack_charge("CONC-1"))
    signature = gateway_get("paystack").sign_webhook(body)["x-paystack-signature"]
    barrier = threading.Barrier(20)

    def deliver(_: int) -> tuple[int, str]:
        try:
            barrier.wait()
            response = Client().post("/payment/webhooks/paystack/", data=body, content_type="application/json",
                                     HTTP_X_PAYSTACK_SIGNATURE=signature)
            return response.status_code, response.json()["status"]
        finally:
            connection.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(deliver, range(20)))
    assert all(code == 200 for code, _ in answers), answers
    outcomes = sorted(outcome for _, outcome in answers)
    assert outcomes.count("stored") == 1, outcomes
    assert outcomes.count("duplicate") == 19, outcomes
    assert WebhookEvent.objects.filter(reference="CONC-1").count() == 1


def test_callback_and_webhook_racing_give_one_transition() -> None:
    """The customer's redirect and the gateway's webhook verify the same payment at the same moment."""
    import httpx
    import respx

    from payment import services
    from payment.models import Notification, Payment, PaymentTransition

    from .conftest import PAYSTACK_API, paystack_verify_answer

    require_postgres()
    payment = Payment.objects.create(reference="RACE-CB", gateway="paystack", amount=500000, currency="NGN",
                                     mode="test", customer_email="ada@example.com")
    body = json_dumps(paystack_charge("RACE-CB"))
    signature = gateway_get("paystack").sign_webhook(body)["x-paystack-signature"]
    assert Client().post("/payment/webhooks/paystack/", data=body, content_type="application/json",
                         HTTP_X_PAYSTACK_SIGNATURE=signature).status_code == 200
    event = WebhookEvent.objects.get(reference="RACE-CB")
    barrier = threading.Barrier(6)
    with respx.mock:
        respx.get(f"{PAYSTACK_API}/transaction/verify/RACE-CB").mock(return_value=httpx.Response(
            200, content=json_dumps(paystack_verify_answer("RACE-CB"))))

        def racer(i: int) -> None:
            try:
                barrier.wait()
                if i % 2:
                    services.payment_verify(payment.pk, source="callback")
                else:
                    services.webhook_event_process(event.pk, via="test", force=True)
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(racer, range(6)))
    payment.refresh_from_db()
    assert payment.status == "success"
    assert PaymentTransition.objects.filter(payment=payment).count() == 1
    assert Notification.objects.filter(payment=payment).count() == 1
