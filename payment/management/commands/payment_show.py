"""`payment_show <reference> [--json]`: one payment with its events, refunds and notifications."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from payment.selectors import payment_show_data


class Command(BaseCommand):
    help = "Show a payment by reference (--json prints the object documented in docs/operations.md)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("reference")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args: Any, **options: Any) -> None:
        data = payment_show_data(options["reference"])
        if data is None:
            raise CommandError(f"no payment with reference {options['reference']!r}")
        if options["json"]:
            self.stdout.write(json.dumps(data))
            return
        self.stdout.write(f"{data['reference']}  {data['gateway']}  {data['amount']} {data['currency']}  "
                          f"{data['status']}" + (f" ({data['review_reason']})" if data["review_reason"] else ""))
        for e in data["events"]:
            self.stdout.write(f"  event #{e['id']} {e['event']} {e['status']} {e['received_at']}")
        for r in data["refunds"]:
            self.stdout.write(f"  refund #{r['id']} {r['amount']} {r['status']}")
        for n in data["notifications"]:
            self.stdout.write(f"  notification {n['kind']} {n['created_at']}")
