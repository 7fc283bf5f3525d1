"""The gateway contract: every gateway the registry finds (the test-only ones too) passes the same suite.

The contract tests name no gateway: a new folder under payment/gateways/ (or a package in PAYSHIFT_GATEWAY_MODULES)
is covered by being registered. What the suite needs from a gateway comes from its class: `charge_event`,
`refund_event`, `body_signed`, `secret_setting`, `secret_headers`, `redacted_fields`, `test_settings` and the
recorded `example_*` answers (docs/adding-a-gateway.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import json
import os
import random
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from django.contrib import admin
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from payment import services
from payment.admin import WebhookEventAdmin, redact_card_data
from payment.gateways import registry
from payment.gateways.base import (
    OUTCOME_FAILED,
    OUTCOME_SUCCESS,
    Gateway,
    RecordedAnswer,
    RefundResult,
    UnbuildableEventError,
    Verification,
    json_dumps,
)
from payment.gateways.registry import UnknownGatewayError, gateway_classes, gateway_get, gateway_names, registry_reset
from payment.models import (
    EventStatus,
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    RefundStatus,
    WebhookEvent,
)

from .conftest import TEST_GATEWAY_MODULES, contract_gateway_names, signed_post

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("with_test_gateways")]

GATEWAYS = contract_gateway_names()
REFERENCE = "CT-0001-contract"
TX_ID = "90210"
AMOUNT = 1234500
CURRENCY = "NGN"


def _charge_body(gateway: Gateway, *, reference: str = REFERENCE, status: str = "success") -> bytes:
    return json_dumps(gateway.build_test_webhook(
        event=gateway.charge_event, reference=reference, transaction_id=TX_ID, status=status, amount=AMOUNT,
        currency=CURRENCY, mode="test", email="ada@example.com"))


def _proof_headers(gateway: Gateway, signed: dict[str, str]) -> list[str]:
    return [name for name in signed if name in gateway.secret_headers]


def _mock(answer: RecordedAnswer) -> respx.Route:
    return respx.route(method=answer.method, url=answer.url).mock(
        return_value=httpx.Response(answer.status, content=json_dumps(answer.body),
                                    headers={"content-type": "application/json"}))


def _flip(text: str) -> str:
    """`text` with its last character changed (another character of the same alphabet)."""
    return text[:-1] + ("1" if text[-1] != "1" else "2")


def test_contract_runs_over_every_registered_gateway_and_the_test_only_ones() -> None:
    # The built-in folders and the test-only one(s): the parametrisation below is the registry's own list.
    assert set(gateway_classes()) == set(GATEWAYS)
    assert len(TEST_GATEWAY_MODULES) >= 1 and len(GATEWAYS) >= 3


# --- webhooks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GATEWAYS)
@pytest.mark.parametrize("empty", [[], "", [""], " , "])
def test_contract_no_secret_fails_closed(client: Client, settings: Any, name: str, empty: Any) -> None:
    gateway = gateway_get(name)
    body = _charge_body(gateway)
    signed = gateway.sign_webhook(body)
    setattr(settings, gateway.secret_setting, empty)
    registry_reset()
    gateway = gateway_get(name)
    assert gateway.webhook_secrets() == []
    assert gateway.verify_signature(body, signed) is False
    extra = {f"HTTP_{k.upper().replace('-', '_')}": v for k, v in signed.items() if k != "content-type"}
    response = client.post(f"/payment/webhooks/{name}/", data=body, content_type="application/json", **extra)
    assert (response.status_code, response.json()) == (401, {"status": "no_secret"})
    assert not WebhookEvent.objects.exists()


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_sign_then_verify_round_trips(name: str) -> None:
    gateway = gateway_get(name)
    body = _charge_body(gateway)
    signed = gateway.sign_webhook(body)
    assert gateway.verify_signature(body, signed) is True
    # Every header that carries the proof is one the inbox redacts before storing.
    assert _proof_headers(gateway, signed), f"{name} signs with no header listed in secret_headers"
    assert set(signed) - {"content-type"} <= gateway.secret_headers


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_tampered_body_fails_where_the_body_is_signed(name: str) -> None:
    gateway = gateway_get(name)
    body = _charge_body(gateway)
    signed = gateway.sign_webhook(body)
    tampered = body.replace(REFERENCE.encode(), REFERENCE.replace("0001", "0002").encode(), 1)
    assert tampered != body
    # A gateway whose proof is the shared secret sent verbatim says so (body_signed = False): the flag is
    # checked both ways, so it cannot hide a signature that ignores the body.
    assert gateway.verify_signature(tampered, signed) is (not type(gateway).body_signed)


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_tampered_or_missing_signature_fails(name: str) -> None:
    gateway = gateway_get(name)
    body = _charge_body(gateway)
    signed = gateway.sign_webhook(body)
    for header in _proof_headers(gateway, signed):
        for forged in (_flip(signed[header]), "", "0" * len(signed[header]), signed[header] + "0"):
            assert gateway.verify_signature(body, {**signed, header: forged}) is False, (header, forged)
        without = {k: v for k, v in signed.items() if k != header}
        assert gateway.verify_signature(body, without) is False


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_built_charge_webhook_parses_back(name: str) -> None:
    gateway = gateway_get(name)
    event = gateway.parse_event(_charge_body(gateway))
    assert (event.gateway, event.event, event.kind) == (name, gateway.charge_event, "charge")
    assert (event.reference, event.gateway_transaction_id) == (REFERENCE, TX_ID)
    assert (event.amount, event.currency, event.outcome) == (AMOUNT, CURRENCY, OUTCOME_SUCCESS)
    assert event.mode in ("", "test")
    assert 0 < len(event.dedupe_key) <= 255
    # The same fact built twice is the same event (a resend is a duplicate); a failed attempt is another.
    assert gateway.parse_event(_charge_body(gateway)).dedupe_key == event.dedupe_key
    failed = gateway.parse_event(_charge_body(gateway, status="failed"))
    assert failed.outcome == OUTCOME_FAILED and failed.dedupe_key != event.dedupe_key


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_built_refund_webhook_parses_back(name: str) -> None:
    gateway = gateway_get(name)
    assert gateway.refund_event, f"{name} names no refund_event"
    body = json_dumps(gateway.build_test_webhook(
        event=gateway.refund_event, reference=REFERENCE, transaction_id=TX_ID, status="success", amount=AMOUNT,
        currency=CURRENCY, mode="test", email="ada@example.com"))
    event = gateway.parse_event(body)
    assert (event.gateway, event.event, event.kind, event.status) == (name, gateway.refund_event, "refund", "processed")
    # The charge is named by its reference or its gateway id (Flutterwave's refund object has only the id),
    # and the refund by an identity of its own: a charge body under a refund name would carry the charge's.
    assert event.reference == REFERENCE or event.gateway_transaction_id == TX_ID
    assert event.refund_id or event.refund_reference
    assert TX_ID not in (event.refund_id, event.refund_reference)
    # None where the body cannot say (a major-unit amount without a currency), never a guess.
    assert event.amount in (None, AMOUNT)
    assert 0 < len(event.dedupe_key) <= 255


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_refund_event_it_does_not_send_is_refused(name: str) -> None:
    with pytest.raises(UnbuildableEventError, match=r"refund\.payshift-unknown"):
        gateway_get(name).build_test_webhook(
            event="refund.payshift-unknown", reference=REFERENCE, transaction_id=TX_ID, status="success",
            amount=AMOUNT, currency=CURRENCY, mode="test", email="ada@example.com")


# --- the API -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GATEWAYS)
@respx.mock
def test_contract_verify_answer_maps_to_a_verification(name: str) -> None:
    gateway = gateway_get(name)
    route = _mock(gateway.example_verify_answer(reference=REFERENCE, transaction_id=TX_ID, amount=AMOUNT,
                                                currency=CURRENCY))
    result = gateway.verify_transaction(reference=REFERENCE, gateway_transaction_id=TX_ID)
    assert isinstance(result, Verification)
    assert (result.reference, result.gateway_transaction_id, result.outcome) == (REFERENCE, TX_ID, OUTCOME_SUCCESS)
    assert (result.amount, result.currency, result.mode) == (AMOUNT, CURRENCY, "test")
    assert route.call_count == 1
    # The call carries the API key as the gateway expects it (api_request).
    assert route.calls.last.request.headers["authorization"] == f"Bearer {gateway.api_key()}"


@pytest.mark.parametrize("name", GATEWAYS)
@respx.mock
def test_contract_refund_answer_maps_to_a_refund_result(name: str) -> None:
    gateway = gateway_get(name)
    route = _mock(gateway.example_refund_answer(reference=REFERENCE, transaction_id=TX_ID, amount=50000,
                                                currency=CURRENCY))
    result = gateway.refund(reference=REFERENCE, gateway_transaction_id=TX_ID, amount=50000, currency=CURRENCY,
                            note="contract")
    assert route.call_count == 1
    assert isinstance(result, RefundResult)
    assert result.gateway_refund_id
    assert result.status in RefundStatus.values
    assert (result.amount, result.currency) == (50000, CURRENCY)


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_callback_reference_reads_the_redirect_query(name: str) -> None:
    gateway = gateway_get(name)
    query = gateway.example_callback_query(reference=REFERENCE, transaction_id=TX_ID)
    reference, transaction_id = gateway.callback_reference(query)
    # Paystack's redirect carries no transaction id: "" is the honest answer then.
    assert reference == REFERENCE and transaction_id in ("", TX_ID)
    assert gateway.callback_reference({}) == ("", "")
    long_reference, long_id = gateway.callback_reference({k: v * 200 for k, v in query.items()})
    assert len(long_reference) <= 100 and len(long_id) <= 64


# --- the admin -----------------------------------------------------------------------------------------------
def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _values_under(value: Any, keys: frozenset[str]) -> list[Any]:
    if isinstance(value, dict):
        return [v for k, v in value.items() if k in keys] + [x for v in value.values() for x in _values_under(v, keys)]
    if isinstance(value, list):
        return [x for v in value for x in _values_under(v, keys)]
    return []


@pytest.mark.parametrize("name", GATEWAYS)
def test_contract_redacted_fields_are_hidden_by_the_admin(name: str) -> None:
    gateway = gateway_get(name)
    payload = json.loads(_charge_body(gateway))
    # The declaration names fields the gateway really sends (a stale list would hide nothing).
    assert gateway.redacted_fields & _keys(payload), f"{name}: none of {sorted(gateway.redacted_fields)} in its body"
    shown = redact_card_data(payload)
    assert set(_values_under(shown, gateway.redacted_fields)) == {"[redacted]"}
    nested = {"outer": [{field: "secret-value"} for field in sorted(gateway.redacted_fields)]}
    assert "secret-value" not in json.dumps(redact_card_data(nested))


# --- a delivery end to end -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", GATEWAYS)
@respx.mock
def test_contract_signed_webhook_settles_the_payment_once(client: Client, name: str,
                                                          django_capture_on_commit_callbacks: Any) -> None:
    gateway = gateway_get(name)
    payment = Payment.objects.create(reference=REFERENCE, gateway=name, amount=AMOUNT, currency=CURRENCY,
                                     mode="test", customer_email="ada@example.com")
    payload = json.loads(_charge_body(gateway))
    response = signed_post(client, name, payload)
    assert (response.status_code, response.json()) == (200, {"status": "stored"})
    event = WebhookEvent.objects.get(gateway=name)
    # `received` until the outbox relay publishes it after commit (payment/tests/test_outbox.py).
    assert (event.reference, event.status) == (REFERENCE, EventStatus.RECEIVED)
    assert all(event.headers[h] == "[redacted]" for h in gateway.secret_headers if h in event.headers)
    assert signed_post(client, name, payload).json() == {"status": "duplicate"}

    verify = _mock(gateway.example_verify_answer(reference=REFERENCE, transaction_id=TX_ID, amount=AMOUNT,
                                                 currency=CURRENCY))
    with django_capture_on_commit_callbacks(execute=True):
        assert services.webhook_event_process(event.pk, via="test") == EventStatus.PROCESSED
    payment.refresh_from_db()
    assert (payment.status, payment.amount_paid, payment.gateway_transaction_id) == (PaymentStatus.SUCCESS, AMOUNT,
                                                                                    TX_ID)
    assert list(Notification.objects.filter(payment=payment).values_list("kind", flat=True)) == [
        NotificationKind.PAYMENT_SUCCEEDED]
    assert verify.call_count == 1
    # The stored body, as the admin shows it, hides the card fields.
    shown = WebhookEventAdmin(WebhookEvent, admin.site).pretty_body(event)
    raw = json.loads(bytes(event.body))
    for value in _values_under(raw, gateway.redacted_fields):
        assert json.dumps(value) not in shown


# --- the registry --------------------------------------------------------------------------------------------
def test_registry_loads_gateway_packages_named_in_settings(client: Client, settings: Any) -> None:
    extra = set(GATEWAYS) - set(_built_in_names())
    assert extra, "the test-only folder registers no gateway"
    assert extra <= set(gateway_names())
    settings.PAYSHIFT_GATEWAY_MODULES = []
    registry_reset()
    assert not extra & set(gateway_names())
    for name in extra:
        with pytest.raises(UnknownGatewayError):
            gateway_get(name)
        assert client.post(f"/payment/webhooks/{name}/", data=b"{}", content_type="application/json").status_code == 404


def _built_in_names() -> list[str]:
    with override_settings(PAYSHIFT_GATEWAY_MODULES=[]):
        return list(gateway_classes())


def test_registry_lists_gateways_before_django_settings_exist() -> None:
    # The dev stack builds its demo environment from the classes before it configures Django.
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["PAYSHIFT_GATEWAY_MODULES"] = ",".join(TEST_GATEWAY_MODULES)
    code = ("import json; from payment.gateways.registry import demo_environment, gateway_classes; "
            "print(json.dumps([sorted(gateway_classes()), demo_environment('http://127.0.0.1:8100')]))")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            check=False, cwd=Path(__file__).resolve().parents[2])
    assert result.returncode == 0, result.stderr[-2000:]
    names, demo = json.loads(result.stdout)
    assert names == GATEWAYS
    for name in GATEWAYS:
        assert gateway_classes()[name].demo_settings.items() <= demo.items()


@pytest.mark.parametrize(("modules", "message"), [
    (["payment.tests.gateways.no_such_gateway"], "cannot import"),
    (["payment.management"], "registers no gateway"),
])
def test_registry_refuses_a_module_without_a_gateway(settings: Any, modules: list[str], message: str) -> None:
    settings.PAYSHIFT_GATEWAY_MODULES = modules
    with pytest.raises(ImproperlyConfigured, match=message):
        gateway_names()


def test_registry_refuses_a_second_gateway_under_a_taken_name() -> None:
    taken = GATEWAYS[0]
    before = gateway_classes()[taken]
    impostor = types.new_class("ImpostorGateway", (before,), {})
    impostor.__module__ = "payment.tests.impostor"
    with pytest.raises(ImproperlyConfigured, match=f"two gateways are named '{taken}'"):
        registry.register(impostor)
    assert gateway_classes()[taken] is before


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_setting_reads_django_settings_then_the_environment(settings: Any, monkeypatch: Any,
                                                                    name: str) -> None:
    gateway = gateway_get(name)
    setting = gateway.secret_setting
    assert gateway.webhook_secrets()
    delattr(settings, setting)
    monkeypatch.setenv(setting, "from-the-environment,second")
    registry_reset()
    assert gateway_get(name).webhook_secrets() == ["from-the-environment", "second"]
    setattr(settings, setting, ["from-django"])
    registry_reset()
    assert gateway_get(name).webhook_secrets() == ["from-django"]


@pytest.mark.parametrize("name", GATEWAYS)
def test_gateway_base_url_comes_from_its_setting(settings: Any, monkeypatch: Any, name: str) -> None:
    gateway = gateway_get(name)
    configured = gateway.base_url()
    assert configured == str(gateway.test_settings[gateway.base_url_setting]).rstrip("/") + "/"
    delattr(settings, gateway.base_url_setting)
    monkeypatch.delenv(gateway.base_url_setting, raising=False)
    registry_reset()
    # Unset, the real API: payment/conf.py's default for the built-in gateways, the class's own otherwise.
    real = gateway_get(name).base_url()
    assert real.startswith("https://") and real != configured


# --- test_webhook and the bench build from the class -----------------------------------------------------------
def _server(posted: list[httpx.Request], name: str) -> None:
    respx.get("http://payshift.test/healthz").mock(return_value=httpx.Response(200, json={"status": "ok"}))

    def answer(request: httpx.Request) -> httpx.Response:
        posted.append(request)
        return httpx.Response(200, json={"status": "stored"})

    respx.post(f"http://payshift.test/payment/webhooks/{name}/").mock(side_effect=answer)


@pytest.mark.parametrize("name", GATEWAYS)
@respx.mock
def test_test_webhook_refund_event_sends_the_gateways_refund_body(name: str) -> None:
    gateway = gateway_get(name)
    posted: list[httpx.Request] = []
    _server(posted, name)
    call_command("test_webhook", f"--payment-method={name}", f"--event={gateway.refund_event}",
                 "--url=http://payshift.test", "--sandbox-url=", "--no-wait", stdout=io.StringIO())
    (request,) = posted
    assert gateway.verify_signature(request.content, dict(request.headers)) is True
    event = gateway.parse_event(request.content)
    payment = Payment.objects.get(gateway=name)
    assert (event.kind, event.event) == ("refund", gateway.refund_event)
    assert payment.reference == event.reference or event.gateway_transaction_id
    own_ids = {event.refund_id, event.refund_reference} - {""}
    assert own_ids and event.gateway_transaction_id not in own_ids


@pytest.mark.parametrize("name", GATEWAYS)
@respx.mock
def test_test_webhook_refuses_a_refund_event_the_gateway_cannot_build(name: str) -> None:
    with pytest.raises(CommandError, match=rf"{name} sends no refund\.payshift-unknown"):
        call_command("test_webhook", f"--payment-method={name}", "--event=refund.payshift-unknown",
                     "--url=http://payshift.test", "--sandbox-url=", "--no-wait")
    # Refused before anything was made or sent.
    assert not Payment.objects.exists()
    assert not respx.calls


def _bench_payloads(monkeypatch: Any) -> Any:
    # The load generator's own dependencies (bench/requirements.txt) are not the project's: the pieces
    # bench.payloads uses need neither, so empty stand-ins let it import here.
    for module in ("aiohttp", "numpy"):
        if importlib.util.find_spec(module) is None:
            monkeypatch.setitem(sys.modules, module, types.ModuleType(module))
    return importlib.import_module("bench.payloads")


@pytest.mark.parametrize("name", GATEWAYS)
def test_bench_signed_requests_come_from_the_gateway_class(client: Client, monkeypatch: Any, name: str) -> None:
    payloads = _bench_payloads(monkeypatch)
    made = payloads.payments_create("BENCH", 3, shares={name: 1.0})
    assert {p.gateway for p in made} == {name}
    assert set(Payment.objects.values_list("gateway", "mode")) == {(name, gateway_get(name).key_mode())}
    reqs = payloads.signed_requests(made)
    for p, req in zip(made, reqs, strict=True):
        assert req.path == f"/payment/webhooks/{name}/" and req.header in gateway_get(name).secret_headers
        response = client.post(req.path, data=req.body, content_type="application/json",
                               **{f"HTTP_{req.header.upper().replace('-', '_')}": req.value})
        assert (response.status_code, response.json()) == (200, {"status": "stored"})
        assert WebhookEvent.objects.get(reference=p.reference).event == gateway_get(name).charge_event


def test_bench_traffic_mix_draws_as_the_recorded_runs(monkeypatch: Any) -> None:
    # The scenarios' shorthand for their 75/25 Paystack/Flutterwave mix draws what the old code drew.
    payloads = _bench_payloads(monkeypatch)
    made = payloads.payments_create("MIX", 200, flutterwave_share=0.25)
    rng = random.Random("7:MIX")
    expected = []
    for _ in range(200):
        expected.append("flutterwave" if rng.random() < 0.25 else "paystack")
        rng.choice(payloads._AMOUNTS)
    assert [p.gateway for p in made] == expected
