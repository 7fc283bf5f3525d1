"""Bounded sandbox state: the refund cap forgets finished refunds first and refuses past open ones."""

from __future__ import annotations

from typing import Any

import pytest

from payshift.sandbox.state import Store, StoreFullError
from payshift.sandbox.tests.conftest import PS, fast_config, seed

FINAL = frozenset({"processed", "failed"})


def _charge(store: Store) -> Any:
    checkout = store.add_checkout(gateway="paystack", reference="S-1", access_code="AC-S-1", amount=10_000,
                                  currency="NGN", email="a@b.co", mode="test")
    return store.add_charge(checkout, "success")


def test_refund_store_forgets_the_oldest_finished_refund_at_its_cap() -> None:
    store = Store(max_refunds=2)
    charge = _charge(store)
    first = store.add_refund(charge, 100, "pending", final_statuses=FINAL)
    second = store.add_refund(charge, 100, "pending", final_statuses=FINAL)
    second.status = "processed"
    third = store.add_refund(charge, 100, "pending", final_statuses=FINAL)
    # The open first refund is kept; the finished second one made room.
    assert list(store.refunds) == [("paystack", first.id), ("paystack", third.id)]
    assert charge.refunded == 300  # forgetting a record never gives money back


def test_refund_store_refuses_when_every_refund_is_open() -> None:
    store = Store(max_refunds=1)
    charge = _charge(store)
    store.add_refund(charge, 100, "pending", final_statuses=FINAL)
    with pytest.raises(StoreFullError):
        store.add_refund(charge, 100, "pending", final_statuses=FINAL)
    assert len(store.refunds) == 1 and charge.refunded == 100


def test_full_refund_store_answers_503_in_the_gateway_envelope(make_client: Any) -> None:
    client = make_client(fast_config(max_refunds=1, refund_auto_advance=False))
    seed(client, gateway="paystack", reference="CAP-1", amount=10_000, status="success")
    assert client.post("/paystack/refund", headers=PS, json={"transaction": "CAP-1", "amount": 1}).status_code == 200
    full = client.post("/paystack/refund", headers=PS, json={"transaction": "CAP-1", "amount": 1})
    assert full.status_code == 503
    assert full.json()["status"] is False
    assert client.get("/_sandbox/transactions/paystack/CAP-1").json()["refunded_amount"] == 1


@pytest.mark.parametrize("value", ["later", 1, None])
def test_refund_outcome_fault_is_validated(make_client: Any, value: object) -> None:
    client = make_client()
    response = client.post("/_sandbox/faults", json={"refund_outcome": value})
    assert response.status_code == 400
    assert client.get("/_sandbox/faults").json()["refund_outcome"] == ""


def _checkout(store: Store, reference: str, email: str | None = None) -> Any:
    checkout = store.add_checkout(gateway="paystack", reference=reference, access_code=f"AC-{reference}",
                                  amount=1_000, currency="NGN", email=email or f"{reference}@b.co", mode="test")
    store.add_charge(checkout, "success")
    return checkout


def test_transactions_customers_and_deliveries_stay_within_their_caps() -> None:
    store = Store(max_deliveries=3, max_transactions=5)
    for index in range(50):
        _checkout(store, f"T-{index}")
        store.record_delivery(gateway="paystack", url="u", event="e", reference=f"T-{index}", attempt=1, copy=0,
                              status_code=200, error=None, duration_ms=1, body="{}")
    assert list(store.checkouts) == [("paystack", f"T-{index}") for index in range(45, 50)]
    assert len(store.charges) == 5 and len(store.checkouts_by_code) == 5 and len(store.customers) == 5
    assert [d.reference for d in store.deliveries] == ["T-47", "T-48", "T-49"]
    assert "AC-T-0" not in store.checkouts_by_code  # a forgotten reference's checkout link is gone too


def test_a_reference_with_an_open_refund_is_kept_and_its_finished_refunds_go_with_it() -> None:
    store = Store(max_transactions=2)
    first = _checkout(store, "K-1")
    open_refund = store.add_refund(store.latest_charge(first), 100, "pending", final_statuses=FINAL)
    second = _checkout(store, "K-2")
    done = store.add_refund(store.latest_charge(second), 100, "pending", final_statuses=FINAL)
    done.status = "processed"
    third = _checkout(store, "K-3")  # K-1 has an open refund: K-2 (finished refunds only) is forgotten instead
    assert list(store.checkouts) == [("paystack", "K-1"), ("paystack", "K-3")]
    assert list(store.refunds) == [("paystack", open_refund.id)]
    store.add_refund(store.latest_charge(third), 100, "pending", final_statuses=FINAL)
    with pytest.raises(StoreFullError):  # every kept reference has a refund in flight: refuse, keep them all
        _checkout(store, "K-4")
    assert list(store.checkouts) == [("paystack", "K-1"), ("paystack", "K-3")]


def test_a_bench_like_run_keeps_the_app_state_bounded(make_client: Any) -> None:
    # The bench raises the per-key rate limit (bench/stack.py); a default one would answer this burst with 429s.
    client = make_client(fast_config(max_transactions=20, max_deliveries=10, max_refunds=5, refund_delay_ms=0,
                                     rate_limit_per_s=0))
    for index in range(120):
        response = client.post("/paystack/transaction/initialize", headers=PS,
                               json={"email": f"c{index}@b.co", "amount": 5_000, "reference": f"B-{index}"})
        assert response.status_code == 200
        seed(client, gateway="paystack", reference=f"B-{index}", status="success", send_webhook=True)
        if index % 10 == 0:
            assert client.post("/paystack/refund", headers=PS, json={"transaction": f"B-{index}"}).status_code == 200
    store = client.app.state.runtime.store
    with store.lock:
        sizes = (len(store.checkouts), len(store.charges), len(store.customers), len(store.checkouts_by_code))
        assert max(sizes) <= 20 and len(store.refunds) <= 5 and len(store.deliveries) <= 10
    # The newest references still answer; the oldest are forgotten like an expired record.
    assert client.get("/paystack/transaction/verify/B-119", headers=PS).status_code == 200
    assert client.get("/paystack/transaction/verify/B-0", headers=PS).status_code == 400
