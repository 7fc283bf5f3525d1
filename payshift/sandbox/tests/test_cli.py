"""`python -m payshift.sandbox` as a real process over real HTTP, and the CLI/env configuration."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from payshift.sandbox.__main__ import build_config, parse_args
from payshift.sandbox.tests.conftest import PAYSTACK_KEY, PS

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def webhook_server() -> Iterator[tuple[int, list[tuple[str, dict[str, str], bytes]]]]:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield int(server.server_address[1]), seen
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_server_process_serves_and_stops_cleanly(
    webhook_server: tuple[int, list[Any]], stop_signal: signal.Signals
) -> None:
    hook_port, seen = webhook_server
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sandbox",
            "--port",
            str(port),
            "--webhook-base-url",
            f"http://127.0.0.1:{hook_port}",
            "--no-access-log",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=5) as http:
            deadline = time.monotonic() + 15
            while True:
                try:
                    if http.get("/_sandbox/health").json() == {"status": "ok"}:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                assert time.monotonic() < deadline, "sandbox did not start"
                time.sleep(0.05)

            init = http.post(
                "/paystack/transaction/initialize",
                headers=PS,
                json={
                    "email": "a@b.co",
                    "amount": 5000,
                    "reference": "CLI-1",
                    "callback_url": "http://shop/cb",
                },
            ).json()
            link = init["data"]["authorization_url"]
            assert link.startswith(f"{base}/checkout/")  # public URL follows --port
            paid = http.post(link, data={"action": "pay"})
            assert paid.status_code == 302
            verify = http.get("/paystack/transaction/verify/CLI-1", headers=PS)
            assert verify.status_code == 200
            assert verify.json()["data"]["status"] == "success"

            deadline = time.monotonic() + 10
            while not seen and time.monotonic() < deadline:
                time.sleep(0.05)
            path, headers, body = seen[0]
            assert path == "/payment/webhooks/paystack/"
            assert (
                headers["x-paystack-signature"]
                == hmac.new(PAYSTACK_KEY.encode(), body, hashlib.sha512).hexdigest()
            )
            assert json.loads(body)["data"]["reference"] == "CLI-1"
    finally:
        process.send_signal(stop_signal)
        try:
            code = process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
        output = process.stdout.read().decode() if process.stdout else ""
    assert code == 0, output


def test_cli_flags_override_env() -> None:
    env = {
        "SANDBOX_PAYSTACK_SECRET_KEYS": "sk_test_a, sk_live_b",
        "SANDBOX_WEBHOOK_BASE_URL": "http://env:8000/",
        "SANDBOX_ERROR_RATE": "0.25",
        "SANDBOX_WEBHOOK_TRIES": "5",
    }
    args = parse_args(
        ["--port", "9001", "--webhook-base-url", "http://flag:8000", "--latency-ms", "20", "--out-of-order"]
    )
    config = build_config(args, env)
    assert config.paystack_secret_keys == ("sk_test_a", "sk_live_b")
    assert config.webhook_base_url == "http://flag:8000"
    assert config.public_url == "http://127.0.0.1:9001"
    assert config.webhook_tries == 5
    assert (config.faults.error_rate, config.faults.latency_ms, config.faults.out_of_order) == (
        0.25,
        20,
        True,
    )
    assert config.flutterwave_webhook_hash == "payshift-demo-webhook-hash"


def test_cli_rejects_bad_fault_values() -> None:
    with pytest.raises(ValueError):
        build_config(parse_args(["--error-rate", "3"]), {})
