"""The chaos run's scenarios: what each case sends, how the sandbox is seeded, and the outcome it must reach."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

# Payment and event words, spelled out here so the plan does not import Django.
PENDING, SUCCESS, FAILED, REVIEW, REFUNDED, PARTIALLY_REFUNDED = (
    "pending", "success", "failed", "review", "refunded", "partially_refunded")

# Which notification each transition must write, once (payment/services/state.py and review).
NOTIFICATION_FOR: dict[str, str] = {
    SUCCESS: "payment_succeeded",
    FAILED: "payment_failed",
    REFUNDED: "payment_refunded",
    PARTIALLY_REFUNDED: "payment_refunded",
    REVIEW: "payment_review",
}

Transitions = tuple[tuple[str, str], ...]
SETTLED: Transitions = ((PENDING, SUCCESS),)
# A Flutterwave failed attempt may be processed before or after the successful one (two workers, retries):
# either order is right as long as the payment ends successful and nothing moves backwards.
FAIL_THEN_SETTLED: tuple[Transitions, ...] = (SETTLED, ((PENDING, FAILED), (FAILED, SUCCESS)))


@dataclass
class Keys:
    paystack: str
    flutterwave_secret: str
    flutterwave_hash: str


@dataclass
class Send:
    """One gateway delivery; `copies` > 1 sends the same bytes that many times at once."""

    label: str
    gateway: str
    body: bytes
    headers: dict[str, str]
    authentic: bool = True
    copies: int = 1


@dataclass
class Seed:
    """A POST /_sandbox/transactions body; the answer's `id` is the gateway transaction id."""

    body: dict[str, Any]


@dataclass
class Case:
    id: int
    kind: str
    gateway: str
    reference: str
    amount: int
    currency: str = "NGN"
    mode: str = "test"
    # "start": row exists before sending; "late": created after the first 200; "settled": success + open refund.
    payment_row: str = "start"
    refund_amount: int = 0
    seeds: list[Seed] = field(default_factory=list)
    steps: list[Send] = field(default_factory=list)  # sent one after another, each after the previous 200
    expect_status: str = SUCCESS
    expect_reason: str = ""
    allowed: tuple[Transitions, ...] = (SETTLED,)
    forged: bool = False
    must_not_grant: bool = False
    tx_ids: list[str] = field(default_factory=list)

    @property
    def sends(self) -> int:
        return sum(s.copies for s in self.steps)


# kind -> (share of the events, sends per case). Shares are of deliveries, so duplicates count as traffic.
MIX: dict[str, tuple[float, int]] = {
    "unique_success": (0.28, 1),
    "exact_duplicate": (0.12, 3),
    "concurrent_duplicate": (0.12, 5),
    "flw_failed_then_success": (0.08, 2),
    "flw_out_of_order": (0.06, 2),
    "paystack_refund_out_of_order": (0.05, 2),
    "amount_mismatch": (0.06, 1),
    "currency_mismatch": (0.04, 1),
    "test_mode_for_live": (0.05, 1),
    "unknown_then_created": (0.06, 1),
    "forged_signature": (0.08, 1),
}
ONLY_FLUTTERWAVE = {"flw_failed_then_success", "flw_out_of_order"}
ONLY_PAYSTACK = {"paystack_refund_out_of_order"}


def plan(events: int, seed: int, run_tag: str) -> list[Case]:
    """Cases whose deliveries add up to `events`, in a shuffled (seeded) order; gateways alternate per kind."""
    rng = random.Random(seed)
    kinds: list[str] = []
    for kind, (share, per_case) in MIX.items():
        kinds += [kind] * max(1, round(events * share / per_case))
    rng.shuffle(kinds)
    cases: list[Case] = []
    total = 0
    counters: dict[str, int] = {}
    for kind in kinds:
        if total >= events:
            break
        n = counters[kind] = counters.get(kind, 0) + 1
        gateway = ("flutterwave" if kind in ONLY_FLUTTERWAVE else "paystack" if kind in ONLY_PAYSTACK
                   else ("paystack", "flutterwave")[n % 2])
        case = _case(len(cases) + 1, kind, gateway, rng, run_tag)
        cases.append(case)
        total += MIX[kind][1]
    while total < events:  # rounding: top up with plain successes
        case = _case(len(cases) + 1, "unique_success", ("paystack", "flutterwave")[len(cases) % 2], rng, run_tag)
        cases.append(case)
        total += 1
    return cases


def _case(case_id: int, kind: str, gateway: str, rng: random.Random, run_tag: str) -> Case:
    amount = rng.randrange(1_000, 5_000_000, 100)  # kobo; multiples of 100 so Flutterwave majors are exact
    case = Case(case_id, kind, gateway, f"CH-{run_tag}-{case_id:06d}-{kind[:6]}", amount)
    seed: dict[str, Any] = {"gateway": gateway, "reference": case.reference, "amount": amount, "currency": "NGN",
                            "status": "success", "email": f"c{case_id}@example.com", "mode": "test"}
    if kind in ONLY_FLUTTERWAVE:
        case.seeds = [Seed({**seed, "status": "failed"}), Seed({"gateway": gateway, "reference": case.reference,
                                                                "status": "success", "new_attempt": True})]
        case.allowed = FAIL_THEN_SETTLED
    elif kind == "paystack_refund_out_of_order":
        case.payment_row = "settled"
        # Half the cases refund partly: a refund applied twice would then be visible as a second move.
        case.refund_amount = amount if case_id % 2 else amount // 2
        case.expect_status = REFUNDED if case.refund_amount == amount else PARTIALLY_REFUNDED
        case.allowed = (((SUCCESS, case.expect_status),),)
    elif kind == "amount_mismatch":
        case.seeds = [Seed({**seed, "verify_amount": amount // 2})]  # the API says underpaid, the body says paid
        case.expect_status, case.expect_reason = REVIEW, "amount_mismatch"
        case.allowed, case.must_not_grant = (((PENDING, REVIEW),),), True
    elif kind == "currency_mismatch":
        case.seeds = [Seed({**seed, "currency": "GHS"})]
        case.expect_status, case.expect_reason = REVIEW, "currency_mismatch"
        case.allowed, case.must_not_grant = (((PENDING, REVIEW),),), True
    elif kind == "test_mode_for_live":
        case.mode = "live"  # our payment is live; the gateway transaction (and event) are test mode
        case.seeds = [Seed(seed)]
        case.expect_status, case.expect_reason = REVIEW, "mode_mismatch"
        case.allowed, case.must_not_grant = (((PENDING, REVIEW),),), True
    elif kind == "forged_signature":
        # The gateway says "still pending": only a forged webhook could move this payment.
        case.seeds = [Seed({**seed, "status": "pending"})]
        case.expect_status, case.allowed, case.forged, case.must_not_grant = PENDING, ((),), True, True
    else:
        if kind == "unknown_then_created":
            case.payment_row = "late"
        case.seeds = [Seed(seed)]
    return case


def build_steps(case: Case, keys: Keys, rng: random.Random) -> None:
    """The deliveries, once the sandbox has given the transaction ids (case.tx_ids, oldest attempt first)."""
    g = case.gateway
    if case.kind == "paystack_refund_out_of_order":
        processed = _paystack_refund(case, "refund.processed", keys)
        pending = _paystack_refund(case, "refund.pending", keys)
        case.steps = [processed, pending]  # the later fact first, the earlier one after it
        return
    if case.kind in ("flw_failed_then_success", "flw_out_of_order"):
        failed = _charge(case, keys, case.tx_ids[0], "failed", case.amount)
        success = _charge(case, keys, case.tx_ids[-1], "success", case.amount)
        case.steps = [failed, success] if case.kind == "flw_failed_then_success" else [success, failed]
        return
    currency = "GHS" if case.kind == "currency_mismatch" else case.currency
    # A forged body claims success too: that is what an attacker wants granted.
    body = _charge(case, keys, case.tx_ids[-1], "success", case.amount, currency=currency)
    if case.kind == "exact_duplicate":
        case.steps = [body, _copy(body, "resend"), _copy(body, "resend")]
    elif case.kind == "concurrent_duplicate":
        body.copies = 5
        body.label = "concurrent x5"
        case.steps = [body]
    elif case.forged:
        case.steps = [_forge(body, g, keys, rng.randrange(5))]
    else:
        case.steps = [body]


def _copy(send: Send, label: str) -> Send:
    return Send(label, send.gateway, send.body, dict(send.headers))


def _dumps(payload: Any) -> bytes:
    def number(value: object) -> object:
        if isinstance(value, Decimal):
            return int(value) if value == value.to_integral_value() else float(value)
        raise TypeError(type(value).__name__)

    return json.dumps(payload, separators=(",", ":"), default=number).encode()


def sign(gateway: str, body: bytes, keys: Keys) -> dict[str, str]:
    """What the gateway itself sends: Paystack an HMAC-SHA512 of the raw bytes, Flutterwave the hash verbatim."""
    if gateway == "paystack":
        digest = hmac.new(keys.paystack.encode(), body, hashlib.sha512).hexdigest()
        return {"content-type": "application/json", "x-paystack-signature": digest}
    return {"content-type": "application/json", "verif-hash": keys.flutterwave_hash}


def _charge(case: Case, keys: Keys, tx_id: str, status: str, amount: int, *, currency: str = "NGN") -> Send:
    mode = "test"  # every sandbox transaction is test mode; test_mode_for_live has a live payment row
    email = f"c{case.id}@example.com"
    if case.gateway == "paystack":
        payload: dict[str, Any] = {"event": "charge.success", "data": {
            "id": int(tx_id), "domain": mode, "status": status, "reference": case.reference, "amount": amount,
            "message": None, "gateway_response": "Successful", "paid_at": "2026-11-26T05:00:00.000Z",
            "created_at": "2026-11-26T04:59:00.000Z", "channel": "card", "currency": currency,
            "ip_address": "41.58.0.1", "metadata": "", "fees": 7500,
            "customer": {"id": 84312, "first_name": "Ada", "last_name": "Obi", "email": email,
                         "customer_code": f"CUS_{case.id}", "phone": None},
            "authorization": {"authorization_code": f"AUTH_chaos{case.id:06d}", "bin": "408408", "last4": "4081",
                              "exp_month": "12", "exp_year": "2030", "channel": "card", "card_type": "visa",
                              "bank": "TEST BANK", "country_code": "NG", "brand": "visa", "reusable": True,
                              "signature": f"SIG_chaos{case.id:06d}"},
            "plan": {}}}
    else:
        major = Decimal(amount).scaleb(-2)
        flw_status = {"success": "successful"}.get(status, status)
        payload = {"event": "charge.completed", "data": {
            "id": int(tx_id), "tx_ref": case.reference, "flw_ref": f"FLW-CHAOS-{tx_id}", "device_fingerprint": "N/A",
            "amount": major, "currency": currency, "charged_amount": major, "app_fee": Decimal(amount * 14 // 1000)
            .scaleb(-2), "merchant_fee": 0, "processor_response": "Approved", "auth_model": "PIN", "ip": "41.58.0.1",
            "narration": "CARD Transaction ", "status": flw_status, "payment_type": "card",
            "created_at": "2026-11-26T05:00:00.000Z", "account_id": 17321,
            "customer": {"id": 215604089, "name": "Ada Obi", "phone_number": None, "email": email},
            "card": {"first_6digits": "553188", "last_4digits": "2950", "issuer": "MASTERCARD", "country": "NG",
                     "type": "MASTERCARD", "expiry": "09/32"}},
            "event.type": "CARD_TRANSACTION"}
    body = _dumps(payload)
    return Send(f"{status}#{tx_id}", case.gateway, body, sign(case.gateway, body, keys))


def _paystack_refund(case: Case, event: str, keys: Keys) -> Send:
    status = event.removeprefix("refund.")
    payload = {"event": event, "data": {
        "status": status, "transaction_reference": case.reference,
        "refund_reference": f"RF{case.id:08d}" if status == "processed" else None,
        "amount": str(case.refund_amount), "currency": case.currency, "processor": "mpgs_zen",
        "customer": {"first_name": "Ada", "last_name": "Obi", "email": f"c{case.id}@example.com"},
        "integration": 463433, "domain": "test"}}
    body = _dumps(payload)
    return Send(event, "paystack", body, sign("paystack", body, keys))


def _forge(send: Send, gateway: str, keys: Keys, variant: int) -> Send:
    """Five ways an attacker tries: wrong key, no header, a real signature on altered bytes, a guessed hash."""
    body = send.body
    headers = {"content-type": "application/json"}
    if gateway == "paystack":
        if variant == 0:
            headers["x-paystack-signature"] = hmac.new(b"sk_test_attacker", body, hashlib.sha512).hexdigest()
        elif variant == 1:
            pass  # no signature at all
        elif variant == 2:
            # A captured signature replayed over a body changed to claim success for this reference.
            headers["x-paystack-signature"] = sign(gateway, body, keys)["x-paystack-signature"]
            body = body.replace(b'"status":"success"', b'"status":"success","forged":true', 1)
        elif variant == 3:
            headers["x-paystack-signature"] = "0" * 128
        else:
            headers["x-paystack-signature"] = sign(gateway, body, keys)["x-paystack-signature"].upper()[:-1] + "x"
    elif variant == 0:
        headers["verif-hash"] = keys.flutterwave_hash + "x"
    elif variant == 1:
        pass
    elif variant == 2:
        headers["flutterwave-signature"] = "bm90IGEgc2lnbmF0dXJl"
    elif variant == 3:
        headers["verif-hash"] = keys.flutterwave_secret  # the API key is not the webhook hash
    else:
        headers["verif-hash"] = ""
    return Send(f"forged v{variant}", gateway, body, headers, authentic=False)
