"""Claims after a database error: released for the retry at once, or retaken by that retry's token only."""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import psycopg
import pytest
import respx
from django.db import OperationalError, close_old_connections, connection, connections
from django.test import Client
from django_q.models import Schedule

from payment import q_tasks, retries, services, tasks
from payment.models import EventStatus, Payment, PaymentStatus, WebhookEvent

from .conftest import paystack_charge, paystack_verify_answer, require_postgres, signed_post
from .test_processing import make_payment, verify_route

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _postgres() -> None:
    require_postgres()


def _event(client: Client, reference: str) -> WebhookEvent:
    make_payment(reference)
    with mock.patch("payment.queueing._celery_publish", return_value=True):
        assert signed_post(client, "paystack", paystack_charge(reference)).status_code == 200
    return WebhookEvent.objects.get(reference=reference)


def _row(event: WebhookEvent) -> WebhookEvent:
    return WebhookEvent.objects.get(pk=event.pk)


def _next_task() -> None:
    """What the worker does between tasks (payshift/celery.py): drop a connection an error broke."""
    close_old_connections()


def _terminate_own_backend() -> None:
    """What a database restart does to a worker: the server side of its connection goes away."""
    pid = connection.connection.info.backend_pid
    db = connection.settings_dict
    dsn = f"host={db['HOST'] or '127.0.0.1'} port={db['PORT'] or 5432} user={db['USER']} dbname={db['NAME']}"
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", [pid])


@pytest.fixture
def charge_handler() -> Iterator[Callable[[Callable[[WebhookEvent], str]], None]]:
    """Wrap the charge handler: `wrap(before)` runs `before(event)` ahead of the real handler, once."""
    real = services.EVENT_HANDLERS["charge"]
    calls = {"n": 0}

    def install(before: Callable[[WebhookEvent], Any]) -> None:
        def handler(event: WebhookEvent) -> str:
            calls["n"] += 1
            if calls["n"] == 1:
                before(event)
            return real(event)

        services.EVENT_HANDLERS["charge"] = handler

    yield install
    services.EVENT_HANDLERS["charge"] = real


def _fail(event: WebhookEvent) -> None:
    raise OperationalError("server closed the connection unexpectedly")


def _kill_connection(event: WebhookEvent) -> None:
    _terminate_own_backend()


@respx.mock
def test_connection_lost_after_claim_releases_it_and_the_retry_runs_at_once(client: Client,
                                                                             charge_handler: Any) -> None:
    """PostgreSQL drops the worker's connection after the claim: the release reconnects and frees the row,
    so a retry (any caller) processes it now instead of after PAYSHIFT_PROCESSING_STUCK_SECONDS."""
    event = _event(client, "CLAIM-DB-1")
    route = verify_route("CLAIM-DB-1", paystack_verify_answer("CLAIM-DB-1"))
    charge_handler(_kill_connection)
    with pytest.raises(OperationalError):
        services.webhook_event_process(event.pk, via="celery")
    _next_task()
    row = _row(event)
    assert row.status == EventStatus.FAILED, "the claim outlived the database error"
    assert "database error" in row.last_error
    assert services.webhook_event_process(event.pk, via="celery") == EventStatus.PROCESSED
    # The attempt's first statement after the claim is the lock, after its verify call (the claim brought the
    # payment's status): that attempt asked the gateway, then met the dead connection; the retry asks again.
    assert route.call_count == 2
    assert Payment.objects.get(reference="CLAIM-DB-1").status == PaymentStatus.SUCCESS


@respx.mock
def test_claim_the_database_kept_is_retaken_only_by_the_retry_holding_its_token(client: Client,
                                                                                charge_handler: Any) -> None:
    event = _event(client, "CLAIM-DB-2")
    route = verify_route("CLAIM-DB-2", paystack_verify_answer("CLAIM-DB-2"))
    charge_handler(_fail)
    with mock.patch("payment.services.inbox.event_fail", side_effect=OperationalError("the database is down")), \
            pytest.raises(OperationalError):
        services.webhook_event_process(event.pk, via="celery", claim="token-a")
    assert (_row(event).status, _row(event).claim_token) == (EventStatus.PROCESSING, "token-a")
    # Another worker (a duplicate message, the sweep's publish) must keep off a fresh claim.
    assert services.webhook_event_process(event.pk, via="celery", claim="token-x") == EventStatus.PROCESSING
    assert services.webhook_event_process(event.pk, via="celery", claim="token-y",
                                          retake="token-other") == EventStatus.PROCESSING
    assert route.call_count == 0
    # The retry of the interrupted attempt takes it back at once, and processes it.
    assert services.webhook_event_process(event.pk, via="celery", claim="token-b",
                                          retake="token-a") == EventStatus.PROCESSED
    assert route.call_count == 1


def test_a_retaken_claim_gets_a_new_token_so_a_copy_of_the_retry_stays_out(client: Client) -> None:
    event = _event(client, "CLAIM-DB-3")
    WebhookEvent.objects.filter(pk=event.pk).update(status=EventStatus.PROCESSING, claim_token="token-a")
    with mock.patch.dict(services.EVENT_HANDLERS, {"charge": _fail}), \
            mock.patch("payment.services.inbox.event_fail", side_effect=OperationalError("still down")), \
            pytest.raises(OperationalError):
        services.webhook_event_process(event.pk, via="celery", claim="token-b", retake="token-a")
    assert _row(event).claim_token == "token-b"
    # A second delivery of the same retry message carries the old token: the claim is not its to take.
    with mock.patch.dict(services.EVENT_HANDLERS, {"charge": _fail}):
        assert services.webhook_event_process(event.pk, via="celery", claim="token-c",
                                              retake="token-a") == EventStatus.PROCESSING
    assert _row(event).claim_token == "token-b"


@respx.mock
def test_celery_retry_after_a_database_error_processes_the_event_at_once(client: Client,
                                                                         charge_handler: Any) -> None:
    """End to end through the task (eager: the retry runs inline): the release fails too, and the retry
    still takes the event, because it carries the interrupted attempt's token."""
    event = _event(client, "CLAIM-CELERY")
    route = verify_route("CLAIM-CELERY", paystack_verify_answer("CLAIM-CELERY"))
    charge_handler(_fail)
    real_fail = services.inbox.event_fail
    refusals = {"n": 0}

    def release_refused_once(*args: Any, **kwargs: Any) -> None:
        refusals["n"] += 1
        if refusals["n"] == 1:  # the first attempt's release
            raise OperationalError("the database is down")
        real_fail(*args, **kwargs)

    with mock.patch("payment.services.inbox.event_fail", side_effect=release_refused_once):
        result = tasks.process_payment_webhook.apply(args=[event.pk])
    assert result.get() == EventStatus.PROCESSED
    assert route.call_count == 1
    assert _row(event).attempts == 2


@respx.mock
def test_django_q_database_error_schedules_a_retry_with_the_claim_and_never_dead(client: Client,
                                                                               charge_handler: Any) -> None:
    event = _event(client, "CLAIM-Q-1")
    route = verify_route("CLAIM-Q-1", paystack_verify_answer("CLAIM-Q-1"))
    charge_handler(_fail)
    assert q_tasks.process_payment_webhook_q(event.pk, 0) == "db_retry_scheduled"
    assert _row(event).status == EventStatus.FAILED  # released: claimable by the retry at once
    schedule = Schedule.objects.get(func="payment.q_tasks.process_payment_webhook_q")
    args = ast.literal_eval(f"({schedule.args},)")
    assert args[0] == event.pk and args[1] == 0 and isinstance(args[2], str) and args[3] == 1
    assert q_tasks.process_payment_webhook_q(*args) == EventStatus.PROCESSED  # what the cluster runs next
    assert route.call_count == 1


@respx.mock
def test_django_q_retries_in_process_when_the_database_refuses_the_schedule_too(client: Client,
                                                                               charge_handler: Any) -> None:
    event = _event(client, "CLAIM-Q-2")
    route = verify_route("CLAIM-Q-2", paystack_verify_answer("CLAIM-Q-2"))
    charge_handler(_fail)
    real_fail = services.inbox.event_fail
    refusals = {"n": 0}

    def release_refused_once(*args: Any, **kwargs: Any) -> None:
        refusals["n"] += 1
        if refusals["n"] == 1:
            raise OperationalError("the database is down")
        real_fail(*args, **kwargs)

    with mock.patch("payment.services.inbox.event_fail", side_effect=release_refused_once), \
            mock.patch("payment.queueing.event_hand_to_django_q", return_value=False) as hand, \
            mock.patch("payment.q_tasks.time.sleep") as sleep:
        assert q_tasks.process_payment_webhook_q(event.pk) == EventStatus.PROCESSED
    assert hand.call_count == 1 and sleep.call_count == 1
    assert 0 < sleep.call_args.args[0] <= q_tasks.IN_PROCESS_WAIT_MAX_SECONDS
    assert route.call_count == 1


def test_django_q_gives_up_to_the_sweep_after_the_database_retries(client: Client) -> None:
    event = _event(client, "CLAIM-Q-3")
    with mock.patch.dict(services.EVENT_HANDLERS, {"charge": _fail}):
        assert q_tasks.process_payment_webhook_q(event.pk, 0, "", retries.DB_RETRIES) == "left_for_sweep"
    row = _row(event)
    assert row.status == EventStatus.FAILED  # not dead: the sweep dispatches it again


@respx.mock
def test_a_connection_the_database_dropped_between_tasks_is_replaced_by_the_claim(client: Client) -> None:
    """No SELECT 1 before each task (CONN_HEALTH_CHECKS): the claim is the check. A database restart between
    two tasks costs a reconnect inside the next task, not a failed attempt and a retry."""
    healthy, after_restart = _event(client, "CLAIM-DB-8"), _event(client, "CLAIM-DB-9")
    for reference in ("CLAIM-DB-8", "CLAIM-DB-9"):
        verify_route(reference, paystack_verify_answer(reference))
    real_is_usable = type(connections["default"]).is_usable
    with mock.patch.object(type(connections["default"]), "is_usable", autospec=True,
                           side_effect=real_is_usable) as health:
        _next_task()
        assert services.webhook_event_process(healthy.pk, via="celery") == EventStatus.PROCESSED
        assert health.call_count == 0  # a healthy connection is never asked
        _terminate_own_backend()
        _next_task()
        assert services.webhook_event_process(after_restart.pk, via="celery") == EventStatus.PROCESSED
        assert health.call_count == 1  # asked once, after the claim failed on the dead connection
    row = _row(after_restart)
    assert (row.status, row.attempts) == (EventStatus.PROCESSED, 1)
