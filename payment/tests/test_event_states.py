"""The webhook event state machine, named once in payment/models.py: its sets agree with its table of moves,
and the services move events only along it."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from payment import services
from payment.models import (
    EVENT_CLAIMABLE,
    EVENT_FINISHED,
    EVENT_HANDLED,
    EVENT_MOVES,
    EVENT_REPLAYABLE,
    EVENT_UNFINISHED,
    EventStatus,
    WebhookEvent,
)

from .conftest import paystack_charge, signed_post

pytestmark = pytest.mark.django_db


def test_every_status_has_a_row_of_moves_and_the_sets_partition_it() -> None:
    assert set(EVENT_MOVES) == set(EventStatus.values)
    assert set(EventStatus.values) == EVENT_UNFINISHED | EVENT_FINISHED
    assert not EVENT_UNFINISHED & EVENT_FINISHED
    assert EVENT_HANDLED < EVENT_FINISHED and EVENT_CLAIMABLE < EVENT_UNFINISHED
    # A worker takes (claims) only what may move to processing; a person replays only what may be requeued.
    assert all(EventStatus.PROCESSING in EVENT_MOVES[s] for s in EVENT_CLAIMABLE)
    assert all(EventStatus.QUEUED in EVENT_MOVES[s] for s in EVENT_REPLAYABLE)
    # Nothing leaves a finished status by itself: only towards a replay (queued / processing by force).
    assert all(EVENT_MOVES[s] <= {EventStatus.QUEUED, EventStatus.PROCESSING} for s in EVENT_FINISHED)
    assert EVENT_MOVES[EventStatus.IGNORED] == frozenset()


@pytest.mark.parametrize("status", sorted(EVENT_FINISHED))
def test_replay_leaves_a_finished_event_alone_without_force(client: Client, status: str) -> None:
    signed_post(client, "paystack", paystack_charge("ES-1"))
    event = WebhookEvent.objects.get()
    WebhookEvent.objects.filter(pk=event.pk).update(status=status)
    outcome = services.event_replay(event.pk)
    event.refresh_from_db()
    assert outcome == ("replayed" if status in EVENT_REPLAYABLE else "skipped")
    assert event.status == (EventStatus.QUEUED if status in EVENT_REPLAYABLE else status) or outcome == "replayed"


def test_replay_is_one_service_for_the_admin_and_the_command(client: Client, monkeypatch: Any) -> None:
    from io import StringIO

    from django.core.management import call_command

    calls: list[tuple[int, bool]] = []

    def replay(event_id: int, *, force: bool = False, inline: bool = False) -> str:
        calls.append((event_id, force))
        return "replayed"

    monkeypatch.setattr(services, "event_replay", replay)
    signed_post(client, "paystack", paystack_charge("ES-2"))
    event = WebhookEvent.objects.get()
    call_command("payment_replay", str(event.pk), "--force", stdout=StringIO())
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("ops", "ops@example.com", "pw")
    client.force_login(admin)
    client.post("/admin/payment/webhookevent/", {"action": "reprocess", "_selected_action": [event.pk]})
    assert calls == [(event.pk, True), (event.pk, True)]
