"""The periodic tasks Payshift needs, added to whichever Celery beat runs (Payshift's own or the host's)."""

from __future__ import annotations

from typing import Any

from celery.signals import beat_init

from payment.conf import app_settings


def periodic_tasks() -> dict[str, dict[str, Any]]:
    """Beat entries by name: the safety net that catches what a gateway failed to deliver, and retention."""
    return {
        "check-pending-payments": {"task": "check_pending_payments",
                                   "schedule": float(app_settings.PAYSHIFT_RECONCILE_INTERVAL_SECONDS)},
        "prune-webhook-bodies": {"task": "prune_webhook_bodies", "schedule": 6 * 3600.0},
    }


@beat_init.connect
def periodic_tasks_schedule(sender: Any = None, **kwargs: Any) -> None:
    """When any beat starts (`celery -A <project> beat`), add Payshift's entries to its scheduler; an entry of
    the same name the project scheduled itself wins. Nothing to set in the host's settings.

    Beat sends beat_init once its scheduler is set up; `update_from_dict` is the schedulers' own way to add
    entries (the default file scheduler and database ones alike).
    """
    scheduler = getattr(sender, "scheduler", None)
    if scheduler is None:
        return
    missing = {name: entry for name, entry in periodic_tasks().items() if name not in scheduler.schedule}
    if missing:
        scheduler.update_from_dict(missing)
