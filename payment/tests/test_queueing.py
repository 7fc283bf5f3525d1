"""Hand-off after commit: Celery on a real Redis, Django Q when the broker is down, the sweep when both are."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.db import OperationalError
from django.test import Client
from django_q.models import OrmQ

from payment import queueing
from payment.models import EventStatus, WebhookEvent
from payshift.celery import app

from .conftest import paystack_charge, redis_url, signed_post, use_broker

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
    assert event.status == EventStatus.QUEUED
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
    assert event.status == EventStatus.QUEUED
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


def test_circuit_closes_again_after_cooldown(settings: Any, broker: Any) -> None:
    settings.PAYSHIFT_BROKER_CIRCUIT_SECONDS = 0.2
    queueing.circuit.trip()
    assert not queueing.circuit.allows()
    time.sleep(0.25)
    assert queueing.circuit.allows()
