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
