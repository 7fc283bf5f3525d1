"""Payshift's own project: demo settings, urls, its Celery app, the dev stack and the gateway sandbox.

Importing this package does not create the Celery app: a host project that imports `payshift.sandbox`
(for the local gateway) must keep its own Celery app as the current one. The demo's entry points
(wsgi, asgi, manage.py, `celery -A payshift`) load `payshift.celery` themselves.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery_app":
        from .celery import app

        return app
    raise AttributeError(name)
