"""The Celery app, configured from Django settings (CELERY_* names, read from the environment)."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun
from kombu import Exchange, Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")

app = Celery("payshift")
app.config_from_object("django.conf:settings", namespace="CELERY")

# Separate queues so a reconciliation or refund backlog never delays a customer's webhook. A worker
# started without -Q consumes all three (design.md 2); deployments may split them across workers.
_exchange = Exchange("payshift", type="direct")
app.conf.update(
    task_queues=(
        Queue("webhooks", _exchange, routing_key="webhooks"),
        Queue("reconcile", _exchange, routing_key="reconcile"),
        Queue("refunds", _exchange, routing_key="refunds"),
    ),
    task_default_queue="webhooks",
    task_default_exchange="payshift",
    task_default_routing_key="webhooks",
    task_routes={
        "process_payment_webhook": {"queue": "webhooks", "routing_key": "webhooks"},
        "check_pending_payments": {"queue": "reconcile", "routing_key": "reconcile"},
        "verify_payment_task": {"queue": "reconcile", "routing_key": "reconcile"},
        "process_refund_task": {"queue": "refunds", "routing_key": "refunds"},
        "prune_webhook_bodies": {"queue": "reconcile", "routing_key": "reconcile"},
    },
)
app.autodiscover_tasks(["payment"])


@task_prerun.connect
@task_postrun.connect
def _database_connections_recycle(sender: Any = None, **kwargs: Any) -> None:
    """Per task what Django does per request: keep the connection within CONN_MAX_AGE, drop it after an
    error (CELERY_DB_REUSE_MAX stops Celery closing it after every task; see settings)."""
    if sender is None or getattr(sender.request, "is_eager", False):
        return  # an eager task runs inside its caller's request or transaction (tests): not ours to close
    from django.db import close_old_connections

    close_old_connections()
