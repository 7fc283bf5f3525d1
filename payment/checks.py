"""System checks: fail fast on configuration that would lose or falsely grant payments."""

from __future__ import annotations

from typing import Any

from celery import current_app
from django.conf import settings
from django.core.checks import Error, Warning, register
from kombu.utils.url import url_to_parts

from payment.conf import app_settings
from payment.outbox import RELAY_MODES

from .gateways.registry import gateway_get, gateway_names

SANDBOX_HOSTS = ("127.0.0.1", "localhost", "[::1]")
DEMO_MARKER = "payshift_demo"


@register("payshift")
def payshift_checks(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    messages: list[Any] = []
    production = app_settings.PAYSHIFT_ENVIRONMENT == "production"
    for name in gateway_names():
        gateway = gateway_get(name)
        if not gateway.webhook_secrets():
            messages.append((Error if production else Warning)(
                f"Gateway {name!r} is enabled but has no webhook secret: every webhook will be refused (401).",
                hint=f"Set {gateway.secret_setting} or remove {name!r} from PAYSHIFT_ENABLED_GATEWAYS.",
                id="payshift.E001" if production else "payshift.W001",
            ))
        modes = {mode for key_modes in gateway.configured_key_modes().values() for mode in key_modes}
        if len(modes) > 1:
            # One test key beside live ones lets test-mode events (refunds included) authenticate on a live
            # site, and a payment created with the test key is checked against the test account.
            names = ", ".join(sorted(k for k, v in gateway.configured_key_modes().items() if v))
            messages.append(Error(f"Gateway {name!r} has test and live keys configured together ({names}).",
                                  hint="Rotate within one mode: every key of a gateway is test, or every key is live.",
                                  id="payshift.E008"))
        if production:
            base_url = gateway.base_url()  # every gateway, those loaded from PAYSHIFT_GATEWAY_MODULES too
            if any(host in base_url for host in SANDBOX_HOSTS):
                messages.append(Error(f"{gateway.base_url_setting} points at a local sandbox in production.",
                                      hint="Unset it to use the real gateway.", id="payshift.E002"))
            if any(DEMO_MARKER in s.lower() or "payshiftdemo" in s.lower() for s in gateway.webhook_secrets()):
                messages.append(Error(f"Gateway {name!r} uses the demo keys in production.",
                                      hint="Set the keys from the gateway's dashboard.", id="payshift.E003"))
    if production and app_settings.PAYSHIFT_DEMO_PAGES:
        messages.append(Error("PAYSHIFT_DEMO_PAGES is on in production: anyone can start payments from the demo form.",
                              hint="Unset PAYSHIFT_DEMO_PAGES; only the local demo stack needs it.",
                              id="payshift.E009"))
    if app_settings.PAYSHIFT_OUTBOX_RELAY not in RELAY_MODES:
        messages.append(Error(f"PAYSHIFT_OUTBOX_RELAY is {app_settings.PAYSHIFT_OUTBOX_RELAY!r}.",
                              hint=f"Use one of {', '.join(sorted(RELAY_MODES))} (docs/configuration.md).",
                              id="payshift.E010"))
    if production and settings.DEBUG:
        messages.append(Error("DEBUG is on in production.", hint="Set DJANGO_DEBUG=false.", id="payshift.E004"))
    broker_url = current_app.conf.broker_url or ""
    try:
        transport = url_to_parts(broker_url).scheme
        if not transport:
            raise ValueError("no scheme")
    except Exception as exc:
        messages.append(Error(f"CELERY_BROKER_URL cannot be parsed: {exc}",
                              hint="Use e.g. redis://127.0.0.1:6379/0 or amqp://guest:guest@127.0.0.1:5672//",
                              id="payshift.E006"))
    if production and settings.SECRET_KEY.startswith("payshift-insecure"):
        messages.append(Error("DJANGO_SECRET_KEY is the development default.", id="payshift.E007",
                              hint="Set DJANGO_SECRET_KEY to a long random value."))
    return messages
