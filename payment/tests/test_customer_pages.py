"""Customer-facing pages safe to expose: demo pages off in production, signed result links, a throttled and
bounded callback, forms on every input, and no label or row minted by unauthenticated traffic."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import respx
from django.apps import apps
from django.db import connection
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY, generate_latest

from payment import links, services
from payment.conf import app_settings
from payment.gateways.base import json_dumps
from payment.gateways.registry import gateway_names
from payment.models import (
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    Recipient,
    ReviewReason,
    WebhookEvent,
)

from .conftest import (
    FLW_API,
    PAYSTACK_API,
    flutterwave_verify_answer,
    paystack_verify_answer,
    require_postgres,
)
from .test_processing import make_payment

ROOT = Path(__file__).resolve().parents[2]
CHECKOUT = {"gateway": "paystack", "amount": "250000", "currency": "NGN", "email": "ada@example.com"}


@pytest.fixture
def demo(settings: Any) -> Any:
    settings.PAYSHIFT_DEMO_PAGES = True
    return settings


def paystack_initialize(seen: list[dict[str, Any]] | None = None) -> respx.Route:
    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if seen is not None:
            seen.append(body)
        return httpx.Response(200, content=json_dumps({"status": True, "message": "Authorization URL created", "data": {
            "authorization_url": f"https://checkout.test/{body['reference']}", "access_code": "ac",
            "reference": body["reference"]}}))

    return respx.post(f"{PAYSTACK_API}/transaction/initialize").mock(side_effect=answer)


def paystack_verify(reference: str, **answer: Any) -> respx.Route:
    return respx.get(f"{PAYSTACK_API}/transaction/verify/{reference}").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer(reference, **answer))))


def callback_path(reference: str, gateway: str = "paystack") -> str:
    return links.payment_callback_link(gateway, reference)


# --- 10. demo pages only on the dev stack; no list of other customers' payments ---------------------------
@pytest.mark.django_db
@respx.mock
def test_demo_pages_are_404_by_default(client: Client) -> None:
    initialize = paystack_initialize()
    assert client.get("/").status_code == 404
    assert client.post("/payment/checkout/", CHECKOUT).status_code == 404
    assert not initialize.called and Payment.objects.count() == 0


def _setting_in_a_fresh_process(extra_env: dict[str, str], tmp_path: Path) -> bool:
    env = {k: v for k, v in os.environ.items() if k != "PAYSHIFT_DEMO_PAGES"}
    env.update({"PAYSHIFT_ENV_FILE": str(tmp_path / "none.env"), "PAYSHIFT_VAR_DIR": str(tmp_path / "var"),
                "DJANGO_SETTINGS_MODULE": "payshift.settings", **extra_env})
    result = subprocess.run([sys.executable, "-c", "from payment.conf import app_settings; "
                             "print(app_settings.PAYSHIFT_DEMO_PAGES)"],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60)
    return result.stdout.strip() == "True"


def test_demo_pages_setting_is_read_from_the_environment_and_the_dev_stack_turns_it_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from payshift import devstack

    monkeypatch.setattr(devstack, "ENV_FILE", tmp_path / ".env")
    monkeypatch.setenv("PAYSHIFT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("PAYSHIFT_DEMO_PAGES", raising=False)
    stack, _demo = devstack.stack_env(18000, 18100)
    assert stack["PAYSHIFT_DEMO_PAGES"] == "true"
    assert _setting_in_a_fresh_process({}, tmp_path) is False
    assert _setting_in_a_fresh_process({"PAYSHIFT_DEMO_PAGES": stack["PAYSHIFT_DEMO_PAGES"]}, tmp_path) is True


@pytest.mark.django_db
@respx.mock
def test_home_lists_only_payments_started_from_this_browser(demo: Any) -> None:
    paystack_initialize()
    make_payment("SOMEONE-ELSES-1")
    mine, theirs = Client(), Client()
    started = mine.post("/payment/checkout/", CHECKOUT)
    assert started.status_code == 302
    reference = Payment.objects.exclude(reference="SOMEONE-ELSES-1").get().reference
    page = mine.get("/").content.decode()
    assert reference in page and links.payment_result_link(reference) in page
    assert "SOMEONE-ELSES-1" not in page
    other = theirs.get("/").content.decode()
    assert reference not in other and "SOMEONE-ELSES-1" not in other


@pytest.mark.django_db
def test_home_does_not_reload_itself(demo: Any, client: Client) -> None:
    page = client.get("/").content.decode()
    assert 'id="start-payment"' in page
    assert "http-equiv" not in page.lower()


# --- 11. the result page only for the holder of the payment's signed link ---------------------------------
@pytest.mark.django_db
def test_result_page_needs_this_payments_signed_link(client: Client) -> None:
    make_payment("RES-1")
    make_payment("RES-2")
    good = links.payment_result_link("RES-1")
    assert client.get(good).status_code == 200
    other_token = links.payment_link_token("RES-2")
    for path in ("/payment/result/RES-1/", f"/payment/result/RES-1/{other_token}/",
                 f"/payment/result/RES-1/{links.payment_link_token('RES-1')[:-1]}x/", "/payment/result/RES-1/x/",
                 f"/payment/result/NOPE/{links.payment_link_token('NOPE')}/"):
        assert client.get(path).status_code == 404, path
    # A token made with another salt (another use of SECRET_KEY) is no token here.
    from django.core import signing

    foreign = signing.Signer(salt="something.else").sign("RES-1").rsplit(":", 1)[1]
    assert client.get(f"/payment/result/RES-1/{foreign}/").status_code == 404


@pytest.mark.django_db
def test_result_page_shows_customer_facts_only(client: Client) -> None:
    payment = make_payment("RES-REVIEW", status=PaymentStatus.REVIEW, review_reason=ReviewReason.AMOUNT_MISMATCH,
                           amount_paid=250000)
    Notification.objects.create(kind=NotificationKind.PAYMENT_REVIEW, recipient=Recipient.STAFF, payment=payment,
                                message="STAFF-ONLY underpaid_by 250000")
    Notification.objects.create(kind=NotificationKind.PAYMENT_SUCCEEDED, recipient=Recipient.CUSTOMER,
                                payment=payment, message="Customer message for RES-REVIEW")
    WebhookEvent.objects.create(gateway="paystack", event="charge.success", kind="charge", dedupe_key="k",
                                reference="RES-REVIEW", payment=payment, last_error="ERROR-TEXT from the gateway")
    response = client.get(links.payment_result_link("RES-REVIEW"))
    page = response.content.decode()
    assert response.status_code == 200
    assert '<span class="status being-checked" id="payment-status">being checked</span>' in page
    assert "5000.00 NGN via paystack" in page
    assert "Customer message for RES-REVIEW" in page
    for hidden in ("STAFF-ONLY", "payment_review", "amount_mismatch", "Amount Mismatch", "review", "ERROR-TEXT",
                   "250000", "2500.00"):
        assert hidden not in page, hidden
    assert response["Referrer-Policy"] == "no-referrer" and "no-store" in response["Cache-Control"]


@pytest.mark.django_db
@respx.mock
@pytest.mark.parametrize("gateway", ["paystack", "flutterwave"])
def test_checkout_hands_the_gateway_a_signed_callback_that_leads_to_the_result(demo: Any, client: Client,
                                                                               gateway: str) -> None:
    seen: list[dict[str, Any]] = []
    paystack_initialize(seen)

    def flw_initialize(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content))
        return httpx.Response(200, content=json_dumps({"status": "success", "data": {"link": "https://checkout.test/f"}}))

    respx.post(f"{FLW_API}/payments").mock(side_effect=flw_initialize)
    assert client.post("/payment/checkout/", {**CHECKOUT, "gateway": gateway}).status_code == 302
    payment = Payment.objects.get()
    handed = seen[0]["callback_url" if gateway == "paystack" else "redirect_url"]
    assert handed == f"http://testserver{links.payment_callback_link(gateway, payment.reference)}"
    *_, token, _empty = urlsplit(handed).path.split("/")
    assert links.payment_link_token_valid(payment.reference, token) and not urlsplit(handed).query
    # What each gateway appends on the way back (docs: Paystack trxref/reference, Flutterwave status/tx_ref/id).
    if gateway == "paystack":
        query = {"trxref": payment.reference, "reference": payment.reference}
        paystack_verify(payment.reference, amount=250000)
    else:
        query = {"status": "successful", "tx_ref": payment.reference, "transaction_id": "2001"}
        respx.get(f"{FLW_API}/transactions/verify_by_reference").mock(return_value=httpx.Response(
            200, content=json_dumps(flutterwave_verify_answer(payment.reference, amount=2500))))
    back = client.get(urlsplit(handed).path, query)
    assert back.status_code == 302 and back["Location"] == links.payment_result_link(payment.reference)
    page = client.get(back["Location"]).content.decode()
    assert 'id="payment-status">success<' in page and "payment_succeeded" in page


@pytest.mark.django_db
@respx.mock
def test_callback_without_this_payments_token_is_404_and_asks_no_gateway(client: Client) -> None:
    make_payment("CB-A")
    make_payment("CB-B")
    verify_b = paystack_verify("CB-B")
    token_a = links.payment_link_token("CB-A")
    assert client.get(f"/payment/callback/paystack/{token_a}/", {"reference": "CB-B"}).status_code == 404
    assert client.get("/payment/callback/paystack/", {"reference": "CB-B"}).status_code == 404
    assert client.get("/payment/callback/paystack/x/", {"reference": "CB-B"}).status_code == 404
    # The right token but the wrong gateway in the path: not this payment's link either.
    assert client.get(callback_path("CB-B", "flutterwave"), {"tx_ref": "CB-B"}).status_code == 404
    assert client.get(callback_path("CB-B").replace("paystack", "stripe"), {"reference": "CB-B"}).status_code == 404
    assert not verify_b.called
    assert Payment.objects.get(reference="CB-B").last_verified_at is None


@pytest.mark.django_db
@respx.mock
def test_signed_callback_never_settles_live_payment_from_test_mode(client: Client) -> None:
    payment = make_payment("CB-LIVE", mode="live")
    route = paystack_verify("CB-LIVE", domain="test")
    assert client.get(callback_path("CB-LIVE"), {"reference": "CB-LIVE"}).status_code == 302
    payment.refresh_from_db()
    assert route.called and payment.status == PaymentStatus.REVIEW


def test_payment_result_link_absolute_with_a_request(rf: Any) -> None:
    link = links.payment_result_link("REF-ABS", request=rf.get("/", HTTP_HOST="localhost"))
    assert link == f"http://localhost/payment/result/REF-ABS/{links.payment_link_token('REF-ABS')}/"
    assert links.payment_link_token_valid("REF-ABS", links.payment_link_token("REF-ABS"))
    assert not links.payment_link_token_valid("REF-ABS", links.payment_link_token("REF-ABT"))


# --- 12. one gateway call per payment per window, with a short timeout ---------------------------------------
@pytest.mark.django_db
@respx.mock
def test_callback_reloads_within_the_window_reach_the_gateway_once(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_CALLBACK_VERIFY_INTERVAL_SECONDS = 5.0
    payment = make_payment("CB-THROTTLE")
    route = paystack_verify("CB-THROTTLE", status="ongoing")  # not final: the payment stays pending
    answers = [client.get(callback_path("CB-THROTTLE"), {"reference": "CB-THROTTLE"}).status_code
               for _ in range(12)]
    assert answers == [302] * 12
    assert route.call_count == 1
    # Once the window has passed, the next reload may ask again (once).
    Payment.objects.filter(pk=payment.pk).update(last_verified_at=timezone.now() - timedelta(seconds=6))
    for _ in range(3):
        client.get(callback_path("CB-THROTTLE"), {"reference": "CB-THROTTLE"})
    assert route.call_count == 2


@pytest.mark.django_db(transaction=True)
def test_callback_claim_holds_across_connections_at_once() -> None:
    """Concurrent reloads, each on its own database connection (as separate web processes): one API call."""
    require_postgres()
    make_payment("CB-CONC")
    barrier = threading.Barrier(8)
    with respx.mock:
        def slow_pending(request: httpx.Request) -> httpx.Response:
            time.sleep(0.3)  # keep the first call in flight while the others arrive
            return httpx.Response(200, content=json_dumps(paystack_verify_answer("CB-CONC", status="ongoing")))

        route = respx.get(f"{PAYSTACK_API}/transaction/verify/CB-CONC").mock(side_effect=slow_pending)

        def reload(_: int) -> int:
            try:
                barrier.wait()
                return Client().get(callback_path("CB-CONC"), {"reference": "CB-CONC"}).status_code
            finally:
                connection.close()

        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(reload, range(8)))
    assert answers == [302] * 8
    assert route.call_count == 1


class _SlowGateway(BaseHTTPRequestHandler):
    delay = 3.0

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = json_dumps(paystack_verify_answer(self.path.rsplit("/", 1)[-1]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slow_gateway() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowGateway)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.django_db
def test_callback_slow_gateway_is_cut_at_the_short_timeout(client: Client, settings: Any, slow_gateway: str) -> None:
    """A real (local) gateway that takes 3 s: the page answers after the 0.5 s callback timeout, no 500."""
    from payment.gateways.registry import registry_reset

    settings.PAYSTACK_BASE_URL = slow_gateway
    settings.PAYSHIFT_CALLBACK_VERIFY_TIMEOUT_SECONDS = 0.5
    registry_reset()
    make_payment("CB-SLOW")
    started = time.monotonic()
    response = client.get(callback_path("CB-SLOW"), {"reference": "CB-SLOW"})
    elapsed = time.monotonic() - started
    assert response.status_code == 302 and elapsed < 2.0, elapsed
    page = client.get(response["Location"])
    assert page.status_code == 200 and 'id="payment-status">pending<' in page.content.decode()


@pytest.mark.django_db
@respx.mock
def test_api_timeout_bounds_only_the_callers_calls(client: Client, settings: Any) -> None:
    """The callback's ceiling reaches the HTTP call; the periodic check keeps the long worker timeout."""
    settings.PAYSHIFT_CALLBACK_VERIFY_TIMEOUT_SECONDS = 3.0
    timeouts: list[dict[str, float]] = []

    def record(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions["timeout"])
        return httpx.Response(200, content=json_dumps(paystack_verify_answer(request.url.path.rsplit("/", 1)[-1],
                                                                             status="ongoing")))

    respx.get(url__startswith=f"{PAYSTACK_API}/transaction/verify/").mock(side_effect=record)
    make_payment("TO-CB")
    reconciled = make_payment("TO-RECON")
    client.get(callback_path("TO-CB"), {"reference": "TO-CB"})
    services.payment_verify(reconciled.pk)
    assert timeouts[0]["read"] == 3.0 and timeouts[0]["connect"] == 3.0
    assert timeouts[1]["read"] == app_settings.PAYSHIFT_HTTP_READ_TIMEOUT


# --- 13. every customer-facing input through a form: 400 with a message, never a 500 -----------------------
@pytest.mark.django_db
@respx.mock
@pytest.mark.parametrize("field,value,message", [
    ("amount", "1" + "0" * 30, "less than or equal to"),
    ("amount", "-5", "greater than or equal to"),
    ("amount", "99", "greater than or equal to"),
    ("amount", "abc", "whole number"),
    ("amount", "", "required"),
    ("email", "a" * 300 + "@example.com", "at most 254"),
    ("email", "not-an-email", "valid email"),
    ("gateway", "stripe", "Select a valid choice"),
    ("gateway", "paystack\x00", "Select a valid choice"),
    ("currency", "NG", "at least 3"),
    ("currency", "N1G", "three letters"),
    ("currency", "NGNN", "at most 3"),
])
def test_checkout_bad_input_is_400_with_a_message(demo: Any, client: Client, field: str, value: str,
                                                  message: str, caplog: pytest.LogCaptureFixture) -> None:
    initialize = paystack_initialize()
    response = client.post("/payment/checkout/", {**CHECKOUT, field: value})
    assert response.status_code == 400
    assert message in response.content.decode()
    assert not initialize.called and Payment.objects.count() == 0
    assert any(r.getMessage() == "checkout refused" for r in caplog.records)


@pytest.mark.django_db
def test_checkout_gateway_down_is_503_without_gateway_text(demo: Any, client: Client) -> None:
    with respx.mock:
        respx.post(f"{PAYSTACK_API}/transaction/initialize").mock(return_value=httpx.Response(
            401, content=json_dumps({"status": False, "message": "Invalid key GATEWAY-TEXT"})))
        response = client.post("/payment/checkout/", CHECKOUT)
    assert response.status_code == 503 and "GATEWAY-TEXT" not in response.content.decode()


@pytest.mark.django_db
@respx.mock
@pytest.mark.parametrize("query", [
    {"reference": "R" * 101},
    {"reference": "R" * 5000},
    {"reference": "CB-Q\x00"},
    {"reference": "CB Q"},
    {"reference": "CB-Ω"},
    {},
    {"reference": ""},
    {"reference": "CB-Q", "other": "x" * 101},
    {"reference": "CB-Q", "x" * 101: "1"},
    {"reference": "CB-Q", **{f"k{i}": "v" for i in range(25)}},
], ids=["101", "5000", "nul", "space", "non-ascii", "missing", "empty", "long-param", "long-key", "many"])
def test_callback_malformed_query_is_400_and_asks_no_gateway(client: Client, query: dict[str, str],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    make_payment("CB-Q")
    route = paystack_verify("CB-Q")
    reference = query.get("reference") or "CB-Q"
    response = client.get(f"/payment/callback/paystack/{links.payment_link_token(reference)}/", query)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("text/plain") and "Bad callback query" in response.content.decode()
    assert not route.called
    assert any(r.getMessage() == "callback refused: bad query" for r in caplog.records)


# --- 14. unauthenticated traffic mints no metric label and grows no table ---------------------------------
def _gateway_label_values() -> set[str]:
    return {sample.labels["gateway"] for family in REGISTRY.collect() for sample in family.samples
            if "gateway" in sample.labels}


@pytest.mark.django_db
def test_random_webhook_names_share_one_metric_label(client: Client, settings: Any) -> None:
    names = [f"zz{secrets.token_hex(6)}" for _ in range(40)]
    for i, name in enumerate(names):
        path = f"/payment/webhooks/{name}/"
        assert client.get(path).status_code == 405
        oversize = b"x" * (app_settings.PAYSHIFT_WEBHOOK_MAX_BYTES + 1) if i % 4 == 0 else b"{}"
        assert client.post(path, data=oversize, content_type="application/json").status_code in (404, 413)
        assert client.post(path, data=b"{}", content_type="application/json",
                           CONTENT_LENGTH="not-a-number").status_code == 400
    labels = _gateway_label_values()
    assert labels <= {*gateway_names(), "unknown"}, labels - {*gateway_names(), "unknown"}
    exposition = generate_latest(REGISTRY).decode()
    assert not any(name in exposition for name in names)
    assert 'gateway="unknown",reason="method_not_allowed"' in exposition


@pytest.mark.django_db
@respx.mock
def test_unauthenticated_traffic_grows_no_table(client: Client) -> None:
    """With the demo pages off (production), nothing an anonymous client sends adds a row anywhere."""
    paystack_initialize()
    paystack_verify("ROW-1")
    make_payment("ROW-1")

    def counts() -> dict[str, int]:
        return {model._meta.label: model._default_manager.count() for model in apps.get_models()}

    before = counts()
    for i in range(10):
        name = f"zz{secrets.token_hex(4)}"
        client.post(f"/payment/webhooks/{name}/", data=b"{}", content_type="application/json")
        client.post("/payment/webhooks/paystack/", data=b'{"event":"charge.success"}',
                    content_type="application/json", HTTP_X_PAYSTACK_SIGNATURE="0" * 128)
        client.post("/payment/webhooks/flutterwave/", data=b"{}", content_type="application/json",
                    HTTP_VERIF_HASH="wrong")
        client.get("/")
        client.post("/payment/checkout/", {**CHECKOUT, "email": f"n{i}@example.com"})
        client.get("/payment/callback/paystack/bad-token/", {"reference": "ROW-1"})
        client.get(f"/payment/callback/paystack/{links.payment_link_token(name)}/", {"reference": name})
        client.get(f"/payment/result/ROW-1/{name}/")
        client.get("/metrics")
        client.get("/admin/login/")
        client.post("/admin/login/", {"username": name, "password": name})
    assert counts() == before


def test_system_check_refuses_demo_pages_in_production(settings: Any) -> None:
    from django.core.checks import run_checks

    settings.PAYSHIFT_ENVIRONMENT = "production"
    settings.PAYSHIFT_DEMO_PAGES = True
    assert "payshift.E009" in {m.id for m in run_checks(tags=["payshift"])}
    settings.PAYSHIFT_DEMO_PAGES = False
    assert "payshift.E009" not in {m.id for m in run_checks(tags=["payshift"])}
