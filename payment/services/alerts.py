"""Staff alerts about no single event: a gateway that went silent while payments wait on it."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from payment.conf import app_settings

from ..gateways.registry import gateway_names
from ..models import (
    NotificationKind,
    Payment,
    Recipient,
    WebhookEvent,
)
from .state import S, deliver_after_commit, notification_create

logger = logging.getLogger("payment.services")


def gateway_silence_alerts(now: Any = None) -> list[str]:
    """Alert staff when a gateway sent nothing for a while although payments are waiting on it."""
    now = now or timezone.now()
    window = timedelta(seconds=app_settings.PAYSHIFT_GATEWAY_SILENCE_SECONDS)
    silent = []
    for name in gateway_names():
        waiting = Payment.objects.filter(gateway=name, status=S.PENDING, created_at__lt=now - window).exists()
        heard = WebhookEvent.objects.filter(gateway=name, received_at__gte=now - window).exists()
        if not waiting or heard:
            continue
        bucket = now.strftime("%Y-%m-%dT%H")
        with transaction.atomic():
            notification = notification_create(
                kind=NotificationKind.GATEWAY_SILENT, recipient=Recipient.STAFF, alert_key=f"silent:{name}:{bucket}",
                message=f"No webhook from {name} for {int(window.total_seconds() // 60)} minutes while payments "
                        "are pending. Check the gateway's status page and the webhook URL in its dashboard.")
            if notification is not None:
                silent.append(name)
                logger.error("gateway silent", extra={"gateway": name})
                deliver_after_commit([notification.pk])
    return silent
