"""Real processes: Celery workers on a real Redis, the Django Q cluster, PostgreSQL, and the sandbox as gateway.

These tests start `celery -A payshift worker` / `manage.py qcluster` / `python -m payshift.sandbox` as subprocesses
against the live test database, then kill and race them. They need PostgreSQL and Redis (fail under CI).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection

from payment.models import EventStatus, Notification, Payment, PaymentStatus, PaymentTransition, WebhookEvent
from payshift.celery import app

from .conftest import (
    FLW_HASH,
    FLW_KEY,
    PAYSTACK_KEY,
    paystack_charge,
    redis_url,
    require_postgres,
    signed_post,
    use_broker,
)
from .test_processing import make_payment

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Procs:
    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, cwd=ROOT, env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=20)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path: Path, settings: Any) -> Iterator[dict[str, Any]]:
    """Sandbox + environment for workers that share this test's PostgreSQL database and a clean Redis."""
    require_postgres()
    broker = redis_url()
    import redis

    redis.Redis.from_url(broker).flushdb()
    sandbox_port = free_port()
    sandbox = f"http://127.0.0.1:{sandbox_port}"
    db = connection.settings_dict
    env = {
        **os.environ,
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        "CELERY_BROKER_URL": broker,
        "CELERY_VISIBILITY_TIMEOUT": "5",
        "CELERY_UNACKED_RESTORE_INTERVAL": "2",
        "PAYSHIFT_PROCESSING_STUCK_SECONDS": "3",
        "PAYSTACK_SECRET_KEY": PAYSTACK_KEY,
        "FLUTTERWAVE_SECRET_KEY": FLW_KEY,
        "FLUTTERWAVE_WEBHOOK_HASH": FLW_HASH,
        "PAYSTACK_BASE_URL": f"{sandbox}/paystack",
        "FLUTTERWAVE_BASE_URL": f"{sandbox}/flutterwave/v3",
        "SANDBOX_PAYSTACK_SECRET_KEYS": PAYSTACK_KEY,
        "SANDBOX_FLUTTERWAVE_SECRET_KEYS": FLW_KEY,
        "SANDBOX_FLUTTERWAVE_WEBHOOK_HASH": FLW_HASH,
        "PAYSHIFT_VAR_DIR": str(tmp_path / "var"),
        "PAYMENT_LOG_FILE": str(tmp_path / "payment.log"),
        "PAYSHIFT_NOTIFICATION_CHANNELS": "",
        "Q_CLUSTER_POLL": "0.2",
        "PYTHONUNBUFFERED": "1",
    }
    settings.PAYSTACK_BASE_URL = env["PAYSTACK_BASE_URL"]
    settings.FLUTTERWAVE_BASE_URL = env["FLUTTERWAVE_BASE_URL"]
    from payment.gateways.registry import registry_reset

    registry_reset()
    procs = Procs(env, tmp_path)
    procs.start("sandbox", [sys.executable, "-m", "payshift.sandbox", "--port", str(sandbox_port),
                            "--webhook-base-url", "http://127.0.0.1:9"])
    wait_for(lambda: _up(f"{sandbox}/_sandbox/health"), 20, "the sandbox")
    use_broker(broker)
    try:
        yield {"env": env, "sandbox": sandbox, "procs": procs, "logs": tmp_path}
    finally:
        procs.stop_all()
        use_broker(settings.CELERY_BROKER_URL)


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def seed(sandbox: str, reference: str, *, amount: int = 500000, status: str = "success") -> int:
    answer = httpx.post(f"{sandbox}/_sandbox/transactions", json={
        "gateway": "paystack", "reference": reference, "amount": amount, "currency": "NGN", "status": status,
        "email": "ada@example.com", "mode": "test"}, timeout=5)
    answer.raise_for_status()
    return int(answer.json()["id"])


def faults(sandbox: str, **values: Any) -> None:
    httpx.post(f"{sandbox}/_sandbox/faults", json=values, timeout=5).raise_for_status()


def worker(stack: dict[str, Any], name: str, **env: str) -> subprocess.Popen[bytes]:
    return stack["procs"].start(name, [str(BIN / "celery"), "-A", "payshift", "worker", "-l", "info",
                                       "--concurrency", "1", "-n", f"{name}@%h", "--without-gossip",
                                       "--without-mingle", "--without-heartbeat"], **env)


def event_status(event_id: int) -> str:
    return WebhookEvent.objects.values_list("status", flat=True).get(pk=event_id)


def test_real_worker_processes_webhook_from_redis(client: Any, stack: dict[str, Any]) -> None:
    payment = make_payment("W-REAL")
    tx_id = seed(stack["sandbox"], "W-REAL")
    worker(stack, "w1")
    assert signed_post(client, "paystack", paystack_charge("W-REAL", tx_id=tx_id)).status_code == 200
    event = WebhookEvent.objects.get(reference="W-REAL")
    wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSED, 60, "the worker to process the event")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert WebhookEvent.objects.get(pk=event.pk).dispatched_via == "celery"
    assert Notification.objects.filter(payment=payment).count() == 1


def test_worker_killed_mid_task_event_still_processed_once(client: Any, stack: dict[str, Any]) -> None:
    payment = make_payment("W-KILL")
    tx_id = seed(stack["sandbox"], "W-KILL")
    faults(stack["sandbox"], latency_ms=4000)  # hold the task inside the verify call
    first = worker(stack, "victim")
    assert signed_post(client, "paystack", paystack_charge("W-KILL", tx_id=tx_id)).status_code == 200
    event = WebhookEvent.objects.get(reference="W-KILL")
    wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSING, 60, "the task to start")
    stack["procs"].kill(first)  # SIGKILL the whole worker: no ack was sent
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.PENDING
    faults(stack["sandbox"], latency_ms=0)
    worker(stack, "rescuer")  # acks_late: Redis hands the unacknowledged message out again
    wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSED, 90, "redelivery after the kill")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert PaymentTransition.objects.filter(payment=payment).count() == 1
    assert Notification.objects.filter(payment=payment).count() == 1
    assert WebhookEvent.objects.get(pk=event.pk).attempts >= 2


def test_two_workers_same_event_at_once_one_transition(client: Any, stack: dict[str, Any]) -> None:
    payment = make_payment("W-RACE")
    tx_id = seed(stack["sandbox"], "W-RACE")
    faults(stack["sandbox"], latency_ms=1500)  # both workers sit in verify at the same time
    worker(stack, "racer1")
    worker(stack, "racer2")
    assert signed_post(client, "paystack", paystack_charge("W-RACE", tx_id=tx_id)).status_code == 200
    event = WebhookEvent.objects.get(reference="W-RACE")
    app.send_task("process_payment_webhook", args=[event.pk])  # a second delivery of the same task
    wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSED, 60, "processing")
    time.sleep(3)  # let the second worker finish its verify and lose the race
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert PaymentTransition.objects.filter(payment=payment).count() == 1
    assert Notification.objects.filter(payment=payment).count() == 1


def test_redis_down_django_q_cluster_settles_payment(client: Any, stack: dict[str, Any]) -> None:
    dead = "redis://127.0.0.1:1/0"
    use_broker(dead)
    payment = make_payment("W-QONLY")
    tx_id = seed(stack["sandbox"], "W-QONLY")
    stack["procs"].start("qcluster", [sys.executable, "manage.py", "qcluster"], CELERY_BROKER_URL=dead)
    assert signed_post(client, "paystack", paystack_charge("W-QONLY", tx_id=tx_id)).status_code == 200
    event = WebhookEvent.objects.get(reference="W-QONLY")
    wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSED, 90, "the Django Q cluster")
    payment.refresh_from_db()
    assert payment.status == PaymentStatus.SUCCESS
    assert WebhookEvent.objects.get(pk=event.pk).dispatched_via == "django_q"
    assert Notification.objects.filter(payment=payment).count() == 1


def test_underpaid_through_real_worker_never_succeeds(client: Any, stack: dict[str, Any]) -> None:
    payment = make_payment("W-UNDER")
    tx_id = seed(stack["sandbox"], "W-UNDER", amount=250000)
    worker(stack, "w1")
    assert signed_post(client, "paystack", paystack_charge("W-UNDER", tx_id=tx_id)).status_code == 200
    event = WebhookEvent.objects.get(reference="W-UNDER")
    wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSED, 60, "processing")
    payment.refresh_from_db()
    assert (payment.status, payment.review_reason) == (PaymentStatus.REVIEW, "amount_mismatch")


def rabbitmq_url() -> str:
    url = os.environ.get("PAYSHIFT_TEST_RABBITMQ_URL", "")
    if not url:
        from .conftest import service_missing

        service_missing("RabbitMQ (PAYSHIFT_TEST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672//)")
    return url


def test_real_worker_on_rabbitmq(client: Any, stack: dict[str, Any]) -> None:
    """The same pipeline with RabbitMQ as the broker: publish confirms on, a real worker consumes."""
    url = rabbitmq_url()
    saved_options = dict(app.conf.broker_transport_options or {})
    app.conf.broker_transport_options = {"confirm_publish": True}
    use_broker(url)
    try:
        with app.connection_for_write() as conn:
            for queue in app.conf.task_queues:
                queue.bind(conn.default_channel).declare()
                queue.bind(conn.default_channel).purge()
        payment = make_payment("W-AMQP")
        tx_id = seed(stack["sandbox"], "W-AMQP")
        worker(stack, "rabbit", CELERY_BROKER_URL=url)
        assert signed_post(client, "paystack", paystack_charge("W-AMQP", tx_id=tx_id)).status_code == 200
        event = WebhookEvent.objects.get(reference="W-AMQP")
        wait_for(lambda: event_status(event.pk) == EventStatus.PROCESSED, 60, "the RabbitMQ worker")
        payment.refresh_from_db()
        assert payment.status == PaymentStatus.SUCCESS
        assert WebhookEvent.objects.get(pk=event.pk).dispatched_via == "celery"
    finally:
        app.conf.broker_transport_options = saved_options
