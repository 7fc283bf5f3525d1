"""In-memory gateway state: checkouts, charges, refunds and the webhook delivery log, behind one lock."""

from __future__ import annotations

import itertools
import secrets
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Neutral outcome vocabulary used by the control API; each gateway module maps it
# to its own words (Flutterwave says "successful", Paystack "success").
STATUSES = ("success", "failed", "abandoned", "pending", "reversed")

class StoreFullError(Exception):
    """Every refund the store may hold is still moving: a new one would grow memory without bound."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    """Both gateways write UTC timestamps with milliseconds and a Z, e.g. 2024-08-22T09:15:02.000Z."""
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Customer:
    id: int
    email: str
    code: str
    name: str | None = None
    phone: str | None = None


@dataclass
class Charge:
    """One gateway transaction id: Paystack has one per reference, Flutterwave one per attempt."""

    gateway: str
    id: int
    reference: str
    amount: int  # minor units actually charged
    currency: str
    status: str  # neutral status, see STATUSES
    mode: str
    created_at: datetime
    paid_at: datetime | None = None
    verify_amount: int | None = None  # what the verify API reports instead of `amount`
    gateway_ref: str = ""  # a second gateway reference where it has one (Flutterwave's flw_ref)
    refunded: int = 0  # minor units already claimed by non-failed refunds

    @property
    def reported_amount(self) -> int:
        return self.amount if self.verify_amount is None else self.verify_amount

    @property
    def refundable(self) -> int:
        return max(self.reported_amount - self.refunded, 0)


@dataclass
class Checkout:
    """What initialize / payments created: the merchant's reference and the hosted page behind it."""

    gateway: str
    reference: str
    access_code: str
    amount: int  # minor units requested by the merchant
    currency: str
    email: str
    mode: str
    customer: Customer
    created_at: datetime
    callback_url: str | None = None
    metadata: Any = ""
    status: str = "pending"  # neutral status of the latest outcome
    charge_ids: list[int] = field(default_factory=list)
    channels: tuple[str, ...] = ()  # the payment channels the merchant allowed; () = all of the gateway's
    channel: str | None = None  # what the customer paid with, once chosen
    customer_acted: bool = False  # a checkout button was pressed (the page shows no outcome before that)


@dataclass
class Refund:
    gateway: str
    id: int
    charge_id: int
    reference: str
    amount: int  # minor units
    currency: str
    mode: str
    status: str
    created_at: datetime
    customer_note: str | None = None
    merchant_note: str | None = None
    refund_reference: str | None = None  # Paystack fills it only once processed (or failed)
    processed_at: datetime | None = None  # when it reached its final state
    expected_at: datetime | None = None
    gateway_ref: str = ""  # the gateway's own refund reference where it has one (Flutterwave's flw_ref)
    outcome: str = ""  # the planned ending, from the refund_outcome fault: "", "failed", "needs-attention"
    updated_at: datetime | None = None
    # The gateway's words for "nothing changes any more": only such refunds may be forgotten.
    final_statuses: frozenset[str] = frozenset()

    @property
    def final(self) -> bool:
        return self.status in self.final_statuses


@dataclass
class TransactionSpec:
    """A control-API request to create or update a transaction; None means "leave as is"."""

    gateway: str
    reference: str
    amount: int | None = None
    currency: str | None = None
    status: str | None = None
    email: str | None = None
    mode: str | None = None
    callback_url: str | None = None
    metadata: Any = None
    verify_amount: int | None = None
    verify_amount_given: bool = False  # lets `"verify_amount": null` clear an earlier value
    send_webhook: bool = False
    new_attempt: bool = False
    channel: str | None = None

    def apply_to_checkout(self, checkout: Checkout) -> None:
        if self.amount is not None:
            checkout.amount = self.amount
        if self.currency:
            checkout.currency = self.currency
        if self.email:
            checkout.email = self.email
        if self.mode:
            checkout.mode = self.mode
        if self.callback_url:
            checkout.callback_url = self.callback_url
        if self.metadata is not None:
            checkout.metadata = self.metadata
        if self.channel:
            checkout.channel = self.channel


@dataclass
class Delivery:
    id: int
    gateway: str
    url: str
    event: str
    reference: str
    attempt: int
    copy: int  # 0 = the original send, 1.. = injected duplicates of the same bytes
    status_code: int | None
    error: str | None
    at: datetime
    duration_ms: int
    body: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "gateway": self.gateway,
            "url": self.url,
            "event": self.event,
            "reference": self.reference,
            "attempt": self.attempt,
            "copy": self.copy,
            "status_code": self.status_code,
            "error": self.error,
            "ok": self.status_code == 200,
            "at": iso(self.at),
            "duration_ms": self.duration_ms,
            "body": self.body,
        }


class Store:
    """All sandbox state. Callers hold `lock` around any read-modify-write; nothing here awaits.

    Every collection is capped (docs/sandbox.md, "Bounded state"): references (with their charges and
    customers) and refunds forget their oldest finished entries, deliveries are a ring buffer.
    """

    def __init__(
        self,
        max_deliveries: int = 10_000,
        max_refunds: int = 10_000,
        max_transactions: int = 50_000,
        first_charge_ids: dict[str, int] | None = None,
    ) -> None:
        self.lock = threading.Lock()
        self._max_deliveries = max_deliveries
        self._max_refunds = max_refunds
        self._max_transactions = max_transactions
        self._first_charge_ids = dict(first_charge_ids or {})
        self.reset()

    def reset(self) -> None:
        self._charge_ids = {name: itertools.count(first) for name, first in self._first_charge_ids.items()}
        self._refund_ids = itertools.count(3_018_284)
        self._customer_ids = itertools.count(181_873_746)
        self._delivery_ids = itertools.count(1)
        # All insertion-ordered, so the oldest entries are found first when a cap is reached.
        self.checkouts: dict[tuple[str, str], Checkout] = {}
        self.checkouts_by_code: dict[str, Checkout] = {}
        self.charges: dict[tuple[str, int], Charge] = {}
        self.refunds: dict[tuple[str, int], Refund] = {}
        self._refunds_by_reference: dict[tuple[str, str], list[Refund]] = {}
        self.customers: dict[str, Customer] = {}
        self.deliveries: deque[Delivery] = deque(maxlen=self._max_deliveries)

    def customer_for(self, email: str) -> Customer:
        customer = self.customers.get(email.lower())
        if customer is None:
            if len(self.customers) >= self._max_transactions:
                # Checkouts hold their Customer object, so forgetting the lookup entry loses nothing they show.
                del self.customers[next(iter(self.customers))]
            customer = Customer(
                id=next(self._customer_ids),
                email=email,
                code="CUS_" + secrets.token_hex(8),
            )
            self.customers[email.lower()] = customer
        return customer

    def add_checkout(
        self,
        *,
        gateway: str,
        reference: str,
        access_code: str,
        amount: int,
        currency: str,
        email: str,
        mode: str,
        callback_url: str | None = None,
        metadata: Any = "",
        customer_name: str | None = None,
        customer_phone: str | None = None,
        channels: tuple[str, ...] = (),
    ) -> Checkout:
        """Record a reference; past `max_transactions` the oldest one without an open refund is forgotten."""
        if len(self.checkouts) >= self._max_transactions:
            self._forget_oldest_checkout()
        customer = self.customer_for(email)
        if customer_name:
            customer.name = customer_name
        if customer_phone:
            customer.phone = customer_phone
        checkout = Checkout(
            gateway=gateway,
            reference=reference,
            access_code=access_code,
            amount=amount,
            currency=currency,
            email=email,
            mode=mode,
            customer=customer,
            created_at=utcnow(),
            callback_url=callback_url,
            metadata=metadata,
            channels=channels,
        )
        self.checkouts[(gateway, reference)] = checkout
        self.checkouts_by_code[access_code] = checkout
        return checkout

    def _forget_oldest_checkout(self) -> None:
        key = next(
            (key for key in self.checkouts if all(r.final for r in self._refunds_by_reference.get(key, []))), None
        )
        if key is None:
            raise StoreFullError(f"{len(self.checkouts)} transactions all have refunds in progress")
        old = self.checkouts.pop(key)
        self.checkouts_by_code.pop(old.access_code, None)
        for charge_id in old.charge_ids:
            self.charges.pop((old.gateway, charge_id), None)
        for refund in self._refunds_by_reference.pop(key, []):
            self.refunds.pop((refund.gateway, refund.id), None)

    def add_charge(self, checkout: Checkout, status: str, amount: int | None = None, gateway_ref: str = "") -> Charge:
        gateway = checkout.gateway
        counter = self._charge_ids.setdefault(gateway, itertools.count(1_000_000))
        charge_id = next(counter)
        now = utcnow()
        charge = Charge(
            gateway=gateway,
            id=charge_id,
            reference=checkout.reference,
            amount=checkout.amount if amount is None else amount,
            currency=checkout.currency,
            status=status,
            mode=checkout.mode,
            created_at=now,
            paid_at=now if status in ("success", "reversed") else None,
            gateway_ref=gateway_ref,
        )
        self.charges[(gateway, charge_id)] = charge
        checkout.charge_ids.append(charge_id)
        checkout.status = status
        return charge

    def set_charge_status(self, checkout: Checkout, charge: Charge, status: str) -> None:
        if status in ("success", "reversed"):
            charge.paid_at = charge.paid_at or utcnow()
        else:
            charge.paid_at = None
        charge.status = status
        if checkout.charge_ids and checkout.charge_ids[-1] == charge.id:
            checkout.status = status

    def latest_charge(self, checkout: Checkout) -> Charge | None:
        if not checkout.charge_ids:
            return None
        return self.charges[(checkout.gateway, checkout.charge_ids[-1])]

    def attempts(self, checkout: Checkout) -> list[Charge]:
        return [self.charges[(checkout.gateway, charge_id)] for charge_id in checkout.charge_ids]

    def add_refund(
        self,
        charge: Charge,
        amount: int,
        status: str,
        *,
        final_statuses: frozenset[str],
        customer_note: str | None = None,
        merchant_note: str | None = None,
        outcome: str = "",
        gateway_ref: str = "",
    ) -> Refund:
        """Record a refund; past `max_refunds` the oldest finished one is forgotten (StoreFullError if none)."""
        if len(self.refunds) >= self._max_refunds:
            oldest = next((key for key, old in self.refunds.items() if old.final), None)
            if oldest is None:
                raise StoreFullError(f"{len(self.refunds)} refunds are still in progress")
            forgotten = self.refunds.pop(oldest)
            siblings = self._refunds_by_reference.get((forgotten.gateway, forgotten.reference), [])
            if forgotten in siblings:
                siblings.remove(forgotten)
        refund = Refund(
            gateway=charge.gateway,
            id=next(self._refund_ids),
            charge_id=charge.id,
            reference=charge.reference,
            amount=amount,
            currency=charge.currency,
            mode=charge.mode,
            status=status,
            created_at=utcnow(),
            customer_note=customer_note,
            merchant_note=merchant_note,
            gateway_ref=gateway_ref,
            outcome=outcome,
            final_statuses=final_statuses,
        )
        refund.updated_at = refund.created_at
        charge.refunded += amount
        self.refunds[(charge.gateway, refund.id)] = refund
        self._refunds_by_reference.setdefault((charge.gateway, charge.reference), []).append(refund)
        return refund

    def refunds_of(self, charge: Charge) -> list[Refund]:
        siblings = self._refunds_by_reference.get((charge.gateway, charge.reference), [])
        return [r for r in siblings if r.charge_id == charge.id]

    def refunds_of_reference(self, gateway: str, reference: str) -> list[Refund]:
        return list(self._refunds_by_reference.get((gateway, reference), []))

    def record_delivery(self, **fields: Any) -> Delivery:
        delivery = Delivery(id=next(self._delivery_ids), at=utcnow(), **fields)
        self.deliveries.append(delivery)
        return delivery
