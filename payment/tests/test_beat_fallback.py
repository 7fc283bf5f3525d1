"""The Django Q stand-in for beat: silent beat is counted from the cluster's start, not from 'no row yet'."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from payment import q_tasks, services
from payment.models import Heartbeat

pytestmark = pytest.mark.django_db

WARNING = "celery beat silent: django q runs check_pending_payments"


def _warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any(r.getMessage() == WARNING for r in caplog.records)


def _cluster_started(ago: timedelta) -> None:
    q_tasks._cluster_age()  # the row this cluster (this test process's parent) writes on first run
    Heartbeat.objects.filter(name__startswith="django_q_up:").update(at=timezone.now() - ago)


def test_fresh_start_before_beats_first_tick_neither_warns_nor_runs(caplog: pytest.LogCaptureFixture,
                                                                    settings: Any) -> None:
    settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS = 30
    assert not Heartbeat.objects.filter(name="check_pending_payments").exists()  # beat never ran here
    assert q_tasks.check_pending_payments_q() == "waiting_for_beat"
    assert not _warned(caplog)
    assert Heartbeat.objects.filter(name="django_q").exists()  # /readyz still sees the cluster alive


def test_restart_with_an_old_beat_heartbeat_waits_for_beat(caplog: pytest.LogCaptureFixture, settings: Any) -> None:
    """Yesterday's stack left a heartbeat; today's start must not call beat silent before its first tick."""
    settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS = 30
    Heartbeat.objects.create(name="check_pending_payments", at=timezone.now() - timedelta(days=1))
    assert q_tasks.check_pending_payments_q() == "waiting_for_beat"
    assert not _warned(caplog)


def test_beat_silent_for_three_intervals_since_the_cluster_started_warns_and_runs_the_check(
        caplog: pytest.LogCaptureFixture, settings: Any) -> None:
    settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS = 30
    _cluster_started(timedelta(seconds=91))
    result = q_tasks.check_pending_payments_q()
    assert isinstance(result, dict)  # pending_payments_check ran
    assert _warned(caplog)


def test_beat_that_ran_after_the_cluster_started_counts_from_its_heartbeat(
        caplog: pytest.LogCaptureFixture, settings: Any) -> None:
    settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS = 30
    _cluster_started(timedelta(minutes=10))
    services.heartbeat("check_pending_payments")
    assert q_tasks.check_pending_payments_q() == "beat_is_alive"
    Heartbeat.objects.filter(name="check_pending_payments").update(at=timezone.now() - timedelta(seconds=89))
    assert q_tasks.check_pending_payments_q() == "beat_is_alive"
    Heartbeat.objects.filter(name="check_pending_payments").update(at=timezone.now() - timedelta(seconds=91))
    assert isinstance(q_tasks.check_pending_payments_q(), dict)
    assert _warned(caplog)


def test_one_cluster_start_row_per_cluster_and_long_gone_ones_are_forgotten() -> None:
    old = timezone.now() - timedelta(days=8)
    Heartbeat.objects.create(name="django_q_up:gone-host:4242", at=old)
    Heartbeat.objects.create(name="django_q_up:other-host:77", at=timezone.now() - timedelta(days=1))
    first = q_tasks._cluster_age()
    assert q_tasks._cluster_age() >= first  # the same cluster keeps its start
    names = set(Heartbeat.objects.filter(name__startswith="django_q_up:").values_list("name", flat=True))
    assert "django_q_up:gone-host:4242" not in names and "django_q_up:other-host:77" in names
    assert len(names) == 2
