"""Sandbox test fixtures: an in-process app whose webhooks land in a recording fake receiver."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.exceptions import StarletteDeprecationWarning

from payshift.sandbox import SandboxConfig, create_app
from payshift.sandbox.gateways.flutterwave import DEMO_SECRET_KEY as DEMO_FLUTTERWAVE_SECRET_KEY
from payshift.sandbox.gateways.paystack import DEMO_SECRET_KEY as DEMO_PAYSTACK_SECRET_KEY
from payshift.sandbox.tests.contract import validate_paystack

with warnings.catch_warnings():
    # Starlette 1.x nudges towards httpx2 for its test client; httpx is what the project pins.
    warnings.simplefilter("ignore", StarletteDeprecationWarning)
    from starlette.testclient import TestClient


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # The sandbox tests never need Django and run with `-p no:django`; declare pyproject's
    # DJANGO_SETTINGS_MODULE key then, so pytest does not warn about an unknown option.
    if not pluginmanager.has_plugin("django"):
        parser.addini("DJANGO_SETTINGS_MODULE", "read by pytest-django when it is enabled")


PAYSTACK_KEY = DEMO_PAYSTACK_SECRET_KEY
FLUTTERWAVE_KEY = DEMO_FLUTTERWAVE_SECRET_KEY
PS = {"Authorization": f"Bearer {PAYSTACK_KEY}"}
FW = {"Authorization": f"Bearer {FLUTTERWAVE_KEY}"}


@dataclass
class Received:
    url: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Stands in for Payshift's webhook endpoints; answers from `statuses` (then 200)."""

    statuses: list[int] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.requests.append(Received(str(request.url), dict(request.headers), request.read()))
            status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        return wait_until(lambda: list(self.requests) if len(self.requests) >= count else None, timeout)


def wait_until(probe: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `probe` until it returns something truthy (background webhooks run on the app's loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def fast_config(**overrides: Any) -> SandboxConfig:
    values: dict[str, Any] = {
        "webhook_retry_delay_ms": 20,
        "refund_delay_ms": 50,
        "webhook_base_url": "http://payshift.test",
        "public_url": "http://sandbox.test",
        "seed": 1234,
    }
    values.update(overrides)
    return SandboxConfig(**values)


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def make_client(receiver: Receiver) -> Iterator[Callable[..., TestClient]]:
    """Build a client for a custom config; the `with` keeps one event loop alive for background tasks."""
    stack: list[TestClient] = []

    def build(config: SandboxConfig | None = None, *, validate: bool = True) -> TestClient:
        app = create_app(config or fast_config(), webhook_transport=httpx.MockTransport(receiver.handle))
        client = TestClient(app, base_url="http://sandbox.test", follow_redirects=False)
        if validate:
            # Every Paystack answer any sandbox test provokes is checked against Paystack's OpenAPI spec.
            client.event_hooks = {"request": [], "response": [_validate_paystack_answer]}
        client.__enter__()
        stack.append(client)
        return client

    yield build
    for client in reversed(stack):
        client.__exit__(None, None, None)


def _validate_paystack_answer(response: httpx.Response) -> None:
    if response.request.url.path.startswith("/paystack/"):
        response.read()
        validate_paystack(
            response.request.method,
            str(response.request.url),
            response.status_code,
            response.content,
            response.headers.get("content-type", ""),
        )


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


def seed(client: TestClient, **body: Any) -> dict[str, Any]:
    """Create or update a transaction through the control API."""
    response = client.post("/_sandbox/transactions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def paystack_init(client: TestClient, reference: str = "PS-REF-1", amount: int = 150050, **extra: Any) -> str:
    """Initialise a Paystack transaction; returns the access code."""
    body = {"email": "ada@example.com", "amount": amount, "reference": reference, **extra}
    response = client.post("/paystack/transaction/initialize", headers=PS, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["access_code"])


def flutterwave_init(client: TestClient, tx_ref: str = "FW-REF-1", amount: Any = 1500.5, **extra: Any) -> str:
    """Create a Flutterwave hosted link; returns its access code."""
    body = {
        "tx_ref": tx_ref,
        "amount": amount,
        "currency": "NGN",
        "redirect_url": "https://shop.test/flw/return",
        "customer": {"email": "ada@example.com", "name": "Ada Lovelace"},
        **extra,
    }
    response = client.post("/flutterwave/v3/payments", headers=FW, json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["link"].rsplit("/", 1)[1])


def is_int(value: Any) -> bool:
    return type(value) is int


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
