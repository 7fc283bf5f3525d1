"""Processing: verify with the gateway (faked at the HTTP layer with respx), the state machine, notifications."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
from django.core import mail
from django.db import IntegrityError
from django.test import Client
from django.utils import timezone

from payment import services, signals
from payment.gateways.base import TransientGatewayError, json_dumps
from payment.models import (
    EventStatus,
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    PaymentTransition,
    WebhookEvent,
)

from .conftest import (
    FLW_API,
    PAYSTACK_API,
    flutterwave_charge,
    flutterwave_verify_answer,
    paystack_charge,
    paystack_verify_answer,
    signed_post,
)

pytestmark = pytest.mark.django_db


def make_payment(reference: str, *, gateway: str = "paystack", amount: int = 500000, currency: str = "NGN",
                 mode: str = "test", status: str = PaymentStatus.PENDING, **extra: Any) -> Payment:
    extra.setdefault("customer_email", "ada@example.com")
    return Payment.objects.create(reference=reference, gateway=gateway, amount=amount, currency=currency,
                                  mode=mode, status=status, **extra)


def deliver(client: Client, gateway: str, payload: dict[str, Any]) -> WebhookEvent:
    response = signed_post(client, gateway, payload)
    assert response.status_code == 200, response.content
    return WebhookEvent.objects.order_by("-pk").first()  # type: ignore[return-value]


def verify_route(reference: str, answer: dict[str, Any], status: int = 200) -> respx.Route:
    return respx.get(f"{PAYSTACK_API}/transaction/verify/{reference}").mock(
        return_value=httpx.Response(status, content=json_dumps(answer)))


def process(event: WebhookEvent, capture: Any) -> str:
    with capture(execute=True):
        return services.webhook_event_process(event.pk, via="test")


@respx.mock
def test_process_pending_to_success_one_transition_one_notification(client, django_capture_on_commit_callbacks):
    payment = make_payment("P-OK")
    event = deliver(client, "paystack", paystack_charge("P-OK"))
    route = verify_route("P-OK", paystack_verify_answer("P-OK"))
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.PROCESSED
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert payment.amount_paid == 500000 and payment.gateway_transaction_id == "1001"
    assert PaymentTransition.objects.filter(payment=payment).count() == 1
    notes = list(Notification.objects.filter(payment=payment))
    assert [n.kind for n in notes] == [NotificationKind.PAYMENT_SUCCEEDED]
    assert notes[0].delivered_at is not None
    assert len(mail.outbox) == 1 and mail.outbox[0].to == ["ada@example.com"]
    # Processing again is a no-op, and does not even call the gateway.
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.PROCESSED
    assert route.call_count == 1
    assert PaymentTransition.objects.filter(payment=payment).count() == 1
    assert Notification.objects.filter(payment=payment).count() == 1


@respx.mock
def test_process_duplicate_event_rows_give_one_transition(client, django_capture_on_commit_callbacks):
    """Two distinct events about the same fact (e.g. webhook and a resend with a new id) apply once."""
    payment = make_payment("P-TWICE")
    first = deliver(client, "paystack", paystack_charge("P-TWICE", tx_id=1))
    second = deliver(client, "paystack", paystack_charge("P-TWICE", tx_id=2))
    verify_route("P-TWICE", paystack_verify_answer("P-TWICE"))
    process(first, django_capture_on_commit_callbacks)
    process(second, django_capture_on_commit_callbacks)
    assert PaymentTransition.objects.filter(payment=payment).count() == 1
    assert Notification.objects.filter(payment=payment).count() == 1


@respx.mock
@pytest.mark.parametrize("answer_kwargs,reason", [
    ({"amount": 499999}, "amount_mismatch"),
    ({"currency": "GHS"}, "currency_mismatch"),
    ({"domain": "live"}, "mode_mismatch"),
])
def test_process_mismatch_goes_to_review_never_success(client, django_capture_on_commit_callbacks,
                                                       answer_kwargs, reason):
    payment = make_payment("P-MIS")
    event = deliver(client, "paystack", paystack_charge("P-MIS"))
    verify_route("P-MIS", paystack_verify_answer("P-MIS", **answer_kwargs))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REVIEW
    assert payment.review_reason == reason
    staff = Notification.objects.get(payment=payment)
    assert (staff.kind, staff.recipient) == (NotificationKind.PAYMENT_REVIEW, "staff")
    assert not Notification.objects.filter(kind=NotificationKind.PAYMENT_SUCCEEDED).exists()


@respx.mock
def test_process_test_mode_event_for_live_payment_is_review(client, django_capture_on_commit_callbacks):
    payment = make_payment("P-LIVE", mode="live")
    event = deliver(client, "paystack", paystack_charge("P-LIVE", domain="test"))
    verify_route("P-LIVE", paystack_verify_answer("P-LIVE", domain="live"))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert (payment.status, payment.review_reason) == (PaymentStatus.REVIEW, "mode_mismatch")


@respx.mock
def test_process_webhook_amount_is_not_trusted(client, django_capture_on_commit_callbacks):
    """The body says 5,000.00 paid; the API says 1.00: the API decides."""
    payment = make_payment("P-LIE")
    event = deliver(client, "paystack", paystack_charge("P-LIE", amount=500000))
    verify_route("P-LIE", paystack_verify_answer("P-LIE", amount=100))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REVIEW and payment.amount_paid == 100


@respx.mock
def test_process_body_success_but_api_failed(client, django_capture_on_commit_callbacks):
    payment = make_payment("P-FAILED")
    event = deliver(client, "paystack", paystack_charge("P-FAILED"))
    verify_route("P-FAILED", paystack_verify_answer("P-FAILED", status="failed"))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED
    assert Notification.objects.get(payment=payment).kind == NotificationKind.PAYMENT_FAILED


@respx.mock
def test_process_api_still_pending_is_retried_not_closed(client, django_capture_on_commit_callbacks):
    """The body claims success, the API is not final yet: change nothing, keep the event for a retry."""
    payment = make_payment("P-ONGOING", status=PaymentStatus.ABANDONED)
    event = deliver(client, "paystack", paystack_charge("P-ONGOING"))
    verify_route("P-ONGOING", paystack_verify_answer("P-ONGOING", status="ongoing"))
    with pytest.raises(TransientGatewayError):
        process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.ABANDONED
    assert not PaymentTransition.objects.exists()
    event.refresh_from_db()
    assert event.status == EventStatus.FAILED  # the retry policy owns it now


@respx.mock
def test_process_failed_attempt_with_pending_api_is_closed(client, django_capture_on_commit_callbacks):
    """A Flutterwave failed-attempt webhook while the API still says pending claims nothing to wait for."""
    payment = make_payment("F-PEND", gateway="flutterwave")
    event = deliver(client, "flutterwave", flutterwave_charge("F-PEND", tx_id=51, status="failed"))
    respx.get(f"{FLW_API}/transactions/51/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("F-PEND", status="pending", tx_id=51))))
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.PROCESSED
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING


@respx.mock
def test_process_overpaid_is_success_flagged(client, django_capture_on_commit_callbacks):
    payment = make_payment("P-OVER")
    event = deliver(client, "paystack", paystack_charge("P-OVER"))
    verify_route("P-OVER", paystack_verify_answer("P-OVER", amount=600000))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert PaymentTransition.objects.get(payment=payment).details["overpaid_by"] == 100000
    assert not payment.refunds.exists()  # refunding the excess is off by default


@respx.mock
def test_process_overpaid_refund_excess_when_enabled(client, settings, django_capture_on_commit_callbacks):
    settings.PAYSHIFT_REFUND_OVERPAYMENT = True
    settings.CELERY_BROKER_URL = "memory://"
    payment = make_payment("P-OVER2")
    event = deliver(client, "paystack", paystack_charge("P-OVER2"))
    verify_route("P-OVER2", paystack_verify_answer("P-OVER2", amount=600000))
    from unittest import mock

    with mock.patch("payment.queueing.refund_dispatch") as dispatch:
        process(event, django_capture_on_commit_callbacks)
    refund = payment.refunds.get()
    assert refund.amount == 100000
    dispatch.assert_called_once_with(refund.pk)


@respx.mock
def test_process_unknown_reference_is_unmatched_then_matched(client, django_capture_on_commit_callbacks):
    event = deliver(client, "paystack", paystack_charge("P-LATE-ROW"))
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.UNMATCHED
    event.refresh_from_db()
    assert event.status == EventStatus.UNMATCHED and event.next_attempt_at is not None
    make_payment("P-LATE-ROW")
    verify_route("P-LATE-ROW", paystack_verify_answer("P-LATE-ROW"))
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.PROCESSED
    assert Payment.objects.get(reference="P-LATE-ROW").status == PaymentStatus.SUCCESS


@respx.mock
def test_flutterwave_failed_then_successful_attempts(client, django_capture_on_commit_callbacks):
    payment = make_payment("F-RETRY", gateway="flutterwave")
    failed = deliver(client, "flutterwave", flutterwave_charge("F-RETRY", tx_id=11, status="failed"))
    ok = deliver(client, "flutterwave", flutterwave_charge("F-RETRY", tx_id=12))
    respx.get(f"{FLW_API}/transactions/11/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("F-RETRY", status="failed", tx_id=11))))
    respx.get(f"{FLW_API}/transactions/12/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("F-RETRY", tx_id=12))))
    process(failed, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.FAILED  # failed is not final on Flutterwave
    process(ok, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert list(payment.transitions.values_list("to_status", flat=True)) == ["failed", "success"]


@respx.mock
def test_flutterwave_out_of_order_success_then_failed(client, django_capture_on_commit_callbacks):
    payment = make_payment("F-OOO", gateway="flutterwave")
    ok = deliver(client, "flutterwave", flutterwave_charge("F-OOO", tx_id=22))
    failed = deliver(client, "flutterwave", flutterwave_charge("F-OOO", tx_id=21, status="failed"))
    respx.get(f"{FLW_API}/transactions/22/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("F-OOO", tx_id=22))))
    respx.get(f"{FLW_API}/transactions/21/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("F-OOO", status="failed", tx_id=21))))
    process(ok, django_capture_on_commit_callbacks)
    process(failed, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert payment.transitions.count() == 1


@respx.mock
def test_flutterwave_verified_reference_mismatch_grants_nothing(client, django_capture_on_commit_callbacks):
    payment = make_payment("F-MINE", gateway="flutterwave")
    event = deliver(client, "flutterwave", flutterwave_charge("F-MINE", tx_id=31))
    respx.get(f"{FLW_API}/transactions/31/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("SOMEONE-ELSE", tx_id=31))))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PENDING
    event.refresh_from_db()
    assert "reference mismatch" in event.last_error


@respx.mock
def test_flutterwave_fractional_major_amount_compared_in_minor_units(client, django_capture_on_commit_callbacks):
    from decimal import Decimal

    payment = make_payment("F-FRAC", gateway="flutterwave", amount=150050)
    event = deliver(client, "flutterwave", flutterwave_charge("F-FRAC", amount=150050, tx_id=41))
    respx.get(f"{FLW_API}/transactions/41/verify").mock(return_value=httpx.Response(
        200, content=json_dumps(flutterwave_verify_answer("F-FRAC", amount=Decimal("1500.5"), tx_id=41))))
    process(event, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS and payment.amount_paid == 150050


@pytest.mark.parametrize("start,late_status", [
    (PaymentStatus.SUCCESS, "failed"),
    (PaymentStatus.REFUNDED, "success"),
    (PaymentStatus.REVIEW, "success"),
])
@respx.mock
def test_process_late_events_never_move_backwards(client, django_capture_on_commit_callbacks, start, late_status):
    payment = make_payment("P-LATE", status=start, amount_paid=500000)
    event = deliver(client, "paystack", paystack_charge("P-LATE"))
    route = verify_route("P-LATE", paystack_verify_answer("P-LATE", status=late_status))
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.PROCESSED
    payment.refresh_from_db()
    assert payment.status == start
    assert route.call_count == 0
    assert not PaymentTransition.objects.exists()


@pytest.mark.parametrize("from_status,to_status,allowed", [
    ("pending", "success", True), ("pending", "failed", True), ("pending", "abandoned", True),
    ("pending", "review", True), ("abandoned", "success", True), ("failed", "success", True),
    ("failed", "abandoned", False), ("success", "failed", False), ("success", "pending", False),
    ("success", "refunded", True), ("success", "partially_refunded", True),
    ("partially_refunded", "refunded", True), ("refunded", "success", False), ("reversed", "success", False),
    ("success", "reversed", True), ("review", "success", False),
])
def test_state_machine_rows(from_status, to_status, allowed):
    payment = make_payment(f"SM-{from_status}-{to_status}", status=from_status)
    transition = services.payment_transition(payment, to_status, source="webhook")
    assert (transition is not None) is allowed
    payment.refresh_from_db()
    assert payment.status == (to_status if allowed else from_status)


def test_state_machine_review_exits_only_through_staff():
    payment = make_payment("SM-REVIEW", status=PaymentStatus.REVIEW, review_reason="amount_mismatch")
    with pytest.raises(ValueError):
        services.payment_review_resolve(payment.pk, to_status="success", note="   ", actor="ops")
    services.payment_review_resolve(payment.pk, to_status="success", note="customer paid the rest", actor="ops")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert payment.transitions.get().actor == "ops"


def test_notification_unique_per_transition_enforced_by_database():
    payment = make_payment("N-ONCE")
    transition = services.payment_transition(payment, "success", source="webhook")
    assert transition is not None
    with pytest.raises(IntegrityError):
        Notification.objects.create(kind=NotificationKind.PAYMENT_SUCCEEDED, recipient="customer",
                                    payment=payment, transition=transition)


@respx.mock
def test_signals_sent_once_after_commit_and_failing_receiver_does_not_roll_back(
        client, django_capture_on_commit_callbacks):
    calls: list[int] = []

    def good(sender, payment, transition, **kwargs):
        calls.append(transition.pk)

    def bad(sender, **kwargs):
        raise RuntimeError("wallet service down")

    signals.payment_succeeded.connect(good)
    signals.payment_succeeded.connect(bad)
    try:
        payment = make_payment("SIG-1")
        event = deliver(client, "paystack", paystack_charge("SIG-1"))
        verify_route("SIG-1", paystack_verify_answer("SIG-1"))
        process(event, django_capture_on_commit_callbacks)
        process(event, django_capture_on_commit_callbacks)
    finally:
        signals.payment_succeeded.disconnect(good)
        signals.payment_succeeded.disconnect(bad)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert calls == [payment.transitions.get().pk]
    assert payment.transitions.get().hooks_done_at is not None


@respx.mock
@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_process_transient_gateway_errors_raise_for_retry(client, django_capture_on_commit_callbacks, status):
    make_payment("T-5XX")
    event = deliver(client, "paystack", paystack_charge("T-5XX"))
    verify_route("T-5XX", {"status": False, "message": "down"}, status=status)
    with pytest.raises(TransientGatewayError):
        process(event, django_capture_on_commit_callbacks)
    event.refresh_from_db()
    assert event.status == EventStatus.FAILED and "HTTP" in event.last_error


@respx.mock
def test_process_timeout_is_transient(client, django_capture_on_commit_callbacks):
    make_payment("T-TIMEOUT")
    event = deliver(client, "paystack", paystack_charge("T-TIMEOUT"))
    respx.get(f"{PAYSTACK_API}/transaction/verify/T-TIMEOUT").mock(side_effect=httpx.ReadTimeout("slow"))
    with pytest.raises(TransientGatewayError):
        process(event, django_capture_on_commit_callbacks)


@respx.mock
def test_process_permanent_error_goes_dead_with_staff_notification(client, django_capture_on_commit_callbacks):
    payment = make_payment("T-404")
    event = deliver(client, "paystack", paystack_charge("T-404"))
    route = verify_route("T-404", {"status": False, "message": "Transaction reference not found"}, status=400)
    assert process(event, django_capture_on_commit_callbacks) == EventStatus.DEAD
    assert route.call_count == 1
    event.refresh_from_db()
    assert event.status == EventStatus.DEAD
    note = Notification.objects.get(event=event)
    assert (note.kind, note.recipient, note.payment_id) == (NotificationKind.EVENT_DEAD, "staff", payment.pk)


def test_payment_show_json_contract(client):
    import json
    from io import StringIO

    from django.core.management import call_command

    payment = make_payment("SHOW-1")
    signed_post(client, "paystack", paystack_charge("SHOW-1"))
    services.payment_transition(payment, "review", source="webhook", review_reason="amount_mismatch")
    out = StringIO()
    call_command("payment_show", "SHOW-1", "--json", stdout=out)
    data = json.loads(out.getvalue())
    assert set(data) == {"reference", "gateway", "status", "amount", "currency", "review_reason", "events",
                         "refunds", "notifications"}
    assert (data["status"], data["amount"], data["review_reason"]) == ("review", 500000, "amount_mismatch")
    assert set(data["events"][0]) == {"id", "event", "status", "received_at"}
    assert data["notifications"][0]["kind"] == "payment_review"
    assert isinstance(data["amount"], int)


def test_payment_show_unknown_reference_errors():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError):
        call_command("payment_show", "NOPE", "--json")


def test_backoff_is_exponential_with_jitter_and_capped():
    values = [services.backoff_seconds(n, base_seconds=2, max_seconds=60) for n in range(10)]
    assert 1 <= values[0] <= 2
    assert 8 <= values[3] <= 16
    assert all(v <= 60 for v in values)
    assert len({round(services.backoff_seconds(3, base_seconds=2, max_seconds=60), 6) for _ in range(20)}) > 1


def test_event_created_before_payment_row_and_sweep_expires_old_unmatched(client, settings):
    event = deliver(client, "paystack", paystack_charge("NEVER"))
    WebhookEvent.objects.filter(pk=event.pk).update(
        status=EventStatus.UNMATCHED, received_at=timezone.now() - timedelta(days=2))
    counts = services.pending_payments_check(time_budget_seconds=5)
    event.refresh_from_db()
    assert counts["dead"] == 1 and event.status == EventStatus.DEAD
    assert Notification.objects.filter(event=event, kind=NotificationKind.EVENT_DEAD).count() == 1
