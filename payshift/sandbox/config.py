"""Sandbox settings: one reader for the environment, overridable by CLI flags."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from payshift.sandbox.faults import Faults

# Clearly-marked demo secrets. Payshift's demo setup uses the same values; they
# unlock nothing outside this sandbox.
DEMO_PAYSTACK_SECRET_KEY = "sk_test_payshift_demo_do_not_use_in_production"
DEMO_FLUTTERWAVE_SECRET_KEY = "FLWSECK_TEST-payshiftdemo-do-not-use-X"
DEMO_FLUTTERWAVE_WEBHOOK_HASH = "payshift-demo-webhook-hash"


def paystack_mode_for_key(key: str) -> str:
    """Paystack's `domain`: live keys start sk_live_, everything else is test."""
    return "live" if key.startswith("sk_live_") else "test"


def flutterwave_mode_for_key(key: str) -> str:
    # Flutterwave marks test keys in the prefix (FLWSECK_TEST-); live keys are FLWSECK-.
    return "test" if "_TEST" in key.split("-", 1)[0] else "live"


def _split_keys(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass
class SandboxConfig:
    """Everything the app needs at start; `faults` is only the starting point (the control API changes it)."""

    paystack_secret_keys: tuple[str, ...] = (DEMO_PAYSTACK_SECRET_KEY,)
    flutterwave_secret_keys: tuple[str, ...] = (DEMO_FLUTTERWAVE_SECRET_KEY,)
    flutterwave_webhook_hash: str = DEMO_FLUTTERWAVE_WEBHOOK_HASH
    webhook_base_url: str = "http://127.0.0.1:8000"
    public_url: str = "http://127.0.0.1:8100"
    webhook_tries: int = 3
    webhook_retry_delay_ms: int = 1000
    webhook_timeout_s: float = 30.0  # Paystack's own delivery timeout
    refund_delay_ms: int = 2000  # per refund step: Paystack pending -> processing -> final, Flutterwave one step
    refund_auto_advance: bool = True  # False: refunds move only on POST /_sandbox/refunds/.../advance
    max_deliveries: int = 10_000  # ring buffer: benchmarks must not grow memory without bound
    max_refunds: int = 10_000  # the oldest finished refunds are forgotten past this
    seed: int | None = None
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if not self.paystack_secret_keys or not self.flutterwave_secret_keys:
            raise ValueError("at least one secret key per gateway is required")
        if not self.flutterwave_webhook_hash:
            raise ValueError("the Flutterwave webhook hash must not be empty")
        if self.webhook_tries < 1:
            raise ValueError("webhook_tries must be >= 1")
        if self.refund_delay_ms < 0 or self.max_refunds < 1:
            raise ValueError("refund_delay_ms must be >= 0 and max_refunds >= 1")
        self.webhook_base_url = self.webhook_base_url.rstrip("/")
        self.public_url = self.public_url.rstrip("/")

    @property
    def paystack_signing_key(self) -> str:
        # Paystack signs with the account's secret key; there is no separate webhook secret.
        return self.paystack_secret_keys[0]

    def webhook_url(self, gateway: str) -> str:
        return f"{self.webhook_base_url}/payment/webhooks/{gateway}/"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxConfig:
        """Every setting is SANDBOX_<FIELD>, e.g. SANDBOX_WEBHOOK_TRIES; faults too (SANDBOX_ERROR_RATE)."""
        env = os.environ if environ is None else environ
        defaults = cls()
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = env.get(f"SANDBOX_{item.name.upper()}", "").strip()
            if item.name != "faults" and raw:
                values[item.name] = _parse(item.name, raw, getattr(defaults, item.name))
        fault_changes = {
            item.name: _parse(item.name, raw, getattr(Faults(), item.name))
            for item in dataclasses.fields(Faults)
            if (raw := env.get(f"SANDBOX_{item.name.upper()}", "").strip())
        }
        return cls(**values, faults=Faults().updated(fault_changes))


def _parse(name: str, raw: str, default: Any) -> Any:
    """Parse an environment string to the type of the setting's default."""
    if isinstance(default, tuple):
        return _split_keys(raw)
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"SANDBOX_{name.upper()} must be true or false")
    if isinstance(default, int) or (default is None and name == "seed"):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    return raw
