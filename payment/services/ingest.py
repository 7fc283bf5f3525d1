"""Ingest: authenticate, parse and durably store one delivery, then hand it to a queue after commit."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, router, transaction
from django.utils import timezone

from payment.conf import app_settings

from .. import metrics, outbox, sql
from ..gateways import base
from ..gateways.registry import gateway_get
from ..models import (
    EventKind,
    EventStatus,
    WebhookEvent,
)
from .errors import SignatureError, SourceNotAllowedError

logger = logging.getLogger("payment.services")


@dataclass(frozen=True)
class ReceiveResult:
    outcome: str  # "stored", "duplicate" or "ignored"
    event_id: int | None
    parsed: base.ParsedEvent


def _safe_headers(headers: Mapping[str, str], secret_headers: frozenset[str]) -> dict[str, str]:
    """Headers worth keeping for debugging, with signatures and credentials replaced by a marker."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in ("cookie", "authorization", "proxy-authorization") or key in secret_headers:
            kept[key] = "[redacted]"
        elif len(kept) < 40:
            kept[key] = value[:256]
    return kept


def webhook_receive(*, gateway_name: str, body: bytes, headers: Mapping[str, str],
                    source_ip: str | None) -> ReceiveResult:
    """Authenticate, parse and durably store one delivery, then hand it to a queue after commit.

    Raises UnknownGatewayError, SourceNotAllowedError, SignatureError or base.InvalidPayloadError; lets
    database errors through (the edge answers 503 so the gateway retries).
    """
    gateway = gateway_get(gateway_name)
    if gateway_name in app_settings.PAYSHIFT_IP_ALLOWLIST_GATEWAYS and source_ip not in gateway.published_ips:
        raise SourceNotAllowedError(source_ip or "unknown")
    if not gateway.webhook_secrets():
        raise SignatureError("no_secret")
    if not gateway.verify_signature(body, headers):
        raise SignatureError("bad_signature")
    parsed = _storable(gateway.parse_event(body))
    ignored = parsed.kind == EventKind.OTHER
    dedupe_key = event_dedupe_key(parsed.dedupe_key)
    values = {
        "gateway": gateway_name,
        "event": parsed.event,
        "kind": str(parsed.kind),
        "body": body,
        "headers": _safe_headers(headers, gateway.secret_headers),
        "source_ip": source_ip,
        "dedupe_key": dedupe_key,
        "reference": parsed.reference,
        "gateway_transaction_id": parsed.gateway_transaction_id,
        "mode": parsed.mode if parsed.mode in ("test", "live") else "",
        # `received` until a worker claims it: a process that dies before its relay published the id leaves a
        # row the sweep finds within PAYSHIFT_SWEEP_AFTER_SECONDS (queueing.events_dispatch).
        "status": _IGNORED if ignored else _RECEIVED,
        "processed_at": timezone.now() if ignored else None,
    }
    # Under autocommit (the webhook view's mode) one INSERT is its own transaction: no BEGIN/COMMIT round
    # trips on the hot path (bench/, issue 6). Inside a caller's transaction a savepoint contains a duplicate.
    using = router.db_for_write(WebhookEvent)
    in_transaction = transaction.get_connection(using).in_atomic_block
    try:
        with transaction.atomic(using=using) if in_transaction else contextlib.nullcontext():
            # One statement, compiled once, and the connection's health check (payment/sql.py); a retry after
            # a dropped connection is safe: if the first INSERT committed, its twin hits the dedupe key.
            event_id: int = sql.first_statement(lambda: sql.insert_values(WebhookEvent, values, using=using),
                                                using=using)
    except IntegrityError:
        # The unique (gateway, dedupe_key) constraint: a resend, a replay or a concurrent twin.
        if not WebhookEvent.objects.filter(gateway=gateway_name, dedupe_key=dedupe_key).exists():
            raise
        metrics.EVENTS_DUPLICATE.labels(gateway_name).inc()
        logger.info("webhook duplicate", extra=_log_fields(parsed))
        return ReceiveResult("duplicate", None, parsed)
    metrics.EVENTS_RECEIVED.labels(gateway_name, parsed.event if not ignored else "other").inc()
    logger.info("webhook ignored" if ignored else "webhook received",
                extra={**_log_fields(parsed), "event_id": event_id})
    if not ignored:
        # The relay publishes only committed rows: at once under autocommit (the webhook view's mode, where
        # on_commit would call it at once too), after the caller's commit otherwise.
        if in_transaction:
            transaction.on_commit(lambda: outbox.relay.submit(event_id), using=using)
        else:
            outbox.relay.submit(event_id)
    return ReceiveResult("ignored" if ignored else "stored", event_id, parsed)


_RECEIVED, _IGNORED = str(EventStatus.RECEIVED), str(EventStatus.IGNORED)
_PARSED_FIELDS = tuple(item.name for item in dataclasses.fields(base.ParsedEvent))


def _storable(parsed: base.ParsedEvent) -> base.ParsedEvent:
    """Refuse identifiers no database stores as text (NUL, unpaired surrogates): a 400, not a 503 that the
    gateway would resend for ever (found by payment/tests/test_fuzz.py). The raw body is bytes: unaffected."""
    for name in _PARSED_FIELDS:
        value = getattr(parsed, name)
        if isinstance(value, str) and ("\x00" in value or (not value.isascii() and not _encodable(value))):
            raise base.InvalidPayloadError(f"{name} holds a NUL or an unpaired surrogate")
    return parsed


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def event_dedupe_key(key: str) -> str:
    return key if len(key) <= 255 else key[:190] + ":" + hashlib.sha256(key.encode()).hexdigest()


def _log_fields(parsed: base.ParsedEvent) -> dict[str, Any]:
    return {"gateway": parsed.gateway, "event": parsed.event, "reference": parsed.reference}
