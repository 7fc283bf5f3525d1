"""`payment_refund <reference> [--amount N] [--key K]`: request a full or partial refund."""

from __future__ import annotations

import uuid
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from payment import services
from payment.models import Payment


class Command(BaseCommand):
    help = "Request a refund (amount in minor units; default: everything still refundable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("reference")
        parser.add_argument("--amount", type=int, default=None)
        parser.add_argument("--key", default="", help="idempotency key (repeat it to get the same refund)")
        parser.add_argument("--reason", default="requested from the command line")

    def handle(self, *args: Any, **options: Any) -> None:
        payment = Payment.objects.filter(reference=options["reference"]).first()
        if payment is None:
            raise CommandError(f"no payment with reference {options['reference']!r}")
        try:
            refund = services.refund_request(payment.pk, amount=options["amount"],
                                             idempotency_key=options["key"] or f"cli:{uuid.uuid4().hex}",
                                             reason=options["reason"], requested_by="cli")
        except services.RefundNotAllowedError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"refund #{refund.pk}: {refund.amount} {refund.currency} minor units, {refund.status}")
