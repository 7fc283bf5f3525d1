"""`payment_retention --days N`: drop raw bodies and headers of finished events, keep their dedupe keys."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from payment import services
from payment.conf import app_settings


class Command(BaseCommand):
    help = ("Empty the body and headers of processed/ignored events older than N days (default "
            "PAYSHIFT_RETENTION_DAYS). Rows and dedupe keys stay, so a replayed capture is still a duplicate.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=app_settings.PAYSHIFT_RETENTION_DAYS)
        parser.add_argument("--dry-run", action="store_true")

    def handle(self, *args: Any, **opts: Any) -> None:
        if opts["days"] < 1:
            raise CommandError("--days must be at least 1")
        count = services.events_prune(older_than_days=opts["days"], dry_run=opts["dry_run"])
        verb = "would prune" if opts["dry_run"] else "pruned"
        self.stdout.write(f"{verb} {count} event(s) older than {opts['days']} days")
