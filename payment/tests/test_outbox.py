"""The outbox: the view stores `received`, the relay publishes many per message, nothing stored is left behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.db import connection, connections, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.timeout import TimeoutHandler

from payment import outbox, q_tasks, queueing, services, sql, tasks
from payment.conf import app_settings
from payment.models import EventKind, EventStatus, Notification, Payment, PaymentStatus, WebhookEvent

from .conftest import paystack_charge, paystack_verify_answer, require_postgres, signed_post
from .test_claims import _terminate_own_backend
from .test_processing import make_payment, verify_route

pytestmark = pytest.mark.django_db(transaction=True)


def _wait(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


class Broker:
    """Records what the relay publishes; `gate` cleared makes every publish wait (a slow broker)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.gate = threading.Event()
        self.gate.set()

    def publish(self, task_name: str, *args: Any, **options: Any) -> bool:
        self.gate.wait(10)
        self.calls.append((task_name, args[0]))
        return True


@pytest.fixture
def broker(settings: Any) -> Iterator[Broker]:
    """The relay in its production mode (a thread), with the broker replaced by a recorder."""
    settings.PAYSHIFT_OUTBOX_RELAY = "thread"
    recorder = Broker()
    with mock.patch("payment.queueing._celery_publish", side_effect=recorder.publish):
        yield recorder
        recorder.gate.set()
        outbox.relay.stop()


@pytest.fixture(autouse=True)
def _relay_stopped() -> Iterator[None]:
    # The relay thread holds its own database connection: closed after each test, as at process exit.
    yield
    outbox.relay.stop()


def _post(client: Client, reference: str) -> int:
    response = signed_post(client, "paystack", paystack_charge(reference))
    assert response.json() == {"status": "stored"}
    return WebhookEvent.objects.get(reference=reference).pk


def _published(broker: Broker) -> list[int]:
    sent: list[int] = []
    for task_name, arg in list(broker.calls):
        sent += arg if task_name == "process_payment_webhooks" else [arg]
    return sent


def test_relay_thread_publishes_after_the_answer_and_leaves_the_row_to_the_worker(client: Client,
                                                                                  broker: Broker) -> None:
    event_id = _post(client, "OUT-1")
    _wait(lambda: broker.calls == [("process_payment_webhook", event_id)])
    _wait(lambda: outbox.relay.waiting() == 0)
    time.sleep(0.1)
    # No mark: the row stays `received` until a worker claims it (queueing.events_dispatch).
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.RECEIVED


def test_a_burst_is_published_in_batches_each_event_once(client: Client, broker: Broker,
                                                          settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_BATCH_SIZE = 4
    broker.gate.clear()  # the broker is slow: the burst gathers behind it
    ids = [_post(client, f"OUT-B{i}") for i in range(10)]
    broker.gate.set()
    _wait(lambda: len(_published(broker)) == 10)
    sent = _published(broker)
    for task_name, arg in broker.calls:
        assert task_name == "process_payment_webhook" or len(arg) <= 4
    assert sorted(sent) == sorted(ids)  # every event in exactly one message
    assert len(broker.calls) < len(ids)


def test_a_quiet_stream_is_published_at_once_and_a_busy_one_gathers(client: Client, broker: Broker,
                                                                    settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_LINGER_SECONDS = 2.0
    started = time.monotonic()
    first = _post(client, "OUT-L0")
    _wait(lambda: _published(broker) == [first])
    assert time.monotonic() - started < 1.5  # the relay was idle: no linger for a lone webhook
    ids = [_post(client, f"OUT-L{i}") for i in range(1, 5)]  # within a linger of that publish: busy
    _wait(lambda: len(_published(broker)) == 5)
    assert broker.calls == [("process_payment_webhook", first), ("process_payment_webhooks", ids)]


def test_a_stream_slower_than_two_events_a_linger_is_published_without_lingering(client: Client, broker: Broker,
                                                                                   settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_LINGER_SECONDS = 3.0
    first = _post(client, "OUT-S0")
    _wait(lambda: _published(broker) == [first])
    time.sleep(1.8)  # more than half the linger since the last arrival: fewer than two events a linger
    started = time.monotonic()
    second = _post(client, "OUT-S1")
    _wait(lambda: len(_published(broker)) == 2)
    assert time.monotonic() - started < 2.5  # published at once, not after a 3 s linger
    assert broker.calls == [("process_payment_webhook", first), ("process_payment_webhook", second)]


def test_the_relay_lingers_only_while_events_arrive_at_least_two_a_linger(broker: Broker, settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_LINGER_SECONDS = 0.03
    clock = [1000.0]
    relay = outbox.Relay(clock=lambda: clock[0])

    def arrive(gap: float, n: int = 1) -> None:
        for _ in range(n):
            clock[0] += gap
            relay.submit(10**9 + len(broker.calls))

    arrive(0.0)
    assert not relay.busy(0.03)  # a lone event: nothing to gather it with
    arrive(0.025, 20)  # 40 a second, in one web process: a moderate stream
    assert not relay.busy(0.03)
    arrive(0.006, 4)  # 170 a second: four events are enough to count as load
    assert relay.busy(0.03)
    arrive(0.010, 20)  # two events within each half linger: still gathering
    assert relay.busy(0.03)
    arrive(0.2)  # one pause of a fifth of a second ends it
    assert not relay.busy(0.03)
    arrive(3600.0)  # an hour's quiet counts no more than any pause: the next burst is recognised as soon
    arrive(0.003, 6)
    assert not relay.busy(0.03)
    arrive(0.003)  # the seventh
    assert relay.busy(0.03)
    relay.stop()


def test_a_full_batch_is_published_without_waiting_out_the_linger(client: Client, broker: Broker,
                                                                   settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_LINGER_SECONDS = 60.0
    settings.PAYSHIFT_OUTBOX_BATCH_SIZE = 3
    first = _post(client, "OUT-F0")  # an idle relay publishes it at once; what follows is "busy"
    _wait(lambda: _published(broker) == [first])
    started = time.monotonic()
    ids = [_post(client, f"OUT-F{i}") for i in range(1, 4)]
    _wait(lambda: len(_published(broker)) == 4)
    assert time.monotonic() - started < 30
    assert broker.calls == [("process_payment_webhook", first), ("process_payment_webhooks", ids)]


def test_nothing_is_published_for_a_rolled_back_insert(broker: Broker) -> None:
    body = paystack_charge("OUT-RB")
    from payment.gateways.base import json_dumps
    from payment.gateways.registry import gateway_get

    raw = json_dumps(body)
    headers = gateway_get("paystack").sign_webhook(raw)
    with pytest.raises(RuntimeError), transaction.atomic():
        services.webhook_receive(gateway_name="paystack", body=raw, headers=headers, source_ip="127.0.0.1")
        raise RuntimeError("the caller's transaction fails")
    time.sleep(0.2)
    assert broker.calls == [] and not WebhookEvent.objects.exists()


def test_events_a_dead_relay_held_are_published_by_the_sweep(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_RELAY = "thread"
    # The relay never gets to run: this process "dies" with the ids in memory.
    with mock.patch.object(outbox.relay, "submit"):
        event_id = _post(client, "OUT-DEAD")
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.RECEIVED
    WebhookEvent.objects.filter(pk=event_id).update(updated_at=timezone.now() - timedelta(minutes=2))
    with mock.patch("payment.queueing._celery_publish", return_value=True) as publish:
        counts = services.pending_payments_check(time_budget_seconds=5)
    assert counts["swept"] == 1
    assert publish.call_args_list == [mock.call("process_payment_webhook", event_id)]
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.QUEUED


def test_relay_publish_costs_no_statement(client: Client) -> None:
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, f"OUT-NS{i}") for i in range(3)]
    with mock.patch("payment.queueing._celery_publish", return_value=True), \
            CaptureQueriesContext(connection) as queries:
        assert queueing.events_dispatch(ids) == "celery"
    assert queries.captured_queries == []  # no mark: the row is the worker's to move on
    assert set(WebhookEvent.objects.filter(pk__in=ids).values_list("status", flat=True)) == {EventStatus.RECEIVED}


def _sweep(publish_ok: bool = True) -> tuple[int, list[Any]]:
    with mock.patch("payment.queueing._celery_publish", return_value=publish_ok) as publish:
        counts = services.pending_payments_check(time_budget_seconds=5)
    return counts["swept"], publish.call_args_list


def _age(event_id: int, seconds: float) -> None:
    WebhookEvent.objects.filter(pk=event_id).update(updated_at=timezone.now() - timedelta(seconds=seconds))


def test_published_event_is_not_swept_before_the_sweep_delay(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_RELAY = "inline"
    with mock.patch("payment.queueing._celery_publish", return_value=True):
        event_id = _post(client, "OUT-YOUNG")  # published, waiting in the broker
    _age(event_id, app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS - 5)
    assert _sweep() == (0, [])
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.RECEIVED


def test_a_published_event_the_broker_lost_is_swept_after_the_sweep_delay(client: Client, settings: Any) -> None:
    # Published, then lost before any worker took it (Redis restarted empty, a consumer's crash): the row is
    # `received` and the sweep publishes it after PAYSHIFT_SWEEP_AFTER_SECONDS (it used to be marked `queued`
    # and wait PAYSHIFT_PROCESSING_STUCK_SECONDS).
    settings.PAYSHIFT_OUTBOX_RELAY = "inline"
    with mock.patch("payment.queueing._celery_publish", return_value=True):
        event_id = _post(client, "OUT-LOST")
    _age(event_id, app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS + 1)
    assert _sweep() == (1, [mock.call("process_payment_webhook", event_id)])
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.QUEUED


@respx.mock
def test_a_backlog_older_than_the_sweep_delay_is_published_once_more_and_processed_once(
        client: Client, settings: Any) -> None:
    # The relay's message still waits in a broker's backlog when the sweep runs: the sweep cannot tell it from
    # a lost hand-off, publishes it once more and marks it `queued`; the next sweeps leave it alone, and
    # whichever message a worker takes second finds nothing to claim.
    settings.PAYSHIFT_OUTBOX_RELAY = "inline"
    make_payment("OUT-BACKLOG")
    verify_route("OUT-BACKLOG", paystack_verify_answer("OUT-BACKLOG"))
    with mock.patch("payment.queueing._celery_publish", return_value=True):
        event_id = _post(client, "OUT-BACKLOG")
    _age(event_id, app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS + 1)
    assert _sweep() == (1, [mock.call("process_payment_webhook", event_id)])
    # A minute later, still in the backlog: `queued` now waits for the stuck delay.
    _age(event_id, app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS + 1)
    assert _sweep() == (0, [])
    # The two messages reach the workers: one processes, the other is a no-op.
    results = [tasks.process_payment_webhook.apply(args=[event_id]).get() for _ in range(2)]
    assert results[0] == EventStatus.PROCESSED
    assert Payment.objects.get(reference="OUT-BACKLOG").status == PaymentStatus.SUCCESS
    assert Payment.objects.get(reference="OUT-BACKLOG").transitions.count() == 1
    assert Notification.objects.filter(payment__reference="OUT-BACKLOG").count() == 1


@respx.mock
def test_an_event_claimed_in_time_is_never_swept(client: Client, settings: Any) -> None:
    settings.PAYSHIFT_OUTBOX_RELAY = "inline"
    make_payment("OUT-TAKEN")
    verify_route("OUT-TAKEN", paystack_verify_answer("OUT-TAKEN"))
    with mock.patch("payment.queueing._celery_publish", return_value=True):
        event_id = _post(client, "OUT-TAKEN")
    assert tasks.process_payment_webhook.apply(args=[event_id]).get() == EventStatus.PROCESSED
    _age(event_id, 3600)
    assert _sweep() == (0, [])
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.PROCESSED


def test_relay_killed_after_publishing_leaves_a_row_the_sweep_still_takes(client: Client,
                                                                        broker: Broker) -> None:
    # The process dies right after the broker took the batch: nothing else was to be written, so the row is
    # as a lost hand-off leaves it, and the sweep's rule is the same.
    event_id = _post(client, "OUT-KILLED")
    _wait(lambda: _published(broker) == [event_id])
    outbox.relay.stop()
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.RECEIVED
    _age(event_id, app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS + 1)
    assert _sweep() == (1, [mock.call("process_payment_webhook", event_id)])


def test_relay_memory_is_bounded_and_the_rest_waits_for_the_sweep(broker: Broker) -> None:
    broker.gate.clear()
    with mock.patch.object(outbox, "MAX_WAITING", 3):
        outbox.relay.submit(10_001)  # taken by the thread, stuck in the slow publish
        _wait(lambda: outbox.relay.waiting() == 0)
        for event_id in range(10_002, 10_010):
            outbox.relay.submit(event_id)
        assert outbox.relay.waiting() == 3
    broker.gate.set()
    _wait(lambda: outbox.relay.waiting() == 0 and len(broker.calls) == 2)
    assert broker.calls[1] == ("process_payment_webhooks", [10_002, 10_003, 10_004])


def test_broker_down_the_batch_goes_to_django_q_as_one_task(client: Client) -> None:
    ids = []
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, f"OUT-Q{i}") for i in range(3)]
    with mock.patch("payment.queueing._celery_publish", return_value=False), \
            mock.patch("payment.queueing._django_q_enqueue", return_value=True) as enqueue:
        assert queueing.events_dispatch(ids) == "django_q"
        assert queueing.events_dispatch(ids[:1]) == "django_q"
    assert [c.args[:2] for c in enqueue.call_args_list] == [
        ("payment.q_tasks.process_payment_webhooks_q", ids), ("payment.q_tasks.process_payment_webhook_q", ids[0])]
    assert set(WebhookEvent.objects.filter(pk__in=ids).values_list("status", flat=True)) == {EventStatus.RECEIVED}


@respx.mock
def test_django_q_batch_task_processes_each_event_and_keeps_going_after_a_surprise(client: Client) -> None:
    for ref in ("OUT-DQ0", "OUT-DQ1"):
        make_payment(ref)
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, ref) for ref in ("OUT-DQ0", "OUT-DQ1")]
    verify_route("OUT-DQ1", paystack_verify_answer("OUT-DQ1"))
    real = q_tasks.process_payment_webhook_q

    def first_breaks(event_id: int, *args: Any) -> str:
        if event_id == ids[0]:
            raise RuntimeError("a bug in one event")
        return real(event_id, *args)

    with mock.patch.object(q_tasks, "process_payment_webhook_q", side_effect=first_breaks):
        assert q_tasks.process_payment_webhooks_q(ids) == {str(ids[0]): "left_for_sweep",
                                                           str(ids[1]): EventStatus.PROCESSED}
    assert Payment.objects.get(reference="OUT-DQ1").status == PaymentStatus.SUCCESS


@respx.mock
def test_django_q_batch_hands_on_what_would_outlast_the_cluster_timeout(client: Client, settings: Any) -> None:
    # The cluster ends a task at Q_CLUSTER's timeout by raising SystemExit inside it (django_q's
    # TimeoutHandler): the event being processed would stay `processing` and the rest `queued` for
    # PAYSHIFT_PROCESSING_STUCK_SECONDS, and an interruption between a sent notification and its mark would
    # send it again. Twenty slow verifications in one task outlast it where one never did.
    settings.Q_CLUSTER = {**settings.Q_CLUSTER, "timeout": 2}
    refs = [f"OUT-QT{i}" for i in range(5)]
    for ref in refs:
        make_payment(ref)
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, ref) for ref in refs]

    def slow_gateway(request: Any) -> Any:
        time.sleep(0.5)
        reference = request.url.path.rsplit("/", 1)[1]
        return httpx.Response(200, json=paystack_verify_answer(reference))

    respx.get(url__regex=r".*/transaction/verify/.*").mock(side_effect=slow_gateway)
    try:
        with mock.patch("payment.queueing._django_q_enqueue", return_value=True) as enqueue, TimeoutHandler(2):
            results = q_tasks.process_payment_webhooks_q(ids)
    except SystemExit as exc:  # what the cluster raises at its timeout
        left = dict(WebhookEvent.objects.filter(pk__in=ids).values_list("pk", "status"))
        pytest.fail(f"the cluster's timeout ended the batch ({exc}); events left: {left}")
    handed_on = [arg for call in enqueue.call_args_list for arg in call.args[1]]
    assert sorted(handed_on + [int(i) for i, r in results.items() if r == EventStatus.PROCESSED]) == ids
    assert handed_on and enqueue.call_args.args[0] == "payment.q_tasks.process_payment_webhooks_q"
    assert not WebhookEvent.objects.filter(pk__in=ids, status=EventStatus.PROCESSING).exists()


def test_no_queue_reachable_leaves_the_events_received_for_the_sweep(client: Client) -> None:
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, f"OUT-N{i}") for i in range(2)]
    with mock.patch("payment.queueing._celery_publish", return_value=False), \
            mock.patch("payment.queueing._django_q_enqueue", return_value=False):
        assert queueing.events_dispatch(ids) == "none"
    rows = WebhookEvent.objects.filter(pk__in=ids)
    assert {(r.status, r.last_error) for r in rows} == {(EventStatus.RECEIVED, "no queue reachable at dispatch")}


def test_dispatch_never_moves_an_event_a_worker_claimed_first(client: Client) -> None:
    with mock.patch.object(outbox.relay, "submit"):
        event_id = _post(client, "OUT-RACE")

    def fast_worker(task_name: str, *args: Any, **options: Any) -> bool:
        # The worker takes the message before the relay's mark runs.
        WebhookEvent.objects.filter(pk=event_id).update(status=EventStatus.PROCESSED)
        return True

    with mock.patch("payment.queueing._celery_publish", side_effect=fast_worker):
        queueing.events_dispatch([event_id])
    assert WebhookEvent.objects.get(pk=event_id).status == EventStatus.PROCESSED


@respx.mock
def test_batch_task_processes_each_event_once_and_a_redelivery_changes_nothing(client: Client) -> None:
    refs = [f"OUT-T{i}" for i in range(3)]
    for ref in refs:
        make_payment(ref)
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, ref) for ref in refs]
    for ref in refs:
        verify_route(ref, paystack_verify_answer(ref))
    assert tasks.process_payment_webhooks.apply(args=[ids]).get() == {str(i): EventStatus.PROCESSED for i in ids}
    assert set(Payment.objects.values_list("status", flat=True)) == {PaymentStatus.SUCCESS}
    notified = Notification.objects.count()
    # acks_late: a worker killed mid-batch gets the whole message again.
    assert tasks.process_payment_webhooks.apply(args=[ids]).get() == {str(i): EventStatus.PROCESSED for i in ids}
    assert Notification.objects.count() == notified == 3


@respx.mock
def test_batch_member_that_needs_a_retry_goes_on_alone_and_the_rest_is_processed(client: Client) -> None:
    for ref in ("OUT-R0", "OUT-R1"):
        make_payment(ref)
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, ref) for ref in ("OUT-R0", "OUT-R1")]
    verify_route("OUT-R0", {"status": False, "message": "unavailable"}, status=503)
    verify_route("OUT-R1", paystack_verify_answer("OUT-R1"))
    with mock.patch.object(tasks.process_payment_webhook, "apply_async") as follow_up:
        result = tasks.process_payment_webhooks.apply(args=[ids]).get()
    assert result == {str(ids[0]): "retrying", str(ids[1]): EventStatus.PROCESSED}
    # The follow-up continues the single task's schedule from its second attempt.
    assert follow_up.call_count == 1
    assert follow_up.call_args.kwargs["args"] == (ids[0],) and follow_up.call_args.kwargs["retries"] == 1
    assert WebhookEvent.objects.get(pk=ids[0]).status == EventStatus.FAILED


@respx.mock
def test_batch_member_whose_retry_cannot_be_published_is_left_for_the_sweep(client: Client) -> None:
    for ref in ("OUT-P0", "OUT-P1"):
        make_payment(ref)
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, ref) for ref in ("OUT-P0", "OUT-P1")]
    verify_route("OUT-P0", {"status": False, "message": "unavailable"}, status=503)
    verify_route("OUT-P1", paystack_verify_answer("OUT-P1"))
    with mock.patch.object(tasks.process_payment_webhook, "apply_async", side_effect=OSError("broker gone")):
        result = tasks.process_payment_webhooks.apply(args=[ids]).get()
    assert result[str(ids[1])] == EventStatus.PROCESSED
    first = WebhookEvent.objects.get(pk=ids[0])
    assert first.status == EventStatus.FAILED and first.next_attempt_at is not None  # the sweep's when it is due


@respx.mock
def test_celery_batch_keeps_going_after_one_member_s_surprise(client: Client) -> None:
    # One event's unexpected error must not fail the whole message: the members after it would sit `queued`
    # until the sweep takes them as stuck (PAYSHIFT_PROCESSING_STUCK_SECONDS, 15 minutes), as the Django Q
    # batch task already guards against.
    for ref in ("OUT-CU0", "OUT-CU1"):
        make_payment(ref)
    with mock.patch.object(outbox.relay, "submit"):
        ids = [_post(client, ref) for ref in ("OUT-CU0", "OUT-CU1")]
    verify_route("OUT-CU1", paystack_verify_answer("OUT-CU1"))
    real = services.webhook_event_process

    def first_breaks(event_id: int, **kwargs: Any) -> str:
        if event_id == ids[0]:
            raise RuntimeError("a bug in one event")
        return real(event_id, **kwargs)

    with mock.patch.object(tasks.services, "webhook_event_process", side_effect=first_breaks):
        result = tasks.process_payment_webhooks.apply(args=[ids]).get()
    assert result == {str(ids[0]): "left_for_sweep", str(ids[1]): EventStatus.PROCESSED}
    assert Payment.objects.get(reference="OUT-CU1").status == PaymentStatus.SUCCESS


def test_fast_insert_stores_what_the_orm_would(client: Client) -> None:
    fields = dict(gateway="paystack", event="charge.success", kind="charge", body=b"\x00raw\xff", headers={"a": "b"},
                  source_ip="10.1.2.3", dedupe_key="k1", reference="R", gateway_transaction_id="7", mode="test",
                  status=EventStatus.RECEIVED)
    fast = WebhookEvent(**fields)
    sql.insert_compiled(fast)
    orm = WebhookEvent(**{**fields, "dedupe_key": "k2"})
    orm.save(force_insert=True)
    skip = {"id", "dedupe_key", "received_at", "updated_at"}
    columns = [f.attname for f in WebhookEvent._meta.concrete_fields if f.attname not in skip]
    stored_fast, stored_orm = (WebhookEvent.objects.filter(pk=e.pk).values(*columns).get() for e in (fast, orm))
    assert stored_fast == stored_orm
    assert fast.pk and fast.received_at and fast.updated_at and not fast._state.adding


def test_insert_values_stores_what_the_orm_would(client: Client) -> None:
    """On the suite's database, SQLite or PostgreSQL (there with server-side binding)."""
    fields = dict(gateway="paystack", event="charge.success", kind=EventKind.CHARGE, body=b"\x00raw\xff'\\",
                  headers={"a": "b", "quote": "it's"}, source_ip="10.1.2.3", dedupe_key="k1", reference="R'; --",
                  gateway_transaction_id="7", mode="test", status=EventStatus.RECEIVED)
    with CaptureQueriesContext(connection) as queries:
        pk = sql.insert_values(WebhookEvent, fields)
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]
    orm = WebhookEvent(**{**fields, "dedupe_key": "k2"})
    orm.save(force_insert=True)
    skip = {"id", "dedupe_key", "received_at", "updated_at"}
    columns = [f.attname for f in WebhookEvent._meta.concrete_fields if f.attname not in skip]
    stored, stored_orm = (WebhookEvent.objects.filter(pk=p).values(*columns).get() for p in (pk, orm.pk))
    assert stored == stored_orm
    row = WebhookEvent.objects.get(pk=pk)
    # auto_now_add and auto_now: one timestamp for the new row; defaults for what was not given.
    assert row.received_at == row.updated_at and abs((timezone.now() - row.received_at).total_seconds()) < 60
    assert (row.attempts, row.claim_token, row.payment_id, row.processed_at) == (0, "", None, None)


def test_insert_values_duplicate_is_an_integrity_error_and_a_bad_name_a_type_error(client: Client) -> None:
    from django.db import IntegrityError

    values = dict(gateway="paystack", event="charge.success", dedupe_key="dup", body=b"x")
    sql.insert_values(WebhookEvent, values)
    with pytest.raises(IntegrityError), transaction.atomic():
        sql.insert_values(WebhookEvent, values)
    with pytest.raises(TypeError, match="payment"):
        sql.insert_values(WebhookEvent, {**values, "dedupe_key": "other", "payment": None})
    assert WebhookEvent.objects.filter(dedupe_key="dup").count() == 1


def test_insert_values_binds_on_the_server_on_postgres(client: Client) -> None:
    require_postgres()
    with connection.cursor():
        pass  # the connection is open
    threshold = connection.connection.prepare_threshold
    assert threshold is not None, "Payshift's settings prepare the compiled statements"
    for i in range(threshold + 1):
        with CaptureQueriesContext(connection) as queries:
            sql.insert_values(WebhookEvent, dict(gateway="paystack", event="charge.success", dedupe_key=f"srv-{i}",
                                                 body=b"raw-body-bytes"))
        # Logged as Django logs its own server-side binding, values composed in (DEBUG only), prepared or not.
        (query,) = queries.captured_queries
        assert query["sql"].startswith('INSERT INTO "payment_webhookevent"') and "srv-" in query["sql"]
    # What PostgreSQL holds prepared is the statement psycopg sent: placeholders, the body never quoted into it.
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s",
                       ['INSERT INTO "payment_webhookevent"%'])
        (statement,) = [row[0] for row in cursor.fetchall()]
    assert "$1" in statement and "raw-body-bytes" not in statement and "72617" not in statement
    assert bytes(WebhookEvent.objects.get(dedupe_key="srv-0").body) == b"raw-body-bytes"


def test_webhook_costs_one_statement_and_no_health_check_query(client: Client, broker: Broker) -> None:
    signed_post(client, "paystack", paystack_charge("OUT-WARM"))  # the connection is open and checked
    with mock.patch.object(outbox.relay, "submit"), \
            mock.patch.object(type(connections["default"]), "is_usable", autospec=True, return_value=True) as health, \
            CaptureQueriesContext(connection) as queries:
        assert signed_post(client, "paystack", paystack_charge("OUT-ONE")).json() == {"status": "stored"}
    assert [q["sql"].split()[0] for q in queries.captured_queries] == ["INSERT"]
    assert health.call_count == 0


def test_webhook_after_the_database_dropped_the_connection_is_stored_not_503(client: Client) -> None:
    require_postgres()
    with mock.patch.object(outbox.relay, "submit"):
        signed_post(client, "paystack", paystack_charge("OUT-PG0"))
        _terminate_own_backend()  # a database restart between two webhooks
        response = signed_post(client, "paystack", paystack_charge("OUT-PG1"))
    assert response.json() == {"status": "stored"}
    assert WebhookEvent.objects.filter(reference="OUT-PG1").count() == 1


def test_system_check_refuses_an_unknown_relay_mode(settings: Any) -> None:
    from django.core.checks import run_checks

    assert "payshift.E010" not in {m.id for m in run_checks(tags=["payshift"])}
    settings.PAYSHIFT_OUTBOX_RELAY = "threads"
    assert "payshift.E010" in {m.id for m in run_checks(tags=["payshift"])}
