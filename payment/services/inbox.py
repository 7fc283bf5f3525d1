"""The inbox processor: claim one stored event, run its handler, and replay or prune events."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import DatabaseError, InterfaceError, router
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.utils import timezone

from payment.conf import app_settings

from .. import metrics, queueing
from ..gateways import base
from ..models import (
    EVENT_CLAIMABLE,
    EVENT_HANDLED,
    EVENT_REPLAYABLE,
    EventKind,
    EventStatus,
    Payment,
    WebhookEvent,
)
from ..sql import Prepared, first_statement, update_returning_supported
from .events import CLAIM_PAYMENT_ID, CLAIM_PAYMENT_STATUS, event_fail, event_finish, event_mark_dead
from .refunds import refund_event_apply
from .scheduling import id_batches
from .verification import charge_event_apply

logger = logging.getLogger("payment.services")




def webhook_event_process(event_id: int, *, via: str, force: bool = False, claim: str = "",
                          retake: str = "") -> str:
    """Process one stored event; safe to run twice or concurrently. Returns the event's status.

    `claim` is this attempt's token (new for every attempt; generated when empty). `retake` is the token of
    the attempt this one retries: it may take back a claim that a database error kept from being released.
    Raises base.TransientGatewayError when a retry can fix it, and database errors (the claim released when
    the database allows it); the caller owns the retry policy and hands `claim` to its retry as `retake`.
    """
    claim = claim or uuid.uuid4().hex
    now = timezone.now()
    values = {"event_id": event_id, "stuck": now - timedelta(seconds=app_settings.PAYSHIFT_PROCESSING_STUCK_SECONDS),
              "claim": claim, "via": via, "now": now, **({"retake": retake} if retake else {})}
    statement = _claim_statement(force=force, retake=bool(retake))
    using = router.db_for_write(WebhookEvent)
    if update_returning_supported(using):
        claimed = first_statement(lambda: statement.rows(values, using=using), using=using)
        event = claimed[0] if claimed else None
    else:
        event = first_statement(lambda: _event_claim(statement, values), using=using)
    if event is None:
        # Already processed, ignored or dead (or unknown): "already applied" is a no-op (docs/architecture.md).
        current = WebhookEvent.objects.filter(pk=event_id).values_list("status", flat=True).first()
        return current or "missing"
    try:
        handler = EVENT_HANDLERS.get(event.kind)
        if handler is None:
            return event_finish(event, EventStatus.IGNORED)
        return handler(event)
    except base.TransientGatewayError as exc:
        metrics.EVENTS_FAILED.labels(event.gateway, "true").inc()
        if event.attempts >= app_settings.PAYSHIFT_MAX_EVENT_ATTEMPTS:
            # A ceiling across every path (Celery, Django Q, sweep), so nothing retries for ever unseen.
            event_mark_dead(event.pk, f"gave up after {event.attempts} attempts: {exc}")
            return EventStatus.DEAD
        event_fail(event_id, str(exc), claim=claim, log_fields={"gateway": event.gateway,
                                                                 "reference": event.reference})
        raise
    except (base.PermanentGatewayError, base.InvalidPayloadError) as exc:
        metrics.EVENTS_FAILED.labels(event.gateway, "false").inc()
        event_mark_dead(event.pk, f"permanent: {exc}")
        return EventStatus.DEAD
    except (DatabaseError, InterfaceError) as exc:
        # Release the claim so the caller's retry (seconds away) can take it, not the sweep in 15 minutes.
        # Where the database refuses even that, the claim keeps our token and that retry retakes it.
        try:
            event_fail(event_id, f"database error: {type(exc).__name__}: {exc}", claim=claim, reconnect=True)
        except (DatabaseError, InterfaceError) as release_error:
            logger.warning("claim not released: the retry retakes it by its token",
                           extra={"event_id": event_id, "error": f"{type(release_error).__name__}: {release_error}"})
        raise


@functools.cache
def _claim_statement(*, force: bool, retake: bool) -> Prepared[WebhookEvent]:
    """The claim: one conditional UPDATE that also returns the row, compiled once per shape."""
    def build(v: dict[str, Any]) -> tuple[QuerySet[WebhookEvent], dict[str, Any]]:
        statuses = [*EVENT_CLAIMABLE, EventStatus.PROCESSED, EventStatus.DEAD] if force else list(EVENT_CLAIMABLE)
        # A `processing` event belongs to the attempt running it; only a stale claim (that worker died) or the
        # retry that attempt handed its token to takes it over, so two workers never verify one event at once.
        # Each claim writes a new token, so a duplicate of that retry message finds the token gone.
        claimable = Q(status__in=statuses) | Q(status=EventStatus.PROCESSING, updated_at__lt=v["stuck"])
        if retake:
            claimable |= Q(status=EventStatus.PROCESSING, claim_token=v["retake"])
        if force:
            claimable |= Q(status=EventStatus.PROCESSING)
        # Our own token too: the claim is the task's first statement and its connection's health check, run
        # once more on a new connection if the old one died (payment/sql.py); if the first try had committed,
        # the second takes back what is already ours instead of finding the event busy.
        claimable |= Q(status=EventStatus.PROCESSING, claim_token=v["claim"])
        return WebhookEvent.objects.filter(claimable, pk=v["event_id"]), {
            "status": EventStatus.PROCESSING, "attempts": F("attempts") + 1, "dispatched_via": v["via"],
            "claim_token": v["claim"], "updated_at": v["now"]}

    def payment_too() -> dict[str, Subquery]:
        # The payment the event names, for the handler's first look (events.payment_seen): no SELECT of its own.
        # Two subqueries of one row (references are unique). Read in the claim's snapshot, which may be a moment
        # older than the row lock it waited for: a status that is stale only ever lags behind (statuses move
        # forward), so at worst the handler asks the gateway once more, and it decides on the locked row.
        named = Payment.objects.filter(reference=OuterRef("reference"), gateway=OuterRef("gateway"))
        return {CLAIM_PAYMENT_ID: Subquery(named.values("pk")[:1]),
                CLAIM_PAYMENT_STATUS: Subquery(named.values("status")[:1])}

    slots = {"event_id": "id", "stuck": "updated_at", "claim": "claim_token", "via": "dispatched_via",
             "now": "updated_at", **({"retake": "claim_token"} if retake else {})}
    return Prepared(WebhookEvent, "update_returning", build, slots, also_return=payment_too)


def _event_claim(statement: Prepared[WebhookEvent], values: dict[str, Any]) -> WebhookEvent | None:
    """The same claim where the database cannot return updated rows (SQLite before 3.35): UPDATE, read back."""
    rows, update = statement.build(values)
    if not rows.update(**update):
        return None
    return WebhookEvent.objects.get(pk=values["event_id"])


EVENT_HANDLERS: dict[str, Callable[[WebhookEvent], str]] = {
    EventKind.CHARGE: charge_event_apply,
    EventKind.REFUND: refund_event_apply,
}




def event_requeue(event_id: int, *, force: bool = False) -> bool:
    """Make an event eligible for processing again (replay). A processed event only with force: even then
    the payment state machine decides, so a replay can never move a payment backwards or notify twice."""
    statuses = [*EVENT_REPLAYABLE, EventStatus.PROCESSED] if force else list(EVENT_REPLAYABLE)
    updated = WebhookEvent.objects.filter(pk=event_id, status__in=statuses).exclude(kind=EventKind.OTHER).update(
        status=EventStatus.QUEUED, next_attempt_at=None, updated_at=timezone.now())
    if updated:
        logger.info("webhook requeued", extra={"event_id": event_id, "force": force})
    return bool(updated)


def events_prune(*, older_than_days: int, dry_run: bool = False, batch_size: int = 1000) -> int:
    """Drop raw bodies and headers of finished events; keep the rows and their dedupe keys.

    Paystack signatures carry no timestamp, so a captured delivery stays valid forever: the dedupe key
    is the only replay defence, and it must outlive the payload (docs/gateway-facts.md, Paystack).
    """
    cutoff = timezone.now() - timedelta(days=older_than_days)
    candidates = WebhookEvent.objects.filter(status__in=EVENT_HANDLED,
                                             received_at__lt=cutoff, pruned_at__isnull=True)
    if dry_run:
        return candidates.count()
    pruned = 0
    for ids in id_batches(candidates, batch_size):
        pruned += WebhookEvent.objects.filter(pk__in=ids, pruned_at__isnull=True).update(
            body=b"", headers={}, pruned_at=timezone.now())
    logger.info("webhook bodies pruned", extra={"count": pruned, "older_than_days": older_than_days})
    return pruned


def event_replay(event_id: int, *, force: bool = False, inline: bool = False) -> str:
    """Send one stored event through processing again: "replayed", "skipped" (finished, no force) or "failed"
    (inline, a transient gateway error: left `failed` for the sweep). The admin and `payment_replay` both use
    it; the payment state machine holds either way, so a replay never moves a payment back or notifies twice.
    """
    if not event_requeue(event_id, force=force):
        return "skipped"
    if not inline:
        queueing.event_dispatch(event_id, path="replay")
        return "replayed"
    try:
        webhook_event_process(event_id, via="replay")
    except base.TransientGatewayError:
        return "failed"
    return "replayed"
