"""sql.Prepared: the ORM's statement compiled once and run with new values gives what the plain ORM call gives
(on the suite's database: run it with DATABASE_URL set and unset), refuses what it cannot stand for, and keeps
one compiled statement per thread's connection. The hot paths that use it still send the host's save signals."""

from __future__ import annotations

import gc
import threading
import weakref
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connection, connections, models, transaction
from django.db.models import F, OuterRef, Subquery
from django.db.models.signals import post_save
from django.db.transaction import TransactionManagementError
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from payment import services
from payment.models import (
    EventStatus,
    Notification,
    Payment,
    PaymentStatus,
    PaymentTransition,
    WebhookEvent,
)
from payment.services.state import payment_lock
from payment.sql import Prepared, Together, update_returning_supported

from .conftest import paystack_charge, require_postgres, signed_post
from .test_processing import make_payment

pytestmark = pytest.mark.django_db


def _event(reference: str, **fields: Any) -> WebhookEvent:
    return WebhookEvent.objects.create(gateway="paystack", event="charge.success", reference=reference,
                                       body=b'{"event": "charge.success"}', headers={"x": "y"},
                                       dedupe_key=f"k-{reference}", status=EventStatus.QUEUED, **fields)


_BY_REFERENCE = Prepared(Payment, "rows",
                         lambda v: Payment.objects.filter(reference=v["reference"], gateway=v["gateway"])[:1],
                         {"reference": "reference", "gateway": "gateway"})


def test_a_select_gives_the_rows_the_orm_gives_and_is_compiled_once() -> None:
    first, second = make_payment("PR-1"), make_payment("PR-2")
    with mock.patch.object(_BY_REFERENCE, "_compile", wraps=_BY_REFERENCE._compile) as compile_:
        for payment in (first, second, first):
            (row,) = _BY_REFERENCE.rows({"reference": payment.reference, "gateway": "paystack"})
            orm = Payment.objects.get(pk=payment.pk)
            for field in Payment._meta.concrete_fields:
                assert getattr(row, field.attname) == getattr(orm, field.attname), field.name
            assert not row._state.adding and row._state.db == "default"
        assert _BY_REFERENCE.rows({"reference": "PR-1", "gateway": "flutterwave"}) == []
    assert compile_.call_count <= 1  # once per connection (none if an earlier test compiled it on this one)
    # The text is the ORM's own for that queryset.
    sql, _ = Payment.objects.filter(reference="PR-1", gateway="paystack")[:1].query.sql_with_params()
    assert connections["default"].__dict__["_payshift_prepared"][_BY_REFERENCE].sql == sql


def test_update_returning_gives_the_updated_rows_with_every_field_converted() -> None:
    assert update_returning_supported()
    statement = Prepared(WebhookEvent, "update_returning", lambda v: (
        WebhookEvent.objects.filter(pk=v["pk"], status=EventStatus.QUEUED),
        {"status": EventStatus.PROCESSING, "claim_token": v["token"], "updated_at": v["now"],
         "attempts": F("attempts") + 1}), {"pk": "id", "token": "claim_token", "now": "updated_at"})
    event = _event("PR-RET")
    now = timezone.now()
    with CaptureQueriesContext(connection) as captured:
        rows = statement.rows({"pk": event.pk, "token": "tok", "now": now})
    assert len(captured.captured_queries) == 1 and "RETURNING" in captured.captured_queries[0]["sql"]
    (row,) = rows
    fresh = WebhookEvent.objects.get(pk=event.pk)
    for field in WebhookEvent._meta.concrete_fields:
        assert getattr(row, field.attname) == getattr(fresh, field.attname), field.name
    assert (row.status, row.claim_token, row.attempts, row.updated_at) == ("processing", "tok", 1, now)
    assert isinstance(row.headers, dict) and bytes(row.body) == bytes(event.body) and row.received_at.tzinfo
    # Nothing matches any more (no longer queued): no rows, nothing written.
    assert statement.rows({"pk": event.pk, "token": "other", "now": now}) == []
    assert WebhookEvent.objects.get(pk=event.pk).claim_token == "tok"


def test_an_update_puts_each_value_where_its_slot_is_none_included_and_counts_the_rows() -> None:
    statement = Prepared(Payment, "update", lambda v: (
        Payment.objects.filter(pk=v["pk"]),
        {"paid_at": v["paid_at"], "amount_paid": v["amount"], "currency_paid": v["currency"]}),
        {"pk": "id", "paid_at": "paid_at", "amount": "amount_paid", "currency": "currency_paid"})
    payment, other = make_payment("PR-UPD"), make_payment("PR-OTHER")
    when = timezone.now() - timedelta(minutes=5)
    assert statement.update({"pk": payment.pk, "paid_at": when, "amount": 1234, "currency": "GHS"}) == 1
    payment.refresh_from_db()
    assert (payment.paid_at, payment.amount_paid, payment.currency_paid) == (when, 1234, "GHS")
    assert statement.update({"pk": payment.pk, "paid_at": None, "amount": None, "currency": ""}) == 1
    payment.refresh_from_db()
    assert (payment.paid_at, payment.amount_paid, payment.currency_paid) == (None, None, "")
    assert statement.update({"pk": -1, "paid_at": None, "amount": None, "currency": ""}) == 0
    other.refresh_from_db()
    assert other.amount_paid is None and other.currency_paid == ""


def test_what_a_prepared_statement_cannot_stand_for_is_refused_not_run() -> None:
    make_payment("PR-BAD")
    ignored = Prepared(Payment, "rows", lambda v: Payment.objects.filter(reference="PR-BAD"),
                       {"reference": "reference"})
    with pytest.raises(ImproperlyConfigured, match="not parameters"):
        ignored.rows({"reference": "PR-BAD"})  # the slot would silently be a constant
    flag = Prepared(Payment, "update", lambda v: (Payment.objects.filter(pk=v["pk"]),
                                                  {"refund_events_held": v["held"]}),
                    {"pk": "id", "held": "refund_events_held"})
    with pytest.raises(ImproperlyConfigured, match="BooleanField"):
        flag.update({"pk": 1, "held": True})  # two values only: no marker could be told apart
    narrow = Prepared(Payment, "rows", lambda v: Payment.objects.filter(pk=v["pk"]).only("pk"), {"pk": "id"})
    with pytest.raises(ImproperlyConfigured, match="every concrete column"):
        narrow.rows({"pk": 1})
    with pytest.raises(TypeError):
        _BY_REFERENCE.rows({"reference": "PR-BAD"})  # a slot without a value


@pytest.mark.django_db(transaction=True)
def test_each_thread_compiles_on_its_own_connection() -> None:
    require_postgres()  # SQLite's test database is one connection shared by the threads
    payments = [make_payment(f"PR-T{i}") for i in range(4)]
    errors: list[BaseException] = []
    found: list[int] = []

    def work(payment: Payment) -> None:
        try:
            for _ in range(3):
                (row,) = _BY_REFERENCE.rows({"reference": payment.reference, "gateway": "paystack"})
                found.append(row.pk)
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=work, args=(p,)) for p in payments]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(found) == sorted(p.pk for p in payments for _ in range(3))


@pytest.mark.django_db(transaction=True)  # the test's own transaction would hide "outside a transaction"
def test_payment_lock_reads_the_row_in_a_transaction_and_refuses_to_run_outside_one() -> None:
    payment = make_payment("PR-LOCK")
    with pytest.raises(TransactionManagementError):
        payment_lock(payment.pk)
    with transaction.atomic():
        locked = payment_lock(payment.pk)
        assert (locked.pk, locked.reference, locked.status) == (payment.pk, "PR-LOCK", PaymentStatus.PENDING)
        with pytest.raises(Payment.DoesNotExist):
            payment_lock(-1)


def test_the_hot_paths_still_send_the_hosts_save_signals_when_it_listens(client: Client) -> None:
    payment = make_payment("PR-SIG")
    saved: list[tuple[type[models.Model], bool]] = []

    def receiver(sender: type[models.Model], instance: models.Model, created: bool, **kwargs: Any) -> None:
        saved.append((sender, created))

    models_ = (Payment, PaymentTransition, Notification, WebhookEvent)
    for model in models_:
        post_save.connect(receiver, sender=model)
    try:
        with transaction.atomic():
            transition = services.payment_transition(payment, PaymentStatus.SUCCESS, source="webhook")
        with mock.patch("payment.queueing.event_dispatch"):  # the webhook's INSERT, not its hand-off
            assert signed_post(client, "paystack", paystack_charge("PR-SIG")).status_code == 200
    finally:
        for model in models_:
            post_save.disconnect(receiver, sender=model)
    assert transition is not None
    assert saved == [(Payment, False), (PaymentTransition, True), (Notification, True), (WebhookEvent, True)]
    assert Payment.objects.get(pk=payment.pk).status == PaymentStatus.SUCCESS


_AMOUNT = Prepared(Payment, "update", lambda v: (Payment.objects.filter(pk=v["pk"]), {"amount_paid": v["amount"]}),
                   {"pk": "id", "amount": "amount_paid"})
_REFERENCE = Prepared(Payment, "update", lambda v: (Payment.objects.filter(pk=v["pk"]), {"reference": v["ref"]}),
                      {"pk": "id", "ref": "reference"})
_DEDUPE_KEY = Prepared(WebhookEvent, "update", lambda v: (WebhookEvent.objects.filter(pk=v["pk"]),
                                                          {"dedupe_key": v["key"]}), {"pk": "id", "key": "dedupe_key"})


def test_together_runs_two_updates_as_one_statement_on_postgres_and_both_or_neither_apply() -> None:
    payment = make_payment("PR-TG-1")
    event, taken = _event("PR-TG-E"), _event("PR-TG-TAKEN")
    both = Together(_AMOUNT, _DEDUPE_KEY)
    with CaptureQueriesContext(connection) as captured:
        both.update({"pk": payment.pk, "amount": 111}, {"pk": event.pk, "key": "k-new"})
    statements = [q["sql"] for q in captured.captured_queries if not q["sql"].startswith(("SAVEPOINT", "RELEASE"))]
    if connection.vendor == "postgresql":
        assert len(statements) == 1 and statements[0].startswith("WITH")
    else:
        assert len(statements) == 2
    assert Payment.objects.get(pk=payment.pk).amount_paid == 111
    assert WebhookEvent.objects.get(pk=event.pk).dedupe_key == "k-new"
    # The second breaks a unique constraint: the first is not applied either.
    with pytest.raises(IntegrityError), transaction.atomic():
        both.update({"pk": payment.pk, "amount": 222}, {"pk": event.pk, "key": taken.dedupe_key})
    assert Payment.objects.get(pk=payment.pk).amount_paid == 111
    with pytest.raises(ImproperlyConfigured):
        Together(_AMOUNT, _BY_REFERENCE)  # a SELECT has no place in it


def test_update_returning_also_returns_the_expressions_asked_for_none_when_they_find_nothing() -> None:
    if not update_returning_supported():
        pytest.skip("this SQLite cannot return the rows an UPDATE changed")
    payment = make_payment("PR-ALSO")
    named = Payment.objects.filter(reference=OuterRef("reference"), gateway=OuterRef("gateway"))
    statement = Prepared(WebhookEvent, "update_returning", lambda v: (
        WebhookEvent.objects.filter(pk=v["pk"]), {"attempts": F("attempts") + 1}), {"pk": "id"},
        also_return=lambda: {"seen_id": Subquery(named.values("pk")[:1]),
                             "seen_paid_at": Subquery(named.values("created_at")[:1])})
    (row,) = statement.rows({"pk": _event("PR-ALSO").pk})
    assert (row.seen_id, row.seen_paid_at, row.attempts) == (payment.pk, payment.created_at, 1)
    (row,) = statement.rows({"pk": _event("PR-NONE").pk})
    assert (row.seen_id, row.seen_paid_at) == (None, None)
    with pytest.raises(ImproperlyConfigured):
        Prepared(Payment, "rows", lambda v: Payment.objects.filter(pk=v["pk"]), {"pk": "id"},
                 also_return=lambda: {})


def test_date_time_slots_work_without_time_zone_support_too(settings: Any) -> None:
    """A host project with USE_TZ = False: the marker is naive like the values (the backends refuse the other)."""
    settings.USE_TZ = False
    statement = Prepared(Payment, "update", lambda v: (Payment.objects.filter(pk=v["pk"]),
                                                       {"paid_at": v["paid_at"]}), {"pk": "id", "paid_at": "paid_at"})
    payment = make_payment("PR-NAIVE")
    when = timezone.now().replace(microsecond=0)
    assert timezone.is_naive(when)
    assert statement.update({"pk": payment.pk, "paid_at": when}) == 1
    assert Payment.objects.filter(pk=payment.pk, paid_at=when).exists()



def test_what_would_bind_a_value_other_than_the_orm_does_is_refused() -> None:
    """Each case the ORM prepares differently from a plain value: refused at the first run, never run."""
    payment = make_payment("PR-REF")
    transformed = Prepared(Payment, "rows", lambda v: Payment.objects.filter(
        reference=v["r"], reference__startswith=v["r"]), {"r": "reference"})
    with pytest.raises(ImproperlyConfigured, match="transformed"):
        transformed.rows({"r": "PR-REF"})  # the LIKE pattern would keep the marker
    escaped = Prepared(Payment, "rows", lambda v: Payment.objects.filter(reference__iexact=v["r"]),
                       {"r": "reference"})
    if connection.vendor == "sqlite":  # SQLite's iexact is a LIKE whose value the ORM escapes
        with pytest.raises(ImproperlyConfigured, match="transformed"):
            escaped.rows({"r": "pr_ref"})
    else:  # PostgreSQL's is UPPER(...) = UPPER(%s): the value goes in as it is, as with the ORM
        assert escaped.rows({"r": "pr-ref"})[0].pk == payment.pk
        assert escaped.rows({"r": "pr_ref"}) == list(Payment.objects.filter(reference__iexact="pr_ref")) == []
    with pytest.raises(ValueError, match="IS NULL"):  # the ORM writes IS NULL there, a marker cannot
        Prepared(Payment, "rows", lambda v: Payment.objects.filter(reference=v["r"], paid_at=v["at"]),
                 {"r": "reference", "at": "paid_at"}).rows({"r": "PR-REF", "at": None})


def test_a_comparison_on_a_small_integer_column_is_kept() -> None:
    """A marker outside a 32-bit column's range would make the ORM drop `>=` (always true) or empty `=`: the
    markers stay inside it, so the comparison is compiled and applied like the ORM's."""
    event = _event("PR-INT", attempts=5)
    raise_to = Prepared(WebhookEvent, "update", lambda v: (
        WebhookEvent.objects.filter(pk=v["pk"], attempts__gte=v["n"]), {"attempts": v["n"]}),
        {"pk": "id", "n": "attempts"})
    assert raise_to.update({"pk": event.pk, "n": 9}) == 0  # 5 >= 9 is false: nothing written
    assert raise_to.update({"pk": event.pk, "n": 4}) == 1
    assert WebhookEvent.objects.get(pk=event.pk).attempts == 4
    exact = Prepared(WebhookEvent, "rows", lambda v: WebhookEvent.objects.filter(attempts=v["n"]), {"n": "attempts"})
    assert [e.pk for e in exact.rows({"n": 4})] == [event.pk]


@pytest.mark.django_db(transaction=True)
def test_the_compiled_statements_go_with_their_connection() -> None:
    """Kept on the connection object: a thread's (an ASGI request's) connection that is dropped takes its
    compiled statements along, and nothing keeps its database connection open."""
    require_postgres()  # SQLite's test database is one connection shared by the threads
    payment = make_payment("PR-GONE")
    seen: list[weakref.ref[Any]] = []

    def work(close: bool) -> None:
        assert _BY_REFERENCE.rows({"reference": payment.reference, "gateway": "paystack"})[0].pk == payment.pk
        seen.append(weakref.ref(connections["default"]))
        if close:
            connections.close_all()

    for close in (True, False, True, False):
        thread = threading.Thread(target=work, args=(close,))
        thread.start()
        thread.join()
    gc.collect()
    assert len(seen) == 4 and [ref() for ref in seen] == [None] * 4


def test_together_refuses_two_updates_of_one_table() -> None:
    """PostgreSQL applies only one of two UPDATEs of the same row in one statement."""
    with pytest.raises(ImproperlyConfigured, match="two different tables"):
        Together(_AMOUNT, _REFERENCE)


def test_the_compiled_statements_are_prepared_on_postgres_and_still_logged() -> None:
    require_postgres()
    payment = make_payment("PR-PREP-1")
    with connection.cursor():
        pass  # the connection is open
    threshold = connection.connection.prepare_threshold
    assert threshold is not None, "Payshift's settings prepare the compiled statements"
    for _ in range(threshold + 1):
        with transaction.atomic(), CaptureQueriesContext(connection) as captured:
            assert payment_lock(payment.pk).reference == "PR-PREP-1"
        (query,) = [q["sql"] for q in captured.captured_queries]
        # Logged with its value, as Django logs its own server-side binding, prepared or not (psycopg has no
        # "last query" to report for a prepared one).
        assert query.startswith("SELECT") and "FOR UPDATE" in query and str(payment.pk) in query
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any("FOR UPDATE" in s and '"payment_payment"' in s and "$1" in s for s in prepared), prepared


@pytest.mark.parametrize(("text", "threshold"), [("5", 5), ("1", 1), ("off", None), ("", None), ("None", None)])
def test_the_prepare_threshold_setting_reads_a_count_or_off(text: str, threshold: int | None) -> None:
    from payshift.settings import prepare_threshold

    assert prepare_threshold(text) == threshold


def test_a_prepare_threshold_below_one_is_refused() -> None:
    from payshift.settings import prepare_threshold

    # psycopg reads 0 as "prepare every statement at once", which is not what a count of runs means.
    with pytest.raises(ImproperlyConfigured):
        prepare_threshold("0")
    with pytest.raises(ValueError):
        prepare_threshold("often")
