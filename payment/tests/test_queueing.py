"""Hand-off after commit: Celery on a real Redis, Django Q when the broker is down, the sweep when both are."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import Client
from django.utils import timezone
from django_q.models import OrmQ

from payment import health, queueing, services
from payment.conf import app_settings
from payment.models import EventStatus, WebhookEvent
from payshift import settings as settings_module
from payshift.celery import app

from .conftest import paystack_charge, redis_url, service_missing, signed_post, use_broker

pytestmark = pytest.mark.django_db(transaction=True)

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused at once


def _use_broker(url: str) -> None:
    app.conf.broker_transport_options = {"socket_connect_timeout": 1.0, "socket_timeout": 1.0,
                                         "retry_on_timeout": False}
    use_broker(url)


@pytest.fixture
def broker() -> Iterator[Any]:
    saved = (app.conf.broker_url, dict(app.conf.broker_transport_options or {}))
    yield _use_broker
    _use_broker(saved[0])
    app.conf.broker_transport_options = saved[1]


def _queue_length(url: str, queue: str = "webhooks") -> int:
    import redis

    return int(redis.Redis.from_url(url).llen(queue))


def test_dispatch_publishes_to_real_redis(client: Client, broker: Any) -> None:
    url = redis_url()
    broker(url)
    import redis

    redis.Redis.from_url(url).delete("webhooks")
    assert signed_post(client, "paystack", paystack_charge("Q-REDIS")).status_code == 200
    event = WebhookEvent.objects.get()
    assert event.status == EventStatus.RECEIVED  # published, not marked: a worker's claim moves it on
    raw = redis.Redis.from_url(url).lpop("webhooks")
    assert isinstance(raw, bytes)
    message = json.loads(raw)
    assert message["headers"]["task"] == "process_payment_webhook"
    assert f"[[{event.pk}]" in message["headers"]["argsrepr"].replace(" ", "") or \
        message["headers"]["argsrepr"] == f"[{event.pk}]"


def test_dispatch_redis_down_falls_back_to_django_q(client: Client, broker: Any) -> None:
    broker(DEAD_REDIS)
    started = time.monotonic()
    response = signed_post(client, "paystack", paystack_charge("Q-FALLBACK"))
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed < 2.5, f"answer waited {elapsed:.2f}s on a dead broker"
    event = WebhookEvent.objects.get()
    assert event.status == EventStatus.RECEIVED
    assert OrmQ.objects.count() == 1
    assert OrmQ.objects.get().task["func"] == "payment.q_tasks.process_payment_webhook_q"


def test_dispatch_both_down_leaves_event_received(client: Client, broker: Any) -> None:
    broker(DEAD_REDIS)
    with mock.patch("django_q.tasks.async_task", side_effect=OperationalError("orm broker down")):
        response = signed_post(client, "paystack", paystack_charge("Q-BOTH"))
    assert response.status_code == 200  # the event is durable: the sweep will dispatch it
    event = WebhookEvent.objects.get()
    assert event.status == EventStatus.RECEIVED
    assert "no queue reachable" in event.last_error


def test_dispatch_does_not_hang_on_blackholed_broker(client: Client, broker: Any) -> None:
    """A broker that accepts TCP and never answers: bounded by the publish timeout, then the circuit opens."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(50)
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        broker(f"redis://127.0.0.1:{port}/0")
        timings = []
        for i in range(3):
            started = time.monotonic()
            assert signed_post(client, "paystack", paystack_charge(f"Q-HOLE-{i}")).status_code == 200
            timings.append(time.monotonic() - started)
        assert timings[0] < 4.0, timings
        assert max(timings[1:]) < 0.5, f"circuit did not open: {timings}"
        assert OrmQ.objects.count() == 3
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        listener.close()


def _wait_probe_done() -> None:
    deadline = time.monotonic() + 5
    while queueing.circuit._probing and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not queueing.circuit._probing


def test_circuit_closes_again_after_cooldown_when_the_probe_reaches_the_broker(settings: Any) -> None:
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 0.2
    queueing.circuit.trip()
    assert queueing.circuit.begin() is None
    time.sleep(0.25)
    with mock.patch("payment.queueing.broker_reachable") as probe:
        assert queueing.circuit.begin() is None  # the window is over: a background probe asks, no webhook
        _wait_probe_done()
    probe.assert_called_once()
    assert queueing.circuit.begin() is not None


def test_failed_probe_keeps_the_circuit_open(settings: Any) -> None:
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 0.05
    queueing.circuit.trip()
    time.sleep(0.06)
    with mock.patch("payment.queueing.broker_reachable", side_effect=OSError("refused")):
        assert queueing.circuit.begin() is None
        _wait_probe_done()
    assert queueing.circuit.is_open()


# --- Redis down with a result backend on the same Redis (the configuration users copy) ------------------------
class RedisServer:
    """A private redis-server on a free port, so the test can kill it without touching the shared one."""

    def __init__(self, directory: Any) -> None:
        if shutil.which("redis-server") is None:
            service_missing("redis-server on the PATH")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.kill()
                    raise
                time.sleep(0.05)

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def hang(self) -> None:
        """SIGSTOP: the kernel still accepts connections, nothing ever answers (a black-holed Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _shipped_conf(broker_url: str, backend_url: str) -> dict[str, Any]:
    """What payshift/settings.py configures for this broker and result backend: the settings module is
    evaluated afresh with that environment, so the tests exercise the shipped option blocks."""
    with mock.patch.dict(os.environ, {"CELERY_BROKER_URL": broker_url, "CELERY_RESULT_BACKEND": backend_url}):
        spec = importlib.util.spec_from_file_location("_settings_with_backend", settings_module.__file__)
        assert spec is not None and spec.loader is not None
        fresh = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fresh)
    keys = ("BROKER_TRANSPORT_OPTIONS", "RESULT_BACKEND", "REDIS_SOCKET_CONNECT_TIMEOUT", "REDIS_SOCKET_TIMEOUT",
            "REDIS_RETRY_ON_TIMEOUT", "RESULT_BACKEND_ALWAYS_RETRY", "RESULT_BACKEND_TRANSPORT_OPTIONS")
    return {key.lower(): getattr(fresh, f"CELERY_{key}") for key in keys if hasattr(fresh, f"CELERY_{key}")}


_CONF_KEYS = ("broker_url", "broker_transport_options", "result_backend", "redis_socket_connect_timeout",
              "redis_socket_timeout", "redis_retry_on_timeout", "result_backend_always_retry",
              "result_backend_transport_options")


@pytest.fixture
def shipped_redis() -> Iterator[Callable[[str, str], None]]:
    """Configure the Celery app as production would for a Redis broker and result backend (dropping the
    cached backend object and pooled connections), and restore it afterwards."""
    saved = {key: app.conf.get(key) for key in _CONF_KEYS}

    def configure(broker_url: str, backend_url: str) -> None:
        app.conf.update(_shipped_conf(broker_url, backend_url))
        vars(app._local).pop("backend", None)
        use_broker(broker_url)

    yield configure
    app.conf.update(saved)
    vars(app._local).pop("backend", None)
    use_broker(saved["broker_url"])


def test_first_webhook_after_redis_dies_with_result_backend_is_fast(client: Client, settings: Any,
                                                                     shipped_redis: Any, tmp_path: Any) -> None:
    """Broker and result backend on one Redis, which then dies: no answer waits on the result backend's
    pub/sub reconnects (~19 s before the fix), the half-open probes included, and each event reaches Django Q."""
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 0.05  # every request below probes the dead broker again
    server = RedisServer(tmp_path)
    try:
        shipped_redis(server.url(0), server.url(1))
        assert signed_post(client, "paystack", paystack_charge("RB-WARM")).status_code == 200
        assert OrmQ.objects.count() == 0  # Celery took it: the pooled connections are live
        server.kill()
        timings = []
        for i in range(3):
            time.sleep(0.1)  # past the circuit window each time (a background probe asks Redis again)
            started = time.monotonic()
            assert signed_post(client, "paystack", paystack_charge(f"RB-DEAD-{i}")).status_code == 200
            timings.append(time.monotonic() - started)
            assert OrmQ.objects.count() == i + 1
        assert max(timings) < 0.5, f"an answer waited on the dead Redis: {timings}"
        # Each one went to Django Q (counted above) and stays `received` until a worker claims it.
        assert all(e.status == EventStatus.RECEIVED for e in WebhookEvent.objects.exclude(reference="RB-WARM"))
    finally:
        server.kill()


def test_readiness_probe_is_bounded_and_spares_a_dead_broker(client: Client, shipped_redis: Any,
                                                             tmp_path: Any) -> None:
    """/readyz on a dead Redis makes one connection attempt (kombu's retry would sleep 2 s first), and while
    the publish circuit is open it answers from the circuit without touching the network."""
    server = RedisServer(tmp_path)
    try:
        shipped_redis(server.url(0), server.url(1))
        services.heartbeat("django_q")  # the fallback queue is alive: ready even with the broker down
        assert client.get("/readyz").json()["parts"]["broker"]["ok"] is True
        server.kill()
        started = time.monotonic()
        answer = client.get("/readyz")
        assert time.monotonic() - started < 0.5
        assert answer.status_code == 200 and answer.json()["parts"]["broker"]["ok"] is False
        with mock.patch.object(app, "connection_for_write", side_effect=AssertionError("probed an open circuit")):
            assert client.get("/readyz").json()["parts"]["broker"]["error"] == "circuit_open"
    finally:
        server.kill()


def test_hung_redis_with_result_backend_costs_one_publish_timeout_then_nothing(
        client: Client, settings: Any, shipped_redis: Any, tmp_path: Any) -> None:
    """Redis stops answering but keeps accepting connections: the first webhook waits the publish timeout
    (PAYSHIFT_BROKER_PUBLISH_TIMEOUT), never the result backend's retries; after it, every answer is fast,
    half-open windows included (the probe runs in the background), and /readyz stays bounded too."""
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 0.05
    server = RedisServer(tmp_path)
    try:
        shipped_redis(server.url(0), server.url(1))
        assert signed_post(client, "paystack", paystack_charge("HUNG-WARM")).status_code == 200
        server.hang()
        started = time.monotonic()
        assert signed_post(client, "paystack", paystack_charge("HUNG-0")).status_code == 200
        first = time.monotonic() - started
        assert first < app_settings.PAYSHIFT_BROKER_PUBLISH_TIMEOUT + 0.5, first
        timings = []
        for i in range(1, 4):
            time.sleep(0.1)
            started = time.monotonic()
            assert signed_post(client, "paystack", paystack_charge(f"HUNG-{i}")).status_code == 200
            timings.append(time.monotonic() - started)
        assert max(timings) < 0.3, timings
        assert OrmQ.objects.count() == 4
        queueing.circuit.reset()
        started = time.monotonic()
        assert health._broker_state()["ok"] is False
        assert time.monotonic() - started < app_settings.PAYSHIFT_BROKER_PUBLISH_TIMEOUT + 0.5
    finally:
        server.kill()


# --- the circuit closes only on a publish that began after it opened -------------------------------------------
def test_slow_publish_that_began_before_a_trip_does_not_close_the_circuit(settings: Any) -> None:
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 60

    def slow_send(*args: Any, **kwargs: Any) -> None:
        queueing.circuit.trip()  # meanwhile another thread's publish failed: the broker died under us

    with mock.patch.object(app, "send_task", side_effect=slow_send) as slow:
        assert queueing._celery_publish("process_payment_webhook", 1) is True
    with mock.patch.object(app, "send_task") as send:
        assert queueing._celery_publish("process_payment_webhook", 2) is False, \
            "a publish begun before the trip closed the circuit"
    send.assert_not_called()
    assert slow.call_args.kwargs.get("ignore_result") is True  # never subscribes to a result


def test_probe_overtaken_by_a_newer_trip_leaves_the_circuit_open(settings: Any) -> None:
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 0.05
    queueing.circuit.trip()
    time.sleep(0.06)
    release = threading.Event()

    def slow_probe() -> None:
        release.wait(5)  # the broker answers, but late

    with mock.patch("payment.queueing.broker_reachable", side_effect=slow_probe):
        assert queueing.circuit.begin() is None  # starts the probe
        settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 60
        queueing.circuit.trip()  # a publish that began before the probe failed meanwhile
        release.set()
        _wait_probe_done()
    assert queueing.circuit.is_open(), "a probe older than the latest trip closed the circuit"


def test_publish_hanging_on_the_broker_sends_the_others_to_django_q() -> None:
    """A hung broker (black-holed port): while one publish waits for its timeout, the others do not queue up
    behind it for the whole timeout; they skip Celery at once, without tripping the circuit."""
    entered, release = threading.Event(), threading.Event()

    def hanging_send(*args: Any, **kwargs: Any) -> None:
        entered.set()
        release.wait(5)

    with mock.patch.object(app, "send_task", side_effect=hanging_send) as send:
        first = threading.Thread(target=queueing._celery_publish, args=("process_payment_webhook", 1))
        first.start()
        try:
            assert entered.wait(5)
            time.sleep(queueing._HANGING_AFTER_SECONDS + 0.02)
            started = time.monotonic()
            assert queueing._celery_publish("process_payment_webhook", 2) is False
            assert time.monotonic() - started < 0.05
            assert send.call_count == 1
        finally:
            release.set()
            first.join()
    assert not queueing.circuit.is_open()  # the hung publish succeeded in the end: nothing tripped
    with mock.patch.object(app, "send_task") as send:
        assert queueing._celery_publish("process_payment_webhook", 3) is True


# --- the sweep never takes over a fresh claim -----------------------------------------------------------------
def _stored_event(client: Client, reference: str) -> WebhookEvent:
    with mock.patch("payment.queueing._celery_publish", return_value=True):
        assert signed_post(client, "paystack", paystack_charge(reference)).status_code == 200
    return WebhookEvent.objects.get(reference=reference)


def test_sweep_dispatch_spares_an_event_claimed_after_the_sweep_query(client: Client, settings: Any) -> None:
    """The sweep listed a stale `processing` row; before its UPDATE, a worker claims the row afresh. The
    sweep must not move it back to `queued` (a second worker would verify it at the same time)."""
    event = _stored_event(client, "SWEEP-RACE")
    stale = timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS + 60)
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSING, updated_at=stale)
    # The sweep's query lists it here (stale); then, before its UPDATE, a redelivery claims it afresh.
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSING, updated_at=timezone.now())
    with mock.patch("payment.queueing._celery_publish") as publish:
        assert queueing.event_dispatch(event.pk, path="sweep") == "none"
    publish.assert_not_called()
    assert WebhookEvent.objects.get(pk=event.pk).status == EventStatus.PROCESSING


def test_sweep_dispatch_spares_fresh_rows_of_every_status(client: Client) -> None:
    event = _stored_event(client, "SWEEP-FRESH")
    for status in (EventStatus.RECEIVED, EventStatus.QUEUED, EventStatus.PROCESSING, EventStatus.FAILED):
        WebhookEvent.objects.filter(pk=event.pk).update(status=status, updated_at=timezone.now(),
                                                        next_attempt_at=None)
        with mock.patch("payment.queueing._celery_publish") as publish:
            assert queueing.event_dispatch(event.pk, path="sweep") == "none", status
        publish.assert_not_called()
        assert WebhookEvent.objects.get(pk=event.pk).status == status


def test_sweep_dispatch_still_takes_stale_and_due_rows(client: Client, settings: Any) -> None:
    event = _stored_event(client, "SWEEP-STALE")
    stuck = timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS + 1)
    due_cases = [{"status": EventStatus.PROCESSING, "updated_at": stuck},
                 {"status": EventStatus.RECEIVED,
                  "updated_at": timezone.now() - timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS + 1)},
                 {"status": EventStatus.UNMATCHED, "next_attempt_at": timezone.now() - timedelta(seconds=1)}]
    for fields in due_cases:
        WebhookEvent.objects.filter(pk=event.pk).update(**{"next_attempt_at": None, **fields})
        with mock.patch("payment.queueing._celery_publish", return_value=True):
            assert queueing.event_dispatch(event.pk, path="sweep") == "celery", fields
        assert WebhookEvent.objects.get(pk=event.pk).status == EventStatus.QUEUED


def test_forked_child_starts_from_a_clean_circuit() -> None:
    """A prefork child inherits the parent's bookkeeping but none of its threads: a publish or a probe the
    parent had in flight must not make the child skip Celery for ever."""
    entered, release = threading.Event(), threading.Event()

    def hanging_send(*args: Any, **kwargs: Any) -> None:
        entered.set()
        release.wait(5)

    with mock.patch.object(app, "send_task", side_effect=hanging_send):
        parent_publish = threading.Thread(target=queueing._celery_publish, args=("process_payment_webhook", 1))
        parent_publish.start()
        try:
            assert entered.wait(5)
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: no thread of the parent runs here
                time.sleep(queueing._HANGING_AFTER_SECONDS + 0.02)
                os.write(write, b"1" if queueing.circuit.begin() is not None else b"0")
                os._exit(0)
            os.close(write)
            answer = os.read(read, 1)
            os.waitpid(pid, 0)
            os.close(read)
        finally:
            release.set()
            parent_publish.join()
    assert answer == b"1", "the child saw the parent's publish as its own hung one"
