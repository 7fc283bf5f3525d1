"""Refunds as safe as charges: never sent twice, never lost, never booked twice or onto the wrong refund."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import mail
from django.core.checks import run_checks
from django.test import Client
from django.utils import timezone

from payment import services
from payment.conf import app_settings
from payment.gateways import base
from payment.gateways.base import json_dumps
from payment.gateways.registry import gateway_get
from payment.models import (
    EventStatus,
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
)

from .conftest import PAYSTACK_API, paystack_verify_answer, signed_post
from .test_processing import make_payment

pytestmark = pytest.mark.django_db


def paid(reference: str, **kw: Any) -> Payment:
    kw.setdefault("amount_paid", 500000)
    kw.setdefault("gateway_transaction_id", "1001")
    return make_payment(reference, status=kw.pop("status", PaymentStatus.SUCCESS), **kw)


def refund_created(amount: int, refund_id: int = 77) -> httpx.Response:
    return httpx.Response(200, content=json_dumps({
        "status": True, "message": "Refund has been queued for processing", "data": {
            "transaction": {"id": 1001, "reference": "x", "amount": 500000, "currency": "NGN"},
            "id": refund_id, "amount": amount, "currency": "NGN", "status": "pending",
            "expected_at": "2026-12-03T00:00:00.000Z"}}))


def requested(payment: Payment, amount: int | None = None, key: str = "k") -> Refund:
    with mock.patch("payment.queueing.refund_dispatch"):
        return services.refund_request(payment.pk, amount=amount, idempotency_key=key)


def refund_event(reference: str, *, status: str = "processed", amount: int = 100000, refund_reference: str | None,
                 domain: str = "test", **extra: Any) -> dict[str, Any]:
    return {"event": f"refund.{status}", "data": {
        "status": status, "transaction_reference": reference, "refund_reference": refund_reference,
        "amount": str(amount), "currency": "NGN", "processor": "mpgs_zen", "integration": 412829,
        "customer": {"first_name": "Ada", "last_name": "Obi", "email": "ada@example.com"}, "domain": domain,
        **extra}}


def deliver_and_process(client: Client, body: dict[str, Any], capture: Any) -> WebhookEvent:
    assert signed_post(client, "paystack", body).status_code == 200
    event = WebhookEvent.objects.order_by("-pk").first()
    assert event is not None
    with capture(execute=True):
        services.webhook_event_process(event.pk, via="test")
    event.refresh_from_db()
    return event


# --- 1. an answer that is not a clear refusal means "outcome unknown" ------------------------------------------
UNCLEAR_ANSWERS = {
    "2xx_not_json": httpx.Response(200, content=b"<html>502 Bad Gateway</html>"),
    "2xx_unexpected_shape": httpx.Response(200, content=b'{"status": true, "data": "queued"}'),
    "2xx_status_false": httpx.Response(200, content=b'{"status": false, "message": "try later"}'),
    "5xx_after_sending": httpx.Response(502, content=b"bad gateway"),
    "timeout": httpx.ReadTimeout("read timed out"),
    "connection_dropped": httpx.RemoteProtocolError("peer closed connection without sending a response"),
}


@respx.mock
@pytest.mark.parametrize("answer", list(UNCLEAR_ANSWERS), ids=list(UNCLEAR_ANSWERS))
def test_refund_unclear_answer_is_unknown_never_failed_never_resent(answer: str, settings: Any,
                                                                    django_capture_on_commit_callbacks: Any):
    settings.PAYSHIFT_STAFF_EMAILS = ["ops@example.com"]
    payment = paid("RS-UNCLEAR")
    outcome: Any = UNCLEAR_ANSWERS[answer]
    route = respx.post(f"{PAYSTACK_API}/refund").mock(
        **({"side_effect": outcome} if isinstance(outcome, Exception) else {"return_value": outcome}))
    refund = requested(payment, 200000)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.refund_submit(refund.pk) == RefundStatus.UNKNOWN
    assert services.refund_submit(refund.pk) == RefundStatus.UNKNOWN  # a redelivered task sends nothing
    assert route.call_count == 1
    refund.refresh_from_db()
    assert refund.status == RefundStatus.UNKNOWN and "outcome unknown" in refund.last_error
    # The amount stays reserved: only 300000 of the 500000 can still be asked for.
    assert services.refundable_amount(Payment.objects.get(pk=payment.pk)) == 300000
    with pytest.raises(services.RefundNotAllowedError):
        requested(payment, 300001, key="another")
    # Staff hear about it once, however often the sweep runs.
    alert = Notification.objects.get(kind=NotificationKind.REFUND_UNKNOWN)
    assert alert.payment_id == payment.pk and [m.to for m in mail.outbox] == [["ops@example.com"]]
    services.refund_mark_unknown(refund.pk, "again")
    assert Notification.objects.filter(kind=NotificationKind.REFUND_UNKNOWN).count() == 1


@respx.mock
def test_refund_clear_4xx_refusal_fails_and_releases_the_amount():
    payment = paid("RS-REFUSED")
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=httpx.Response(
        400, content=b'{"status": false, "message": "Transaction has been fully reversed"}'))
    refund = requested(payment, 200000)
    assert services.refund_submit(refund.pk) == RefundStatus.FAILED
    assert services.refundable_amount(Payment.objects.get(pk=payment.pk)) == 500000


@respx.mock
def test_refund_connection_refused_may_be_sent_again():
    payment = paid("RS-REFUSED-CONNECT")
    route = respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=[httpx.ConnectError("refused"),
                                                                    refund_created(200000)])
    refund = requested(payment, 200000)
    with pytest.raises(base.TransientGatewayError):
        services.refund_submit(refund.pk)
    refund.refresh_from_db()
    assert (refund.status, refund.submitted_at) == (RefundStatus.PENDING, None)
    assert services.refund_submit(refund.pk) == RefundStatus.PROCESSING
    assert route.call_count == 2


def test_refund_whose_submitter_died_becomes_unknown_and_is_never_resent(settings):
    payment = paid("RS-DIED")
    refund = requested(payment, 100000)
    # The worker committed "submitted" and died before recording the gateway's answer.
    Refund.objects.filter(pk=refund.pk).update(
        submitted_at=timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS + 5),
        updated_at=timezone.now() - timedelta(hours=1))
    with mock.patch("payment.queueing.refund_dispatch") as dispatch, \
            mock.patch.object(type(gateway_get("paystack")), "refunds_for_transaction", return_value=None):
        counts = services.pending_payments_check(time_budget_seconds=5)
    dispatch.assert_not_called()
    refund.refresh_from_db()
    assert counts["refunds_unknown"] == 1 and refund.status == RefundStatus.UNKNOWN


def test_unknown_refunds_are_settled_from_the_gateways_refund_list(django_capture_on_commit_callbacks):
    """Two unknown refunds of the same amount: each takes one of the gateway's refunds, none is booked twice."""
    payment = paid("RS-LIST")
    first, second = requested(payment, 100000, key="a"), requested(payment, 100000, key="b")
    Refund.objects.filter(pk__in=[first.pk, second.pk]).update(status=RefundStatus.UNKNOWN,
                                                               submitted_at=timezone.now())
    listing = [base.RefundResult(gateway_refund_id="501", status="processed", amount=100000, currency="NGN"),
               base.RefundResult(gateway_refund_id="502", status="processing", amount=100000, currency="NGN")]
    gateway_class = type(gateway_get("paystack"))
    with mock.patch.object(gateway_class, "refunds_for_transaction", return_value=listing) as lookup, \
            django_capture_on_commit_callbacks(execute=True):
        assert services.refund_poll(first.pk) == RefundStatus.PROCESSED
        assert services.refund_poll(second.pk) == RefundStatus.PROCESSING
    assert lookup.call_args.kwargs == {"reference": "RS-LIST", "gateway_transaction_id": "1001"}
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.gateway_refund_id, second.gateway_refund_id) == ("501", "502")
    payment.refresh_from_db()
    assert (payment.amount_refunded, payment.status) == (100000, PaymentStatus.PARTIALLY_REFUNDED)


def test_unknown_refund_not_in_the_gateways_list_stays_reserved():
    payment = paid("RS-NOT-LISTED")
    refund = requested(payment, 100000)
    Refund.objects.filter(pk=refund.pk).update(status=RefundStatus.UNKNOWN, submitted_at=timezone.now())
    other = [base.RefundResult(gateway_refund_id="9", status="processed", amount=40000, currency="NGN")]
    with mock.patch.object(type(gateway_get("paystack")), "refunds_for_transaction", return_value=other):
        assert services.refund_poll(refund.pk) == RefundStatus.UNKNOWN
    assert services.refundable_amount(Payment.objects.get(pk=payment.pk)) == 400000


def test_staff_settle_an_unknown_refund(django_capture_on_commit_callbacks):
    payment = paid("RS-SETTLE")
    refund = requested(payment, 500000)
    Refund.objects.filter(pk=refund.pk).update(status=RefundStatus.UNKNOWN)
    with pytest.raises(ValueError):
        services.refund_settle(refund.pk, to_status=RefundStatus.PROCESSED, note=" ", actor="ops")
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_settle(refund.pk, to_status=RefundStatus.PROCESSED, note="dashboard: refunded",
                               actor="ops")
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.REFUNDED, 500000)
    with pytest.raises(ValueError):  # settled once only
        services.refund_settle(refund.pk, to_status=RefundStatus.FAILED, note="again", actor="ops")


# --- 2. bookkeeping never depends on a payment transition ----------------------------------------------------
@respx.mock
def test_refund_event_for_a_pending_charge_is_kept_and_applied_once_it_settles(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = make_payment("RS-EARLY")
    event = deliver_and_process(client, refund_event("RS-EARLY", amount=200000, refund_reference="RF-1"),
                                django_capture_on_commit_callbacks)
    assert event.status == EventStatus.UNMATCHED  # kept, not applied, not lost
    assert not Refund.objects.exists()
    payment.refresh_from_db()
    assert payment.refund_events_held  # what tells the settling transition to release it
    respx.get(f"{PAYSTACK_API}/transaction/verify/RS-EARLY").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("RS-EARLY"))))
    with mock.patch("payment.queueing._celery_publish", return_value=False), \
            mock.patch("payment.queueing._django_q_enqueue", return_value=True) as enqueue, \
            django_capture_on_commit_callbacks(execute=True):
        services.payment_verify(payment.pk, source="callback")
    assert enqueue.call_args.args[1] == event.pk  # the charge settled: the kept refund event is released
    payment.refresh_from_db()
    assert (payment.status, payment.refund_events_held) == (PaymentStatus.SUCCESS, False)
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_event_process(event.pk, via="test")
        services.webhook_event_process(event.pk, via="test")
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.PARTIALLY_REFUNDED, 200000)
    assert Refund.objects.get().status == RefundStatus.PROCESSED


@respx.mock
def test_partial_refund_in_review_is_booked_and_the_review_stays(django_capture_on_commit_callbacks):
    payment = paid("RS-REVIEW", status=PaymentStatus.REVIEW, review_reason="amount_mismatch", amount_paid=400000)
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=refund_created(100000))
    respx.get(f"{PAYSTACK_API}/refund/77").mock(return_value=httpx.Response(200, content=json_dumps({
        "status": True, "message": "Refund retrieved", "data": {"id": 77, "amount": 100000, "currency": "NGN",
                                                                 "status": "processed"}})))
    refund = requested(payment, 100000)
    services.refund_submit(refund.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.refund_poll(refund.pk) == RefundStatus.PROCESSED
    payment.refresh_from_db()
    # Booked (never refundable again), but a partial refund does not decide the review: a person does.
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.REVIEW, 100000)
    assert services.refundable_amount(payment) == 300000
    with django_capture_on_commit_callbacks(execute=True):
        services.payment_review_resolve(payment.pk, to_status=PaymentStatus.SUCCESS, note="accepted", actor="ops")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PARTIALLY_REFUNDED


def test_refund_on_a_reversed_payment_is_still_booked(client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-REVERSED", status=PaymentStatus.REVERSED)
    deliver_and_process(client, refund_event("RS-REVERSED", amount=500000, refund_reference="RF-R"),
                        django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.REVERSED, 500000)


# --- 3. an event closes the refund it is about --------------------------------------------------------------
@respx.mock
def test_two_open_refunds_of_the_same_amount_are_each_booked_once(client: Client,
                                                                  django_capture_on_commit_callbacks: Any):
    payment = paid("RS-TWINS")
    respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=[refund_created(100000, 71), refund_created(100000, 72)])
    first, second = requested(payment, 100000, key="t1"), requested(payment, 100000, key="t2")
    services.refund_submit(first.pk)
    services.refund_submit(second.pk)
    capture = django_capture_on_commit_callbacks
    for body in (refund_event("RS-TWINS", status="pending", refund_reference=None),
                 refund_event("RS-TWINS", status="processed", refund_reference="RF-A"),
                 refund_event("RS-TWINS", status="processed", refund_reference="RF-A"),  # a resend
                 refund_event("RS-TWINS", status="processed", refund_reference="RF-B")):
        deliver_and_process(client, body, capture)
    payment.refresh_from_db()
    assert (payment.amount_refunded, payment.status) == (200000, PaymentStatus.PARTIALLY_REFUNDED)
    assert sorted(Refund.objects.values_list("gateway_refund_reference", "status")) == [
        ("RF-A", RefundStatus.PROCESSED), ("RF-B", RefundStatus.PROCESSED)]


@respx.mock
def test_refund_event_never_closes_another_refund_after_polling_closed_its_own(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-POLLED")
    respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=[refund_created(100000, 81), refund_created(100000, 82)])
    first, second = requested(payment, 100000, key="p1"), requested(payment, 100000, key="p2")
    services.refund_submit(first.pk)
    services.refund_submit(second.pk)
    polled = base.RefundResult(gateway_refund_id="81", status="processed", amount=100000,
                               refund_reference="RF-81", currency="NGN")
    with mock.patch.object(type(gateway_get("paystack")), "refund_fetch", return_value=polled), \
            django_capture_on_commit_callbacks(execute=True):
        assert services.refund_poll(first.pk) == RefundStatus.PROCESSED
    # The webhook about refund 81 arrives after the poll closed it: it must not close refund 82.
    deliver_and_process(client, refund_event("RS-POLLED", refund_reference="RF-81"), django_capture_on_commit_callbacks)
    second.refresh_from_db()
    payment.refresh_from_db()
    assert second.status == RefundStatus.PROCESSING
    assert payment.amount_refunded == 100000


def test_refund_event_with_a_refund_id_matches_that_refund(client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-BYID")
    older = Refund.objects.create(payment=payment, amount=100000, currency="NGN", status=RefundStatus.PROCESSING,
                                  idempotency_key="i1", gateway_refund_id="900")
    named = Refund.objects.create(payment=payment, amount=100000, currency="NGN", status=RefundStatus.PROCESSING,
                                  idempotency_key="i2", gateway_refund_id="901")
    confirmed = base.RefundResult(gateway_refund_id="901", status="processed", amount=100000, currency="NGN")
    with mock.patch.object(type(gateway_get("paystack")), "refund_fetch", return_value=confirmed) as fetch:
        deliver_and_process(client, refund_event("RS-BYID", refund_reference=None, id=901),
                            django_capture_on_commit_callbacks)
    if fetch.called:  # the gateway's API confirms what the body claims where the body names a refund id
        assert fetch.call_args.args == ("901",)
    older.refresh_from_db()
    named.refresh_from_db()
    assert (older.status, named.status) == (RefundStatus.PROCESSING, RefundStatus.PROCESSED)


# --- 4. mode ------------------------------------------------------------------------------------------------
def test_test_mode_refund_event_never_touches_a_live_payment(client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-LIVE", mode="live")
    event = deliver_and_process(client, refund_event("RS-LIVE", amount=500000, refund_reference="RF-T",
                                                     domain="test"), django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.SUCCESS, 0)
    assert not Refund.objects.exists()
    assert event.status == EventStatus.DEAD and "test-mode refund event for a live payment" in event.last_error


@pytest.mark.parametrize(("setting", "keys"), [
    ("PAYSTACK_SECRET_KEY", ["sk_live_current", "sk_test_old"]),
    ("FLUTTERWAVE_SECRET_KEY", ["FLWSECK-live-current-X", "FLWSECK_TEST-old-X"]),
])
def test_system_check_refuses_test_and_live_keys_together(settings: Any, setting: str, keys: list[str]):
    from payment.gateways.registry import registry_reset

    setattr(settings, setting, keys)
    registry_reset()
    assert "payshift.E008" in {m.id for m in run_checks(tags=["payshift"])}
    setattr(settings, setting, keys[:1])
    registry_reset()
    assert "payshift.E008" not in {m.id for m in run_checks(tags=["payshift"])}


# --- 5. keys never truncated into collisions -----------------------------------------------------------------
def test_long_idempotency_keys_sharing_a_prefix_are_distinct_refunds():
    payment = paid("RS-KEYS")
    prefix = "order-line:" + "x" * 150
    one, two = requested(payment, 1000, key=prefix + ":1"), requested(payment, 2000, key=prefix + ":2")
    assert one.pk != two.pk
    assert requested(payment, 1000, key=prefix + ":1").pk == one.pk  # the same long key: the same refund
    assert all(len(r.idempotency_key) <= 255 for r in Refund.objects.all())


def test_two_gateway_refunds_on_a_long_reference_are_both_booked(client: Client,
                                                                   django_capture_on_commit_callbacks: Any):
    reference = "ORDER-" + "9" * 90  # long references once made two dashboard refunds share one key
    payment = paid(reference)
    for refund_reference in ("RF-LONG-1", "RF-LONG-2"):
        deliver_and_process(client, refund_event(reference, amount=100000, refund_reference=refund_reference),
                            django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.amount_refunded == 200000 and Refund.objects.count() == 2


@pytest.mark.parametrize("limit", [33, 64, 100, 255])
def test_bounded_key_keeps_short_keys_and_separates_long_ones(limit: int):
    assert base.bounded_key("short", limit) == "short"
    a, b = base.bounded_key("p" * 300 + "a", limit), base.bounded_key("p" * 300 + "b", limit)
    assert a != b and len(a) == len(b) == limit


# --- 6. a refund goes back in what the customer paid --------------------------------------------------------
@respx.mock
def test_currency_mismatch_review_refunds_what_the_gateway_reported(client: Client,
                                                                    django_capture_on_commit_callbacks: Any):
    payment = make_payment("RS-CUR", amount=500000, currency="NGN")
    respx.get(f"{PAYSTACK_API}/transaction/verify/RS-CUR").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("RS-CUR", amount=35000, currency="USD"))))
    with django_capture_on_commit_callbacks(execute=True):
        services.payment_verify(payment.pk, source="callback")
    payment.refresh_from_db()
    assert (payment.status, payment.review_reason, payment.amount_paid, payment.currency_paid) == (
        PaymentStatus.REVIEW, "currency_mismatch", 35000, "USD")
    route = respx.post(f"{PAYSTACK_API}/refund").mock(return_value=refund_created(35000))
    refund = requested(payment)
    assert (refund.amount, refund.currency) == (35000, "USD")
    services.refund_submit(refund.pk)
    sent = route.calls.last.request
    assert b'"currency":"USD"' in sent.content.replace(b" ", b"") and b'"amount":35000' in sent.content.replace(
        b" ", b"")


# --- 8. the admin refund form -----------------------------------------------------------------------------
def _form_token(client: Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200
    match = re.search(r'name="token" value="([^"]+)"', page.content.decode())
    assert match
    return match.group(1)


@pytest.fixture
def desk(client: Client) -> Client:
    user = get_user_model().objects.create_user("desk", "desk@example.com", "pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_payment", "refund_payment",
                                                                       "resolve_review"]))
    client.force_login(user)
    return client


def test_admin_refund_double_submit_makes_one_refund(desk: Client):
    payment = paid("RS-DOUBLE")
    url = f"/admin/payment/payment/{payment.pk}/refund/"
    form = {"refund_amount": "100000", "reason": "damaged", "token": _form_token(desk, url)}
    with mock.patch("payment.queueing.refund_dispatch"):
        assert desk.post(url, form).status_code == 302
        assert desk.post(url, form).status_code == 302  # the double click
    assert Refund.objects.filter(payment=payment).count() == 1
    forged = desk.post(url, {**form, "token": "made-up"})
    assert forged.status_code == 200 and "expired or was altered" in forged.content.decode()
    other = paid("RS-DOUBLE-2")
    stolen = desk.post(f"/admin/payment/payment/{other.pk}/refund/", form)  # a token for another payment
    assert stolen.status_code == 200 and not other.refunds.exists()


def test_admin_refund_and_resolve_need_their_own_permissions(client: Client):
    user = get_user_model().objects.create_user("viewer", "v@example.com", "pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_payment"))
    client.force_login(user)
    payment = paid("RS-PERM", status=PaymentStatus.REVIEW, review_reason="amount_mismatch")
    assert client.get(f"/admin/payment/payment/{payment.pk}/change/").status_code == 200
    assert client.get(f"/admin/payment/payment/{payment.pk}/refund/").status_code == 403
    assert client.post(f"/admin/payment/payment/{payment.pk}/refund/", {"reason": "x"}).status_code == 403
    assert client.post(f"/admin/payment/payment/{payment.pk}/resolve/",
                       {"outcome": "success", "note": "x"}).status_code == 403
    refund = Refund.objects.create(payment=payment, amount=1000, currency="NGN", status=RefundStatus.UNKNOWN,
                                   idempotency_key="perm")
    assert client.post(f"/admin/payment/refund/{refund.pk}/settle/",
                       {"outcome": "processed", "note": "x"}).status_code == 403
    payment.refresh_from_db()
    refund.refresh_from_db()
    assert payment.status == PaymentStatus.REVIEW and refund.status == RefundStatus.UNKNOWN


def test_admin_settles_an_unknown_refund(desk: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-DESK")
    refund = Refund.objects.create(payment=payment, amount=500000, currency="NGN", status=RefundStatus.UNKNOWN,
                                   idempotency_key="desk")
    page = desk.get(f"/admin/payment/refund/{refund.pk}/change/")
    assert page.status_code == 200 and "Settle after checking the gateway" in page.content.decode()
    with django_capture_on_commit_callbacks(execute=True):
        done = desk.post(f"/admin/payment/refund/{refund.pk}/settle/",
                         {"outcome": "processed", "note": "dashboard shows it refunded"})
    assert done.status_code == 302
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.REFUNDED, 500000)


# --- 9. the customer's refund email ---------------------------------------------------------------------
@respx.mock
def test_refund_email_states_the_amount_of_that_refund(client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-MAIL")
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=refund_created(150000))
    refund = requested(payment, 150000)
    services.refund_submit(refund.pk)
    deliver_and_process(client, refund_event("RS-MAIL", amount=150000, refund_reference="RF-M"),
                        django_capture_on_commit_callbacks)
    refund_mails = [m for m in mail.outbox if m.subject.startswith("Refund issued")]
    assert len(refund_mails) == 1
    assert "1500.00 NGN" in refund_mails[0].body and "5000.00" not in refund_mails[0].body


@respx.mock
def test_overlong_webhook_reference_never_matches_the_payment_it_starts_with(client: Client,
                                                                              django_capture_on_commit_callbacks: Any):
    """A 101-character reference once became the 100-character reference of another payment, by cutting."""
    ours = "A" * 100
    payment = make_payment(ours)
    verify = respx.get(url__regex=rf"{PAYSTACK_API}/transaction/verify/.*").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer(ours))))
    body = gateway_get("paystack").build_test_webhook(
        event="charge.success", reference=ours + "B", transaction_id="1001", status="success", amount=500000,
        currency="NGN", mode="test", email="ada@example.com")
    event = deliver_and_process(client, body, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING and event.reference != ours
    assert event.status == EventStatus.UNMATCHED and not verify.called


# --- 7. Flutterwave refunds reach a final state ------------------------------------------------------------
def _flw_refund(status: str, *, refund_id: int = 75923, tx_id: int = 908790, amount: float = 6900) -> dict[str, Any]:
    return {"id": refund_id, "account_id": 73362, "tx_id": tx_id, "flw_ref": f"URF_{refund_id}", "wallet_id": 74639,
            "amount_refunded": amount, "status": status, "destination": "payment_source",
            "meta": {"source": "availablebalance"}, "created_at": "2026-11-24T09:18:37.366Z"}


def _flw_routes(status_after: str) -> None:
    from .conftest import FLW_API, flutterwave_verify_answer

    respx.post(f"{FLW_API}/transactions/908790/refund").mock(return_value=httpx.Response(200, content=json_dumps(
        {"status": "success", "message": "Transaction refund initiated", "data": _flw_refund("pending")})))
    respx.get(f"{FLW_API}/refunds/75923").mock(return_value=httpx.Response(200, content=json_dumps(
        {"status": "success", "message": "Refund fetched", "data": _flw_refund(status_after)})))
    respx.get(f"{FLW_API}/transactions/908790/verify").mock(return_value=httpx.Response(200, content=json_dumps(
        flutterwave_verify_answer("RS-FLW", amount=15000, tx_id=908790))))


@respx.mock
@pytest.mark.parametrize(("gateway_status", "final"), [("completed", RefundStatus.PROCESSED),
                                                       ("failed", RefundStatus.FAILED)])
def test_flutterwave_refund_is_polled_to_a_final_state(gateway_status: str, final: str, settings: Any,
                                                       django_capture_on_commit_callbacks: Any):
    payment = paid("RS-FLW", gateway="flutterwave", gateway_transaction_id="908790", amount=1500000,
                   amount_paid=1500000)
    _flw_routes(gateway_status)
    refund = requested(payment, 690000)
    assert services.refund_submit(refund.pk) == RefundStatus.PROCESSING
    Refund.objects.filter(pk=refund.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    with django_capture_on_commit_callbacks(execute=True):
        services.pending_payments_check(time_budget_seconds=5)
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert (refund.status, refund.gateway_refund_id) == (final, "75923")
    assert payment.amount_refunded == (690000 if final == RefundStatus.PROCESSED else 0)


@respx.mock
def test_flutterwave_refund_webhook_closes_its_refund_once(client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("RS-FLW", gateway="flutterwave", gateway_transaction_id="908790", amount=1500000,
                   amount_paid=1500000)
    _flw_routes("completed")
    refund = requested(payment, 690000)
    services.refund_submit(refund.pk)
    body = {"event": "refund.completed", "data": _flw_refund("completed")}
    for _ in range(2):  # Flutterwave says duplicates happen
        response = signed_post(client, "flutterwave", body)
        assert response.status_code == 200
    event = WebhookEvent.objects.get(kind="refund")
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_event_process(event.pk, via="test")
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == RefundStatus.PROCESSED and refund.event_id == event.pk
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.PARTIALLY_REFUNDED, 690000)


@respx.mock
def test_forged_flutterwave_refund_webhook_is_decided_by_the_refund_api(client: Client,
                                                                        django_capture_on_commit_callbacks: Any):
    """verif-hash proves nothing about the body: a 'completed' body for a refund the API says failed books nothing."""
    payment = paid("RS-FLW", gateway="flutterwave", gateway_transaction_id="908790", amount=1500000,
                   amount_paid=1500000)
    _flw_routes("failed")
    refund = requested(payment, 690000)
    services.refund_submit(refund.pk)
    signed_post(client, "flutterwave", {"event": "refund.completed", "data": _flw_refund("completed")})
    event = WebhookEvent.objects.get(kind="refund")
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_event_process(event.pk, via="test")
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == RefundStatus.FAILED and payment.amount_refunded == 0


@respx.mock
def test_a_settle_with_no_refund_events_held_dispatches_none_and_one_held_before_the_upgrade_is_released(
        client: Client, django_capture_on_commit_callbacks: Any):
    from importlib import import_module

    from django.apps import apps

    plain = make_payment("RS-PLAIN")
    for reference in ("RS-PLAIN", "RS-OLD"):
        respx.get(f"{PAYSTACK_API}/transaction/verify/{reference}").mock(return_value=httpx.Response(
            200, content=json_dumps(paystack_verify_answer(reference))))
    with mock.patch("payment.queueing.event_dispatch") as dispatch, \
            django_capture_on_commit_callbacks(execute=True):
        services.payment_verify(plain.pk, source="callback")
    plain.refresh_from_db()
    assert plain.status == PaymentStatus.SUCCESS
    dispatch.assert_not_called()

    # A refund event held by a version without the flag: the migration sets it, the settle releases it.
    old = make_payment("RS-OLD")
    event = deliver_and_process(client, refund_event("RS-OLD", amount=200000, refund_reference="RF-O"),
                                django_capture_on_commit_callbacks)
    assert event.status == EventStatus.UNMATCHED
    Payment.objects.filter(pk=old.pk).update(refund_events_held=False)
    import_module("payment.migrations.0008_payment_refund_events_held").flag_payments_with_held_refund_events(
        apps, None)
    old.refresh_from_db()
    assert old.refund_events_held and not Payment.objects.get(pk=plain.pk).refund_events_held
    with mock.patch("payment.queueing.event_dispatch") as dispatch, \
            django_capture_on_commit_callbacks(execute=True):
        services.payment_verify(old.pk, source="callback")
    assert [c.args[0] for c in dispatch.call_args_list] == [event.pk]


def _hold_old_refund_event(client: Client, capture: Any, reference: str) -> tuple[Payment, WebhookEvent]:
    payment = make_payment(reference)
    event = deliver_and_process(client, refund_event(reference, amount=200000, refund_reference=f"RF-{reference}"),
                                capture)
    assert event.status == EventStatus.UNMATCHED
    # Held for longer than PAYSHIFT_UNMATCHED_RETRY_SECONDS (a review a person resolves days later, say).
    old = timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_UNMATCHED_RETRY_SECONDS + 3600)
    WebhookEvent.objects.filter(pk=event.pk).update(received_at=old, next_attempt_at=old)
    return payment, event


def _sweep_dispatches() -> list[int]:
    with mock.patch("payment.queueing.event_dispatch") as dispatch:
        services.pending_payments_check(time_budget_seconds=20)
    return [c.args[0] for c in dispatch.call_args_list]


@respx.mock
@pytest.mark.parametrize("how", ["release_lost_after_commit", "held_without_the_flag"])
def test_an_old_refund_event_held_for_a_charge_that_settled_is_released_by_the_sweep(
        client: Client, django_capture_on_commit_callbacks: Any, how: str):
    """The settle releases held events after commit; the sweep is the net, whatever the event's age, when that
    release never ran (the process died after COMMIT) or the hold was written without the flag (a worker of
    the previous version during a rolling upgrade). Else the refund would never be booked and the charge would
    look refundable in full."""
    reference = f"RS-NET-{how[:4]}"
    payment, event = _hold_old_refund_event(client, django_capture_on_commit_callbacks, reference)
    if how == "held_without_the_flag":
        Payment.objects.filter(pk=payment.pk).update(refund_events_held=False)
    respx.get(f"{PAYSTACK_API}/transaction/verify/{reference}").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer(reference))))
    assert event.pk not in _sweep_dispatches()  # still pending: the event waits for its payment
    with mock.patch("payment.queueing.event_dispatch") as dispatch, \
            django_capture_on_commit_callbacks(execute=how == "held_without_the_flag"):
        services.payment_verify(payment.pk, source="callback")
    dispatch.assert_not_called()  # lost with the process, or never asked for
    payment.refresh_from_db()
    assert (payment.status, payment.refund_events_held) == (PaymentStatus.SUCCESS, False)
    assert _sweep_dispatches() == [event.pk]
