"""Shared fixtures: gateway secrets, signed deliveries, and real-service guards (fail in CI, skip locally)."""

from __future__ import annotations

import os
import pkgutil
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
from django.test import Client, override_settings

import payment.tests.gateways as test_gateway_folder
import payshift.celery  # noqa: F401  (the demo project's Celery app, current as in its web process)
from payment.gateways.base import json_dumps
from payment.gateways.flutterwave import FlutterwaveGateway
from payment.gateways.paystack import PaystackGateway
from payment.gateways.registry import gateway_classes, gateway_get, registry_reset
from payment.queueing import circuit

CI = os.environ.get("CI", "").lower() == "true"

# The test-only gateways (payment/tests/gateways/<name>/), loaded by the `with_test_gateways` fixture.
TEST_GATEWAY_MODULES = tuple(f"{test_gateway_folder.__name__}.{info.name}"
                             for info in pkgutil.iter_modules(test_gateway_folder.__path__) if info.ispkg)

# Names for the tests about one gateway; the values are the classes' own `test_settings`.
PAYSTACK_KEY, PAYSTACK_OLD_KEY = PaystackGateway.test_settings["PAYSTACK_SECRET_KEY"]
(FLW_KEY,) = FlutterwaveGateway.test_settings["FLUTTERWAVE_SECRET_KEY"]
(FLW_HASH,) = FlutterwaveGateway.test_settings["FLUTTERWAVE_WEBHOOK_HASH"]
PAYSTACK_API = str(PaystackGateway.test_settings["PAYSTACK_BASE_URL"])
FLW_API = str(FlutterwaveGateway.test_settings["FLUTTERWAVE_BASE_URL"])


def service_missing(what: str) -> None:
    """Under CI a missing service is a failure, never a skip (issue 2); on a laptop it is a skip."""
    if CI:
        pytest.fail(f"{what} is required in CI but unavailable")
    pytest.skip(f"{what} not available here")


def require_postgres() -> None:
    from django.db import connection

    if connection.vendor != "postgresql":
        service_missing("PostgreSQL (DATABASE_URL)")


def redis_url() -> str:
    from django.conf import settings

    url = os.environ.get("PAYSHIFT_TEST_REDIS_URL") or settings.CELERY_BROKER_URL
    if not url.startswith("redis://"):
        service_missing("Redis (CELERY_BROKER_URL=redis://...)")
    parsed = urlparse(url)
    try:
        socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), timeout=1).close()
    except OSError:
        service_missing(f"Redis at {url}")
    return url


def use_broker(url: str) -> None:
    """Point this process's Celery app at another broker (and drop pooled connections to the old one)."""
    from kombu import pools

    from payshift.celery import app

    # Celery reads the CELERY_BROKER_URL environment variable before its own configuration.
    os.environ["CELERY_BROKER_URL"] = url
    app.conf.broker_url = url
    # Producer pools live in kombu's global registry keyed by connection: clear it, not just our references.
    pools.reset()
    if app._pool is not None:
        app._pool.force_close_all()
    app._pool = None
    app.amqp._producer_pool = None
    circuit.reset()


def gateway_test_settings_apply(settings: Any) -> None:
    """Give every loaded gateway the settings its class declares for tests (`test_settings`)."""
    for cls in gateway_classes().values():
        for name, value in cls.test_settings.items():
            setattr(settings, name, list(value) if isinstance(value, list) else value)
    registry_reset()


def contract_gateway_names() -> list[str]:
    """Every gateway the registry finds, the test-only ones included: what the contract suite runs over."""
    with override_settings(PAYSHIFT_GATEWAY_MODULES=list(TEST_GATEWAY_MODULES)):
        return list(gateway_classes())


@pytest.fixture(autouse=True)
def gateway_settings(settings: Any) -> Iterator[Any]:
    gateway_test_settings_apply(settings)
    settings.PAYSHIFT_NOTIFICATION_CHANNELS = ["payment.notifications.EmailChannel"]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    circuit.reset()
    yield settings
    registry_reset()
    circuit.reset()


@pytest.fixture
def with_test_gateways(gateway_settings: Any) -> Any:
    """Load the test-only gateways too (payment/tests/gateways/, through PAYSHIFT_GATEWAY_MODULES), configured
    from their classes like the others."""
    gateway_settings.PAYSHIFT_GATEWAY_MODULES = list(TEST_GATEWAY_MODULES)
    gateway_test_settings_apply(gateway_settings)
    return gateway_settings


def signed_post(client: Client, gateway: str, payload: Any, *, headers: dict[str, str] | None = None,
                body: bytes | None = None, path: str = "") -> Any:
    raw = body if body is not None else json_dumps(payload)
    sign = gateway_get(gateway).sign_webhook(raw)
    sign.pop("content-type", None)
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in {**sign, **(headers or {})}.items()}
    return client.post(path or f"/payment/webhooks/{gateway}/", data=raw, content_type="application/json", **extra)


def paystack_charge(reference: str, *, amount: int = 500000, currency: str = "NGN", tx_id: int = 1001,
                    status: str = "success", domain: str = "test") -> dict[str, Any]:
    return gateway_get(PaystackGateway.name).build_test_webhook(
        event=PaystackGateway.charge_event, reference=reference, transaction_id=str(tx_id), status=status,
        amount=amount, currency=currency, mode=domain, email="ada@example.com")


def flutterwave_charge(reference: str, *, amount: int = 500000, currency: str = "NGN", tx_id: int = 2001,
                       status: str = "successful") -> dict[str, Any]:
    return gateway_get(FlutterwaveGateway.name).build_test_webhook(
        event=FlutterwaveGateway.charge_event, reference=reference, transaction_id=str(tx_id), status=status,
        amount=amount, currency=currency, mode="test", email="ada@example.com")


def paystack_verify_answer(reference: str, *, amount: int = 500000, currency: str = "NGN", status: str = "success",
                           domain: str = "test", tx_id: int = 1001) -> dict[str, Any]:
    return {"status": True, "message": "Verification successful", "data": {
        "id": tx_id, "domain": domain, "status": status, "reference": reference, "amount": amount,
        "currency": currency, "paid_at": "2026-11-26T05:00:00.000Z", "created_at": "2026-11-26T04:59:00.000Z",
        "channel": "card", "gateway_response": "Successful", "metadata": "", "fees": 7500,
        "requested_amount": amount, "customer": {"id": 1, "email": "ada@example.com"}, "authorization": {}}}


def flutterwave_verify_answer(reference: str, *, amount: Any = 5000, currency: str = "NGN",
                              status: str = "successful", tx_id: int = 2001) -> dict[str, Any]:
    return {"status": "success", "message": "Transaction fetched successfully", "data": {
        "id": tx_id, "tx_ref": reference, "flw_ref": "FLW-MOCK-1", "amount": amount, "currency": currency,
        "charged_amount": amount, "app_fee": 70, "merchant_fee": 0, "processor_response": "Approved",
        "status": status, "payment_type": "card", "created_at": "2026-11-26T05:00:00.000Z",
        "amount_settled": amount, "customer": {"id": 1, "email": "ada@example.com"}, "card": {}, "meta": None}}
