"""Every Paystack endpoint the sandbox serves, each success and refusal, validated against Paystack's OpenAPI spec.

The validation itself runs on every answer of every sandbox test (the response hook in conftest.py); this
module provokes each (endpoint, status) pair on purpose and checks that all of them were validated.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import jsonschema
import pytest
from starlette.testclient import TestClient

from payshift.sandbox.tests.conftest import PS, fast_config, paystack_init, seed
from payshift.sandbox.tests.contract import VALIDATED, SpecViolation, validate_paystack

BAD = {"Authorization": "Bearer sk_test_wrong"}

# (method, spec path template) -> the statuses the sandbox must be seen answering, each one validated.
EXPECTED: dict[tuple[str, str], set[int]] = {
    ("POST", "/transaction/initialize"): {200, 400, 401, 429, 503},
    ("GET", "/transaction/verify/{reference}"): {200, 400, 401},
    ("GET", "/transaction"): {200, 400, 401},
    ("GET", "/transaction/{id}"): {200, 404, 401},
    ("POST", "/refund"): {200, 400, 401, 404, 503},
    ("GET", "/refund"): {200, 400, 401},
    ("GET", "/refund/{id}"): {200, 404, 401},
}


def _exercise(client: TestClient, make_client: Callable[..., TestClient]) -> None:
    """One pass over the whole Paystack surface: every success shape and every refusal it can give."""
    paystack_init(client, "OA-INIT", channels=["card", "bank"])  # 200, left abandoned
    client.post("/paystack/transaction/initialize", headers=PS, json={"email": "nope", "amount": 1})  # 400
    client.post("/paystack/transaction/initialize", headers=BAD, json={})  # 401
    client.post("/paystack/transaction/initialize", headers={**PS, "X-Sandbox-Fault": "rate_limit"}, json={})
    client.post("/paystack/transaction/initialize", headers={**PS, "X-Sandbox-Fault": "error=503"}, json={})
    for status, channel in (("success", "card"), ("failed", "ussd"), ("reversed", "bank_transfer")):
        seed(client, gateway="paystack", reference=f"OA-{status}", amount=80_000, status=status, channel=channel)
    paid = client.get("/paystack/transaction/verify/OA-success", headers=PS).json()["data"]
    for reference in ("OA-INIT", "OA-success", "OA-failed", "OA-reversed"):
        assert client.get(f"/paystack/transaction/verify/{reference}", headers=PS).status_code == 200
    client.get("/paystack/transaction/verify/OA-missing", headers=PS)  # 400
    client.get("/paystack/transaction/verify/OA-success", headers=BAD)  # 401
    client.get(f"/paystack/transaction/{paid['id']}", headers=PS)  # 200
    client.get("/paystack/transaction/1", headers=PS)  # 404
    client.get(f"/paystack/transaction/{paid['id']}", headers=BAD)  # 401
    client.get("/paystack/transaction", headers=PS)  # 200
    client.get("/paystack/transaction?perPage=2&page=2&status=success&channel=card", headers=PS)  # 200
    client.get("/paystack/transaction?status=weird", headers=PS)  # 400
    client.get("/paystack/transaction", headers=BAD)  # 401
    created = client.post("/paystack/refund", headers=PS, json={"transaction": "OA-success", "amount": 1000})
    client.post("/paystack/refund", headers=PS, data={"transaction": "OA-success", "amount": "500"})  # form, 200
    client.post("/paystack/refund", headers=PS, json={"transaction": "OA-failed"})  # 400
    client.post("/paystack/refund", headers=PS, json={"transaction": "OA-nowhere"})  # 404
    client.post("/paystack/refund", headers=BAD, json={"transaction": "OA-success"})  # 401
    refund_id = created.json()["data"]["id"]
    client.get(f"/paystack/refund/{refund_id}", headers=PS)  # 200
    client.get("/paystack/refund/1", headers=PS)  # 404
    client.get(f"/paystack/refund/{refund_id}", headers=BAD)  # 401
    client.get("/paystack/refund?perPage=1&page=1", headers=PS)  # 200
    client.get("/paystack/refund?perPage=0", headers=PS)  # 400
    client.get("/paystack/refund", headers=BAD)  # 401
    # Refunds in every state (pending, processing, processed, failed, needs-attention) fetch and list cleanly.
    for outcome in ("failed", "needs-attention"):
        client.post("/_sandbox/faults", json={"refund_outcome": outcome})
        client.post("/paystack/refund", headers=PS, json={"transaction": "OA-success", "amount": 100})
    client.post("/_sandbox/faults", json={"refund_outcome": ""})
    client.get("/paystack/refund?perPage=50", headers=PS)
    # A full refund store: 503 in Paystack's error shape.
    small = make_client(fast_config(max_refunds=1, refund_auto_advance=False))
    seed(small, gateway="paystack", reference="OA-small", amount=10_000, status="success")
    small.post("/paystack/refund", headers=PS, json={"transaction": "OA-small", "amount": 100})
    small.post("/paystack/refund", headers=PS, json={"transaction": "OA-small", "amount": 100})  # 503


def test_every_endpoint_and_status_is_validated_against_the_spec(
    client: TestClient, make_client: Callable[..., TestClient]
) -> None:
    del VALIDATED[:]
    _exercise(client, make_client)
    seen: dict[tuple[str, str], set[int]] = {}
    for method, template, status, _how in VALIDATED:
        seen.setdefault((method, template), set()).add(status)
    missing = {key: statuses - seen.get(key, set()) for key, statuses in EXPECTED.items()}
    assert not {key: gap for key, gap in missing.items() if gap}, seen
    # Documented pairs went through openapi-core; the rest through the spec's Error schema.
    how = {(m, t, s): h for m, t, s, h in VALIDATED}
    assert how[("GET", "/transaction/{id}", 200)] == "spec" and how[("POST", "/refund", 404)] == "Error"


def test_every_refund_state_fetches_in_the_spec_shape(client: TestClient) -> None:
    seed(client, gateway="paystack", reference="OA-R", amount=50_000, status="success")
    ids = []
    for outcome in ("", "failed", "needs-attention"):
        client.post("/_sandbox/faults", json={"refund_outcome": outcome})
        created = client.post("/paystack/refund", headers=PS, json={"transaction": "OA-R", "amount": 100})
        ids.append(created.json()["data"]["id"])
    del VALIDATED[:]
    for refund_id in ids:
        body = client.get(f"/paystack/refund/{refund_id}", headers=PS).json()["data"]
        assert type(body["fully_deducted"]) is int and isinstance(body["collect_account_number"], bool)
    assert [entry[3] for entry in VALIDATED] == ["spec"] * 3


def _answer(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


def test_the_validator_refuses_answers_that_break_the_spec(client: TestClient) -> None:
    """The hook can fail: a refund fetch with a null customer name, a verify without `data`."""
    seed(client, gateway="paystack", reference="OA-N", amount=50_000, status="success")
    created = client.post("/paystack/refund", headers=PS, json={"transaction": "OA-N"}).json()["data"]
    fetched = client.get(f"/paystack/refund/{created['id']}", headers=PS).json()
    fetched["data"]["customer"]["first_name"] = None
    url = f"http://sandbox.test/paystack/refund/{created['id']}"
    with pytest.raises(SpecViolation):
        validate_paystack("GET", url, 200, _answer(fetched), "application/json")
    with pytest.raises(SpecViolation):
        validate_paystack("GET", "http://sandbox.test/paystack/transaction/verify/OA-N", 200,
                          _answer({"status": True, "message": "ok"}), "application/json")
    with pytest.raises(jsonschema.ValidationError, match=r"'oops' is not one of"):
        validate_paystack("GET", url, 400, _answer({"status": False, "message": "x", "type": "oops",
                                                     "code": "x", "meta": {}}), "application/json")
