"""Scheduling helpers: backoff with jitter, heartbeats, database leases, keyset batches."""

from __future__ import annotations

import contextlib
import logging
import random
from datetime import timedelta
from typing import Any

from django.db import IntegrityError
from django.utils import timezone

from ..models import (
    Heartbeat,
)

logger = logging.getLogger("payment.services")


def backoff_seconds(attempt: int, *, base_seconds: float, max_seconds: float) -> float:
    """Exponential backoff with full jitter (so a burst of failures does not retry in lockstep)."""
    ceiling = min(max_seconds, base_seconds * (2 ** attempt))
    return random.uniform(ceiling / 2, ceiling)


def heartbeat(name: str) -> None:
    Heartbeat.objects.update_or_create(name=name, defaults={"at": timezone.now()})


def lease_acquire(name: str, seconds: float) -> bool:
    """A database lease, so two schedulers (beat and the Django Q fallback) never run a job at once."""
    now = timezone.now()
    # Created concurrently by another scheduler? The conditional UPDATE below still decides.
    with contextlib.suppress(IntegrityError):
        Heartbeat.objects.get_or_create(name=name, defaults={"at": now - timedelta(seconds=seconds + 1)})
    return bool(Heartbeat.objects.filter(name=name, at__lt=now - timedelta(seconds=seconds)).update(at=now))


def lease_release(name: str) -> None:
    Heartbeat.objects.filter(name=name).update(at=timezone.now() - timedelta(days=1))


def id_batches(queryset: Any, batch_size: int = 500) -> Any:
    """Yield lists of primary keys by keyset pagination: a huge backlog never loads at once."""
    last = 0
    while True:
        ids = list(queryset.filter(pk__gt=last).order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return
        yield ids
        last = ids[-1]


def ids_in_batches(queryset: Any, batch_size: int = 500) -> Any:
    for ids in id_batches(queryset, batch_size):
        yield from ids
