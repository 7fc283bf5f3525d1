"""The webhook edge: every documented answer, duplicates, ignored events, storage and logging."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import Client

from payment.gateways.base import json_dumps
from payment.models import EventStatus, WebhookEvent

from .conftest import FLW_HASH, flutterwave_charge, paystack_charge, signed_post

pytestmark = pytest.mark.django_db


def test_webhook_paystack_stored_and_answered_200(client: Client) -> None:
    payload = paystack_charge("REF-1")
    response = signed_post(client, "paystack", payload)
    assert response.status_code == 200
    assert response.json() == {"status": "stored"}
    event = WebhookEvent.objects.get()
    assert (event.gateway, event.event, event.reference, event.status, event.kind) == (
        # Stored as `received`: the outbox relay publishes it once the row is committed (test_outbox.py).
        "paystack", "charge.success", "REF-1", EventStatus.RECEIVED, "charge")
    assert bytes(event.body) == json_dumps(payload)
    assert event.headers["x-paystack-signature"] == "[redacted]"
    assert event.source_ip == "127.0.0.1"


def test_webhook_flutterwave_stored(client: Client) -> None:
    response = signed_post(client, "flutterwave", flutterwave_charge("FLW-1"))
    assert response.status_code == 200
    event = WebhookEvent.objects.get()
    assert event.headers["verif-hash"] == "[redacted]"
    assert FLW_HASH not in str(event.headers)


def test_webhook_duplicate_answered_200_and_stored_once(client: Client) -> None:
    payload = paystack_charge("REF-DUP")
    assert signed_post(client, "paystack", payload).json() == {"status": "stored"}
    assert signed_post(client, "paystack", payload).json() == {"status": "duplicate"}
    assert WebhookEvent.objects.count() == 1


def test_webhook_duplicate_with_different_bytes_same_fact_is_duplicate(client: Client) -> None:
    payload = paystack_charge("REF-DUP2")
    signed_post(client, "paystack", payload)
    payload["data"]["gateway_response"] = "Approved"  # a resend may differ in bytes, not in the fact
    assert signed_post(client, "paystack", payload).json() == {"status": "duplicate"}
    assert WebhookEvent.objects.count() == 1


def test_webhook_unhandled_event_stored_as_ignored(client: Client) -> None:
    response = signed_post(client, "paystack", {"event": "transfer.success", "data": {"reference": "T1"}})
    assert response.status_code == 200
    assert response.json() == {"status": "ignored"}
    assert WebhookEvent.objects.get().status == EventStatus.IGNORED


def test_webhook_missing_signature_401_not_stored(client: Client) -> None:
    response = client.post("/payment/webhooks/paystack/", data=json_dumps(paystack_charge("R")),
                           content_type="application/json")
    assert response.status_code == 401
    assert WebhookEvent.objects.count() == 0


def test_webhook_wrong_signature_401_logged(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="payment"):
        response = client.post("/payment/webhooks/paystack/", data=b'{"event":"charge.success","data":{}}',
                               content_type="application/json", HTTP_X_PAYSTACK_SIGNATURE="ab" * 64)
    assert response.status_code == 401
    assert any(getattr(r, "reason", "") == "bad_signature" for r in caplog.records)
    assert WebhookEvent.objects.count() == 0


def test_webhook_flutterwave_wrong_hash_401(client: Client) -> None:
    response = client.post("/payment/webhooks/flutterwave/", data=json_dumps(flutterwave_charge("F")),
                           content_type="application/json", HTTP_VERIF_HASH="wrong")
    assert response.status_code == 401


def test_webhook_no_secret_configured_refuses_everything(client: Client, settings,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from payment.gateways.registry import registry_reset

    payload = paystack_charge("R-NOSECRET")
    body = json_dumps(payload)
    from payment.gateways.registry import gateway_get

    headers = gateway_get("paystack").sign_webhook(body)
    settings.PAYSTACK_SECRET_KEY = []
    registry_reset()
    with caplog.at_level(logging.ERROR, logger="payment"):
        response = client.post("/payment/webhooks/paystack/", data=body, content_type="application/json",
                               HTTP_X_PAYSTACK_SIGNATURE=headers["x-paystack-signature"])
    assert response.status_code == 401
    assert any(r.levelno == logging.ERROR and getattr(r, "reason", "") == "no_secret" for r in caplog.records)


@pytest.mark.parametrize("body", [b"not json", b"[1,2]", b'{"event":"charge.success"}',
                                  b'{"event":"charge.success","data":{"reference":"r","amount":"1.5"}}',
                                  b"\xff\xfe\xfd", b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_webhook_authentic_but_bad_body_400(client: Client, body: bytes) -> None:
    response = signed_post(client, "paystack", None, body=body)
    assert response.status_code == 400
    assert WebhookEvent.objects.count() == 0


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch"])
def test_webhook_other_methods_405(client: Client, method: str) -> None:
    response = getattr(client, method)("/payment/webhooks/paystack/")
    assert response.status_code == 405
    assert response["Allow"] == "POST"


def test_webhook_too_large_413(client: Client, settings) -> None:
    settings.PAYSHIFT_WEBHOOK_MAX_BYTES = 1024
    body = b'{"event":"charge.success","data":{"pad":"' + b"x" * 2000 + b'"}}'
    response = signed_post(client, "paystack", None, body=body)
    assert response.status_code == 413
    assert WebhookEvent.objects.count() == 0


def test_webhook_default_limit_is_one_mib(client: Client) -> None:
    body = b'{"event":"x","data":{"pad":"' + b"x" * (1024 * 1024) + b'"}}'
    assert signed_post(client, "paystack", None, body=body).status_code == 413


def test_webhook_unknown_gateway_404(client: Client) -> None:
    assert client.post("/payment/webhooks/stripe/", data=b"{}", content_type="application/json").status_code == 404


def test_webhook_database_unavailable_503(client: Client) -> None:
    # The INSERT fails on a connection that is still usable: a database error, not a stale connection.
    with mock.patch("django.db.backends.utils.CursorWrapper.execute", side_effect=OperationalError("disk full")):
        response = signed_post(client, "paystack", paystack_charge("R-DB"))
    assert response.status_code == 503


def test_webhook_unexpected_error_is_503_never_500(client: Client) -> None:
    with mock.patch("payment.services.webhook_receive", side_effect=RuntimeError("bug")):
        response = signed_post(client, "paystack", paystack_charge("R-BUG"))
    assert response.status_code == 503


def test_webhook_ip_allowlist(client: Client, settings) -> None:
    settings.PAYSHIFT_IP_ALLOWLIST_GATEWAYS = ["paystack"]
    payload = paystack_charge("R-IP")
    assert signed_post(client, "paystack", payload).status_code == 403
    ok = client.post("/payment/webhooks/paystack/", data=json_dumps(payload),
                     content_type="application/json", REMOTE_ADDR="52.31.139.75",
                     HTTP_X_PAYSTACK_SIGNATURE=_sig(payload))
    assert ok.status_code == 200


def test_webhook_trusted_proxy_forwarded_for(client: Client, settings) -> None:
    settings.PAYSHIFT_IP_ALLOWLIST_GATEWAYS = ["paystack"]
    settings.PAYSHIFT_TRUSTED_PROXIES = ["10.0.0.0/8"]
    payload = paystack_charge("R-PROXY")
    # From a trusted proxy, the forwarded client address counts.
    ok = client.post("/payment/webhooks/paystack/", data=json_dumps(payload), content_type="application/json",
                     REMOTE_ADDR="10.1.2.3", HTTP_X_FORWARDED_FOR="1.2.3.4, 52.49.173.169",
                     HTTP_X_PAYSTACK_SIGNATURE=_sig(payload))
    assert ok.status_code == 200
    assert WebhookEvent.objects.get().source_ip == "52.49.173.169"
    # From an untrusted peer, a forged X-Forwarded-For is ignored.
    forged = client.post("/payment/webhooks/paystack/", data=json_dumps(payload), content_type="application/json",
                         REMOTE_ADDR="8.8.8.8", HTTP_X_FORWARDED_FOR="52.49.173.169",
                         HTTP_X_PAYSTACK_SIGNATURE=_sig(payload))
    assert forged.status_code == 403


def _sig(payload: dict) -> str:
    from payment.gateways.registry import gateway_get

    return gateway_get("paystack").sign_webhook(json_dumps(payload))["x-paystack-signature"]


def test_webhook_log_line_has_fields_and_no_secret(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    from .conftest import PAYSTACK_KEY

    with caplog.at_level(logging.INFO, logger="payment"):
        signed_post(client, "paystack", paystack_charge("R-LOG"))
    received = [r for r in caplog.records if r.getMessage() == "webhook received"]
    fields = received[0].__dict__
    assert (fields["reference"], fields["gateway"]) == ("R-LOG", "paystack")
    assert fields["event_id"]
    assert all(PAYSTACK_KEY not in r.getMessage() + str(r.__dict__) for r in caplog.records)
