"""Refunds (request, submit, webhooks, polling), the periodic check, the sweep and the retry hand-offs."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ, Schedule

from payment import q_tasks, services, tasks
from payment.conf import app_settings
from payment.gateways.base import TransientGatewayError, json_dumps
from payment.models import (
    EventStatus,
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    PaymentTransition,
    Refund,
    RefundStatus,
    WebhookEvent,
)

from .conftest import (
    FLW_API,
    PAYSTACK_API,
    flutterwave_verify_answer,
    paystack_charge,
    paystack_verify_answer,
    signed_post,
)
from .test_processing import make_payment

pytestmark = pytest.mark.django_db


def paid(reference: str, **kw: Any) -> Payment:
    return make_payment(reference, status=PaymentStatus.SUCCESS, amount_paid=kw.pop("amount_paid", 500000),
                        gateway_transaction_id=kw.pop("gateway_transaction_id", "1001"), **kw)


def refund_answer(amount: int, refund_id: int = 77, status: str = "pending") -> dict[str, Any]:
    return {"status": True, "message": "Refund has been queued for processing", "data": {
        "transaction": {"id": 1001, "reference": "x", "amount": 500000, "currency": "NGN"},
        "id": refund_id, "amount": amount, "currency": "NGN", "status": status,
        "expected_at": "2026-12-03T00:00:00.000Z"}}


# --- refund requests ------------------------------------------------------------------------------------
def test_refund_over_paid_amount_refused():
    payment = paid("R-OVER")
    with pytest.raises(services.RefundNotAllowedError):
        services.refund_request(payment.pk, amount=500001, idempotency_key="k1")
    assert not Refund.objects.exists()


def test_refund_of_unpaid_payment_refused():
    payment = make_payment("R-PENDING")
    with pytest.raises(services.RefundNotAllowedError):
        services.refund_request(payment.pk, idempotency_key="k2")


def test_refund_counts_open_refunds_and_is_idempotent(django_capture_on_commit_callbacks):
    payment = paid("R-IDEM")
    with mock.patch("payment.queueing.refund_dispatch"), django_capture_on_commit_callbacks(execute=True):
        first = services.refund_request(payment.pk, amount=300000, idempotency_key="same")
        again = services.refund_request(payment.pk, amount=300000, idempotency_key="same")
        assert first.pk == again.pk
        with pytest.raises(services.RefundNotAllowedError):  # 300000 already open: only 200000 left
            services.refund_request(payment.pk, amount=300000, idempotency_key="other")
        with pytest.raises(services.RefundNotAllowedError):  # same key, different amount
            services.refund_request(payment.pk, amount=1000, idempotency_key="same")
        rest = services.refund_request(payment.pk, idempotency_key="rest")
    assert rest.amount == 200000


@respx.mock
def test_refund_submit_then_webhook_closes_partial_then_full(client, django_capture_on_commit_callbacks):
    payment = paid("R-FLOW")
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=httpx.Response(200, content=json_dumps(
        refund_answer(200000))))
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, amount=200000, idempotency_key="flow-1")
    assert services.refund_submit(refund.pk) == RefundStatus.PROCESSING
    assert services.refund_submit(refund.pk) == RefundStatus.PROCESSING  # second run: no second POST
    assert respx.calls.call_count == 1
    body = {"event": "refund.processed", "data": {"status": "processed", "transaction_reference": "R-FLOW",
                                                  "refund_reference": "TRF_1", "amount": "200000",
                                                  "currency": "NGN", "domain": "test"}}
    assert signed_post(client, "paystack", body).status_code == 200
    event = WebhookEvent.objects.get(kind="refund")
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_event_process(event.pk, via="test")
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == RefundStatus.PROCESSED
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.PARTIALLY_REFUNDED, 200000)
    assert Notification.objects.filter(payment=payment, kind=NotificationKind.PAYMENT_REFUNDED).count() == 1


def test_refund_webhook_for_dashboard_refund_records_it(client, django_capture_on_commit_callbacks):
    payment = paid("R-DASH")
    body = {"event": "refund.processed", "data": {"status": "processed", "transaction_reference": "R-DASH",
                                                  "refund_reference": "TRF_9", "amount": "500000",
                                                  "currency": "NGN", "domain": "test"}}
    signed_post(client, "paystack", body)
    signed_post(client, "paystack", body)  # duplicate delivery
    event = WebhookEvent.objects.get(kind="refund")
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_event_process(event.pk, via="test")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REFUNDED
    assert Refund.objects.get(payment=payment).amount == 500000


@respx.mock
def test_refund_timeout_is_not_resent_blindly():
    payment = paid("R-TIMEOUT")
    route = respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=httpx.ReadTimeout("slow"))
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, idempotency_key="t-1")
    assert services.refund_submit(refund.pk) == RefundStatus.UNKNOWN
    assert services.refund_submit(refund.pk) == RefundStatus.UNKNOWN
    assert route.call_count == 1
    refund.refresh_from_db()
    assert "outcome unknown" in refund.last_error


@respx.mock
def test_refund_flutterwave_uses_transaction_id_and_major_units():
    payment = paid("R-FLW", gateway="flutterwave", gateway_transaction_id="555")
    route = respx.post(f"{FLW_API}/transactions/555/refund").mock(return_value=httpx.Response(200, content=json_dumps(
        {"status": "success", "message": "Transaction refund initiated", "data": {
            "id": 9, "tx_id": 555, "flw_ref": "x", "amount_refunded": 1500.5, "status": "completed",
            "created_at": "2026-11-26T00:00:00Z"}})))
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, amount=150050, idempotency_key="flw-1")
    assert services.refund_submit(refund.pk) == RefundStatus.PROCESSED
    assert route.calls.last.request.content == b'{"amount":1500.5,"comments":"refund"}'
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.PARTIALLY_REFUNDED


# --- reconciliation -----------------------------------------------------------------------------------
def _age(payment: Payment, seconds: int) -> None:
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(seconds=seconds))


@respx.mock
def test_check_pending_payments_settles_a_missed_webhook(django_capture_on_commit_callbacks):
    payment = make_payment("REC-1")
    _age(payment, 3600)
    respx.get(f"{PAYSTACK_API}/transaction/verify/REC-1").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("REC-1"))))
    with django_capture_on_commit_callbacks(execute=True):
        counts = tasks.check_pending_payments()
    payment.refresh_from_db()
    assert counts["verified"] == 1 and payment.status == PaymentStatus.SUCCESS
    assert PaymentTransition.objects.get(payment=payment).source == "reconcile"


@respx.mock
def test_check_pending_payments_abandons_only_after_ttl(settings):
    young, old = make_payment("REC-YOUNG"), make_payment("REC-OLD")
    _age(young, 3600)
    _age(old, app_settings.PAYSHIFT_PENDING_TTL_SECONDS + 60)
    for ref in ("REC-YOUNG", "REC-OLD"):
        respx.get(f"{PAYSTACK_API}/transaction/verify/{ref}").mock(return_value=httpx.Response(
            200, content=json_dumps(paystack_verify_answer(ref, status="abandoned"))))
    services.pending_payments_check(time_budget_seconds=10)
    young.refresh_from_db()
    old.refresh_from_db()
    assert young.status == PaymentStatus.PENDING  # the customer may still be on the checkout page
    assert old.status == PaymentStatus.ABANDONED


@respx.mock
def test_check_pending_payments_unknown_to_gateway_after_ttl_is_abandoned(settings):
    payment = make_payment("REC-GHOST")
    _age(payment, app_settings.PAYSHIFT_PENDING_TTL_SECONDS + 60)
    respx.get(f"{PAYSTACK_API}/transaction/verify/REC-GHOST").mock(return_value=httpx.Response(
        400, content=b'{"status":false,"message":"Transaction reference not found"}'))
    services.pending_payments_check(time_budget_seconds=10)
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.ABANDONED


@respx.mock
def test_check_pending_payments_works_in_batches(settings):
    settings.PAYSHIFT_RECONCILE_BATCH_SIZE = 3
    for i in range(10):
        _age(make_payment(f"REC-B{i}"), 3600)
    def answer(request: httpx.Request) -> httpx.Response:
        reference = request.url.path.rsplit("/", 1)[-1]
        return httpx.Response(200, content=json_dumps(paystack_verify_answer(reference, status="ongoing")))

    respx.get(url__regex=rf"{PAYSTACK_API}/transaction/verify/REC-B\d+").mock(side_effect=answer)
    with CaptureQueriesContext(connection) as queries:
        counts = services.pending_payments_check(time_budget_seconds=10)
    assert counts["verified"] == 10
    batch_selects = [q["sql"] for q in queries.captured_queries if "LIMIT 3" in q["sql"]]
    assert len(batch_selects) >= 4  # 10 rows / 3 per batch, never one big SELECT
    assert Payment.objects.filter(last_verified_at__isnull=True).count() == 0


@respx.mock
def test_check_pending_payments_flutterwave_verifies_by_reference():
    payment = make_payment("REC-FLW", gateway="flutterwave")
    _age(payment, 3600)
    route = respx.get(f"{FLW_API}/transactions/verify_by_reference", params={"tx_ref": "REC-FLW"}).mock(
        return_value=httpx.Response(200, content=json_dumps(flutterwave_verify_answer("REC-FLW"))))
    services.pending_payments_check(time_budget_seconds=10)
    payment.refresh_from_db()
    assert route.called and payment.status == PaymentStatus.SUCCESS


def test_sweep_redispatches_stuck_events(client, settings):
    from payshift.celery import app

    from .conftest import use_broker

    saved = app.conf.broker_url
    use_broker("redis://127.0.0.1:1/0")
    try:
        signed_post(client, "paystack", paystack_charge("SWEEP-1"))
        event = WebhookEvent.objects.get()
        WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.RECEIVED,
                                                        updated_at=timezone.now() - timedelta(minutes=10))
        fresh_ref = paystack_charge("SWEEP-FRESH")
        signed_post(client, "paystack", fresh_ref)
        counts = services.pending_payments_check(time_budget_seconds=5)
    finally:
        use_broker(saved)
    assert counts["swept"] == 1  # the fresh event is left alone
    assert OrmQ.objects.count() == 1
    event.refresh_from_db()
    assert event.status == EventStatus.QUEUED


# --- retry hand-offs ----------------------------------------------------------------------------------
@respx.mock
def test_celery_retries_exhausted_hand_over_to_django_q(client, settings):
    settings.PAYSHIFT_CELERY_MAX_RETRIES = 2
    make_payment("RETRY-1")
    signed_post(client, "paystack", paystack_charge("RETRY-1"))
    event = WebhookEvent.objects.get()
    route = respx.get(f"{PAYSTACK_API}/transaction/verify/RETRY-1").mock(return_value=httpx.Response(503))
    result = tasks.process_payment_webhook.apply(args=[event.pk])  # eager: retries run inline
    assert result.get() == "handed_to_django_q"
    assert route.call_count == 3  # first try + 2 retries
    schedule = Schedule.objects.get(func="payment.q_tasks.process_payment_webhook_q")
    assert schedule.args == f"{event.pk},1"
    event.refresh_from_db()
    assert event.status == EventStatus.FAILED and event.next_attempt_at is not None


@respx.mock
def test_celery_permanent_error_not_retried(client):
    make_payment("RETRY-PERM")
    signed_post(client, "paystack", paystack_charge("RETRY-PERM"))
    event = WebhookEvent.objects.get()
    route = respx.get(f"{PAYSTACK_API}/transaction/verify/RETRY-PERM").mock(
        return_value=httpx.Response(401, content=b'{"status":false,"message":"Invalid key"}'))
    assert tasks.process_payment_webhook.apply(args=[event.pk]).get() == EventStatus.DEAD
    assert route.call_count == 1


@respx.mock
def test_django_q_retries_exhausted_event_dead_with_staff_notification(client, settings,
                                                                      django_capture_on_commit_callbacks):
    settings.PAYSHIFT_Q_MAX_RETRIES = 3
    settings.PAYSHIFT_STAFF_EMAILS = ["ops@example.com"]
    payment = make_payment("RETRY-Q")
    signed_post(client, "paystack", paystack_charge("RETRY-Q"))
    event = WebhookEvent.objects.get()
    respx.get(f"{PAYSTACK_API}/transaction/verify/RETRY-Q").mock(return_value=httpx.Response(502))
    assert q_tasks.process_payment_webhook_q(event.pk, 1) == "retry_scheduled"
    with django_capture_on_commit_callbacks(execute=True):
        assert q_tasks.process_payment_webhook_q(event.pk, 3) == "dead"
    event.refresh_from_db()
    assert event.status == EventStatus.DEAD
    note = Notification.objects.get(kind=NotificationKind.EVENT_DEAD)
    assert note.payment_id == payment.pk and note.delivered_at is not None
    from django.core import mail

    assert [m.to for m in mail.outbox] == [["ops@example.com"]]


def test_django_q_fallback_schedule_skips_while_beat_is_alive():
    services.heartbeat("check_pending_payments")
    assert q_tasks.check_pending_payments_q() == "beat_is_alive"
    assert Schedule.objects.filter(func="payment.q_tasks.check_pending_payments_q").exists()  # migration 0002


def test_sweep_dispatch_never_overwrites_a_finished_event(client):
    from payment import queueing

    signed_post(client, "paystack", paystack_charge("SWEEP-DONE"))
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSED)
    with mock.patch("payment.queueing._celery_publish") as publish:
        assert queueing.event_dispatch(event.pk, path="sweep") == "none"
    publish.assert_not_called()
    event.refresh_from_db()
    assert event.status == EventStatus.PROCESSED


def test_check_pending_payments_runs_once_at_a_time():
    assert services.lease_acquire("lease:check_pending_payments", 60)
    try:
        assert services.pending_payments_check(time_budget_seconds=1) == {"skipped": 1}
    finally:
        services.lease_release("lease:check_pending_payments")
    assert "verified" in services.pending_payments_check(time_budget_seconds=1)


@respx.mock
def test_celery_task_retries_when_the_database_goes_away(client):
    from django.db import OperationalError

    payment = make_payment("DB-BLIP")
    signed_post(client, "paystack", paystack_charge("DB-BLIP"))
    event = WebhookEvent.objects.get()
    respx.get(f"{PAYSTACK_API}/transaction/verify/DB-BLIP").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("DB-BLIP"))))
    real = services.webhook_event_process
    calls = {"n": 0}

    def flaky(event_id, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OperationalError("server closed the connection unexpectedly")
        return real(event_id, **kwargs)

    with mock.patch("payment.services.webhook_event_process", side_effect=flaky):
        assert tasks.process_payment_webhook.apply(args=[event.pk]).get() == EventStatus.PROCESSED
    assert calls["n"] == 2
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS


# --- regressions from the processing review --------------------------------------------------------------
@respx.mock
def test_refund_never_posted_twice_even_by_a_concurrent_task():
    """A second task for the same refund (sweep re-dispatch, redelivery) while the first is mid-POST."""
    payment = paid("R-TWICE")
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, amount=100000, idempotency_key="twice")
    inner: list[str] = []

    def gateway_answer(request):
        inner.append(services.refund_submit(refund.pk))  # the racing task
        return httpx.Response(200, content=json_dumps(refund_answer(100000)))

    route = respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=gateway_answer)
    services.refund_submit(refund.pk)
    assert route.call_count == 1 and inner == [RefundStatus.PENDING]


@respx.mock
def test_refund_worker_died_mid_post_is_not_resent():
    payment = paid("R-DIED")
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, amount=100000, idempotency_key="died")
    Refund.objects.filter(pk=refund.pk).update(submitted_at=timezone.now(), attempts=1)  # then the worker died
    route = respx.post(f"{PAYSTACK_API}/refund")
    assert services.refund_submit(refund.pk) == RefundStatus.PENDING
    assert route.call_count == 0
    Refund.objects.filter(pk=refund.pk).update(updated_at=timezone.now() - timedelta(hours=1))
    with mock.patch("payment.queueing.refund_dispatch") as dispatch:
        services.pending_payments_check(time_budget_seconds=5)
    dispatch.assert_not_called()  # the sweep leaves an in-doubt refund for a person


@respx.mock
def test_refund_connection_refused_is_retried_safely():
    payment = paid("R-REFUSED")
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, amount=100000, idempotency_key="refused")
    respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(TransientGatewayError):
        services.refund_submit(refund.pk)
    refund.refresh_from_db()
    assert refund.submitted_at is None  # certainly not received: a retry may send it


@respx.mock
def test_refund_closed_by_polling_then_webhook_counts_once(client, django_capture_on_commit_callbacks):
    payment = paid("R-POLL")
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=httpx.Response(200, content=json_dumps(
        refund_answer(200000, refund_id=88))))
    respx.get(f"{PAYSTACK_API}/refund/88").mock(return_value=httpx.Response(200, content=json_dumps(
        {"status": True, "message": "Refund retrieved", "data": {"id": 88, "transaction": 1001, "amount": 200000,
                                                                 "currency": "NGN", "status": "processed"}})))
    with mock.patch("payment.queueing.refund_dispatch"):
        refund = services.refund_request(payment.pk, amount=200000, idempotency_key="poll-1")
    services.refund_submit(refund.pk)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.refund_poll(refund.pk) == RefundStatus.PROCESSED
    body = {"event": "refund.processed", "data": {"status": "processed", "transaction_reference": "R-POLL",
                                                  "refund_reference": "TRF_88", "amount": "200000",
                                                  "currency": "NGN", "domain": "test"}}
    signed_post(client, "paystack", body)
    event = WebhookEvent.objects.get(kind="refund")
    with django_capture_on_commit_callbacks(execute=True):
        services.webhook_event_process(event.pk, via="test")
    payment.refresh_from_db()
    assert (payment.amount_refunded, payment.status) == (200000, PaymentStatus.PARTIALLY_REFUNDED)
    assert Refund.objects.filter(payment=payment).count() == 1
    assert Notification.objects.filter(payment=payment, kind=NotificationKind.PAYMENT_REFUNDED).count() == 1


def test_failed_notification_delivery_is_retried_by_the_sweep(settings):
    payment = make_payment("N-RETRY")
    from django.test import TestCase

    with mock.patch("payment.notifications.EmailChannel.deliver", side_effect=OSError("smtp down")), \
            TestCase.captureOnCommitCallbacks(execute=True):
        transition = services.payment_transition(payment, "success", source="webhook")
    assert transition is not None
    note = Notification.objects.get(transition=transition)
    assert note.delivered_at is None and "smtp down" in note.delivery_error
    transition.refresh_from_db()
    assert transition.hooks_done_at is not None
    Notification.objects.filter(pk=note.pk).update(created_at=timezone.now() - timedelta(minutes=5))
    counts = services.pending_payments_check(time_budget_seconds=5)
    note.refresh_from_db()
    assert counts["notifications"] == 1 and note.delivered_at is not None and note.delivery_attempts == 2


def test_transition_hooks_run_once_even_when_called_twice():
    from django.test import TestCase

    calls: list[int] = []

    def receiver(sender, payment, transition, **kwargs):
        calls.append(transition.pk)

    from payment import signals

    signals.payment_succeeded.connect(receiver)
    try:
        payment = make_payment("N-ONCE2")
        with TestCase.captureOnCommitCallbacks(execute=True):
            transition = services.payment_transition(payment, "success", source="webhook")
        assert transition is not None
        services.transition_hooks_run(transition.pk)
        PaymentTransition.objects.filter(pk=transition.pk).update(hooks_done_at=None)  # a claimer running now
        services.transition_hooks_run(transition.pk)
    finally:
        signals.payment_succeeded.disconnect(receiver)
    assert calls == [transition.pk]


@respx.mock
def test_event_goes_dead_at_the_global_attempt_ceiling(client, settings):
    settings.PAYSHIFT_MAX_EVENT_ATTEMPTS = 3
    make_payment("CEIL-1")
    signed_post(client, "paystack", paystack_charge("CEIL-1"))
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(attempts=2)
    respx.get(f"{PAYSTACK_API}/transaction/verify/CEIL-1").mock(return_value=httpx.Response(503))
    assert services.webhook_event_process(event.pk, via="sweep") == EventStatus.DEAD


def test_fresh_processing_event_is_not_claimed_twice(client):
    signed_post(client, "paystack", paystack_charge("CLAIM-1"))
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSING, updated_at=timezone.now())
    assert services.webhook_event_process(event.pk, via="dup") == EventStatus.PROCESSING
    assert WebhookEvent.objects.get(pk=event.pk).attempts == 0


def test_sqlite_commits_are_durable(tmp_path):
    """The embedded default's connection options: WAL, BEGIN IMMEDIATE, a busy timeout, synchronous=FULL."""
    import sqlite3

    from payshift.settings import sqlite_options

    options = sqlite_options()
    assert options["transaction_mode"] == "IMMEDIATE" and options["timeout"] >= 5
    raw = sqlite3.connect(tmp_path / "x.sqlite3")
    raw.executescript(options["init_command"])
    assert raw.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    raw.close()
