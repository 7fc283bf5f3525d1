"""The worker's round trips per settled payment: the claim that returns the row, the rows born claimed, the
post-commit bookkeeping in one transaction, and a ceiling on statements that fails when one is added back."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
import respx
from django.core import mail
from django.db import connection, transaction
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from payment import services, signals
from payment.models import (
    EventStatus,
    Notification,
    NotificationKind,
    Payment,
    PaymentStatus,
    PaymentTransition,
    WebhookEvent,
)
from payment.sql import update_returning, update_returning_supported

from .conftest import paystack_charge, paystack_verify_answer, require_postgres, signed_post
from .test_processing import make_payment, verify_route

# Real commits: the post-commit hooks run as in a worker, and every COMMIT is visible to the count.
pytestmark = pytest.mark.django_db(transaction=True)

_MARKERS = ("BEGIN", "COMMIT", "ROLLBACK")

# What one settled charge costs today (bench/FINDINGS.md, "End to end"): the claim (UPDATE ... RETURNING),
# the payment; in one transaction the lock, the payment, the transition, the notification, the event; after
# commit the notification and the transition marked done. (No search for held refund events: the payment's
# refund_events_held flag, read with the lock, says whether there are any.)
MAX_STATEMENTS = 9
MAX_COMMITS = 3


def _stored_event(client: Client, reference: str) -> WebhookEvent:
    make_payment(reference)
    with mock.patch("payment.queueing.event_dispatch"):
        assert signed_post(client, "paystack", paystack_charge(reference)).status_code == 200
    return WebhookEvent.objects.get(reference=reference)


def _counts(sqls: list[str]) -> tuple[int, int]:
    """(statements, commits): a write outside BEGIN..COMMIT commits on its own (autocommit)."""
    statements = commits = 0
    in_block = False
    for sql in sqls:
        word = sql.split(None, 1)[0].upper()
        if word in _MARKERS:
            in_block = word == "BEGIN"
            commits += word == "COMMIT"
            continue
        statements += 1
        commits += not in_block and word in ("UPDATE", "INSERT", "DELETE")
    return statements, commits


@respx.mock
def test_a_settled_charge_costs_at_most_nine_statements_and_three_commits_on_postgres(client: Client) -> None:
    require_postgres()
    event = _stored_event(client, "RT-PG")
    verify_route("RT-PG", paystack_verify_answer("RT-PG"))
    with CaptureQueriesContext(connection) as captured:
        assert services.webhook_event_process(event.pk, via="celery") == EventStatus.PROCESSED
    statements, commits = _counts([q["sql"] for q in captured.captured_queries])
    listing = "\n".join(q["sql"][:120] for q in captured.captured_queries)
    assert statements <= MAX_STATEMENTS, f"{statements} statements per settled charge:\n{listing}"
    assert commits <= MAX_COMMITS, f"{commits} commits per settled charge:\n{listing}"
    # ... and all of the work was done: success, one transition with its hooks done, one delivered email.
    assert Payment.objects.get(reference="RT-PG").status == PaymentStatus.SUCCESS
    transition = PaymentTransition.objects.get(payment__reference="RT-PG")
    assert transition.hooks_done_at is not None
    note = Notification.objects.get(transition=transition)
    assert (note.kind, note.delivery_attempts) == (NotificationKind.PAYMENT_SUCCEEDED, 1)
    assert note.delivered_at is not None and len(mail.outbox) == 1


def test_update_returning_gives_the_updated_rows_with_every_field_converted(client: Client) -> None:
    """On the suite's database, SQLite or PostgreSQL (run both: DATABASE_URL set and unset)."""
    assert update_returning_supported()
    event = _stored_event(client, "RT-RET")
    before = WebhookEvent.objects.get(pk=event.pk)
    now = timezone.now()
    with CaptureQueriesContext(connection) as captured:
        rows = update_returning(WebhookEvent.objects.filter(pk=event.pk, status=EventStatus.RECEIVED),
                                status=EventStatus.PROCESSING, claim_token="tok", updated_at=now,
                                attempts=before.attempts + 1)
    assert len(captured.captured_queries) == 1 and "RETURNING" in captured.captured_queries[0]["sql"]
    (row,) = rows
    fresh = WebhookEvent.objects.get(pk=event.pk)
    for field in WebhookEvent._meta.concrete_fields:
        assert getattr(row, field.attname) == getattr(fresh, field.attname), field.name
    assert (row.status, row.claim_token, row.attempts, row.updated_at) == ("processing", "tok", 1, now)
    assert isinstance(row.headers, dict) and bytes(row.body) == bytes(before.body) and row.received_at.tzinfo
    assert not row._state.adding and row._state.db == "default"
    # Nothing matches any more (no longer received): no rows, nothing written.
    assert update_returning(WebhookEvent.objects.filter(pk=event.pk, status=EventStatus.RECEIVED),
                            claim_token="other") == []
    assert WebhookEvent.objects.get(pk=event.pk).claim_token == "tok"


@respx.mock
@pytest.mark.parametrize("returning", [True, False], ids=["update-returning", "update-then-select"])
def test_the_claim_reads_the_event_back_in_the_same_statement_or_the_old_way(client: Client,
                                                                             returning: bool) -> None:
    event = _stored_event(client, f"RT-CLAIM-{returning}")
    verify_route(f"RT-CLAIM-{returning}", paystack_verify_answer(f"RT-CLAIM-{returning}"))
    with mock.patch("payment.services.inbox.update_returning_supported", return_value=returning), \
            CaptureQueriesContext(connection) as captured:
        assert services.webhook_event_process(event.pk, via="celery", claim="tok-1") == EventStatus.PROCESSED
    first, second = (q["sql"] for q in captured.captured_queries[:2])
    assert first.startswith("UPDATE") and ("RETURNING" in first) == returning
    assert second.startswith("SELECT") and ("payment_webhookevent" in second) != returning
    row = WebhookEvent.objects.get(pk=event.pk)
    assert (row.attempts, row.claim_token, row.dispatched_via) == (1, "tok-1", "celery")
    # A second attempt finds it processed: nothing claimed, nothing returned, the status answered.
    assert services.webhook_event_process(event.pk, via="celery", claim="tok-2") == EventStatus.PROCESSED
    assert WebhookEvent.objects.get(pk=event.pk).claim_token == "tok-1"


@respx.mock
def test_one_info_line_per_processed_event(client: Client, caplog: pytest.LogCaptureFixture) -> None:
    event = _stored_event(client, "RT-LOG")
    verify_route("RT-LOG", paystack_verify_answer("RT-LOG"))
    caplog.clear()  # the web's own line ("webhook received") is not the worker's
    with caplog.at_level(logging.INFO, logger="payment"):
        services.webhook_event_process(event.pk, via="celery")
    infos = [r for r in caplog.records if r.levelno == logging.INFO and r.name.startswith("payment")]
    assert [r.getMessage() for r in infos] == ["payment transition"]
    assert infos[0].event_id == event.pk
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="payment"):  # a replay changes nothing: its own line says so
        services.webhook_event_process(event.pk, via="celery", force=True)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == ["webhook processed"]


def test_hooks_of_a_process_that_died_after_commit_run_once_when_the_sweep_takes_the_stale_claim() -> None:
    """The transition and its notification are born claimed. If the process dies after commit (its on_commit
    callback never runs), nobody else runs the hooks while the claim is fresh; the sweep runs them once it is
    stale, exactly once, counting the dead runner's attempt."""
    payment = make_payment("RT-DIED")
    calls: list[int] = []

    def receiver(sender: Any, payment: Payment, transition: PaymentTransition, **kwargs: Any) -> None:
        calls.append(transition.pk)

    # The process dies right after COMMIT: the callback that runs the hooks never runs.
    with mock.patch("payment.services.state._claimed_hooks_run"), transaction.atomic():
        transition = services.payment_transition(payment, PaymentStatus.SUCCESS, source="webhook")
    assert transition is not None
    long_ago = timezone.now() - timedelta(hours=1)
    PaymentTransition.objects.filter(pk=transition.pk).update(created_at=long_ago)
    Notification.objects.filter(transition=transition).update(created_at=long_ago)
    signals.payment_succeeded.connect(receiver)
    try:
        services.pending_payments_check(time_budget_seconds=5)
        assert mail.outbox == [] and calls == []  # the claim is fresh: its runner may still be sending
        PaymentTransition.objects.filter(pk=transition.pk).update(hooks_started_at=long_ago)
        counts = services.pending_payments_check(time_budget_seconds=5)
        services.pending_payments_check(time_budget_seconds=5)
    finally:
        signals.payment_succeeded.disconnect(receiver)
    assert counts["hooks"] == 1 and calls == [transition.pk] and len(mail.outbox) == 1
    note = Notification.objects.get(transition=transition)
    assert note.delivered_at is not None and note.delivery_attempts == 2
    assert PaymentTransition.objects.get(pk=transition.pk).hooks_done_at is not None


def test_a_connected_receiver_runs_after_the_notification_is_marked_delivered() -> None:
    """With a receiver connected the delivery is recorded before the receivers run, so a slow or crashing
    receiver cannot make the sweep send the email again."""
    payment = make_payment("RT-RECV")
    seen: list[Any] = []

    def receiver(sender: Any, payment: Payment, transition: PaymentTransition, **kwargs: Any) -> None:
        seen.append(Notification.objects.get(transition=transition).delivered_at)
        assert PaymentTransition.objects.get(pk=transition.pk).hooks_done_at is None

    signals.payment_transitioned.connect(receiver)
    try:
        with transaction.atomic():
            transition = services.payment_transition(payment, PaymentStatus.SUCCESS, source="webhook")
    finally:
        signals.payment_transitioned.disconnect(receiver)
    assert transition is not None and len(seen) == 1 and seen[0] is not None
    assert PaymentTransition.objects.get(pk=transition.pk).hooks_done_at is not None
