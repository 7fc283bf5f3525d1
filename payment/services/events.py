"""Webhook event rows: finish, fail, retry later, dead (a person looks), kept until they can apply."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, InterfaceError, transaction
from django.db.models import QuerySet
from django.utils import timezone

from payment.conf import app_settings

from .. import metrics
from ..models import (
    EVENT_FINISHED,
    EVENT_HANDLED,
    EventStatus,
    NotificationKind,
    Payment,
    Recipient,
    WebhookEvent,
)
from ..sql import Prepared
from .state import deliver_after_commit, notification_create

logger = logging.getLogger("payment.services")


def event_finish(event: WebhookEvent, status: str, *, error: str = "", payment: Payment | PaymentSeen | None = None,
                 logged: bool = False) -> str:
    """Close the event. `logged`: its outcome is already in the log (the payment transition's line names the
    event), so this line goes at DEBUG: one INFO line per processed event."""
    now = timezone.now()
    _finish_statement(handled=status in EVENT_HANDLED, with_payment=payment is not None).update({
        "pk": event.pk, "status": status, "error": error[:2000], "now": now,
        **({"payment": payment.pk} if payment is not None else {})})
    if status == EventStatus.PROCESSED:
        metrics.PROCESS_LATENCY.labels(event.gateway).observe((now - event.received_at).total_seconds())
    metrics.EVENTS_PROCESSED.labels(event.gateway, status).inc()
    logger.log(logging.DEBUG if logged else logging.INFO, "webhook %s", status, extra={
        "event_id": event.pk, "gateway": event.gateway, "event": event.event, "reference": event.reference,
        "error": error or None})
    return status


@functools.cache
def _finish_statement(*, handled: bool, with_payment: bool) -> Prepared[WebhookEvent]:
    def build(v: dict[str, Any]) -> tuple[QuerySet[WebhookEvent], dict[str, Any]]:
        fields: dict[str, Any] = {"status": v["status"], "last_error": v["error"], "updated_at": v["now"],
                                  "next_attempt_at": None}
        if handled:
            fields["processed_at"] = v["now"]
        if with_payment:
            fields["payment"] = v["payment"]
        return WebhookEvent.objects.filter(pk=v["pk"]), fields

    slots = {"pk": "id", "status": "status", "error": "last_error", "now": "updated_at",
             **({"payment": "payment"} if with_payment else {})}
    return Prepared(WebhookEvent, "update", build, slots)


def event_fail(event_id: int, error: str, *, claim: str, log_fields: Mapping[str, Any] | None = None,
                reconnect: bool = False) -> None:
    """Give up this attempt's claim (only if it is still ours): the event is `failed` and claimable again.
    With `reconnect`, a database error gets one more try on a new connection (the error that made us
    release usually broke this one); the second error is raised."""
    def release() -> int:
        return WebhookEvent.objects.filter(pk=event_id, status=EventStatus.PROCESSING, claim_token=claim).update(
            status=EventStatus.FAILED, claim_token="", last_error=error[:2000], updated_at=timezone.now())

    try:
        released = release()
    except (DatabaseError, InterfaceError):
        connection = transaction.get_connection()
        if not reconnect or connection.in_atomic_block:
            raise
        connection.close()
        released = release()
    logger.warning("webhook attempt failed", extra={"event_id": event_id, **(log_fields or {}), "error": error,
                                                    "claim_released": bool(released)})


def event_schedule_retry(event_id: int, at: Any) -> None:
    WebhookEvent.objects.filter(pk=event_id).exclude(
        status__in=EVENT_FINISHED
    ).update(status=EventStatus.FAILED, next_attempt_at=at, updated_at=timezone.now())


def event_mark_dead(event_id: int, error: str) -> None:
    """Retries exhausted or a permanent failure: a person must look. Logged at error, staff notified."""
    with transaction.atomic():
        updated = WebhookEvent.objects.filter(pk=event_id).exclude(
            status__in=EVENT_FINISHED
        ).update(status=EventStatus.DEAD, last_error=error[:2000], updated_at=timezone.now(),
                 next_attempt_at=None)
        if not updated:
            return
        event = WebhookEvent.objects.get(pk=event_id)
        payment = event.payment or Payment.objects.filter(reference=event.reference, gateway=event.gateway).first()
        notification = notification_create(
            kind=NotificationKind.EVENT_DEAD, recipient=Recipient.STAFF, payment=payment, event=event,
            message=f"Webhook event #{event.pk} ({event.gateway} {event.event}, reference "
                    f"{event.reference or '-'}) needs a person: {error[:300]}",
        )
    metrics.EVENTS_PROCESSED.labels(event.gateway, EventStatus.DEAD).inc()
    logger.error("webhook dead", extra={"event_id": event.pk, "gateway": event.gateway, "event": event.event,
                                        "reference": event.reference, "error": error})
    if notification is not None:
        deliver_after_commit([notification.pk])


def event_unmatched(event: WebhookEvent, note: str = "", *, payment: Payment | None = None) -> str:
    """Keep an event we cannot apply yet (no such payment, or a charge not settled): retried while young.

    An event kept for a payment that exists (`payment` set) waits for that payment and never goes dead for
    want of one."""
    WebhookEvent.objects.filter(pk=event.pk).update(
        status=EventStatus.UNMATCHED, updated_at=timezone.now(), last_error=note, payment=payment,
        next_attempt_at=timezone.now() + timedelta(seconds=app_settings.PAYSHIFT_SWEEP_AFTER_SECONDS),
    )
    logger.warning("webhook unmatched", extra={"event_id": event.pk, "gateway": event.gateway,
                                               "reference": event.reference, "error": note or None})
    return EventStatus.UNMATCHED


# What the claim returns beside the event (services/inbox.py): the id and status of the payment the event
# names, read in the claim's own statement.
CLAIM_PAYMENT_ID, CLAIM_PAYMENT_STATUS = "claim_payment_id", "claim_payment_status"


@dataclass(frozen=True)
class PaymentSeen:
    """A payment as an event's processing first sees it, before the gateway is asked: its status decides
    whether asking is worth it; every decision that changes it is taken on the locked row."""
    pk: int
    status: str


def payment_seen(event: WebhookEvent) -> PaymentSeen | None:
    """The payment an event names, from what its claim returned, or read now where the claim could not."""
    if hasattr(event, CLAIM_PAYMENT_STATUS):
        pk, status = getattr(event, CLAIM_PAYMENT_ID), getattr(event, CLAIM_PAYMENT_STATUS)
        return PaymentSeen(pk=pk, status=status) if pk is not None else None
    payment = payment_for_event(event)
    return PaymentSeen(pk=payment.pk, status=payment.status) if payment is not None else None


_PAYMENT_BY_REFERENCE = Prepared(
    Payment, "rows", lambda v: Payment.objects.filter(reference=v["reference"], gateway=v["gateway"])[:1],
    {"reference": "reference", "gateway": "gateway"})


def payment_for_event(event: WebhookEvent) -> Payment | None:
    """The payment an event names (references are unique; the gateway must match too)."""
    found = _PAYMENT_BY_REFERENCE.rows({"reference": event.reference, "gateway": event.gateway})
    return found[0] if found else None
