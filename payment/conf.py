"""Payshift's own settings, each with its default: the app reads them through `app_settings` only.

A host project sets none of them unless it wants another value: each is looked up in the host's Django
settings first, then in the environment (12-factor, the names documented in docs/configuration.md), then
falls back to the default below. Gateway keys may be written as the gateways' dashboards show them, one
string, or as a comma-separated string or a list for rotation (the first signs and calls, any verifies).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        return [str(part).strip() for part in value if str(part).strip()]
    raise ImproperlyConfigured(f"expected a string or a list, got {type(value).__name__}")


def _as_optional_list(value: Any) -> list[str] | None:
    return None if value is None or value == "" else _as_list(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"expected a boolean, got {value!r}")


def _as_rate_limits(value: Any) -> dict[str, float]:
    """Calls per second per gateway: `40` (each gateway), `paystack=40,flutterwave=20`, or both (`40,
    flutterwave=20`: 20 for Flutterwave, 40 for the others). The key `*` holds the bare number; 0 = no limit."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        items: list[str] = [str(value)]
    elif isinstance(value, dict):
        items = [f"{name}={rate}" for name, rate in value.items()]
    else:
        items = _as_list(value)
    limits: dict[str, float] = {}
    for item in items:
        name, _, rate = item.rpartition("=")
        number = float(rate)
        if not number >= 0 or number == float("inf"):
            raise ValueError(f"rate limit {item!r} must be a finite number >= 0")
        limits[name.strip() or "*"] = number
    return limits


@dataclass(frozen=True)
class _Setting:
    default: Any
    cast: Callable[[Any], Any]


# name -> default and how a value from settings or the environment becomes what the code expects.
_SETTINGS: dict[str, _Setting] = {
    # Gateways (names shared with the gateways' own docs and every Payshift deployment).
    "PAYSTACK_SECRET_KEY": _Setting([], _as_list),
    "PAYSTACK_PUBLIC_KEY": _Setting([], _as_list),
    "PAYSTACK_BASE_URL": _Setting("https://api.paystack.co", str),
    "FLUTTERWAVE_SECRET_KEY": _Setting([], _as_list),
    "FLUTTERWAVE_PUBLIC_KEY": _Setting([], _as_list),
    "FLUTTERWAVE_WEBHOOK_HASH": _Setting([], _as_list),
    "FLUTTERWAVE_BASE_URL": _Setting("https://api.flutterwave.com/v3", str),
    # "development" or "production": production turns the strict system checks on (payment.checks).
    "PAYSHIFT_ENVIRONMENT": _Setting("development", str),
    "PAYSHIFT_ENABLED_GATEWAYS": _Setting(None, _as_optional_list),
    "PAYSHIFT_GATEWAY_MODULES": _Setting([], _as_list),
    # Ingest
    "PAYSHIFT_WEBHOOK_MAX_BYTES": _Setting(1024 * 1024, int),
    "PAYSHIFT_IP_ALLOWLIST_GATEWAYS": _Setting([], _as_list),
    "PAYSHIFT_TRUSTED_PROXIES": _Setting([], _as_list),
    "PAYSHIFT_BROKER_PUBLISH_TIMEOUT": _Setting(1.0, float),
    "PAYSHIFT_BROKER_CIRCUIT_SECONDS": _Setting(5.0, float),
    "PAYSHIFT_OUTBOX_RELAY": _Setting("thread", str),
    "PAYSHIFT_OUTBOX_BATCH_SIZE": _Setting(20, int),
    "PAYSHIFT_OUTBOX_LINGER_SECONDS": _Setting(0.03, float),
    # Processing
    "PAYSHIFT_HTTP_CONNECT_TIMEOUT": _Setting(5.0, float),
    "PAYSHIFT_HTTP_READ_TIMEOUT": _Setting(30.0, float),
    # Half the sandbox's default 50/s per key (Paystack's published live limit for its verify endpoint):
    # room for a busy machine's scheduling jitter and for a second process.
    "PAYSHIFT_GATEWAY_RATE_LIMIT": _Setting("25", _as_rate_limits),
    "PAYSHIFT_CELERY_MAX_RETRIES": _Setting(5, int),
    "PAYSHIFT_CELERY_RETRY_BASE_SECONDS": _Setting(2.0, float),
    "PAYSHIFT_CELERY_RETRY_MAX_SECONDS": _Setting(300.0, float),
    "PAYSHIFT_Q_MAX_RETRIES": _Setting(6, int),
    "PAYSHIFT_Q_RETRY_BASE_SECONDS": _Setting(60.0, float),
    "PAYSHIFT_Q_RETRY_MAX_SECONDS": _Setting(3600.0, float),
    "PAYSHIFT_REFUND_OVERPAYMENT": _Setting(False, _as_bool),
    # Reconciliation (check_pending_payments)
    "PAYSHIFT_RECONCILE_INTERVAL_SECONDS": _Setting(60, int),
    "PAYSHIFT_PENDING_RECHECK_SECONDS": _Setting(300, int),
    "PAYSHIFT_PENDING_TTL_SECONDS": _Setting(24 * 3600, int),
    "PAYSHIFT_SWEEP_AFTER_SECONDS": _Setting(60, int),
    "PAYSHIFT_PROCESSING_STUCK_SECONDS": _Setting(900, int),
    "PAYSHIFT_MAX_EVENT_ATTEMPTS": _Setting(20, int),
    "PAYSHIFT_UNMATCHED_RETRY_SECONDS": _Setting(24 * 3600, int),
    "PAYSHIFT_RECONCILE_BATCH_SIZE": _Setting(500, int),
    # Verifications in flight at once (threads; 1 = one at a time, as on SQLite always).
    "PAYSHIFT_RECONCILE_CONCURRENCY": _Setting(8, int),
    "PAYSHIFT_GATEWAY_SILENCE_SECONDS": _Setting(3600, int),
    "PAYSHIFT_RETENTION_DAYS": _Setting(30, int),
    # Customer pages
    "PAYSHIFT_DEMO_PAGES": _Setting(False, _as_bool),
    "PAYSHIFT_CALLBACK_VERIFY_INTERVAL_SECONDS": _Setting(5.0, float),
    "PAYSHIFT_CALLBACK_VERIFY_TIMEOUT_SECONDS": _Setting(4.0, float),
    # Notifications
    "PAYSHIFT_STAFF_EMAILS": _Setting([], _as_list),
    "PAYSHIFT_NOTIFICATION_TRIES": _Setting(5, int),
    "PAYSHIFT_NOTIFICATION_CHANNELS": _Setting(["payment.notifications.EmailChannel"], _as_list),
    # The site's public root (https://shop.example.com): absolute customer links built outside a request.
    "PAYSHIFT_PUBLIC_URL": _Setting("", str),
    # Operations
    "PAYSHIFT_METRICS_TOKEN": _Setting("", str),
    "PAYSHIFT_SANDBOX_URL": _Setting("", str),
}


class AppSettings:
    """`app_settings.NAME`: the host's Django setting, else the environment variable, else the default."""

    PAYSTACK_SECRET_KEY: list[str]
    PAYSTACK_PUBLIC_KEY: list[str]
    PAYSTACK_BASE_URL: str
    FLUTTERWAVE_SECRET_KEY: list[str]
    FLUTTERWAVE_PUBLIC_KEY: list[str]
    FLUTTERWAVE_WEBHOOK_HASH: list[str]
    FLUTTERWAVE_BASE_URL: str
    PAYSHIFT_ENVIRONMENT: str
    PAYSHIFT_ENABLED_GATEWAYS: list[str] | None
    PAYSHIFT_WEBHOOK_MAX_BYTES: int
    PAYSHIFT_IP_ALLOWLIST_GATEWAYS: list[str]
    PAYSHIFT_TRUSTED_PROXIES: list[str]
    PAYSHIFT_BROKER_PUBLISH_TIMEOUT: float
    PAYSHIFT_BROKER_CIRCUIT_SECONDS: float
    PAYSHIFT_OUTBOX_RELAY: str
    PAYSHIFT_OUTBOX_BATCH_SIZE: int
    PAYSHIFT_OUTBOX_LINGER_SECONDS: float
    PAYSHIFT_HTTP_CONNECT_TIMEOUT: float
    PAYSHIFT_HTTP_READ_TIMEOUT: float
    PAYSHIFT_GATEWAY_RATE_LIMIT: dict[str, float]
    PAYSHIFT_CELERY_MAX_RETRIES: int
    PAYSHIFT_CELERY_RETRY_BASE_SECONDS: float
    PAYSHIFT_CELERY_RETRY_MAX_SECONDS: float
    PAYSHIFT_Q_MAX_RETRIES: int
    PAYSHIFT_Q_RETRY_BASE_SECONDS: float
    PAYSHIFT_Q_RETRY_MAX_SECONDS: float
    PAYSHIFT_REFUND_OVERPAYMENT: bool
    PAYSHIFT_RECONCILE_INTERVAL_SECONDS: int
    PAYSHIFT_PENDING_RECHECK_SECONDS: int
    PAYSHIFT_PENDING_TTL_SECONDS: int
    PAYSHIFT_SWEEP_AFTER_SECONDS: int
    PAYSHIFT_PROCESSING_STUCK_SECONDS: int
    PAYSHIFT_MAX_EVENT_ATTEMPTS: int
    PAYSHIFT_UNMATCHED_RETRY_SECONDS: int
    PAYSHIFT_RECONCILE_BATCH_SIZE: int
    PAYSHIFT_RECONCILE_CONCURRENCY: int
    PAYSHIFT_GATEWAY_SILENCE_SECONDS: int
    PAYSHIFT_RETENTION_DAYS: int
    PAYSHIFT_DEMO_PAGES: bool
    PAYSHIFT_CALLBACK_VERIFY_INTERVAL_SECONDS: float
    PAYSHIFT_CALLBACK_VERIFY_TIMEOUT_SECONDS: float
    PAYSHIFT_STAFF_EMAILS: list[str]
    PAYSHIFT_NOTIFICATION_TRIES: int
    PAYSHIFT_NOTIFICATION_CHANNELS: list[str]
    PAYSHIFT_PUBLIC_URL: str
    PAYSHIFT_METRICS_TOKEN: str
    PAYSHIFT_SANDBOX_URL: str

    def __getattr__(self, name: str) -> Any:
        spec = _SETTINGS.get(name)
        if spec is None:
            raise AttributeError(f"{name} is not a Payshift setting")
        # Tests and key rotation change settings at run time, so a value is kept only while the Django
        # settings are the same object (override_settings swaps it) unchanged (setting_changed) and its
        # environment variable too; the webhook path reads about ten settings per request (bench/FINDINGS.md).
        from_env = os.environ.get(name)
        holder = getattr(settings, "_wrapped", None)
        cached = _cache.get(name)
        if cached is not None and cached[0] is holder and cached[1] == _generation[0] and cached[2] == from_env:
            value = cached[3]
        else:
            if hasattr(settings, name):
                value = getattr(settings, name)
            elif from_env is not None:
                value = from_env
            else:
                value = spec.default
            try:
                value = spec.cast(value)
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(f"{name}: {exc}") from exc
            _cache[name] = (holder, _generation[0], from_env, value)
        # A fresh list each time: a caller that changes it never changes the setting.
        return list(value) if isinstance(value, list) else value

    def __setattr__(self, name: str, value: Any) -> None:
        # Settings are changed where they live (Django settings, the environment), never on this reader.
        raise AttributeError(f"app_settings is read-only: set {name} in the Django settings or the environment")

    @staticmethod
    def names() -> list[str]:
        """Every setting Payshift reads, for the docs test and the configuration check."""
        return list(_SETTINGS)


_cache: dict[str, tuple[object, int, str | None, Any]] = {}
_generation = [0]


def _settings_changed(**kwargs: Any) -> None:
    _generation[0] += 1


setting_changed.connect(_settings_changed)
app_settings = AppSettings()


def setting_default(name: str) -> Any:
    """The default of one Payshift setting (for a project's own settings that derive from it)."""
    return _SETTINGS[name].cast(_SETTINGS[name].default)
