"""The verdict, read from the database: every case against its expected outcome, and the figures table."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .driver import Delivery
from .injector import FaultRecord
from .scenarios import NOTIFICATION_FOR, SUCCESS, Case

UNFINISHED = ("received", "queued", "processing", "failed", "unmatched")


@dataclass
class Verdict:
    sent: int = 0
    accepted: int = 0
    duplicates: int = 0
    ignored: int = 0
    rejected: int = 0
    resends: int = 0
    five_xx: int = 0
    no_answer: int = 0
    lost: int = 0
    applied_twice: int = 0
    wrong_state: int = 0
    falsely_granted: int = 0
    forged_stored: int = 0
    notifications_wrong: int = 0
    secrets_in_log: int = 0
    secrets_in_admin: int = 0
    problems: list[str] = field(default_factory=list)
    five_xx_windows: list[str] = field(default_factory=list)
    dispatched_via: dict[str, int] = field(default_factory=dict)
    event_attempts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.applied_twice or self.wrong_state or self.falsely_granted
                    or self.forged_stored or self.notifications_wrong or self.secrets_in_log
                    or self.secrets_in_admin)

    def problem(self, text: str) -> None:
        if len(self.problems) < 60:
            self.problems.append(text)


def _chunks(items: list[str], size: int = 1000) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def outstanding(cases: list[Case]) -> tuple[int, int]:
    """(events not finished, payments not in their expected state): the drain is over when both are 0."""
    from payment.models import Payment, WebhookEvent

    unfinished = WebhookEvent.objects.filter(status__in=UNFINISHED).count()
    expected = {c.reference: c.expect_status for c in cases}
    actual: dict[str, str] = {}
    for chunk in _chunks(list(expected)):
        actual.update(Payment.objects.filter(reference__in=chunk).values_list("reference", "status"))
    wrong = sum(1 for ref, status in expected.items() if actual.get(ref) != status)
    return unfinished, wrong


def fact_keys(cases: list[Case]) -> dict[bytes, tuple[str, str] | None]:
    """(gateway, dedupe key) of every authentic body, by Payshift's own parser (computed before the run)."""
    from payment.gateways.base import InvalidPayloadError
    from payment.gateways.registry import gateway_get
    from payment.services.ingest import event_dedupe_key

    keys: dict[bytes, tuple[str, str] | None] = {}
    for case in cases:
        for send in case.steps:
            if send.authentic and send.body not in keys:
                try:
                    parsed = gateway_get(send.gateway).parse_event(send.body)
                    keys[send.body] = (send.gateway, event_dedupe_key(parsed.dedupe_key))
                except InvalidPayloadError:
                    keys[send.body] = None
    return keys


def judge(cases: list[Case], deliveries: list[Delivery], faults: list[FaultRecord],
          keys: dict[bytes, tuple[str, str] | None]) -> Verdict:
    from payment.models import Notification, Payment, PaymentTransition, Refund, WebhookEvent

    v = Verdict(sent=len(deliveries))
    refs = [c.reference for c in cases]
    events: dict[tuple[str, str], Any] = {}
    by_ref: dict[str, list[Any]] = defaultdict(list)
    payments: dict[str, Any] = {}
    for chunk in _chunks(refs):
        for e in WebhookEvent.objects.filter(reference__in=chunk).only(
                "id", "gateway", "dedupe_key", "reference", "status", "dispatched_via", "attempts", "last_error"):
            events[(e.gateway, e.dedupe_key)] = e
            by_ref[e.reference].append(e)
        payments.update({p.reference: p for p in Payment.objects.filter(reference__in=chunk)})
    ids = [p.pk for p in payments.values()]
    transitions: dict[int, list[Any]] = defaultdict(list)
    notes_by_transition: dict[int, list[str]] = defaultdict(list)
    notes_by_payment: dict[int, list[Any]] = defaultdict(list)
    refunds: dict[int, list[Any]] = defaultdict(list)
    for i in range(0, len(ids), 1000):
        chunk_ids = ids[i:i + 1000]
        for t in PaymentTransition.objects.filter(payment_id__in=chunk_ids).order_by("created_at", "id"):
            transitions[t.payment_id].append(t)
        for n in Notification.objects.filter(payment_id__in=chunk_ids):
            notes_by_payment[n.payment_id or 0].append(n)
            if n.transition_id:
                notes_by_transition[n.transition_id].append(n.kind)
        for r in Refund.objects.filter(payment_id__in=chunk_ids):
            refunds[r.payment_id].append(r)

    # --- deliveries: answers, and every authentic fact answered 200 must be in the inbox and processed
    facts: dict[tuple[str, str], list[Delivery]] = defaultdict(list)
    windows: list[float] = []
    for d in deliveries:
        v.resends += max(0, len(d.attempts) - 1)
        for a in d.attempts:
            if a.code is not None and a.code >= 500:
                v.five_xx += 1
                windows.append(a.at)
            elif a.code is None:
                v.no_answer += 1
        final = d.final
        if final is not None and final.code == 200:
            if final.outcome == "duplicate":
                v.duplicates += 1
            elif final.outcome == "ignored":
                v.ignored += 1
            else:
                v.accepted += 1
        elif final is not None and final.code is not None and 400 <= final.code < 500:
            v.rejected += 1
        if not d.send.authentic:
            if d.ok:
                v.falsely_granted += 1
                v.problem(f"{d.case.reference}: forged request ({d.send.label}) answered 200")
            continue
        key = keys.get(d.send.body)
        if key is not None:
            facts[key].append(d)
    for key, group in facts.items():
        ref = group[0].case.reference
        stored = sum(1 for d in group if d.ok and d.final is not None and d.final.outcome == "stored")
        if not any(d.ok for d in group):
            v.lost += 1
            codes = [a.code for d in group for a in d.attempts][-5:]
            v.problem(f"{ref}: {group[0].send.label} never answered 200 (last answers {codes})")
            continue
        row = events.get(key)
        if row is None:
            v.lost += 1
            v.problem(f"{ref}: {group[0].send.label} answered 200 but not in the inbox")
        elif row.status != "processed":
            v.lost += 1
            v.problem(f"{ref}: event #{row.pk} ended '{row.status}' ({row.last_error[:120]})")
        if stored > 1:
            v.applied_twice += 1
            v.problem(f"{ref}: one fact answered 'stored' {stored} times")
    all_events = list(events.values())
    v.dispatched_via = dict(Counter(e.dispatched_via or "-" for e in all_events))
    v.event_attempts = dict(sorted(Counter(str(min(e.attempts, 5)) for e in all_events).items()))

    # --- payments: final state, the exact transitions, one notification per transition, nothing granted
    for case in cases:
        payment = payments.get(case.reference)
        if case.forged and by_ref.get(case.reference):
            v.forged_stored += 1
            v.problem(f"{case.reference}: a forged request was stored ({len(by_ref[case.reference])} row(s))")
        if payment is None:
            v.wrong_state += 1
            v.problem(f"{case.reference}: payment row missing")
            continue
        moves = tuple((t.from_status, t.to_status) for t in transitions[payment.pk])
        if case.must_not_grant and (any(to == SUCCESS for _f, to in moves) or payment.status == SUCCESS
                                    or any(n.kind == "payment_succeeded" for n in notes_by_payment[payment.pk])):
            v.falsely_granted += 1
            v.problem(f"{case.reference} ({case.kind}): granted {moves}")
        repeated = len(moves) != len(set(moves)) or sum(1 for _f, to in moves if to == SUCCESS) > 1
        case_refunds = refunds[payment.pk]
        if case.payment_row == "settled":
            repeated = repeated or len(case_refunds) > 1 or payment.amount_refunded > case.refund_amount
        if repeated:
            v.applied_twice += 1
            v.problem(f"{case.reference} ({case.kind}): applied twice: {moves}, refunds "
                      f"{[(r.amount, r.status) for r in case_refunds]}, refunded {payment.amount_refunded}")
        elif (payment.status != case.expect_status or (payment.review_reason or "") != case.expect_reason
              or moves not in case.allowed):
            v.wrong_state += 1
            v.problem(f"{case.reference} ({case.kind}): {payment.status}/{payment.review_reason or '-'} via "
                      f"{moves}; expected {case.expect_status}/{case.expect_reason or '-'} via {case.allowed}")
        elif case.payment_row == "settled" and (
                [r.status for r in case_refunds] != ["processed"] or payment.amount_refunded != case.refund_amount):
            v.wrong_state += 1
            v.problem(f"{case.reference}: refund {[(r.amount, r.status) for r in case_refunds]}, "
                      f"amount_refunded {payment.amount_refunded}")
        for t in transitions[payment.pk]:
            want = [NOTIFICATION_FOR[t.to_status]] if t.to_status in NOTIFICATION_FOR else []
            if sorted(notes_by_transition[t.pk]) != want:
                v.notifications_wrong += 1
                v.problem(f"{case.reference}: transition {t.from_status}->{t.to_status} has notifications "
                          f"{notes_by_transition[t.pk]}, expected {want}")
        stray = [n.kind for n in notes_by_payment[payment.pk] if n.transition_id is None]
        if stray:
            v.notifications_wrong += 1
            v.problem(f"{case.reference}: notifications outside a transition: {stray}")
    v.five_xx_windows = _windows(windows, faults)
    return v


def _windows(times: list[float], faults: list[FaultRecord]) -> list[str]:
    """Group 5xx answers into bursts and name the fault each burst overlapped."""
    out: list[str] = []
    times = sorted(times)
    start = 0
    for i in range(1, len(times) + 1):
        if i == len(times) or times[i] - times[i - 1] > 3.0:
            lo, hi = times[start], times[i - 1]
            cause = [f.name for f in faults if f.end >= 0 and f.start - 1 <= hi and lo <= f.end + 1.5]
            out.append(f"{i - start} x 5xx at t={lo:.1f}-{hi:.1f}s" + (f" ({'; '.join(cause)})" if cause else ""))
            start = i
    return out


HEX_SIGNATURE = re.compile(r"[0-9a-fA-F]{128}")


def scan_text(text: str, secrets: dict[str, str], signatures: set[str], where: str) -> list[str]:
    """Secret values and full webhook signatures found in `text` (a log file or an admin page)."""
    found = [f"{where}: {name}" for name, value in secrets.items() if value and value in text]
    leaked = {m.group(0).lower() for m in HEX_SIGNATURE.finditer(text)} & signatures
    if leaked:
        found.append(f"{where}: {len(leaked)} full x-paystack-signature value(s)")
    return found


def scan_log(path: Path, secrets: dict[str, str], signatures: set[str]) -> list[str]:
    found: list[str] = []
    for file in sorted(path.parent.glob(path.name + "*")):
        found += scan_text(file.read_text(errors="replace"), secrets, signatures, file.name)
    return found
