"""The Celery app, configured from Django settings (CELERY_* names, read from the environment)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun
from django.core.exceptions import ImproperlyConfigured
from django.db import close_old_connections
from kombu import Exchange, Queue


def _own_project_only() -> None:
    """`celery -A payshift` runs Payshift's OWN project (its settings, its database). Inside a host project that
    would quietly process nothing of the host's, against another database: refuse, and say what to run."""
    configured = os.environ.get("DJANGO_SETTINGS_MODULE")
    checkout = Path(__file__).resolve().parent.parent
    foreign_manage = (Path.cwd() / "manage.py").is_file() and Path.cwd().resolve() != checkout
    if os.environ.get("PAYSHIFT_STANDALONE") == "1":
        return
    # Payshift's own settings modules: the project's, the suite's and the bench's.
    ours = configured is not None and configured.split(".", 1)[0] in ("payshift", "bench")
    if (configured is not None and not ours) or (configured is None and foreign_manage):
        raise ImproperlyConfigured(
            "celery -A payshift is Payshift's own project. In your Django project run your own Celery app "
            "(celery -A <yourproject> worker / beat): it runs Payshift's tasks (docs/installing.md). "
            "Set PAYSHIFT_STANDALONE=1 to run Payshift's project anyway.")


_own_project_only()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "payshift.settings")

app = Celery("payshift")
app.config_from_object("django.conf:settings", namespace="CELERY")


def _var_dir_prepare() -> None:
    from payshift.paths import var_dir_prepare

    var_dir_prepare()  # the embedded broker's folders, before a worker or beat reads them


_var_dir_prepare()

# Separate queues so a reconciliation or refund backlog never delays a customer's webhook. A worker
# started without -Q consumes all three; deployments may split them across workers.
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
        "process_payment_webhooks": {"queue": "webhooks", "routing_key": "webhooks"},
        "check_pending_payments": {"queue": "reconcile", "routing_key": "reconcile"},
        "verify_payment_task": {"queue": "reconcile", "routing_key": "reconcile"},
        "process_refund_task": {"queue": "refunds", "routing_key": "refunds"},
        "prune_webhook_bodies": {"queue": "reconcile", "routing_key": "reconcile"},
    },
)
app.autodiscover_tasks(["payment"])


def task_connections_recycle() -> None:
    """Per task what Django does per request: keep the connection within CONN_MAX_AGE, drop it after an
    error (CELERY_DB_REUSE_MAX stops Celery closing it after every task; see settings)."""
    close_old_connections()


@task_prerun.connect
@task_postrun.connect
def _database_connections_recycle(sender: Any = None, **kwargs: Any) -> None:
    if sender is None or getattr(sender.request, "is_eager", False):
        return  # an eager task runs inside its caller's request or transaction (tests): not ours to close
    task_connections_recycle()
