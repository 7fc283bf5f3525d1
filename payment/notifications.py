"""Notification channels: the database row is always written; channels deliver it after commit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from django.conf import settings
from django.core.mail import send_mail
from django.db.models import F
from django.utils import timezone
from django.utils.module_loading import import_string

from payment.conf import app_settings

from .models import Notification, NotificationKind, Recipient
from .sql import Prepared

logger = logging.getLogger("payment.notifications")

_SUBJECTS = {
    NotificationKind.PAYMENT_SUCCEEDED: "Payment received: {ref}",
    NotificationKind.PAYMENT_FAILED: "Payment failed: {ref}",
    NotificationKind.PAYMENT_REFUNDED: "Refund issued: {ref}",
    NotificationKind.PAYMENT_REVIEW: "[Payshift] Payment needs review: {ref}",
    NotificationKind.EVENT_DEAD: "[Payshift] Webhook event needs a person: {ref}",
    NotificationKind.GATEWAY_SILENT: "[Payshift] A gateway has gone silent",
    NotificationKind.REFUND_UNKNOWN: "[Payshift] A refund's outcome is unknown: {ref}",
    NotificationKind.REFUND_HELD: "[Payshift] A refund of an unsettled payment is held: {ref}",
}


class Channel(Protocol):
    def deliver(self, notification: Notification) -> None: ...


def staff_emails() -> list[str]:
    return list(app_settings.PAYSHIFT_STAFF_EMAILS) or [email for _name, email in settings.ADMINS]


class EmailChannel:
    """Email through Django's email backend: customers at their address, staff at PAYSHIFT_STAFF_EMAILS."""

    def deliver(self, notification: Notification) -> None:
        payment = notification.payment
        if notification.recipient == Recipient.STAFF:
            to = staff_emails()
        else:
            to = [payment.customer_email] if payment and payment.customer_email else []
        if not to:
            return
        ref = payment.reference if payment else (notification.event.reference if notification.event else "")
        subject = _SUBJECTS.get(NotificationKind(notification.kind), "{ref}").format(ref=ref)
        send_mail(subject, notification.message, settings.DEFAULT_FROM_EMAIL, to, fail_silently=False)


def channels() -> list[Channel]:
    return [import_string(path)() for path in app_settings.PAYSHIFT_NOTIFICATION_CHANNELS]


def notification_deliver(notification: Notification) -> None:
    """Run every channel; a failing channel is recorded on the row and never raises."""
    # Optimistic claim: of two processes delivering the same row at once, one goes ahead.
    claimed = Notification.objects.filter(pk=notification.pk, delivered_at__isnull=True,
                                          delivery_attempts=notification.delivery_attempts).update(
        delivery_attempts=F("delivery_attempts") + 1)
    if not claimed:
        return
    notifications_mark({notification.pk: notification_send(notification)})


def notification_send(notification: Notification) -> list[str]:
    """Run every channel on a row the caller has claimed; returns the channels' errors (never raises)."""
    errors = []
    for channel in channels():
        try:
            channel.deliver(notification)
        except Exception as exc:  # a broken mail server must not break payment processing
            errors.append(f"{type(channel).__name__}: {exc}")
            logger.warning("notification delivery failed", extra={"notification_id": notification.pk,
                                                                  "kind": notification.kind, "error": str(exc)})
    return errors


def notifications_mark(outcomes: Mapping[int, list[str]]) -> None:
    """Record what notification_send returned: delivered, or the errors (the sweep retries those)."""
    delivered = [pk for pk, errors in outcomes.items() if not errors]
    if len(delivered) == 1:  # a transition's usual one notification: the statement compiled once
        NOTIFICATION_DELIVERED.update({"pk": delivered[0], "now": timezone.now()})
    elif delivered:
        Notification.objects.filter(pk__in=delivered).update(delivered_at=timezone.now(), delivery_error="")
    for pk, errors in outcomes.items():
        if errors:
            Notification.objects.filter(pk=pk).update(delivered_at=None, delivery_error="; ".join(errors)[:1000])


# A notification delivered without error, compiled once (also run together with its transition's mark).
NOTIFICATION_DELIVERED = Prepared(Notification, "update", lambda v: (
    Notification.objects.filter(pk=v["pk"]), {"delivered_at": v["now"], "delivery_error": ""}),
    {"pk": "id", "now": "delivered_at"})
