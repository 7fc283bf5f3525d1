"""The Celery app, configured from Django settings (CELERY_* names, read from the environment)."""

from __future__ import annotations

import os

from celery import Celery
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
