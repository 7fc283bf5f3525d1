"""The retry policy, in one place: how long each queue waits before trying again, and when it stops.

The Celery tasks (payment/tasks.py) and the Django Q tasks (payment/q_tasks.py) only carry the decision out
with their own mechanism (`self.retry`, a one-off Schedule). Delays are exponential with full jitter
(services.backoff_seconds), so a burst of failures does not retry in lockstep.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from django.db import InterfaceError, OperationalError

from .conf import app_settings
from .services import backoff_seconds

# The database went away (restart, failover) mid-task: retried on a short schedule, never ending in `dead`;
# past the limit the periodic sweep re-dispatches the event once its claim is stale.
DB_ERRORS = (OperationalError, InterfaceError)
DB_RETRIES = 10


@dataclass(frozen=True)
class Decision:
    action: Literal["retry", "hand_over", "give_up"]  # hand_over: Celery's budget is spent, Django Q goes on
    delay: float = 0.0


def database_retry(db_attempt: int) -> Decision:
    if db_attempt >= DB_RETRIES:
        return Decision("give_up")
    return Decision("retry", backoff_seconds(min(db_attempt, 5), base_seconds=1.0, max_seconds=30.0))


def celery_gateway_retry(attempt: int, retry_after: float | None = None) -> Decision:
    """A transient gateway error in Celery: retry with backoff, then hand the event to Django Q's longer one.
    `retry_after`: what the gateway asked for (a 429's Retry-After); each delay is at least that, within the
    schedule's own maximum."""
    if attempt >= app_settings.PAYSHIFT_CELERY_MAX_RETRIES:
        return Decision("hand_over", _django_q_delay(0, retry_after))
    return Decision("retry", _celery_delay(attempt, retry_after))


def django_q_gateway_retry(attempt: int, retry_after: float | None = None) -> Decision:
    """A transient gateway error in Django Q: retry on its long schedule, then the event goes `dead`."""
    if attempt >= app_settings.PAYSHIFT_Q_MAX_RETRIES:
        return Decision("give_up")
    return Decision("retry", _django_q_delay(attempt, retry_after))


def refund_retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """A refund POST the gateway certainly did not receive (refused connection, 429) is sent again after this."""
    return _celery_delay(attempt, retry_after)


def _celery_delay(attempt: int, retry_after: float | None) -> float:
    return _not_before(backoff_seconds(attempt, base_seconds=app_settings.PAYSHIFT_CELERY_RETRY_BASE_SECONDS,
                                       max_seconds=app_settings.PAYSHIFT_CELERY_RETRY_MAX_SECONDS),
                       retry_after, app_settings.PAYSHIFT_CELERY_RETRY_MAX_SECONDS)


def _django_q_delay(attempt: int, retry_after: float | None = None) -> float:
    return _not_before(backoff_seconds(attempt, base_seconds=app_settings.PAYSHIFT_Q_RETRY_BASE_SECONDS,
                                       max_seconds=app_settings.PAYSHIFT_Q_RETRY_MAX_SECONDS),
                       retry_after, app_settings.PAYSHIFT_Q_RETRY_MAX_SECONDS)


def _not_before(delay: float, retry_after: float | None, longest: float) -> float:
    """The backoff's delay, or the gateway's Retry-After when that is later: a retry sooner than the gateway
    asked would only meet another 429. Never past the schedule's own maximum (an answer asking for an hour
    does not park an event for an hour)."""
    if retry_after is None or retry_after <= delay:
        return delay
    return max(delay, min(float(retry_after), float(longest)))
