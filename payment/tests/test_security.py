"""Security checks: constant-time signatures, guarded /metrics and admin, mode separation, replays, no secret leaks."""

from __future__ import annotations

import ast
import base64
import hashlib
import hmac
import inspect
import logging
import re
import textwrap
from datetime import timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import respx
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from payment import services
from payment.gateways.base import json_dumps
from payment.gateways.registry import gateway_get
from payment.models import Notification, Payment, PaymentStatus, PaymentTransition, WebhookEvent

from .conftest import (
    FLW_API,
    FLW_HASH,
    FLW_KEY,
    PAYSTACK_KEY,
    PAYSTACK_OLD_KEY,
    flutterwave_charge,
    flutterwave_verify_answer,
    paystack_charge,
    paystack_verify_answer,
    signed_post,
)
from .test_processing import deliver, make_payment, process, verify_route

pytestmark = pytest.mark.django_db

SECRETS = {"PAYSTACK_SECRET_KEY": PAYSTACK_KEY, "rotated PAYSTACK_SECRET_KEY": PAYSTACK_OLD_KEY,
           "FLUTTERWAVE_SECRET_KEY": FLW_KEY, "FLUTTERWAVE_WEBHOOK_HASH": FLW_HASH}


# --- constant-time signature checks -------------------------------------------------------------------------
def _paystack_headers(body: bytes) -> dict[str, str]:
    return {"x-paystack-signature": hmac.new(PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()}


def _flutterwave_signature(body: bytes) -> str:
    return base64.b64encode(hmac.new(FLW_HASH.encode(), body, hashlib.sha256).digest()).decode()


CASES = [
    ("paystack", _paystack_headers),
    ("flutterwave", lambda body: {"verif-hash": FLW_HASH}),
    ("flutterwave", lambda body: {"flutterwave-signature": _flutterwave_signature(body)}),
    ("flutterwave", lambda body: {"flutterwave-signature": FLW_HASH}),
]


@pytest.mark.parametrize(("gateway", "headers_for"), CASES)
def test_signature_check_is_decided_by_compare_digest(gateway: str, headers_for: Any) -> None:
    """Force compare_digest's answer both ways: the verdict follows it, so nothing else (no ==) decides."""
    body = json_dumps(paystack_charge("SEC-CT") if gateway == "paystack" else flutterwave_charge("SEC-CT"))
    good = headers_for(body)
    bad = {name: value[:-2] + ("00" if value[-2:] != "00" else "11") for name, value in good.items()}
    check = gateway_get(gateway).verify_signature
    assert check(body, good) and not check(body, bad)
    real = hmac.compare_digest
    calls: list[tuple[Any, Any]] = []

    def spy(answer: bool) -> Any:
        def compare(a: Any, b: Any) -> bool:
            calls.append((a, b))
            real(a, b)  # same work, so the spy cannot change timing characteristics
            return answer

        return compare

    with mock.patch.object(hmac, "compare_digest", spy(False)):
        assert not check(body, good), "a valid signature must fail when compare_digest says no"
    with mock.patch.object(hmac, "compare_digest", spy(True)):
        assert check(body, bad), "a wrong signature must pass when compare_digest says yes"
    given = {v.strip().lower().encode() if gateway == "paystack" else v.encode() for v in bad.values()}
    assert any(b in given or a in given for a, b in calls), "the provided value went through compare_digest"


def test_signature_checks_compare_secrets_only_with_compare_digest() -> None:
    """Static guard: no ==, !=, `in` between two non-constant values inside any verify_signature."""
    for name in ("paystack", "flutterwave"):
        source = textwrap.dedent(inspect.getsource(type(gateway_get(name)).verify_signature))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                risky = any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops)
                assert not (risky and not any(isinstance(o, ast.Constant) for o in operands)), (
                    f"{name}.verify_signature compares with {ast.unparse(node)!r}; use hmac.compare_digest")


def test_metrics_token_is_compared_with_compare_digest(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_METRICS_TOKEN = "metrics-token-123"
    with mock.patch.object(hmac, "compare_digest", return_value=False) as spy:
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token-123").status_code == 401
    assert spy.called


# --- /metrics and the admin need authorisation ------------------------------------------------------------
@pytest.mark.parametrize(("token", "header", "expected"), [
    ("", None, 401),
    ("", "Bearer ", 401),  # an empty configured token never matches an empty one
    ("", "Bearer anything", 401),
    ("t0ken-abc", None, 401),
    ("t0ken-abc", "Bearer wrong", 401),
    ("t0ken-abc", "Bearer t0ken-ab", 401),
    ("t0ken-abc", "Basic t0ken-abc", 401),
    ("t0ken-abc", "Bearer t0ken-abc", 200),
])
def test_metrics_needs_the_token(client: Client, settings: Any, token: str, header: str | None,
                                 expected: int) -> None:
    settings.PAYSHIFT_METRICS_TOKEN = token
    extra = {"HTTP_AUTHORIZATION": header} if header is not None else {}
    answer = client.get("/metrics", **extra)
    assert answer.status_code == expected
    if expected == 401:
        assert b"payshift_" not in answer.content


def test_metrics_staff_session_yes_plain_user_no(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_METRICS_TOKEN = ""
    user = get_user_model().objects.create_user("plain", "p@example.com", "pw")
    client.force_login(user)
    assert client.get("/metrics").status_code == 401
    user.is_staff = True
    user.save()
    assert client.get("/metrics").status_code == 200


def test_metrics_token_in_query_string_is_not_accepted(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_METRICS_TOKEN = "t0ken-abc"
    assert client.get("/metrics?token=t0ken-abc").status_code == 401


def _payment_admin_urls() -> list[str]:
    return [f"/admin/{m._meta.app_label}/{m._meta.model_name}/" for m in admin.site._registry
            if m._meta.app_label == "payment"]


def test_admin_pages_need_a_staff_login(client: Client) -> None:
    urls = ["/admin/", *_payment_admin_urls()]
    for url in urls:
        answer = client.get(url)
        assert answer.status_code == 302 and "/admin/login/" in answer["Location"], url
    plain = get_user_model().objects.create_user("plain", "p@example.com", "pw")
    client.force_login(plain)
    for url in urls:
        assert client.get(url).status_code == 302, url  # logged in but not staff: still the login page


# --- no secret value in the admin or in payment.log --------------------------------------------------------
def _leaks(text: str, signatures: set[str]) -> list[str]:
    found = [name for name, value in SECRETS.items() if value in text]
    found += [f"signature {s[:12]}..." for s in signatures if s in text.lower()]
    return found


@respx.mock
def test_admin_pages_show_no_secret_or_signature(client: Client, django_capture_on_commit_callbacks: Any) -> None:
    if not _payment_admin_urls():
        pytest.skip("no payment model is registered in the admin yet")
    staff = get_user_model().objects.create_user("desk", "d@example.com", "pw", is_staff=True, is_superuser=True)
    make_payment("SEC-ADM")
    make_payment("SEC-ADM-F", gateway="flutterwave")
    payload = paystack_charge("SEC-ADM")
    signatures = {gateway_get("paystack").sign_webhook(json_dumps(payload))["x-paystack-signature"]}
    # Credentials a proxy forwards are stored redacted too.
    signed_post(client, "paystack", payload, headers={"authorization": f"Bearer {PAYSTACK_KEY}"})
    body = json_dumps(flutterwave_charge("SEC-ADM-F"))
    client.post("/payment/webhooks/flutterwave/", data=body, content_type="application/json",
                HTTP_VERIF_HASH=FLW_HASH, HTTP_FLUTTERWAVE_SIGNATURE=_flutterwave_signature(body))
    verify_route("SEC-ADM", paystack_verify_answer("SEC-ADM", amount=1))  # underpaid: review + staff note
    # A gateway error that echoes the key: the event goes dead, its error shows in the admin and the email.
    respx.get(f"{FLW_API}/transactions/2001/verify").respond(
        401, content=json_dumps({"status": "error", "message": f"Invalid authorization key {FLW_KEY}"}))
    for event in WebhookEvent.objects.all():
        process(event, django_capture_on_commit_callbacks)
    dead = WebhookEvent.objects.get(gateway="flutterwave")
    assert dead.status == "dead" and "[redacted]" in dead.last_error and FLW_KEY not in dead.last_error
    assert all(FLW_KEY not in n.message for n in Notification.objects.all())
    client.force_login(staff)
    pages = ["/admin/", *_payment_admin_urls()]
    pages += [f"/admin/payment/webhookevent/{pk}/change/" for pk in WebhookEvent.objects.values_list("pk", flat=True)]
    pages += [f"/admin/payment/payment/{pk}/change/" for pk in Payment.objects.values_list("pk", flat=True)]
    for url in pages:
        answer = client.get(url)
        assert answer.status_code == 200, url
        assert not _leaks(answer.content.decode(), signatures), (url, _leaks(answer.content.decode(), signatures))


@respx.mock
def test_payment_log_has_no_secret_or_signature(client: Client, tmp_path: Path, settings: Any,
                                                django_capture_on_commit_callbacks: Any) -> None:
    """Drive the paths that log (accept, duplicate, reject, no secret, gateway errors) through the real formatter."""
    from pythonjsonlogger.json import JsonFormatter

    log_file = tmp_path / "payment.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logger = logging.getLogger("payment")
    logger.addHandler(handler)
    signatures: set[str] = set()
    try:
        make_payment("SEC-LOG")
        payload = paystack_charge("SEC-LOG")
        signatures.add(gateway_get("paystack").sign_webhook(json_dumps(payload))["x-paystack-signature"])
        signed_post(client, "paystack", payload)
        signed_post(client, "paystack", payload)  # duplicate
        client.post("/payment/webhooks/paystack/", data=json_dumps(payload), content_type="application/json",
                    HTTP_X_PAYSTACK_SIGNATURE=PAYSTACK_KEY)  # someone sends the key itself as the signature
        client.post("/payment/webhooks/flutterwave/", data=b"{}", content_type="application/json",
                    HTTP_VERIF_HASH=FLW_HASH[:-1])
        signed_post(client, "paystack", None, body=b'{"event":"charge.success","data":{"amount":"x"}}')
        verify_route("SEC-LOG", {"status": False, "message": f"Invalid key {PAYSTACK_KEY}"}, status=401)
        event = WebhookEvent.objects.get(reference="SEC-LOG")
        process(event, django_capture_on_commit_callbacks)
        settings.PAYSTACK_SECRET_KEY = []
        from payment.gateways.registry import registry_reset

        registry_reset()
        client.post("/payment/webhooks/paystack/", data=json_dumps(payload), content_type="application/json",
                    HTTP_X_PAYSTACK_SIGNATURE=next(iter(signatures)))
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = log_file.read_text()
    assert "webhook rejected" in text and "webhook received" in text
    assert not _leaks(text, signatures), _leaks(text, signatures)


# --- a test-mode event can never settle a live payment ------------------------------------------------------
@respx.mock
@pytest.mark.parametrize("payment_mode", ["test", "live"])
@pytest.mark.parametrize("claimed_mode", ["test", "live"])
@pytest.mark.parametrize("verified_mode", ["test", "live"])
def test_paystack_success_only_when_every_mode_agrees(client: Client, django_capture_on_commit_callbacks: Any,
                                                      payment_mode: str, claimed_mode: str,
                                                      verified_mode: str) -> None:
    ref = f"SEC-MODE-{payment_mode}-{claimed_mode}-{verified_mode}"
    payment = make_payment(ref, mode=payment_mode)
    event = deliver(client, "paystack", paystack_charge(ref, domain=claimed_mode))
    verify_route(ref, paystack_verify_answer(ref, domain=verified_mode))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    if payment_mode == claimed_mode == verified_mode:
        assert payment.status == PaymentStatus.SUCCESS
    else:
        assert (payment.status, payment.review_reason) == (PaymentStatus.REVIEW, "mode_mismatch")
        assert not Notification.objects.filter(payment=payment, kind="payment_succeeded").exists()


@respx.mock
def test_flutterwave_test_key_never_settles_a_live_payment(client: Client,
                                                           django_capture_on_commit_callbacks: Any) -> None:
    # Flutterwave's verify answer carries no mode: a test key only ever sees test transactions.
    payment = make_payment("SEC-FLW-LIVE", gateway="flutterwave", mode="live")
    event = deliver(client, "flutterwave", flutterwave_charge("SEC-FLW-LIVE"))
    respx.get(f"{FLW_API}/transactions/2001/verify").respond(
        content=json_dumps(flutterwave_verify_answer("SEC-FLW-LIVE")))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert (payment.status, payment.review_reason) == (PaymentStatus.REVIEW, "mode_mismatch")


@respx.mock
def test_reconcile_and_callback_never_settle_live_payment_from_test_mode(client: Client) -> None:
    payment = make_payment("SEC-RECON-LIVE", mode="live")
    verify_route("SEC-RECON-LIVE", paystack_verify_answer("SEC-RECON-LIVE", domain="test"))
    services.payment_verify(payment.pk)  # the periodic check's path
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REVIEW
    other = make_payment("SEC-CB-LIVE", mode="live")
    verify_route("SEC-CB-LIVE", paystack_verify_answer("SEC-CB-LIVE", domain="test"))
    from payment import links

    answer = client.get(links.payment_callback_link("paystack", "SEC-CB-LIVE"),
                        {"reference": "SEC-CB-LIVE", "trxref": "SEC-CB-LIVE"})
    assert answer.status_code == 302  # the callback verified it, with this payment's own token
    other.refresh_from_db()
    assert other.status != PaymentStatus.SUCCESS


# --- a replayed old event changes nothing -------------------------------------------------------------------
def _story(payment: Payment) -> tuple[Any, ...]:
    payment.refresh_from_db()
    return (payment.status, payment.amount_refunded, PaymentTransition.objects.filter(payment=payment).count(),
            Notification.objects.filter(payment=payment).count(), WebhookEvent.objects.count())


@respx.mock
def test_replayed_old_event_is_a_duplicate_and_changes_nothing(client: Client,
                                                               django_capture_on_commit_callbacks: Any) -> None:
    payment = make_payment("SEC-REPLAY")
    payload = paystack_charge("SEC-REPLAY")
    event = deliver(client, "paystack", payload)
    verify_route("SEC-REPLAY", paystack_verify_answer("SEC-REPLAY"))
    process(event, django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        services.payment_transition(Payment.objects.get(pk=payment.pk), PaymentStatus.REFUNDED,
                                    source="refund", reason="refunded since")
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(days=400))
    before = _story(payment)
    # A captured delivery stays validly signed for ever (Paystack signs no timestamp): replay it.
    answer = signed_post(client, "paystack", payload)
    assert (answer.status_code, answer.json()) == (200, {"status": "duplicate"})
    assert _story(payment) == before


RETENTION = Path(__file__).resolve().parents[1] / "management" / "commands" / "payment_retention.py"


@pytest.mark.skipif(not RETENTION.exists(), reason="payment_retention is not written yet")
@respx.mock
def test_replayed_event_after_retention_pruning_is_still_a_duplicate(
        client: Client, django_capture_on_commit_callbacks: Any) -> None:
    payment = make_payment("SEC-PRUNED")
    payload = paystack_charge("SEC-PRUNED")
    event = deliver(client, "paystack", payload)
    verify_route("SEC-PRUNED", paystack_verify_answer("SEC-PRUNED"))
    process(event, django_capture_on_commit_callbacks)
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=timezone.now() - timedelta(days=90),
                                                    processed_at=timezone.now() - timedelta(days=90))
    call_command("payment_retention", "--days", "30")
    pruned = WebhookEvent.objects.get(pk=event.pk)
    assert bytes(pruned.body) == b"" and pruned.headers in ({}, None) and pruned.pruned_at is not None
    before = _story(payment)
    for replay in (payload, {**payload, "data": {**payload["data"], "gateway_response": "Approved"}}):
        answer = signed_post(client, "paystack", replay)  # the same bytes, and the same fact re-serialised
        assert (answer.status_code, answer.json()) == (200, {"status": "duplicate"})
    assert _story(payment) == before
    # Even forced through processing again, the pruned event cannot move the payment.
    services.webhook_event_process(event.pk, via="test", force=True)
    assert _story(payment) == before


def test_secret_values_are_not_in_the_settings_page_of_errors(client: Client) -> None:
    """With DEBUG off (the default), an error answer carries no settings dump that could hold the keys."""
    answer = client.get("/payment/result/does-not-exist/")
    assert answer.status_code == 404
    assert not re.search("|".join(re.escape(v) for v in SECRETS.values()), answer.content.decode())


@pytest.mark.parametrize("refunded", [250000, 500000])  # partial and full
def test_replayed_refund_event_changes_nothing(client: Client, django_capture_on_commit_callbacks: Any,
                                               refunded: int) -> None:
    """A forced replay (admin "Reprocess", payment_replay) of a processed refund.processed books nothing twice."""
    from payment.models import Refund

    payment = make_payment("SEC-RF", status=PaymentStatus.SUCCESS, amount_paid=500000)
    Refund.objects.create(payment=payment, amount=refunded, currency="NGN", status="processing",
                          idempotency_key="sec-rf-1")
    body = gateway_get("paystack").build_test_webhook(
        event="refund.processed", reference="SEC-RF", transaction_id="77", status="processed", amount=refunded,
        currency="NGN", mode="test", email="ada@example.com")
    event = deliver(client, "paystack", body)
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.amount_refunded == refunded
    before = (_story(payment), list(Refund.objects.values_list("amount", "status")))
    for _ in range(2):
        with django_capture_on_commit_callbacks(execute=True):
            services.webhook_event_process(event.pk, via="replay", force=True)
        assert (_story(payment), list(Refund.objects.values_list("amount", "status"))) == before
