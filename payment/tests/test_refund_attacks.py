"""Attacks on the refund path: the first group proved real defects (each failed before its fix); the rest are
attacks that broke nothing, kept as coverage."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import signing
from django.db import connection
from django.test import Client
from django.utils import timezone

from payment import services
from payment.conf import app_settings
from payment.gateways import base
from payment.gateways.base import json_dumps
from payment.gateways.registry import gateway_get
from payment.models import (
    EventStatus,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
)

from .conftest import FLW_HASH, PAYSTACK_API, require_postgres, signed_post
from .test_refund_safety import deliver_and_process, paid, refund_created, refund_event, requested

pytestmark = pytest.mark.django_db


def fetched(refund_id: int, status: str, amount: int = 100000) -> httpx.Response:
    """Paystack's GET /refund/{id} answer."""
    return httpx.Response(200, content=json_dumps({"status": True, "message": "Refund retrieved", "data": {
        "id": refund_id, "amount": amount, "currency": "NGN", "status": status}}))


def store(body: dict[str, Any]) -> WebhookEvent:
    """Deliver a signed Paystack webhook without processing it (the worker runs it later, maybe in a thread)."""
    raw = json_dumps(body)
    signature = gateway_get("paystack").sign_webhook(raw)["x-paystack-signature"]
    answer = Client().post("/payment/webhooks/paystack/", data=raw, content_type="application/json",
                           HTTP_X_PAYSTACK_SIGNATURE=signature)
    assert answer.status_code == 200, answer.content
    event = WebhookEvent.objects.order_by("-pk").first()
    assert event is not None
    return event


def in_thread(target: Callable[[], Any], errors: list[BaseException], name: str = "") -> threading.Thread:
    """Run `target` on its own database connection (a second worker), recording what it raises."""
    def run() -> None:
        try:
            target()
        except BaseException as exc:  # the test asserts on whatever a worker raised
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run, daemon=True, name=name or None)
    thread.start()
    return thread


# =============================================================================================================
# Real problems found by attacking the rewrite: each test failed on the code as it was, and passes since the fix.
# =============================================================================================================

@respx.mock
def test_paystack_refund_id_read_as_a_reference_books_one_refund_twice(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-IDREF", amount=100000, amount_paid=100000)
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=refund_created(100000, 3018284))
    respx.get(f"{PAYSTACK_API}/refund/3018284").mock(return_value=fetched(3018284, "processed"))
    refund = requested(payment)
    assert services.refund_submit(refund.pk) == RefundStatus.PROCESSING
    capture = django_capture_on_commit_callbacks
    # Paystack refund bodies can carry the refund's id (its refund.needs-attention sample does) while
    # refund_reference is still null (it is "null until processed").
    deliver_and_process(client, refund_event("AT-IDREF", status="processing", refund_reference=None,
                                             id="3018284"), capture)
    deliver_and_process(client, refund_event("AT-IDREF", status="processed", refund_reference="132013318360",
                                             id="3018284"), capture)
    with capture(execute=True):
        services.refund_poll(refund.pk)
    payment.refresh_from_db()
    # One refund of 100000 went out. On the code as it is: 200000 booked on a 100000 payment, two Refund rows.
    assert payment.amount_refunded == 100000
    assert Refund.objects.filter(payment=payment).count() == 1


@respx.mock
def test_failed_dashboard_refund_never_fails_our_refund_the_gateway_made(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-FAILAMT")
    respx.post(f"{PAYSTACK_API}/refund").mock(return_value=refund_created(100000, 71))
    respx.get(f"{PAYSTACK_API}/refund/71").mock(return_value=fetched(71, "processed"))
    ours = requested(payment, 100000)
    assert services.refund_submit(ours.pk) == RefundStatus.PROCESSING
    # Someone tries the same amount in Paystack's dashboard; that attempt fails. Its webhook names no refund we
    # know, so the amount fallback picks ours.
    deliver_and_process(client, refund_event("AT-FAILAMT", status="failed", amount=100000,
                                             refund_reference="TRF_dashboard_attempt"),
                        django_capture_on_commit_callbacks)
    # Our refund, which has a gateway id, is in fact processed: the periodic poll could have learned it.
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_poll(ours.pk)
    payment.refresh_from_db()
    assert payment.amount_refunded == 100000
    assert services.refundable_amount(payment) == 400000  # on the code as it is: 500000, refundable again


@respx.mock
def test_refund_event_never_closes_a_refund_that_was_never_sent(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-UNSENT")
    route = respx.post(f"{PAYSTACK_API}/refund").mock(return_value=refund_created(100000, 91))
    queued = requested(payment, 100000)  # committed, its task still in the broker: submitted_at is None
    # Meanwhile a refund of the same amount is made in Paystack's dashboard.
    deliver_and_process(client, refund_event("AT-UNSENT", amount=100000, refund_reference="RF-DASHBOARD"),
                        django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):
        services.refund_submit(queued.pk)
    # A webhook cannot be about a refund the gateway never received: ours must still go out.
    assert route.call_count == 1


@pytest.mark.parametrize("claim", [
    pytest.param({"amount": 5000, "currency": "USD"}, id="other_currency"),
    pytest.param({"amount": 900000, "currency": "NGN"}, id="more_than_refundable"),
])
def test_unmatched_refund_claim_that_does_not_fit_the_charge_goes_to_a_person(
        client: Client, django_capture_on_commit_callbacks: Any, claim: dict[str, Any]):
    payment = paid("AT-FIT")  # 500000 NGN paid
    body = refund_event("AT-FIT", amount=claim["amount"], refund_reference="RF-ODD")
    body["data"]["currency"] = claim["currency"]
    event = deliver_and_process(client, body, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert payment.amount_refunded == 0
    assert event.status in (EventStatus.DEAD, EventStatus.UNMATCHED)  # held for a person, not "processed"


def test_dashboard_refund_on_a_long_review_is_booked_when_the_review_ends(
        client: Client, settings: Any, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-REVIEW", status=PaymentStatus.REVIEW, review_reason="amount_mismatch", amount_paid=400000)
    capture = django_capture_on_commit_callbacks
    # The merchant refunds part of the disputed money from Paystack's dashboard.
    event = deliver_and_process(client, refund_event("AT-REVIEW", amount=100000, refund_reference="RF-REV"), capture)
    assert event.status == EventStatus.UNMATCHED
    # Staff take longer than the unmatched window (a day by default) to resolve the review.
    WebhookEvent.objects.filter(pk=event.pk).update(
        received_at=timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_UNMATCHED_RETRY_SECONDS + 60))
    with mock.patch("payment.queueing.event_dispatch"), capture(execute=True):
        services.pending_payments_check(time_budget_seconds=5)

    def dispatch(event_id: int, **_: Any) -> str:
        services.webhook_event_process(event_id, via="test")
        return "test"

    with mock.patch("payment.queueing.event_dispatch", side_effect=dispatch), capture(execute=True):
        services.payment_review_resolve(payment.pk, to_status=PaymentStatus.SUCCESS, note="accepted", actor="ops")
    payment.refresh_from_db()
    # 100000 went back to the customer. On the code as it is: 0 booked, all 400000 refundable again.
    assert payment.amount_refunded == 100000
    assert services.refundable_amount(payment) == 300000


def test_unknown_refund_never_takes_a_listed_refund_another_refund_owns_by_reference(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-PICK")
    # A refund made in the dashboard, recorded from its webhook (reference RF-W, no gateway id).
    deliver_and_process(client, refund_event("AT-PICK", amount=100000, refund_reference="RF-W"),
                        django_capture_on_commit_callbacks)
    unknown = requested(payment, 100000, key="u")
    Refund.objects.filter(pk=unknown.pk).update(status=RefundStatus.UNKNOWN, submitted_at=timezone.now())
    # The gateway's list of the charge's refunds holds only the dashboard one: ours never reached it.
    listing = [base.RefundResult(gateway_refund_id="600", status="processed", amount=100000, currency="NGN",
                                 refund_reference="RF-W")]
    with mock.patch.object(type(gateway_get("paystack")), "refunds_for_transaction", return_value=listing), \
            django_capture_on_commit_callbacks(execute=True):
        services.refund_poll(unknown.pk)
    payment.refresh_from_db()
    unknown.refresh_from_db()
    assert unknown.status == RefundStatus.UNKNOWN
    assert payment.amount_refunded == 100000  # on the code as it is: 200000


@respx.mock
def test_staff_refund_alert_is_not_on_the_customers_result_page(client: Client, settings: Any,
                                                                django_capture_on_commit_callbacks: Any):
    settings.PAYSHIFT_STAFF_EMAILS = ["ops@example.com"]
    payment = paid("AT-LEAK")
    respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=httpx.ReadTimeout("read timed out"))
    refund = requested(payment, 100000)
    with django_capture_on_commit_callbacks(execute=True):
        assert services.refund_submit(refund.pk) == RefundStatus.UNKNOWN
    from payment import links

    page = client.get(links.payment_result_link(payment.reference))
    assert page.status_code == 200
    assert "outcome is unknown" not in page.content.decode()


def test_two_dashboard_refunds_with_long_references_sharing_a_prefix_are_both_booked(
        client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-LONGREF")
    prefix = "TRF_" + "x" * 100
    answers = [signed_post(client, "paystack", refund_event("AT-LONGREF", amount=100000,
                                                            refund_reference=prefix + suffix)).json()["status"]
               for suffix in ("-1", "-2")]
    assert answers == ["stored", "stored"]  # on the code as it is: the second is a "duplicate"
    for event in WebhookEvent.objects.filter(reference="AT-LONGREF"):
        with django_capture_on_commit_callbacks(execute=True):
            services.webhook_event_process(event.pk, via="test")
    payment.refresh_from_db()
    assert payment.amount_refunded == 200000


# --- lock order (real PostgreSQL, two connections) ------------------------------------------------------------
@pytest.fixture
def pg_threads() -> Iterator[None]:
    require_postgres()
    yield


def _waiting_on_a_lock() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                       "AND wait_event_type = 'Lock'")
        row = cursor.fetchone()
    return int(row[0]) if row else 0


@pytest.mark.django_db(transaction=True)
def test_refund_mark_unknown_and_a_refund_event_never_deadlock(pg_threads: None):
    payment = paid("AT-LOCK")
    refund = Refund.objects.create(payment=payment, amount=100000, currency="NGN", idempotency_key="lock",
                                   submitted_at=timezone.now())
    event = store(refund_event("AT-LOCK", amount=100000, refund_reference="RF-LOCK"))
    updated, go = threading.Event(), threading.Event()
    real_create = services.refunds.notification_create

    def paused_create(**fields: Any) -> Any:
        if threading.current_thread().name == "mark-unknown":
            updated.set()  # the refund row is locked by our UPDATE now
            go.wait(10)
        return real_create(**fields)

    errors: list[BaseException] = []
    with mock.patch.object(services.refunds, "notification_create", side_effect=paused_create):
        marker = in_thread(lambda: services.refund_mark_unknown(refund.pk, "read timed out"), errors,
                           name="mark-unknown")
        assert updated.wait(10)
        worker = in_thread(lambda: services.webhook_event_process(event.pk, via="test"), errors)
        deadline = time.monotonic() + 10
        while _waiting_on_a_lock() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # until the event's worker holds the payment and waits for the refund
        go.set()
        marker.join(20)
        worker.join(20)
    assert not errors, errors  # on the code as it is: "deadlock detected" in one of the two


# =============================================================================================================
# Attacks that failed: kept as coverage the existing refund tests lack.
# =============================================================================================================

@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("answer", ["accepted", "timeout", "refused"])
def test_webhook_closing_a_refund_while_its_post_is_in_flight_books_it_once(pg_threads: None, answer: str):
    """refund_submit holds no lock across the POST; whatever the POST then answers, the refund the webhook
    closed stays processed, booked once, and is never sent again."""
    payment = paid("AT-INFLIGHT")
    refund = requested(payment, 100000)
    event = store(refund_event("AT-INFLIGHT", amount=100000, refund_reference="RF-INFLIGHT"))
    errors: list[BaseException] = []

    def gateway_answers(request: httpx.Request) -> httpx.Response:
        # The gateway made the refund and its webhook is processed by another worker before our answer lands.
        worker = in_thread(lambda: services.webhook_event_process(event.pk, via="test"), errors)
        worker.join(15)
        assert not worker.is_alive(), "the webhook worker was blocked by a lock held across the POST"
        if answer == "timeout":
            raise httpx.ReadTimeout("read timed out")
        if answer == "refused":
            return httpx.Response(400, content=b'{"status": false, "message": "Refund already processed"}')
        return refund_created(100000, 55)

    with respx.mock:
        route = respx.post(f"{PAYSTACK_API}/refund").mock(side_effect=gateway_answers)
        services.refund_submit(refund.pk)
        assert services.refund_submit(refund.pk) == RefundStatus.PROCESSED  # a redelivered task
        services.pending_payments_check(time_budget_seconds=5)
    assert not errors, errors
    assert route.call_count == 1
    refund.refresh_from_db()
    payment.refresh_from_db()
    assert refund.status == RefundStatus.PROCESSED
    assert payment.amount_refunded == 100000


@pytest.mark.django_db(transaction=True)
def test_settle_poll_and_webhook_racing_on_one_unknown_refund_book_it_once(pg_threads: None):
    payment = paid("AT-SETTLE-RACE")
    refund = Refund.objects.create(payment=payment, amount=100000, currency="NGN", idempotency_key="sr",
                                   status=RefundStatus.UNKNOWN, submitted_at=timezone.now())
    event = store(refund_event("AT-SETTLE-RACE", amount=100000, refund_reference="RF-SR"))
    listing = [base.RefundResult(gateway_refund_id="700", status="processed", amount=100000, currency="NGN")]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def settle() -> None:
        barrier.wait()
        with contextlib.suppress(ValueError):  # another path closed it first: nothing to settle
            services.refund_settle(refund.pk, to_status=RefundStatus.PROCESSED, note="dashboard", actor="ops")

    def poll() -> None:
        barrier.wait()
        services.refund_poll(refund.pk)

    def webhook() -> None:
        barrier.wait()
        services.webhook_event_process(event.pk, via="test")

    def replay() -> None:
        barrier.wait()
        services.webhook_event_process(event.pk, via="replay", force=True)

    with mock.patch.object(type(gateway_get("paystack")), "refunds_for_transaction", return_value=listing):
        threads = [in_thread(target, errors) for target in (settle, poll, webhook, replay)]
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    payment.refresh_from_db()
    assert payment.amount_refunded == 100000
    assert list(Refund.objects.filter(payment=payment).values_list("status", flat=True)) == [RefundStatus.PROCESSED]


@pytest.mark.django_db(transaction=True)
def test_two_full_refund_requests_racing_a_dashboard_refund_reserve_one_refund(pg_threads: None):
    """Two admins ask for everything at once while a dashboard refund's webhook is processed: one of the two
    requests gets a refund, and nothing is booked beyond what the gateway says it refunded."""
    payment = paid("AT-REQ-RACE")  # 500000 paid
    event = store(refund_event("AT-REQ-RACE", amount=200000, refund_reference="RF-REQ"))
    barrier = threading.Barrier(3)
    errors: list[BaseException] = []
    made: list[int] = []

    def request_everything(key: str) -> None:
        barrier.wait()
        try:
            with mock.patch("payment.queueing.refund_dispatch"):
                made.append(services.refund_request(payment.pk, amount=None, idempotency_key=key).pk)
        except services.RefundNotAllowedError:
            pass  # the other request (or the dashboard refund) took what was left

    def webhook() -> None:
        barrier.wait()
        services.webhook_event_process(event.pk, via="test")

    threads = [in_thread(lambda: request_everything("a"), errors), in_thread(lambda: request_everything("b"), errors),
               in_thread(webhook, errors)]
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    payment.refresh_from_db()
    ours = Refund.objects.filter(payment=payment, idempotency_key__in=["a", "b"])
    assert len(made) == 1 and ours.count() == 1
    # Booked: the dashboard's 200000, once, whichever came first (ours is 500000 or 300000: never its match).
    assert payment.amount_refunded == 200000


def test_replayed_failed_refund_event_never_fails_a_second_refund(client: Client,
                                                                  django_capture_on_commit_callbacks: Any):
    payment = paid("AT-REPLAY-FAIL")
    first, second = requested(payment, 100000, key="f1"), requested(payment, 100000, key="f2")
    Refund.objects.filter(pk__in=[first.pk, second.pk]).update(status=RefundStatus.PROCESSING,
                                                               submitted_at=timezone.now())
    capture = django_capture_on_commit_callbacks
    event = deliver_and_process(client, refund_event("AT-REPLAY-FAIL", status="failed", amount=100000,
                                                     refund_reference="TRF_one"), capture)
    for _ in range(3):  # admin "Reprocess", payment_replay
        with capture(execute=True):
            services.event_requeue(event.pk, force=True)
            services.webhook_event_process(event.pk, via="replay", force=True)
    # A failure matched only by amount fails none of ours (polling decides them), however often it is replayed.
    assert sorted(Refund.objects.values_list("status", flat=True)) == [RefundStatus.PROCESSING] * 2


def test_replayed_dashboard_refund_event_is_booked_once(client: Client, django_capture_on_commit_callbacks: Any):
    payment = paid("AT-REPLAY-DASH")
    capture = django_capture_on_commit_callbacks
    event = deliver_and_process(client, refund_event("AT-REPLAY-DASH", amount=100000, refund_reference="RF-D"),
                                capture)
    for _ in range(3):
        with capture(execute=True):
            services.webhook_event_process(event.pk, via="replay", force=True)
    assert signed_post(client, "paystack", refund_event("AT-REPLAY-DASH", amount=100000,
                                                        refund_reference="RF-D")).json()["status"] == "duplicate"
    payment.refresh_from_db()
    assert payment.amount_refunded == 100000 and Refund.objects.filter(payment=payment).count() == 1


def test_refund_identity_is_matched_only_within_the_events_own_payment(client: Client,
                                                                      django_capture_on_commit_callbacks: Any):
    """An event for payment B naming the refund reference of a refund on payment A never touches A."""
    first, second = paid("AT-OWN-A"), paid("AT-OWN-B", gateway_transaction_id="1002")
    mine = requested(first, 100000, key="own")
    Refund.objects.filter(pk=mine.pk).update(status=RefundStatus.PROCESSING, gateway_refund_reference="RF-SHARED",
                                             submitted_at=timezone.now())
    for status in ("failed", "processed"):
        deliver_and_process(client, refund_event("AT-OWN-B", status=status, amount=100000,
                                                 refund_reference="RF-SHARED"), django_capture_on_commit_callbacks)
    mine.refresh_from_db()
    first.refresh_from_db()
    second.refresh_from_db()
    assert (mine.status, first.amount_refunded) == (RefundStatus.PROCESSING, 0)
    assert second.amount_refunded == 100000  # B's own (dashboard) refund


def test_forged_flutterwave_refund_bodies_change_nothing(client: Client, django_capture_on_commit_callbacks: Any):
    """verif-hash proves only that the sender knows the hash: a made-up refund body must move no money."""
    from .conftest import FLW_API

    payment = paid("AT-FLW", gateway="flutterwave", gateway_transaction_id="2001")
    with respx.mock:
        # The refund API does not know refund 9: the body's claim is worth nothing.
        respx.get(f"{FLW_API}/refunds/9").mock(return_value=httpx.Response(
            404, content=b'{"status": "error", "message": "No refund found", "data": null}'))
        for name in ("refund.completed", "refund.processed", "charge.refunded"):
            body = {"event": name, "data": {"tx_ref": "AT-FLW", "tx_id": 2001, "id": 9, "status": "completed",
                                            "amount_refunded": 5000, "currency": "NGN"}}
            answer = client.post("/payment/webhooks/flutterwave/", data=json_dumps(body),
                                 content_type="application/json", HTTP_VERIF_HASH=FLW_HASH)
            assert answer.status_code == 200 and answer.json()["status"] in ("stored", "ignored")
        for event in WebhookEvent.objects.filter(kind="refund"):
            with django_capture_on_commit_callbacks(execute=True):
                services.webhook_event_process(event.pk, via="test")
    payment.refresh_from_db()
    assert (payment.status, payment.amount_refunded) == (PaymentStatus.SUCCESS, 0)
    assert not Refund.objects.exists()


@pytest.mark.parametrize("amount", ["-100000", -100000, "1e5", 1000.5, "abc", None, [100000], "9" * 19, 10**19],
                         ids=["neg_str", "neg_int", "exponent", "fraction", "word", "null", "list", "huge_str",
                              "huge_int"])
def test_hostile_refund_amounts_are_4xx_or_book_nothing(client: Client, django_capture_on_commit_callbacks: Any,
                                                        amount: Any):
    payment = paid("AT-AMOUNT")
    body = refund_event("AT-AMOUNT", refund_reference="RF-AMT")
    body["data"]["amount"] = amount
    answer = signed_post(client, "paystack", body)
    assert answer.status_code in (200, 400)
    if answer.status_code == 200:
        event = WebhookEvent.objects.get(reference="AT-AMOUNT")
        with django_capture_on_commit_callbacks(execute=True):
            services.webhook_event_process(event.pk, via="test")
    payment.refresh_from_db()
    assert payment.amount_refunded == 0 and not Refund.objects.exists()


def test_refund_event_without_a_domain_on_a_live_payment_is_held_with_test_keys(
        client: Client, django_capture_on_commit_callbacks: Any):
    """No `domain` in the body: the key's mode stands for it, so a test key never books onto a live payment."""
    payment = paid("AT-NODOMAIN", mode="live")
    body = refund_event("AT-NODOMAIN", amount=500000, refund_reference="RF-ND")
    del body["data"]["domain"]
    event = deliver_and_process(client, body, django_capture_on_commit_callbacks)
    payment.refresh_from_db()
    assert event.status == EventStatus.DEAD and payment.amount_refunded == 0


# --- the admin forms ----------------------------------------------------------------------------------------
def _desk_user(name: str) -> Any:
    user = get_user_model().objects.create_user(name, f"{name}@example.com", "pw", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_payment", "view_refund",
                                                                       "refund_payment"]))
    return user


def _token(client: Client, url: str) -> str:
    page = client.get(url)
    assert page.status_code == 200
    match = re.search(r'name="token" value="([^"]+)"', page.content.decode())
    assert match
    return match.group(1)


def test_admin_refund_token_of_another_user_or_stale_is_refused():
    payment = paid("AT-TOKEN")
    url = f"/admin/payment/payment/{payment.pk}/refund/"
    alice, bob = Client(), Client()
    alice.force_login(_desk_user("alice"))
    bob.force_login(_desk_user("bob"))
    stolen = {"refund_amount": "1000", "reason": "x", "token": _token(alice, url)}
    answer = bob.post(url, stolen)
    assert answer.status_code == 200 and "issued for another payment or user" in answer.content.decode()
    with mock.patch("django.core.signing.time.time", return_value=time.time() - 7 * 3600):
        old = _token(alice, url)
    answer = alice.post(url, {"refund_amount": "1000", "reason": "x", "token": old})
    assert answer.status_code == 200 and "expired or was altered" in answer.content.decode()
    unsigned = signing.dumps({"p": payment.pk, "u": None, "n": "x"}, salt="another-salt")
    assert "expired or was altered" in alice.post(url, {"reason": "x", "token": unsigned}).content.decode()
    assert not Refund.objects.exists()


@pytest.mark.parametrize("refund_amount", ["abc", "-1", "0", "1.5", "9" * 40, "500001"])
def test_admin_refund_bad_amounts_are_form_errors_not_500(refund_amount: str):
    payment = paid("AT-FORM")
    desk = Client()
    desk.force_login(_desk_user("desk"))
    url = f"/admin/payment/payment/{payment.pk}/refund/"
    with mock.patch("payment.queueing.refund_dispatch"):
        answer = desk.post(url, {"refund_amount": refund_amount, "reason": "x", "token": _token(desk, url)})
    assert answer.status_code == 200
    assert not Refund.objects.exists()


def test_admin_settle_bad_input_is_a_form_error_or_404():
    payment = paid("AT-SETTLE-FORM")
    refund = Refund.objects.create(payment=payment, amount=1000, currency="NGN", status=RefundStatus.PROCESSED,
                                   idempotency_key="done")
    desk = Client()
    desk.force_login(_desk_user("desk"))
    url = f"/admin/payment/refund/{refund.pk}/settle/"
    for form in ({"outcome": "pending", "note": "x"}, {"outcome": "processed", "note": ""},
                 {"outcome": "processed", "note": "again"}):  # the last: already processed, nothing to settle
        assert desk.post(url, form).status_code == 200
    assert desk.post("/admin/payment/refund/999999/settle/", {"outcome": "failed", "note": "x"}).status_code == 404
    payment.refresh_from_db()
    assert payment.amount_refunded == 0
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.SUCCESS
