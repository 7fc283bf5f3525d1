"""API fault injection: run-wide dice, the X-Sandbox-Fault header, and where faults must not apply."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

import pytest
from starlette.testclient import TestClient

from payshift.sandbox.faults import Faults, FaultSpecError, parse_fault_header, roll_faults
from payshift.sandbox.tests.conftest import FW, PS, fast_config, paystack_init, seed


def set_faults(client: TestClient, **faults: object) -> None:
    response = client.post("/_sandbox/faults", json=faults)
    assert response.status_code == 200, response.text


def test_error_rate_one_gives_5xx_in_each_gateway_envelope(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="E-1", amount=100)
    set_faults(client, error_rate=1)
    paystack = client.get("/paystack/transaction/verify/E-1", headers=PS)
    assert paystack.status_code == 503
    assert paystack.json()["status"] is False and isinstance(paystack.json()["message"], str)
    flutterwave = client.get("/flutterwave/v3/transactions/1/verify", headers=FW)
    assert flutterwave.status_code == 503
    assert flutterwave.json()["status"] == "error" and flutterwave.json()["data"] is None


def test_error_status_is_configurable(client: TestClient) -> None:
    set_faults(client, error_rate=1, error_status=502)
    assert client.get("/paystack/transaction/verify/x", headers=PS).status_code == 502


def test_rate_limit_gives_429_with_retry_after(client: TestClient) -> None:
    set_faults(client, rate_limit_rate=1, rate_limit_retry_after_s=7)
    response = client.get("/paystack/transaction/verify/x", headers=PS)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert response.json()["status"] is False


def test_faults_never_touch_control_or_checkout(client: TestClient) -> None:
    txn = seed(client, gateway="paystack", reference="SAFE-1", amount=100, status="pending")
    set_faults(client, error_rate=1, rate_limit_rate=1, latency_ms=0)
    assert client.get("/_sandbox/health").json() == {"status": "ok"}
    assert client.get("/_sandbox/transactions/paystack/SAFE-1").status_code == 200
    assert client.get(f"/checkout/{txn['access_code']}").status_code == 200
    assert client.get("/paystack/transaction/verify/SAFE-1", headers=PS).status_code == 503


@pytest.mark.parametrize(
    ("header", "status"),
    [("error=503", 503), ("error", 503), ("error=500", 500), ("rate_limit", 429), ("rate-limit=3", 429)],
)
def test_header_faults(client: TestClient, header: str, status: int) -> None:
    response = client.get("/flutterwave/v3/transactions/1/verify", headers={**FW, "X-Sandbox-Fault": header})
    assert response.status_code == status
    assert response.json()["status"] == "error"
    if status == 429:
        assert response.headers["retry-after"] in ("1", "3")


def test_header_overrides_the_run_wide_dice(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="OVR-1", amount=100)
    set_faults(client, error_rate=1)
    response = client.get("/paystack/transaction/verify/OVR-1", headers={**PS, "X-Sandbox-Fault": "none"})
    assert response.status_code == 200
    limited = client.get(
        "/paystack/transaction/verify/OVR-1", headers={**PS, "X-Sandbox-Fault": "rate_limit"}
    )
    assert limited.status_code == 429


def test_bad_fault_header_is_400(client: TestClient) -> None:
    for header in ("explode", "error=200", "latency=abc", "timeout=-1"):
        response = client.get("/paystack/transaction/verify/x", headers={**PS, "X-Sandbox-Fault": header})
        assert response.status_code == 400, header
        assert response.json()["status"] is False


def test_latency_header_and_run_wide(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="LAT-1", amount=100)
    started = time.monotonic()
    response = client.get(
        "/paystack/transaction/verify/LAT-1", headers={**PS, "X-Sandbox-Fault": "latency=200"}
    )
    assert response.status_code == 200
    assert time.monotonic() - started >= 0.2
    set_faults(client, latency_ms=150, latency_jitter_ms=50)
    started = time.monotonic()
    assert client.get("/paystack/transaction/verify/LAT-1", headers=PS).status_code == 200
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 2


def test_timeout_processes_the_request_then_answers_503(client: TestClient) -> None:
    started = time.monotonic()
    response = client.post(
        "/paystack/transaction/initialize",
        headers={**PS, "X-Sandbox-Fault": "timeout=0.3"},
        json={"email": "a@b.co", "amount": 100, "reference": "TO-1"},
    )
    assert response.status_code == 503
    assert time.monotonic() - started >= 0.3
    # The answer was lost, not the work: a blind retry collides, a status query finds it.
    verify = client.get("/paystack/transaction/verify/TO-1", headers=PS)
    assert verify.status_code == 200
    retry = client.post(
        "/paystack/transaction/initialize",
        headers=PS,
        json={"email": "a@b.co", "amount": 100, "reference": "TO-1"},
    )
    assert retry.json()["message"] == "Duplicate Transaction Reference"


def test_run_wide_timeout_uses_timeout_s(client: TestClient) -> None:
    set_faults(client, timeout_rate=1, timeout_s=0.2)
    started = time.monotonic()
    assert client.get("/flutterwave/v3/transactions/1/verify", headers=FW).status_code == 503
    assert time.monotonic() - started >= 0.2


def test_faults_api_validates_and_reset_restores(make_client: Callable[..., TestClient]) -> None:
    client = make_client(fast_config(faults=Faults(latency_ms=5)))
    assert client.get("/_sandbox/faults").json()["latency_ms"] == 5
    for bad in (
        {"error_rate": 2},
        {"nope": 1},
        {"duplicate_webhooks": -1},
        {"out_of_order": "yes"},
        {"error_rate": True},
    ):
        assert client.post("/_sandbox/faults", json=bad).status_code == 400, bad
    merged = client.post("/_sandbox/faults", json={"error_rate": 0.5}).json()
    assert merged["error_rate"] == 0.5 and merged["latency_ms"] == 5
    seed(client, gateway="paystack", reference="GONE-1", amount=100)
    assert client.post("/_sandbox/reset").json() == {"status": "reset"}
    assert client.get("/_sandbox/faults").json()["error_rate"] == 0.0
    assert client.get("/_sandbox/transactions/paystack/GONE-1").status_code == 404


def test_partial_error_rate_hits_some_requests(client: TestClient) -> None:
    paystack_init(client, "HALF-1")
    set_faults(client, error_rate=0.5)
    codes = [client.get("/paystack/transaction/verify/HALF-1", headers=PS).status_code for _ in range(60)]
    assert 10 < codes.count(503) < 50
    assert set(codes) == {200, 503}


def test_dice_and_header_parsing_units() -> None:
    rng = random.Random(1)
    assert roll_faults(Faults(), rng).error_status is None
    plan = roll_faults(Faults(latency_ms=100, error_rate=1.0, error_status=500), rng)
    assert (plan.latency_s, plan.error_status) == (0.1, 500)
    plan = parse_fault_header("latency=50, error=502", Faults())
    assert (plan.latency_s, plan.error_status) == (0.05, 502)
    assert parse_fault_header("timeout", Faults(timeout_s=3)).timeout_s == 3
    with pytest.raises(FaultSpecError):
        parse_fault_header("error=abc", Faults())
