"""Write-side domain logic, one module per concern; this package is the services' public face.

Layers, bottom up: `errors`, `scheduling`; `state` (the payment state machine and its notification rows);
`events` (webhook event rows); `verification`, `refunds`, `payments`; `ingest` and `inbox` (receive and
process webhooks); `alerts`, `reconciliation` (the periodic safety net). Call sites use `services.<name>`.
"""

from .alerts import gateway_silence_alerts
from .errors import PaymentCreateError, RefundNotAllowedError, SignatureError, SourceNotAllowedError
from .events import event_mark_dead, event_schedule_retry
from .inbox import EVENT_HANDLERS, event_replay, event_requeue, events_prune, webhook_event_process
from .ingest import ReceiveResult, webhook_receive
from .payments import payment_create, payment_review_resolve
from .reconciliation import pending_payments_check
from .refunds import (
    refund_mark_unknown,
    refund_poll,
    refund_request,
    refund_settle,
    refund_submit,
    refundable_amount,
)
from .scheduling import backoff_seconds, heartbeat, lease_acquire, lease_release
from .state import ALLOWED_TRANSITIONS, OPEN_STATUSES, payment_transition, transition_hooks_run
from .verification import payment_verify

__all__ = [
    "ALLOWED_TRANSITIONS", "EVENT_HANDLERS", "OPEN_STATUSES", "PaymentCreateError", "ReceiveResult",
    "RefundNotAllowedError", "SignatureError", "SourceNotAllowedError", "backoff_seconds", "event_mark_dead",
    "event_replay", "event_requeue", "event_schedule_retry", "events_prune", "gateway_silence_alerts", "heartbeat",
    "lease_acquire", "lease_release", "payment_create", "payment_review_resolve", "payment_transition",
    "payment_verify", "pending_payments_check", "refund_mark_unknown", "refund_poll", "refund_request",
    "refund_settle", "refund_submit", "refundable_amount", "transition_hooks_run", "webhook_event_process",
    "webhook_receive",
]
