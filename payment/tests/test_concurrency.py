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


def test_refund_events_and_polls_racing_book_each_refund_once() -> None:
    """Two open refunds of one amount; their webhooks (each delivered twice) and polls of both race."""
    from unittest import mock

    from payment import services
    from payment.gateways import base
    from payment.models import Payment, Refund, RefundStatus

    require_postgres()
    payment = Payment.objects.create(reference="RACE-RF", gateway="paystack", amount=500000, currency="NGN",
                                     mode="test", customer_email="ada@example.com", status="success",
                                     amount_paid=500000, gateway_transaction_id="1001")
    refunds = [Refund.objects.create(payment=payment, amount=100000, currency="NGN", status=RefundStatus.UNKNOWN,
                                     idempotency_key=f"race-{i}", submitted_at=payment.created_at) for i in (1, 2)]
    events = []
    for reference in ("RF-X", "RF-Y"):
        body = json_dumps({"event": "refund.processed", "data": {
            "status": "processed", "transaction_reference": "RACE-RF", "refund_reference": reference,
            "amount": "100000", "currency": "NGN", "domain": "test"}})
        signature = gateway_get("paystack").sign_webhook(body)["x-paystack-signature"]
        assert Client().post("/payment/webhooks/paystack/", data=body, content_type="application/json",
                             HTTP_X_PAYSTACK_SIGNATURE=signature).status_code == 200
        events.append(WebhookEvent.objects.get(reference="RACE-RF", dedupe_key__contains=reference).pk)
    listing = [base.RefundResult(gateway_refund_id=str(500 + i), status="processed", amount=100000, currency="NGN")
               for i in (1, 2)]
    barrier = threading.Barrier(6)

    def racer(i: int) -> None:
        try:
            barrier.wait()
            if i < 4:
                services.webhook_event_process(events[i % 2], via="test", force=True)
            else:
                services.refund_poll(refunds[i % 2].pk)
        finally:
            connection.close()

    with mock.patch.object(type(gateway_get("paystack")), "refunds_for_transaction", return_value=listing), \
            ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(racer, range(6)))
    payment.refresh_from_db()
    assert payment.amount_refunded == 200000
    assert sorted(Refund.objects.values_list("status", flat=True)) == [RefundStatus.PROCESSED] * 2
    assert payment.status == "partially_refunded"


def test_concurrent_refund_requests_with_one_key_make_one_refund() -> None:
    from unittest import mock

    from payment import services
    from payment.models import Payment, Refund

    require_postgres()
    payment = Payment.objects.create(reference="RACE-KEY", gateway="paystack", amount=500000, currency="NGN",
                                     mode="test", customer_email="ada@example.com", status="success",
                                     amount_paid=500000)
    barrier = threading.Barrier(8)

    def request(_: int) -> int:
        try:
            barrier.wait()
            return services.refund_request(payment.pk, amount=300000, idempotency_key="double-click").pk
        finally:
            connection.close()

    with mock.patch("payment.queueing.refund_dispatch"), ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(request, range(8)))
    assert len(ids) == 1 and Refund.objects.filter(payment=payment).count() == 1
