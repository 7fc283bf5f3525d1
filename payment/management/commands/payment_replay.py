"""`payment_replay`: send stored events through the queues again (same idempotent services as live traffic)."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from payment import services
from payment.models import EVENT_REPLAYABLE, EventKind, EventStatus, WebhookEvent

# What --status may select: what a person may requeue, and processed events (replayed only with --force).
REPLAYABLE = sorted({*EVENT_REPLAYABLE, EventStatus.PROCESSED})


def _when(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise CommandError(f"not an ISO date-time: {value!r}")
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed)


class Command(BaseCommand):
    help = ("Replay webhook events by id, status, gateway and time window. A processed event is left alone "
            "unless --force; the payment state machine holds either way.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("event_ids", nargs="*", type=int, help="event ids (optional)")
        parser.add_argument("--status", action="append", choices=REPLAYABLE, default=[],
                            help="only events in this status (repeatable)")
        parser.add_argument("--gateway", default="")
        parser.add_argument("--since", type=_when, help="received at or after (ISO date-time)")
        parser.add_argument("--until", type=_when, help="received before (ISO date-time)")
        parser.add_argument("--hours", type=float, help="received within the last N hours")
        parser.add_argument("--force", action="store_true", help="re-run processed events too")
        parser.add_argument("--inline", action="store_true", help="process here instead of through the queues")
        parser.add_argument("--dry-run", action="store_true", help="list what would be replayed")
        parser.add_argument("--limit", type=int, default=10000)

    def handle(self, *args: Any, **opts: Any) -> None:
        events = WebhookEvent.objects.exclude(kind=EventKind.OTHER)
        if opts["event_ids"]:
            events = events.filter(pk__in=opts["event_ids"])
        elif not (opts["status"] or opts["gateway"] or opts["since"] or opts["hours"]):
            raise CommandError("say what to replay: event ids, --status, --gateway, --since or --hours")
        if opts["status"]:
            events = events.filter(status__in=opts["status"])
        if opts["gateway"]:
            events = events.filter(gateway=opts["gateway"])
        if opts["since"]:
            events = events.filter(received_at__gte=opts["since"])
        if opts["until"]:
            events = events.filter(received_at__lt=opts["until"])
        if opts["hours"]:
            events = events.filter(received_at__gte=timezone.now() - timedelta(hours=opts["hours"]))
        selected = list(events.order_by("received_at", "pk").values_list("pk", "status", "reference")[
            : opts["limit"]])
        if not selected:
            self.stdout.write("nothing to replay")
            return
        if opts["dry_run"]:
            for pk, status, reference in selected:
                note = "" if status != EventStatus.PROCESSED or opts["force"] else "  (skipped: processed, no --force)"
                self.stdout.write(f"would replay #{pk} {status} {reference}{note}")
            self.stdout.write(f"{len(selected)} event(s) selected (dry run: nothing changed)")
            return
        tally = {"replayed": 0, "skipped": 0, "failed": 0}
        for index, (pk, _status, _reference) in enumerate(selected, start=1):
            outcome = services.event_replay(pk, force=opts["force"], inline=opts["inline"])
            tally[outcome] += 1
            if outcome == "failed":
                self.stderr.write(f"#{pk}: transient gateway error (left as failed; the sweep retries it)")
            self._progress(index, len(selected))
        self.stdout.write(f"replayed {tally['replayed']}, skipped {tally['skipped']} (already processed; use --force), "
                          f"failed {tally['failed']}")

    def _progress(self, done: int, total: int) -> None:
        width = 30
        filled = int(width * done / total)
        line = f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        if sys.stdout.isatty():
            self.stdout.write(line, ending="")
            if done == total:
                self.stdout.write("")
        elif done == total or done % 100 == 0:
            self.stdout.write(line.strip())
