"""Operating Payshift: admin pages and actions, replay, metrics, health, system checks, retention, alerts."""

from __future__ import annotations

import json
from datetime import timedelta
from io import StringIO
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import OperationalError
from django.test import Client
from django.utils import timezone

from payment import checks, services
from payment.gateways.base import json_dumps
from payment.models import EventStatus, Notification, NotificationKind, Payment, PaymentStatus, WebhookEvent

from .conftest import PAYSTACK_API, PAYSTACK_KEY, paystack_charge, paystack_verify_answer, signed_post
from .test_processing import make_payment

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff(client: Client) -> Client:
    user = get_user_model().objects.create_user("support", "support@example.com", "pw", is_staff=True,
                                                is_superuser=True)
    client.force_login(user)
    return client


# --- admin --------------------------------------------------------------------------------------------------
def test_admin_requires_login(client: Client) -> None:
    response = client.get("/admin/payment/payment/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_payment_search_by_email_and_detail_shows_story(staff: Client) -> None:
    payment = make_payment("ADM-1", customer_email="ngozi@example.com")
    signed_post(staff, "paystack", paystack_charge("ADM-1"))
    services.payment_transition(payment, "review", source="webhook", review_reason="amount_mismatch")
    listing = staff.get("/admin/payment/payment/", {"q": "ngozi@example.com"})
    assert listing.status_code == 200 and "ADM-1" in listing.content.decode()
    assert "ADM-1" not in staff.get("/admin/payment/payment/", {"q": "nobody@example.com"}).content.decode()
    filtered = staff.get("/admin/payment/payment/", {"review_reason": "amount_mismatch"})
    assert "ADM-1" in filtered.content.decode()
    detail = staff.get(f"/admin/payment/payment/{payment.pk}/change/").content.decode()
    for expected in ("amount_mismatch", "charge.success", "payment_review", "Resolve the review", "5000.00 NGN"):
        assert expected in detail


def test_admin_cannot_edit_amount_or_status(staff: Client) -> None:
    payment = make_payment("ADM-RO")
    response = staff.post(f"/admin/payment/payment/{payment.pk}/change/", {"amount": "1", "status": "success"})
    payment.refresh_from_db()
    assert (payment.amount, payment.status) == (500000, PaymentStatus.PENDING)
    assert response.status_code in (200, 302, 403)
    assert staff.get("/admin/payment/payment/add/").status_code == 403
    assert staff.post(f"/admin/payment/payment/{payment.pk}/delete/", {"post": "yes"}).status_code == 403


def test_admin_resolve_review_requires_note(staff: Client) -> None:
    payment = make_payment("ADM-REV", status=PaymentStatus.REVIEW, review_reason="amount_mismatch",
                           amount_paid=400000)
    url = f"/admin/payment/payment/{payment.pk}/resolve/"
    assert staff.get(url).status_code == 200
    missing = staff.post(url, {"outcome": "success", "note": ""})
    assert missing.status_code == 200 and "required" in missing.content.decode().lower()
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.REVIEW
    done = staff.post(url, {"outcome": "success", "note": "customer topped up by transfer"})
    assert done.status_code == 302
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert payment.transitions.get().actor == "support"


def refund_form_token(staff: Client, url: str) -> str:
    """The one-time token of a freshly rendered refund form."""
    import re

    page = staff.get(url).content.decode()
    match = re.search(r'name="token" value="([^"]+)"', page)
    assert match, "the refund form carries a one-time token"
    return match.group(1)


def test_admin_refund_action_calls_service(staff: Client) -> None:
    payment = make_payment("ADM-REF", status=PaymentStatus.SUCCESS, amount_paid=500000)
    url = f"/admin/payment/payment/{payment.pk}/refund/"
    too_much = staff.post(url, {"refund_amount": "600000", "reason": "oops", "token": refund_form_token(staff, url)})
    assert too_much.status_code == 200 and "exceeds" in too_much.content.decode()
    with mock.patch("payment.queueing.refund_dispatch") as dispatch:
        done = staff.post(url, {"refund_amount": "100000", "reason": "damaged goods",
                                "token": refund_form_token(staff, url)})
    assert done.status_code == 302
    refund = payment.refunds.get()
    assert (refund.amount, refund.requested_by) == (100000, "support")
    dispatch.assert_not_called()  # the test transaction never commits; on_commit would dispatch it


@respx.mock
def test_admin_verify_now_action(staff: Client) -> None:
    payment = make_payment("ADM-VER")
    respx.get(f"{PAYSTACK_API}/transaction/verify/ADM-VER").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("ADM-VER"))))
    response = staff.post("/admin/payment/payment/", {"action": "verify_now", "_selected_action": [payment.pk]})
    assert response.status_code == 302
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS


def test_admin_event_page_pretty_body_and_no_secrets(staff: Client) -> None:
    signed_post(staff, "paystack", paystack_charge("ADM-EV"))
    event = WebhookEvent.objects.get()
    page = staff.get(f"/admin/payment/webhookevent/{event.pk}/change/").content.decode()
    assert "&quot;reference&quot;: &quot;ADM-EV&quot;" in page  # pretty-printed JSON, escaped
    assert "[redacted]" in page
    assert PAYSTACK_KEY not in page
    assert staff.get("/admin/payment/webhookevent/", {"status": "queued", "gateway": "paystack"}).status_code == 200


def test_admin_reprocess_action_requeues(staff: Client) -> None:
    signed_post(staff, "paystack", paystack_charge("ADM-RE"))
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.DEAD)
    with mock.patch("payment.queueing.event_dispatch") as dispatch:
        staff.post("/admin/payment/webhookevent/", {"action": "reprocess", "_selected_action": [event.pk]})
    dispatch.assert_called_once_with(event.pk, path="replay")
    event.refresh_from_db()
    assert event.status == EventStatus.QUEUED


@pytest.mark.parametrize("path", ["/admin/payment/refund/", "/admin/payment/notification/",
                                  "/admin/payment/paymenttransition/", "/admin/payment/webhookevent/"])
def test_admin_lists_render(staff: Client, path: str) -> None:
    assert staff.get(path).status_code == 200


# --- replay ---------------------------------------------------------------------------------------------------
@respx.mock
def test_replay_completes_failed_and_leaves_processed_alone(client: Client, django_capture_on_commit_callbacks):
    payment = make_payment("RPL-1")
    signed_post(client, "paystack", paystack_charge("RPL-1"))
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.FAILED, last_error="HTTP 503")
    route = respx.get(f"{PAYSTACK_API}/transaction/verify/RPL-1").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("RPL-1"))))
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("payment_replay", "--status", "failed", "--inline", stdout=out)
    assert "replayed 1" in out.getvalue()
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    # Replaying the processed event changes nothing without --force ...
    out = StringIO()
    call_command("payment_replay", str(event.pk), "--inline", stdout=out)
    assert "skipped 1" in out.getvalue()
    assert route.call_count == 1
    # ... and with --force it re-runs, but the state machine holds: no second transition or notification.
    call_command("payment_replay", str(event.pk), "--inline", "--force", stdout=StringIO())
    assert payment.transitions.count() == 1 and Notification.objects.filter(payment=payment).count() == 1


def test_replay_dry_run_and_filters(client: Client) -> None:
    signed_post(client, "paystack", paystack_charge("RPL-DRY"))
    WebhookEvent.objects.update(status=EventStatus.DEAD)
    out = StringIO()
    call_command("payment_replay", "--status", "dead", "--gateway", "paystack", "--hours", "1", "--dry-run",
                 stdout=out)
    assert "would replay" in out.getvalue() and "dry run" in out.getvalue()
    assert WebhookEvent.objects.get().status == EventStatus.DEAD
    with pytest.raises(CommandError):
        call_command("payment_replay")


def test_replay_through_queue_dispatches(client: Client) -> None:
    signed_post(client, "paystack", paystack_charge("RPL-Q"))
    WebhookEvent.objects.update(status=EventStatus.UNMATCHED)
    with mock.patch("payment.queueing.event_dispatch") as dispatch:
        call_command("payment_replay", "--status", "unmatched", stdout=StringIO())
    assert dispatch.call_count == 1


# --- metrics and health ------------------------------------------------------------------------------------
def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_metrics_need_authorisation(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_METRICS_TOKEN = "metrics-token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer metrics-token").status_code == 200


def test_metrics_move_when_events_flow(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_METRICS_TOKEN = "t"

    def scrape() -> str:
        return client.get("/metrics", HTTP_AUTHORIZATION="Bearer t").content.decode()

    before = scrape()
    payload = paystack_charge("MET-1")
    signed_post(client, "paystack", payload)
    signed_post(client, "paystack", payload)
    client.post("/payment/webhooks/paystack/", data=b"{}", content_type="application/json")
    make_payment("MET-OLD")
    after = scrape()
    received = "payshift_webhook_events_received_total"
    assert _metric(after, received, gateway="paystack", event="charge.success") == \
        _metric(before, received, gateway="paystack", event="charge.success") + 1
    dup = "payshift_webhook_events_duplicate_total"
    assert _metric(after, dup, gateway="paystack") == _metric(before, dup, gateway="paystack") + 1
    rejected = "payshift_webhook_requests_rejected_total"
    assert _metric(after, rejected, gateway="paystack", reason="bad_signature") == \
        _metric(before, rejected, gateway="paystack", reason="bad_signature") + 1
    # Stored, not yet published (the test's transaction never commits, so the relay never ran).
    assert _metric(after, "payshift_inbox_backlog", status="received") == 1
    assert _metric(after, "payshift_oldest_pending_payment_seconds") >= 0


def test_healthz_and_readyz(client: Client, settings: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    from .conftest import use_broker

    settings.CELERY_BROKER_URL = "memory://"
    use_broker("memory://")
    try:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["parts"]["database"]["ok"] and ready.json()["parts"]["broker"]["ok"]
        signed_post(client, "paystack", paystack_charge("READY-1"))
        inbox = client.get("/readyz").json()["parts"]["inbox"]
        assert inbox["backlog"] == 1 and inbox["by_status"] == {"received": 1} and inbox["dead"] == 0
        use_broker("redis://127.0.0.1:1/0")
        settings.PAYSHIFT_BROKER_PUBLISH_TIMEOUT = 0.5
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json()["parts"]["broker"]["ok"] is False
        services.heartbeat("django_q")  # the fallback queue is alive: webhooks are safe again
        assert client.get("/readyz").status_code == 200
        with mock.patch("payment.health.connection.cursor", side_effect=OperationalError("down")):
            no_db = client.get("/readyz")
        assert no_db.status_code == 503 and no_db.json()["parts"]["database"]["ok"] is False
    finally:
        use_broker(settings.CELERY_BROKER_URL)


# --- system checks ------------------------------------------------------------------------------------------
def _ids(**overrides: Any) -> set[str]:
    from django.test import override_settings

    from payment.gateways.registry import registry_reset

    with override_settings(**overrides):
        registry_reset()
        found = {m.id for m in checks.payshift_checks()}
    registry_reset()
    return found


def test_checks_quiet_on_good_production_config() -> None:
    good = {"PAYSHIFT_ENVIRONMENT": "production", "DEBUG": False, "SECRET_KEY": "x" * 50}
    assert _ids(**good) == set()


@pytest.mark.parametrize("overrides,expected", [
    ({"PAYSTACK_SECRET_KEY": []}, "payshift.W001"),
    ({"PAYSHIFT_ENVIRONMENT": "production", "SECRET_KEY": "x" * 50, "PAYSTACK_SECRET_KEY": []}, "payshift.E001"),
    ({"PAYSHIFT_ENVIRONMENT": "production", "SECRET_KEY": "x" * 50,
      "PAYSTACK_BASE_URL": "http://127.0.0.1:8100/paystack"}, "payshift.E002"),
    ({"PAYSHIFT_ENVIRONMENT": "production", "SECRET_KEY": "x" * 50,
      "PAYSTACK_SECRET_KEY": ["sk_test_payshift_demo_do_not_use_in_production"]}, "payshift.E003"),
    ({"PAYSHIFT_ENVIRONMENT": "production", "SECRET_KEY": "x" * 50, "DEBUG": True}, "payshift.E004"),
    ({"PAYSHIFT_ENVIRONMENT": "production"}, "payshift.E007"),
])
def test_checks_fire_on_misconfiguration(overrides: dict[str, Any], expected: str) -> None:
    assert expected in _ids(**overrides)


@pytest.mark.parametrize("conf,expected", [
    ({"broker_url": "not a url"}, "payshift.E006"),
])
def test_checks_read_the_current_celery_app(conf: dict[str, Any], expected: str) -> None:
    from types import SimpleNamespace

    from celery import current_app

    good = {"beat_schedule": current_app.conf.beat_schedule, "broker_url": "redis://127.0.0.1:6379/0"}
    with mock.patch("payment.checks.current_app", SimpleNamespace(conf=SimpleNamespace(**{**good, **conf}))):
        assert expected in _ids()
    with mock.patch("payment.checks.current_app", SimpleNamespace(conf=SimpleNamespace(**good))):
        assert expected not in _ids()


def test_any_beat_gets_payshifts_periodic_tasks(tmp_path: Any) -> None:
    """A host's own beat (`celery -A hostproj beat`) schedules check_pending_payments with no setting of its own;
    an entry of the same name the host scheduled itself wins."""
    from celery import Celery
    from celery.beat import PersistentScheduler, Service
    from celery.signals import beat_init

    host = Celery("host", set_as_current=False)
    host.conf.beat_schedule = {"hosts-own": {"task": "host.task", "schedule": 10.0},
                               "prune-webhook-bodies": {"task": "prune_webhook_bodies", "schedule": 60.0}}
    service = Service(app=host, scheduler_cls=PersistentScheduler, schedule_filename=str(tmp_path / "beat"))
    try:
        beat_init.send(sender=service)
        schedule = service.scheduler.schedule
        assert schedule["check-pending-payments"].task == "check_pending_payments"
        assert schedule["hosts-own"].task == "host.task"
        own = schedule["prune-webhook-bodies"].schedule
        assert getattr(own, "seconds", None) == 60.0  # the host's own entry wins
    finally:
        service.scheduler.close()


# --- retention -------------------------------------------------------------------------------------------------
def test_retention_prunes_bodies_but_replay_is_still_duplicate(client: Client) -> None:
    payload = paystack_charge("RET-1")
    signed_post(client, "paystack", payload)
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSED,
                                                    received_at=timezone.now() - timedelta(days=40))
    out = StringIO()
    call_command("payment_retention", "--days", "30", "--dry-run", stdout=out)
    assert "would prune 1" in out.getvalue()
    call_command("payment_retention", "--days", "30", stdout=StringIO())
    event.refresh_from_db()
    assert bytes(event.body) == b"" and event.headers == {} and event.pruned_at is not None
    # The captured delivery, replayed after pruning, is still a duplicate: nothing new is stored.
    assert signed_post(client, "paystack", payload).json() == {"status": "duplicate"}
    assert WebhookEvent.objects.count() == 1


def test_retention_keeps_unfinished_and_recent_events(client: Client) -> None:
    signed_post(client, "paystack", paystack_charge("RET-KEEP"))
    WebhookEvent.objects.update(received_at=timezone.now() - timedelta(days=40))  # still queued: keep
    assert services.events_prune(older_than_days=30) == 0


# --- alerts ----------------------------------------------------------------------------------------------------
def test_gateway_silent_alert_once_per_hour(settings: Any) -> None:
    settings.PAYSHIFT_STAFF_EMAILS = ["ops@example.com"]
    settings.PAYSHIFT_GATEWAY_SILENCE_SECONDS = 600
    payment = make_payment("SIL-1")
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(hours=1))
    from django.test import TestCase

    with TestCase.captureOnCommitCallbacks(execute=True):
        assert services.gateway_silence_alerts() == ["paystack"]
        assert services.gateway_silence_alerts() == []  # same hour: no second alert
    assert Notification.objects.filter(kind=NotificationKind.GATEWAY_SILENT).count() == 1
    assert mail.outbox and "silent" in mail.outbox[0].subject


def test_gateway_not_silent_when_webhooks_arrive(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_GATEWAY_SILENCE_SECONDS = 600
    payment = make_payment("SIL-2")
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(hours=1))
    signed_post(client, "paystack", paystack_charge("SIL-OTHER"))
    assert services.gateway_silence_alerts() == []


def test_payment_show_reads_admin_story(client: Client) -> None:
    make_payment("SHOW-ADM")
    out = StringIO()
    call_command("payment_show", "SHOW-ADM", stdout=out)
    assert "SHOW-ADM" in out.getvalue()
    out = StringIO()
    call_command("payment_show", "SHOW-ADM", "--json", stdout=out)
    assert json.loads(out.getvalue())["review_reason"] is None


def test_admin_event_body_hides_card_data(staff: Client) -> None:
    payload = paystack_charge("ADM-CARD")
    signed_post(staff, "paystack", payload)
    event = WebhookEvent.objects.get()
    page = staff.get(f"/admin/payment/webhookevent/{event.pk}/change/").content.decode()
    assert "AUTH_payshiftdemo" not in page and "408408" not in page and "4081" not in page
    assert "&quot;authorization_code&quot;: &quot;[redacted]&quot;" in page


def test_webhook_url_without_trailing_slash_is_not_redirected(client: Client) -> None:
    response = signed_post(client, "paystack", paystack_charge("NOSLASH"), path="/payment/webhooks/paystack")
    assert response.status_code == 200 and response.json() == {"status": "stored"}
