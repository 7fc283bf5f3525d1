"""Webhook delivery: signatures over the sent bytes, retries, logging, and the webhook fault modes."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from payshift.sandbox import create_app
from payshift.sandbox.gateways.flutterwave import DEMO_WEBHOOK_HASH as DEMO_FLUTTERWAVE_WEBHOOK_HASH
from payshift.sandbox.gateways.paystack.webhooks import paystack_signature
from payshift.sandbox.tests.conftest import (
    FW,
    PAYSTACK_KEY,
    PS,
    Receiver,
    fast_config,
    flutterwave_init,
    paystack_init,
    seed,
    wait_until,
)


def deliveries(client: TestClient, **params: str) -> list[dict[str, Any]]:
    return list(client.get("/_sandbox/deliveries", params=params).json()["deliveries"])


def test_signature_helper_matches_a_known_vector() -> None:
    body = b'{"event":"charge.success","data":{"amount":5000}}'
    assert paystack_signature(body, "sk_test_x") == hmac.new(b"sk_test_x", body, hashlib.sha512).hexdigest()


def test_non_200_is_retried_and_every_attempt_logged(client: TestClient, receiver: Receiver) -> None:
    receiver.statuses = [500, 201]  # only 200 counts as delivered, as at both gateways
    seed(client, gateway="paystack", reference="RETRY-1", amount=100, send_webhook=True)
    hooks = receiver.wait_for(3)
    assert len({h.body for h in hooks}) == 1  # a retry resends the same bytes
    assert len({h.headers["x-paystack-signature"] for h in hooks}) == 1
    log = wait_until(lambda: (rows := deliveries(client, reference="RETRY-1")) and len(rows) == 3 and rows)
    assert [(d["attempt"], d["status_code"], d["ok"]) for d in log] == [
        (1, 500, False),
        (2, 201, False),
        (3, 200, True),
    ]
    for row in log:
        assert row["url"] == "http://payshift.test/payment/webhooks/paystack/"
        assert row["event"] == "charge.success"
        assert isinstance(row["at"], str)


def test_retries_stop_after_the_configured_tries(
    make_client: Callable[..., TestClient], receiver: Receiver
) -> None:
    client = make_client(fast_config(webhook_tries=2))
    receiver.statuses = [503, 503, 503]
    seed(client, gateway="flutterwave", reference="GIVEUP-1", amount=100, send_webhook=True)
    receiver.wait_for(2)
    time.sleep(0.15)
    assert len(receiver.requests) == 2
    assert [d["attempt"] for d in deliveries(client, reference="GIVEUP-1")] == [1, 2]


def test_connection_errors_are_logged_and_retried() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    app = create_app(fast_config(), webhook_transport=httpx.MockTransport(refuse))
    with TestClient(app, base_url="http://sandbox.test") as client:
        seed(client, gateway="paystack", reference="DOWN-1", amount=100, send_webhook=True)
        log = wait_until(lambda: (rows := deliveries(client)) and len(rows) == 3 and rows)
    assert all(d["status_code"] is None and "ConnectError" in d["error"] for d in log)


@pytest.fixture
def http_receiver() -> Iterator[tuple[str, list[tuple[str, dict[str, str], bytes]]]]:
    """A real HTTP server on a free port, as Payshift's webhook endpoint would be."""
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def test_delivery_over_real_http(http_receiver: tuple[str, list[Any]]) -> None:
    base, seen = http_receiver
    app = create_app(fast_config(webhook_base_url=base))
    with TestClient(app, base_url="http://sandbox.test", follow_redirects=False) as client:
        code = paystack_init(client, "REAL-1", callback_url="https://shop.test/cb")
        client.post(f"/checkout/{code}", data={"action": "pay"})
        code = flutterwave_init(client, "REAL-2")
        client.post(f"/checkout/{code}", data={"action": "pay"})
        wait_until(lambda: len(seen) >= 2)
    by_path = {path: (headers, body) for path, headers, body in seen}
    headers, body = by_path["/payment/webhooks/paystack/"]
    assert (
        headers["x-paystack-signature"] == hmac.new(PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()
    )
    assert headers["content-type"] == "application/json"
    headers, body = by_path["/payment/webhooks/flutterwave/"]
    assert headers["verif-hash"] == DEMO_FLUTTERWAVE_WEBHOOK_HASH
    assert json.loads(body)["data"]["tx_ref"] == "REAL-2"


def test_signature_covers_non_ascii_bytes(client: TestClient, receiver: Receiver) -> None:
    seed(
        client, gateway="paystack", reference="UTF-1", amount=100, email="zoë@example.com", send_webhook=True
    )
    (hook,) = receiver.wait_for(1)
    assert "zoë".encode() in hook.body  # raw UTF-8, not \\u escapes
    assert (
        hook.headers["x-paystack-signature"]
        == hmac.new(PAYSTACK_KEY.encode(), hook.body, hashlib.sha512).hexdigest()
    )


def test_duplicate_webhooks_resend_identical_bytes(client: TestClient, receiver: Receiver) -> None:
    client.post("/_sandbox/faults", json={"duplicate_webhooks": 2})
    seed(client, gateway="paystack", reference="DUPE-1", amount=100, send_webhook=True)
    hooks = receiver.wait_for(3)
    assert len(hooks) == 3
    assert len({(h.body, h.headers["x-paystack-signature"]) for h in hooks}) == 1
    log = wait_until(lambda: (rows := deliveries(client, reference="DUPE-1")) and len(rows) == 3 and rows)
    assert sorted(d["copy"] for d in log) == [0, 1, 2]


def test_out_of_order_reverses_a_multi_webhook_checkout(client: TestClient, receiver: Receiver) -> None:
    client.post("/_sandbox/faults", json={"out_of_order": True})
    code = flutterwave_init(client, "OOO-1")
    client.post(f"/checkout/{code}", data={"action": "fail-then-pay"})
    first, second = receiver.wait_for(2)
    assert [json.loads(first.body)["data"]["status"], json.loads(second.body)["data"]["status"]] == [
        "successful",
        "failed",
    ]


def test_amount_delta_changes_the_webhook_not_verify(client: TestClient, receiver: Receiver) -> None:
    client.post("/_sandbox/faults", json={"webhook_amount_delta": -100})
    seed(client, gateway="paystack", reference="DELTA-1", amount=5000, send_webhook=True)
    seed(client, gateway="flutterwave", reference="DELTA-2", amount=5000, send_webhook=True)
    hooks = {json.loads(h.body)["event"]: json.loads(h.body)["data"] for h in receiver.wait_for(2)}
    assert hooks["charge.success"]["amount"] == 4900
    assert hooks["charge.completed"]["amount"] == 49
    assert client.get("/paystack/transaction/verify/DELTA-1", headers=PS).json()["data"]["amount"] == 5000
    fw = client.get("/flutterwave/v3/transactions/verify_by_reference?tx_ref=DELTA-2", headers=FW).json()
    assert fw["data"]["amount"] == 50


def test_webhook_delay(client: TestClient, receiver: Receiver) -> None:
    client.post("/_sandbox/faults", json={"webhook_delay_ms": 300})
    started = time.monotonic()
    seed(client, gateway="paystack", reference="SLOW-1", amount=100, send_webhook=True)
    time.sleep(0.1)
    assert receiver.requests == []
    receiver.wait_for(1)
    assert time.monotonic() - started >= 0.3


def test_webhooks_reflect_verify_amount(client: TestClient, receiver: Receiver) -> None:
    # The charged amount is what both the webhook and verify report; only the delta fault splits them.
    seed(client, gateway="paystack", reference="UNDER-1", amount=5000, verify_amount=4000, send_webhook=True)
    (hook,) = receiver.wait_for(1)
    data = json.loads(hook.body)["data"]
    assert (data["amount"], data["requested_amount"]) == (4000, 5000)
