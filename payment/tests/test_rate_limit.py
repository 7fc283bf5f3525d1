"""The client-side rate limit per gateway, and a 429's Retry-After, against respx and the in-process sandbox."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
import respx
from django.core.exceptions import ImproperlyConfigured

from payment.conf import app_settings
from payment.gateways import base
from payment.gateways.base import TransientGatewayError, json_dumps
from payment.gateways.ratelimit import RateLimiter, limit_for, limiter_for
from payment.gateways.registry import gateway_get
from payshift.sandbox import SandboxConfig, create_app
from payshift.sandbox.ratelimit import KeyBuckets, RateLimit

from .conftest import FLW_HASH, FLW_KEY, PAYSTACK_API, PAYSTACK_KEY, paystack_verify_answer

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # Starlette nudges towards httpx2 for its test client
    from starlette.testclient import TestClient


class _Clock:
    """A fake monotonic clock whose sleep moves it on, so a limiter's schedule is exact and instant."""

    def __init__(self) -> None:
        self.now = 100.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def test_a_burst_is_spread_to_the_rate_after_the_allowed_burst() -> None:
    clock = _Clock()
    limiter = RateLimiter(10, 3, clock=clock, sleep=clock.sleep)
    waits = [limiter.acquire(max_wait=60) for _ in range(8)]
    assert waits[:3] == [0.0, 0.0, 0.0]  # the burst goes at once
    assert all(wait == pytest.approx(0.1) for wait in waits[3:] if wait is not None)  # then one per 1/rate
    assert clock.now == pytest.approx(100.5)


def test_a_slot_further_than_max_wait_is_refused_and_not_reserved() -> None:
    clock = _Clock()
    limiter = RateLimiter(1, 1, clock=clock, sleep=clock.sleep)
    assert limiter.acquire(max_wait=0.5) == 0.0
    assert limiter.acquire(max_wait=0.5) is None  # due in 1 s
    clock.now += 1.0
    assert limiter.acquire(max_wait=0.5) == 0.0  # the refusal took nothing


def test_pause_holds_every_later_call_back_then_resumes_at_the_rate() -> None:
    clock = _Clock()
    limiter = RateLimiter(10, 5, clock=clock, sleep=clock.sleep)
    limiter.pause(2.0)
    assert limiter.acquire(max_wait=60) == pytest.approx(2.0)
    assert limiter.acquire(max_wait=60) == pytest.approx(0.1)  # no burst straight after a 429


@pytest.mark.parametrize(("value", "expected"), [
    ("40", {"*": 40.0}), (25, {"*": 25.0}), ("0", {"*": 0.0}),
    ("paystack=40, flutterwave=12.5", {"paystack": 40.0, "flutterwave": 12.5}),
    ("40,flutterwave=10", {"*": 40.0, "flutterwave": 10.0}), ({"paystack": 5}, {"paystack": 5.0}),
])
def test_the_setting_reads_one_rate_or_one_per_gateway(settings: Any, value: Any, expected: dict[str, float]) -> None:
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = value
    assert expected == app_settings.PAYSHIFT_GATEWAY_RATE_LIMIT


@pytest.mark.parametrize("value", ["fast", "-1", "paystack=inf", "paystack=nan"])
def test_the_setting_refuses_what_is_not_a_rate(settings: Any, value: str) -> None:
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = value
    with pytest.raises(ImproperlyConfigured):
        _ = app_settings.PAYSHIFT_GATEWAY_RATE_LIMIT


def test_each_gateway_has_its_own_limiter_and_zero_means_none(settings: Any) -> None:
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "30,flutterwave=0"
    paystack = limiter_for("paystack")
    assert paystack is not None and paystack.per_s == 30 and limiter_for("paystack") is paystack
    assert limiter_for("flutterwave") is None
    assert limit_for("acme", app_settings.PAYSHIFT_GATEWAY_RATE_LIMIT) == 30
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "60"
    changed = limiter_for("paystack")
    assert changed is not paystack and changed is not None and changed.per_s == 60


def _verify_answer(request: httpx.Request) -> httpx.Response:
    reference = request.url.path.rsplit("/", 1)[-1]
    return httpx.Response(200, content=json_dumps(paystack_verify_answer(reference, status="ongoing")))


def _burst(threads: int, calls: int) -> int:
    """`threads` threads make `calls` verify calls each; the number that failed as transient."""
    gateway = gateway_get("paystack")

    def run(n: int) -> int:
        failed = 0
        for i in range(calls):
            try:
                gateway.verify_transaction(reference=f"BURST-{n}-{i}")
            except TransientGatewayError:
                failed += 1
        return failed

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(run, range(threads)))


@respx.mock
@pytest.mark.parametrize("client_limit", ["25", "0"])
def test_a_threaded_burst_stays_under_a_gateway_that_enforces_its_limit(settings: Any, client_limit: str) -> None:
    """The sandbox's own bucket (50/s, bursts of 5) stands for the gateway; 8 threads verify 6 payments each.
    The default client limit is half the gateway's: a busy machine delays some calls after their slot."""
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = client_limit
    enforced = KeyBuckets(RateLimit(per_s=50, burst=5))
    refused: list[int] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        wait = enforced.retry_after(request.headers["authorization"])
        if wait is not None:
            refused.append(wait)
            return httpx.Response(429, headers={"Retry-After": "0"}, content=b'{"status":false}')
        return _verify_answer(request)

    respx.get(url__regex=rf"{PAYSTACK_API}/transaction/verify/BURST-.*").mock(side_effect=gateway)
    started = time.monotonic()
    failed = _burst(threads=8, calls=6)
    if client_limit == "0":
        assert refused  # a client that ignores the limit is caught...
    else:
        assert refused == [] and failed == 0  # ...one that keeps it never meets a 429
        assert time.monotonic() - started >= (48 - 3) / 25 * 0.95  # 48 calls at 25/s after a burst of 3


@pytest.fixture
def rate_limited_sandbox() -> Iterator[TestClient]:
    """The sandbox app in-process, one Paystack call a second per key; the gateway's client talks to it."""
    config = SandboxConfig(paystack_secret_keys=(PAYSTACK_KEY,), flutterwave_secret_keys=(FLW_KEY,),
                           flutterwave_webhook_hash=FLW_HASH, webhook_base_url="http://payshift.test",
                           public_url="http://sandbox.test", rate_limit_per_s=1, rate_limit_burst=1)
    with TestClient(create_app(config), base_url="http://sandbox.test/paystack/") as client:
        gateway_get("paystack")._http = client
        yield client


@pytest.mark.parametrize("client_limit", ["0", "40"])
def test_a_429_from_the_sandbox_is_retried_after_its_retry_after(settings: Any, rate_limited_sandbox: TestClient,
                                                                 client_limit: str) -> None:
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = client_limit
    gateway = gateway_get("paystack")
    gateway._http = rate_limited_sandbox
    seen: list[int] = []
    rate_limited_sandbox.event_hooks = {"request": [], "response": [lambda r: seen.append(r.status_code)]}
    with pytest.raises(base.NotFoundAtGatewayError):
        gateway.verify_transaction(reference="RA-1")  # takes the key's only token
    started = time.monotonic()
    with pytest.raises(base.NotFoundAtGatewayError):
        gateway.verify_transaction(reference="RA-2")  # 429, Retry-After: 1, then served
    assert seen == [400, 429, 400]
    assert time.monotonic() - started >= 0.9


@respx.mock
def test_a_429_that_keeps_coming_is_a_transient_error_never_sent(settings: Any) -> None:
    route = respx.get(f"{PAYSTACK_API}/transaction/verify/RA-3").mock(return_value=httpx.Response(
        429, headers={"Retry-After": "0"}, content=b'{"status":false,"message":"Rate limit exceeded!"}'))
    with pytest.raises(TransientGatewayError) as raised:
        gateway_get("paystack").verify_transaction(reference="RA-3")
    assert route.call_count == base.RATE_LIMITED_TRIES
    error = raised.value
    assert error.http_status == 429 and not error.request_sent and error.retry_after == 0
    assert error.refused  # certainly not acted on: a refund may be re-sent


@respx.mock
def test_a_long_retry_after_fails_fast_and_holds_the_process_back(settings: Any) -> None:
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "40"
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)
    route = respx.get(f"{PAYSTACK_API}/transaction/verify/RA-4").mock(return_value=httpx.Response(
        429, headers={"Retry-After": later}, content=b'{"status":false,"message":"Rate limit exceeded!"}'))
    gateway = gateway_get("paystack")
    started = time.monotonic()
    with pytest.raises(TransientGatewayError) as raised:
        gateway.verify_transaction(reference="RA-4")
    assert route.call_count == 1 and 100 < (raised.value.retry_after or 0) <= 120
    # Every call of this process now waits for the gateway's time; past the call's own bound it is not sent.
    with pytest.raises(TransientGatewayError, match="client rate limit") as throttled:
        gateway.verify_transaction(reference="RA-4")
    assert route.call_count == 1 and not throttled.value.request_sent
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("header", "expected"), [("3", 3.0), ("0.5", 0.5), (None, 1.0), ("soon", 1.0),
                                                  ("-2", 0.0), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0)])
def test_retry_after_is_read_as_seconds_or_a_date(header: str | None, expected: float) -> None:
    assert base._retry_after_seconds(header) == expected


@respx.mock
def test_a_very_long_retry_after_holds_the_process_back_a_bounded_time(settings: Any) -> None:
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "40"
    respx.get(f"{PAYSTACK_API}/transaction/verify/RA-9").mock(return_value=httpx.Response(
        429, headers={"Retry-After": "3600"}, content=b'{"status":false,"message":"Rate limit exceeded!"}'))
    gateway = gateway_get("paystack")
    with pytest.raises(TransientGatewayError) as raised:
        gateway.verify_transaction(reference="RA-9")
    assert raised.value.retry_after == 3600  # the caller's retry schedule still learns the gateway's answer
    limiter = limiter_for("paystack")
    assert limiter is not None
    # The next call of this process is due within the hold's bound, not in an hour.
    due_in = limiter._due - time.monotonic()
    assert base.RETRY_AFTER_HOLD_MAX_SECONDS - 5 < due_in <= base.RETRY_AFTER_HOLD_MAX_SECONDS + 1


# --- the queues' retries wait at least what a 429 asked -------------------------------------------------------
def test_each_retry_schedule_waits_at_least_the_gateways_retry_after_within_its_own_maximum() -> None:
    from payment import retries

    celery_max, q_max = app_settings.PAYSHIFT_CELERY_RETRY_MAX_SECONDS, app_settings.PAYSHIFT_Q_RETRY_MAX_SECONDS
    for _ in range(20):  # the backoff's jitter: every draw
        assert 120 <= retries.celery_gateway_retry(0, retry_after=120).delay <= celery_max
        assert retries.celery_gateway_retry(0, retry_after=10_000).delay <= celery_max  # an hour asked: capped
        assert retries.celery_gateway_retry(0).delay <= app_settings.PAYSHIFT_CELERY_RETRY_BASE_SECONDS
        assert 90 <= retries.refund_retry_delay(0, retry_after=90) <= celery_max
        assert 600 <= retries.django_q_gateway_retry(0, retry_after=600).delay <= q_max
        handed = retries.celery_gateway_retry(app_settings.PAYSHIFT_CELERY_MAX_RETRIES, retry_after=900)
        assert handed.action == "hand_over" and 900 <= handed.delay <= q_max


def test_a_celery_retry_after_a_429_is_scheduled_no_sooner_than_it_asked() -> None:
    from unittest import mock

    from payment import services, tasks

    countdowns: list[float] = []

    def again(kwargs: dict[str, Any], countdown: float, exc: Exception) -> Any:
        countdowns.append(countdown)
        raise RuntimeError("retried")

    limited = TransientGatewayError("paystack verify: HTTP 429", request_sent=False, http_status=429,
                                    retry_after=45.0)
    with mock.patch.object(services, "webhook_event_process", side_effect=limited), \
            mock.patch.object(services, "event_schedule_retry"), pytest.raises(RuntimeError, match="retried"):
        tasks._webhook_attempt(1, retake="", retries_done=0, again=again)
    assert len(countdowns) == 1 and 45.0 <= countdowns[0] <= app_settings.PAYSHIFT_CELERY_RETRY_MAX_SECONDS


def test_threads_that_start_together_share_one_http_client() -> None:
    from unittest import mock

    gateway = type(gateway_get("paystack"))()  # a fresh instance: no client yet
    real = httpx.Client
    made: list[httpx.Client] = []

    def slow_client(*args: Any, **kwargs: Any) -> httpx.Client:
        time.sleep(0.05)  # widen the window in which a second thread would make its own
        made.append(real(*args, **kwargs))
        return made[-1]

    with mock.patch("payment.gateways.base.httpx.Client", side_effect=slow_client), \
            ThreadPoolExecutor(max_workers=8) as pool:
        clients = list(pool.map(lambda _: gateway._client(), range(8)))
    assert len(made) == 1 and all(c is made[0] for c in clients)
    made[0].close()
