"""check_pending_payments with overlapping verifications, against the real PostgreSQL (threads, own connections)."""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from typing import Any
from unittest import mock

import httpx
import pytest
import respx
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from payment import services
from payment.conf import app_settings
from payment.gateways.base import json_dumps
from payment.models import Payment, PaymentStatus, PaymentTransition
from payment.services import reconciliation
from payment.services.state import payment_lock

from .conftest import PAYSTACK_API, paystack_verify_answer, require_postgres

VERIFY = re.compile(rf"{re.escape(PAYSTACK_API)}/transaction/verify/(?P<ref>[^/?]+)")


def _payment(reference: str, *, age_s: int = 3600, last_verified_s: int | None = None,
             status: str = PaymentStatus.PENDING) -> Payment:
    payment = Payment.objects.create(reference=reference, gateway="paystack", amount=500000, currency="NGN",
                                     mode="test", status=status, customer_email="ada@example.com")
    last = timezone.now() - timedelta(seconds=last_verified_s) if last_verified_s is not None else None
    Payment.objects.filter(pk=payment.pk).update(created_at=timezone.now() - timedelta(seconds=age_s),
                                                 last_verified_at=last)
    return payment


class _Gateway:
    """A respx side effect that answers per reference prefix and records what overlapped."""

    def __init__(self, delay_s: float = 0.02) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls: list[str] = []
        self.threads: set[int] = set()

    def __call__(self, request: httpx.Request, ref: str) -> httpx.Response:
        reference = ref  # the URL's named group, passed by respx
        with self.lock:
            self.calls.append(reference)
            self.threads.add(threading.get_ident())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay_s)
            if reference.startswith("PAID"):
                return httpx.Response(200, content=json_dumps(paystack_verify_answer(reference)))
            if reference.startswith("GONE"):
                return httpx.Response(200, content=json_dumps(paystack_verify_answer(reference, status="abandoned")))
            if reference.startswith("DOWN"):
                return httpx.Response(503, content=b'{"status":false,"message":"down"}')
            if reference.startswith("WAIT"):
                return httpx.Response(200, content=json_dumps(paystack_verify_answer(reference, status="ongoing")))
            return httpx.Response(400, content=b'{"status":false,"message":"Transaction reference not found"}')
        finally:
            with self.lock:
                self.in_flight -= 1


def _connections() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


@pytest.mark.django_db(transaction=True)
@respx.mock
def test_overlapping_verifications_apply_each_answer_once_and_close_their_connections(settings: Any) -> None:
    require_postgres()
    settings.PAYSHIFT_RECONCILE_CONCURRENCY = 4
    settings.PAYSHIFT_RECONCILE_BATCH_SIZE = 7
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "0"
    ttl = app_settings.PAYSHIFT_PENDING_TTL_SECONDS
    refs = ([f"PAID-{i}" for i in range(8)] + [f"WAIT-{i}" for i in range(8)] + [f"DOWN-{i}" for i in range(4)]
            + [f"NEW-{i}" for i in range(8)])
    for reference in refs:
        _payment(reference)
    young_gone, old_gone, old_unknown = _payment("GONE-young"), _payment("GONE-old", age_s=ttl + 60), \
        _payment("UNKNOWN-old", age_s=ttl + 60)
    gateway = _Gateway()
    respx.get(url__regex=VERIFY.pattern).mock(side_effect=gateway)
    before = _connections()

    counts = services.pending_payments_check(time_budget_seconds=30)

    total = len(refs) + 3
    assert sorted(gateway.calls) == sorted([*refs, "GONE-young", "GONE-old", "UNKNOWN-old"])  # each asked once
    assert gateway.max_in_flight > 1 and len(gateway.threads) > 1  # the calls overlapped
    assert counts["verified"] == total - 4 and counts["errors"] == 4
    assert counts["expired"] == 2  # GONE-old and UNKNOWN-old, past the TTL
    assert Payment.objects.filter(reference__startswith="PAID", status=PaymentStatus.SUCCESS).count() == 8
    assert PaymentTransition.objects.filter(payment__reference__startswith="PAID").count() == 8
    assert Payment.objects.filter(reference__regex=r"^(WAIT|DOWN|NEW)", status=PaymentStatus.PENDING).count() == 20
    young_gone.refresh_from_db()
    old_gone.refresh_from_db()
    old_unknown.refresh_from_db()
    assert young_gone.status == PaymentStatus.PENDING  # before the TTL, only good news is applied
    assert old_gone.status == PaymentStatus.ABANDONED and old_unknown.status == PaymentStatus.ABANDONED
    assert Payment.objects.filter(last_verified_at__isnull=True).count() == 0
    # Every reconcile thread closed its own connection when the run ended.
    assert _connections() <= before

    # A second run right away finds nothing due (every row's check was recorded, errors included).
    gateway.calls.clear()
    again = services.pending_payments_check(time_budget_seconds=30)
    assert again["verified"] == 0 and again["errors"] == 0 and gateway.calls == []


@pytest.mark.django_db(transaction=True)
@respx.mock
def test_overlapping_batches_keep_oldest_check_first(settings: Any) -> None:
    require_postgres()
    settings.PAYSHIFT_RECONCILE_CONCURRENCY = 4
    settings.PAYSHIFT_RECONCILE_BATCH_SIZE = 4
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "0"
    never = [f"NEW-{i}" for i in range(4)]
    oldest = [f"OLD-{i}" for i in range(4)]
    recent = [f"RECENT-{i}" for i in range(4)]
    for reference in recent:
        _payment(reference, last_verified_s=1000)
    for reference in oldest:
        _payment(reference, last_verified_s=5000)
    for reference in never:
        _payment(reference)
    gateway = _Gateway(delay_s=0.01)
    respx.get(url__regex=VERIFY.pattern).mock(side_effect=gateway)
    with CaptureQueriesContext(connection) as queries:
        counts = services.pending_payments_check(time_budget_seconds=30)
    assert counts["verified"] == 12
    # Batch by batch, never verified first, then the longest since the last check.
    assert [set(gateway.calls[i:i + 4]) for i in (0, 4, 8)] == [set(never), set(oldest), set(recent)]
    assert len([q for q in queries.captured_queries if "LIMIT 4" in q["sql"]]) >= 4  # ids in batches


@pytest.mark.django_db(transaction=True)
@respx.mock
def test_overlapping_verifications_stop_starting_when_the_budget_is_spent(settings: Any) -> None:
    require_postgres()
    settings.PAYSHIFT_RECONCILE_CONCURRENCY = 4
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "0"
    for i in range(200):
        _payment(f"NEW-{i}")
    gateway = _Gateway(delay_s=0.05)
    respx.get(url__regex=VERIFY.pattern).mock(side_effect=gateway)
    started = time.monotonic()
    counts = services.pending_payments_check(time_budget_seconds=0.5)
    elapsed = time.monotonic() - started
    assert 0 < counts["verified"] < 200
    assert len(gateway.calls) == counts["verified"]
    assert elapsed < 0.5 + 1.0  # no new call after the budget; the calls in flight end by themselves
    assert Payment.objects.filter(last_verified_at__isnull=False).count() == counts["verified"]


@pytest.mark.django_db(transaction=True)
@respx.mock
def test_an_unexpected_error_in_a_reconcile_thread_reaches_the_caller(settings: Any) -> None:
    require_postgres()
    settings.PAYSHIFT_RECONCILE_CONCURRENCY = 3
    settings.PAYSHIFT_GATEWAY_RATE_LIMIT = "0"
    for i in range(6):
        _payment(f"NEW-{i}")

    def broken(request: httpx.Request, ref: str) -> httpx.Response:
        raise RuntimeError("a bug, not a gateway error")

    respx.get(url__regex=VERIFY.pattern).mock(side_effect=broken)
    with pytest.raises(RuntimeError, match="a bug"):
        services.pending_payments_check(time_budget_seconds=10)


@pytest.mark.django_db
def test_reconciliation_is_sequential_on_sqlite_and_inside_a_transaction(settings: Any) -> None:
    settings.PAYSHIFT_RECONCILE_CONCURRENCY = 8
    # pytest-django's plain django_db wraps the test in a transaction: other threads could not see its rows.
    assert reconciliation._reconcile_concurrency() == 1


@pytest.mark.django_db
@respx.mock
def test_a_payment_the_gateway_does_not_know_costs_one_update_and_no_lock() -> None:
    payment = _payment("NEW-ONE")
    respx.get(f"{PAYSTACK_API}/transaction/verify/NEW-ONE").mock(return_value=httpx.Response(
        400, content=b'{"status":false,"message":"Transaction reference not found"}'))
    with CaptureQueriesContext(connection) as queries:
        assert services.payment_verify(payment.pk, allow_unpaid_final=False) == PaymentStatus.PENDING
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 2, statements  # the SELECT of the row, the UPDATE of last_verified_at
    assert not any("FOR UPDATE" in sql for sql in statements)
    payment.refresh_from_db()
    assert payment.last_verified_at is not None and payment.status == PaymentStatus.PENDING


@pytest.mark.django_db
@respx.mock
def test_a_still_pending_answer_costs_one_update_but_good_news_takes_the_lock() -> None:
    waiting, paid = _payment("WAIT-ONE"), _payment("PAID-ONE")
    respx.get(f"{PAYSTACK_API}/transaction/verify/WAIT-ONE").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("WAIT-ONE", status="ongoing"))))
    respx.get(f"{PAYSTACK_API}/transaction/verify/PAID-ONE").mock(return_value=httpx.Response(
        200, content=json_dumps(paystack_verify_answer("PAID-ONE"))))
    with CaptureQueriesContext(connection) as queries:
        assert services.payment_verify(waiting.pk, allow_unpaid_final=True) == PaymentStatus.PENDING
    assert len(queries.captured_queries) == 2
    with CaptureQueriesContext(connection) as queries, \
            mock.patch("payment.services.verification.payment_lock", wraps=payment_lock) as lock:
        assert services.payment_verify(paid.pk, allow_unpaid_final=False) == PaymentStatus.SUCCESS
    lock.assert_called_once_with(paid.pk)
    if connection.vendor == "postgresql":  # SQLite's lock is the IMMEDIATE transaction, not a clause
        assert any("FOR UPDATE" in q["sql"] for q in queries.captured_queries)


@pytest.mark.django_db
@respx.mock
def test_reconciling_payments_the_gateway_does_not_know_costs_no_statement_per_payment(settings: Any) -> None:
    settings.PAYSHIFT_RECONCILE_BATCH_SIZE = 20
    for i in range(20):
        _payment(f"NEW-{i}")
    respx.get(url__regex=VERIFY.pattern).mock(side_effect=_Gateway(delay_s=0))
    with CaptureQueriesContext(connection) as queries:
        counts = services.pending_payments_check(time_budget_seconds=10)
    assert counts["verified"] == 20
    on_payments = [q["sql"] for q in queries.captured_queries if '"payment_payment"' in q["sql"]]
    # The batch's SELECT (with what payment_verify needs), the empty one after it, one UPDATE for the batch;
    # the gateway-silence step counts pending payments; the unmatched retry's one query (held refund events
    # of settled charges): nothing per payment.
    assert len(on_payments) <= 6, on_payments
    assert Payment.objects.filter(last_verified_at__isnull=True).count() == 0
