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
