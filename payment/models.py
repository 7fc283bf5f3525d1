"""Payment, WebhookEvent (the inbox), Refund, Notification and the audit of payment transitions."""

from __future__ import annotations

from django.conf import settings
from django.contrib.contenttypes.fields import GenericForeignKey
from django.contrib.contenttypes.models import ContentType
from django.db import models
from django.db.models import Q

from .money import minor_to_major


class PaymentStatus(models.TextChoices):
    PENDING = "pending"
    SUCCESS = "success"
    FAILED = "failed"
    ABANDONED = "abandoned"
    REVERSED = "reversed"
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"
    REVIEW = "review"


class Mode(models.TextChoices):
    TEST = "test"
    LIVE = "live"


class ReviewReason(models.TextChoices):
    AMOUNT_MISMATCH = "amount_mismatch"
    CURRENCY_MISMATCH = "currency_mismatch"
    MODE_MISMATCH = "mode_mismatch"
    REFERENCE_MISMATCH = "reference_mismatch"


class Payment(models.Model):
    """One payment we asked a gateway to collect; `amount` is what we expect, in minor units."""

    reference = models.CharField(max_length=100, unique=True)
    gateway = models.CharField(max_length=32, db_index=True)
    amount = models.BigIntegerField(help_text="Expected amount in minor units (kobo, pesewas, cents).")
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=24, choices=PaymentStatus.choices, default=PaymentStatus.PENDING)
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.TEST)
    customer_email = models.EmailField(db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="payments"
    )
    # The host's own object this payment is for (an order, an invoice, a booking): any model, by content type
    # and primary key, so Payshift needs no foreign key into the host's schema (payment.api.payment_start).
    order_type = models.ForeignKey(ContentType, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # NULL, not "", when there is no order: a GenericForeignKey set to None writes None.
    order_id = models.CharField(max_length=64, null=True, blank=True)  # noqa: DJ001
    order = GenericForeignKey("order_type", "order_id")
    metadata = models.JSONField(default=dict, blank=True)
    gateway_transaction_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    amount_paid = models.BigIntegerField(null=True, blank=True, help_text="What the gateway's API reported.")
    # The currency of amount_paid, as the gateway's API reported it: a currency-mismatch review holds money in
    # another currency than `currency`, and a refund must go back in what the customer actually paid.
    currency_paid = models.CharField(max_length=3, blank=True, default="")
    amount_refunded = models.BigIntegerField(default=0)
    review_reason = models.CharField(max_length=32, choices=ReviewReason.choices, blank=True, default="")
    checkout_url = models.URLField(max_length=500, blank=True, default="")
    paid_at = models.DateTimeField(null=True, blank=True)
    # Reconciliation walks pending payments oldest-checked first, in batches.
    last_verified_at = models.DateTimeField(null=True, blank=True)
    # Refund webhooks are waiting for this charge to settle (set and read under the row lock): the settling
    # transition releases them at once; without the flag every settle would have to look for them.
    # db_default too: a process of the previous version, still running during an upgrade, inserts payments
    # without this column.
    refund_events_held = models.BooleanField(default=False, db_default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["status", "last_verified_at"], name="payment_status_verified_idx"),
            models.Index(fields=["status", "created_at"], name="payment_status_created_idx"),
            models.Index(fields=["order_type", "order_id"], name="payment_order_idx"),
        ]
        permissions = [
            # Money going out and a person's verdict on quarantined money: more than the admin's view access.
            ("refund_payment", "Can request and settle refunds of a payment"),
            ("resolve_review", "Can resolve a payment held for review"),
        ]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="payment_amount_positive"),
            models.CheckConstraint(condition=Q(amount_refunded__gte=0), name="payment_refunded_nonnegative"),
        ]

    def __str__(self) -> str:
        return f"{self.reference} ({self.gateway}, {self.status})"

    @property
    def amount_display(self) -> str:
        """"1500.50 NGN": for people; the stored amount stays integer minor units."""
        return f"{minor_to_major(self.amount, self.currency)} {self.currency}"

    @property
    def refund_currency(self) -> str:
        """What a refund goes back in: the currency the gateway says was paid."""
        return self.currency_paid or self.currency


class EventStatus(models.TextChoices):
    RECEIVED = "received"
    QUEUED = "queued"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    UNMATCHED = "unmatched"
    FAILED = "failed"
    DEAD = "dead"


_E = EventStatus
# The webhook event state machine, named once (docs/architecture.md, "Webhook event states"): every status set
# the code asks about, and the one table of moves. A replay (forced) is the only way out of a finished status.
EVENT_UNFINISHED = frozenset({_E.RECEIVED, _E.QUEUED, _E.PROCESSING, _E.FAILED, _E.UNMATCHED})  # work still owed
EVENT_FINISHED = frozenset({_E.PROCESSED, _E.IGNORED, _E.DEAD})  # nothing more happens by itself
EVENT_HANDLED = frozenset({_E.PROCESSED, _E.IGNORED})  # applied or not ours: bodies may be pruned
EVENT_CLAIMABLE = frozenset({_E.RECEIVED, _E.QUEUED, _E.FAILED, _E.UNMATCHED})  # a worker may take it now
EVENT_REPLAYABLE = frozenset({_E.RECEIVED, _E.QUEUED, _E.FAILED, _E.DEAD, _E.UNMATCHED})  # a person may requeue
EVENT_MOVES: dict[str, frozenset[str]] = {
    _E.RECEIVED: frozenset({_E.QUEUED, _E.PROCESSING, _E.DEAD}),
    # -> received: no queue took it; -> queued: the sweep or a person publishes a stale one again.
    _E.QUEUED: frozenset({_E.PROCESSING, _E.RECEIVED, _E.DEAD, _E.QUEUED}),
    # -> processing: a stale claim (its worker died) is taken over.
    _E.PROCESSING: frozenset({_E.PROCESSED, _E.IGNORED, _E.UNMATCHED, _E.FAILED, _E.DEAD, _E.QUEUED, _E.PROCESSING}),
    _E.FAILED: frozenset({_E.QUEUED, _E.PROCESSING, _E.DEAD}),
    _E.UNMATCHED: frozenset({_E.QUEUED, _E.PROCESSING, _E.DEAD}),
    _E.PROCESSED: frozenset({_E.QUEUED, _E.PROCESSING}),  # forced replay only
    _E.DEAD: frozenset({_E.QUEUED, _E.PROCESSING}),  # replay by a person
    _E.IGNORED: frozenset(),
}


class EventKind(models.TextChoices):
    CHARGE = "charge"
    REFUND = "refund"
    OTHER = "other"


class WebhookEvent(models.Model):
    """The inbox: every authentic delivery, stored before we answer (docs/architecture.md, the pipeline)."""

    gateway = models.CharField(max_length=32)
    event = models.CharField(max_length=100)
    kind = models.CharField(max_length=16, choices=EventKind.choices, default=EventKind.OTHER)
    # Raw bytes exactly as signed; emptied by retention pruning (the dedupe key outlives it).
    body = models.BinaryField(default=b"")
    headers = models.JSONField(default=dict, blank=True)
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    dedupe_key = models.CharField(max_length=255)
    reference = models.CharField(max_length=100, blank=True, default="", db_index=True)
    gateway_transaction_id = models.CharField(max_length=64, blank=True, default="")
    mode = models.CharField(max_length=4, choices=Mode.choices, blank=True, default="")
    status = models.CharField(max_length=16, choices=EventStatus.choices, default=EventStatus.RECEIVED)
    dispatched_via = models.CharField(max_length=16, blank=True, default="")
    # Who holds a `processing` claim (the Celery task id, or the token a Django Q retry chain carries): that
    # holder's retry may retake it at once when a database error prevented releasing it; nobody else may.
    claim_token = models.CharField(max_length=64, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True, default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    payment = models.ForeignKey(Payment, null=True, blank=True, on_delete=models.SET_NULL, related_name="events")
    received_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # A gateway resend, a replayed capture or a concurrent duplicate hits this and is a no-op.
            models.UniqueConstraint(fields=["gateway", "dedupe_key"], name="webhookevent_unique_dedupe"),
        ]
        indexes = [
            models.Index(fields=["status", "updated_at"], name="event_status_updated_idx"),
            models.Index(fields=["received_at"], name="event_received_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.gateway}:{self.event} {self.reference} ({self.status})"


class TransitionSource(models.TextChoices):
    WEBHOOK = "webhook"
    CALLBACK = "callback"
    RECONCILE = "reconcile"
    REFUND = "refund"
    STAFF = "staff"


class PaymentTransition(models.Model):
    """Audit row for every payment state change; notifications and signals hang off it."""

    payment = models.ForeignKey(Payment, on_delete=models.CASCADE, related_name="transitions")
    from_status = models.CharField(max_length=24, choices=PaymentStatus.choices)
    to_status = models.CharField(max_length=24, choices=PaymentStatus.choices)
    source = models.CharField(max_length=16, choices=TransitionSource.choices)
    event = models.ForeignKey(
        WebhookEvent, null=True, blank=True, on_delete=models.SET_NULL, related_name="transitions"
    )
    reason = models.CharField(max_length=255, blank=True, default="")
    details = models.JSONField(default=dict, blank=True)
    actor = models.CharField(max_length=150, blank=True, default="")
    # Side effects after commit (channels, signals): claimed by a conditional UPDATE so two runners never
    # both send; a claim older than the stuck threshold is taken over (the claimer died).
    hooks_started_at = models.DateTimeField(null=True, blank=True)
    hooks_done_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["hooks_done_at", "created_at"], name="transition_hooks_idx")]

    def __str__(self) -> str:
        return f"{self.payment_id}: {self.from_status} -> {self.to_status}"


class RefundStatus(models.TextChoices):
    PENDING = "pending"  # requested by us, not yet accepted by the gateway
    PROCESSING = "processing"  # accepted by the gateway
    # Sent, but the answer was lost or unreadable: it may have been made. Its amount stays reserved and it is
    # never sent again; the gateway's refund list, a refund webhook or a person settles it.
    UNKNOWN = "unknown"
    PROCESSED = "processed"
    FAILED = "failed"


# Refunds whose amount is reserved: the payment cannot be refunded past them.
OPEN_REFUND_STATUSES = (RefundStatus.PENDING, RefundStatus.PROCESSING, RefundStatus.UNKNOWN)


class Refund(models.Model):
    payment = models.ForeignKey(Payment, on_delete=models.PROTECT, related_name="refunds")
    amount = models.BigIntegerField()
    currency = models.CharField(max_length=3)
    status = models.CharField(max_length=16, choices=RefundStatus.choices, default=RefundStatus.PENDING)
    idempotency_key = models.CharField(max_length=255, unique=True)
    gateway_refund_id = models.CharField(max_length=64, blank=True, default="", db_index=True)
    # The gateway's own refund reference (Paystack's refund_reference), learned from a webhook or a fetch:
    # what later events about the same refund are matched on.
    gateway_refund_reference = models.CharField(max_length=100, blank=True, default="", db_index=True)
    reason = models.CharField(max_length=255, blank=True, default="")
    requested_by = models.CharField(max_length=150, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    # Set (and committed) BEFORE the refund POST: a refund with this set and no gateway id may have reached
    # the gateway, so it is never sent again automatically (a second POST could refund twice).
    submitted_at = models.DateTimeField(null=True, blank=True)
    # The webhook that confirmed it, so a later webhook for the same refund is not booked a second time.
    event = models.ForeignKey("WebhookEvent", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="refund_amount_positive")]

    def __str__(self) -> str:
        return f"refund #{self.pk}: {self.amount} {self.currency} ({self.status})"


class NotificationKind(models.TextChoices):
    PAYMENT_SUCCEEDED = "payment_succeeded"
    PAYMENT_FAILED = "payment_failed"
    PAYMENT_REFUNDED = "payment_refunded"
    PAYMENT_REVIEW = "payment_review"  # staff
    EVENT_DEAD = "event_dead"  # staff
    GATEWAY_SILENT = "gateway_silent"  # staff
    REFUND_UNKNOWN = "refund_unknown"  # staff: a refund's outcome needs checking at the gateway
    REFUND_HELD = "refund_held"  # staff: the gateway refunded a charge that has not settled here


class Recipient(models.TextChoices):
    CUSTOMER = "customer"
    STAFF = "staff"


class Notification(models.Model):
    """Written in the transition's own transaction; channels (email, ...) deliver after commit."""

    kind = models.CharField(max_length=32, choices=NotificationKind.choices)
    recipient = models.CharField(max_length=16, choices=Recipient.choices)
    payment = models.ForeignKey(
        Payment, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    transition = models.ForeignKey(
        PaymentTransition, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    event = models.ForeignKey(
        WebhookEvent, null=True, blank=True, on_delete=models.CASCADE, related_name="notifications"
    )
    message = models.TextField(blank=True, default="")
    # Alerts about no single transition or event (e.g. a silent gateway) are deduplicated by this key.
    alert_key = models.CharField(max_length=120, null=True, blank=True, unique=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    delivery_error = models.TextField(blank=True, default="")
    delivery_attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["delivered_at", "created_at"], name="notification_undelivered_idx")]
        constraints = [
            # Exactly once per transition (or per dead event): enforced by the database, not by a check.
            models.UniqueConstraint(
                fields=["transition", "kind"], condition=Q(transition__isnull=False), name="notification_once"
            ),
            models.UniqueConstraint(
                fields=["event", "kind"], condition=Q(event__isnull=False), name="notification_event_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} -> {self.recipient}"


class Heartbeat(models.Model):
    """Last run of a periodic job, so the Django Q fallback schedule only works when beat is silent."""

    name = models.CharField(max_length=64, primary_key=True)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} @ {self.at:%Y-%m-%d %H:%M:%S}"
