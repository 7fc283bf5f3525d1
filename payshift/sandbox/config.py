"""Sandbox settings: one reader for the environment, overridable by CLI flags; gateway keys come from the registry."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from payshift.sandbox.faults import Faults
from payshift.sandbox.ratelimit import RateLimit
from payshift.sandbox.registry import BUILTIN_PACKAGE, GatewayRegistry, discover


@dataclass(init=False)
class SandboxConfig:
    """Everything the app needs at start; `faults` is only the starting point (the control API changes it).

    Each gateway's own keys (e.g. `paystack_secret_keys`, `flutterwave_webhook_hash`) are declared in its
    folder; they are accepted as keyword arguments, read as attributes, and live in `gateway_settings`.
    """

    webhook_base_url: str = "http://127.0.0.1:8000"
    public_url: str = "http://127.0.0.1:8100"
    webhook_tries: int = 3
    webhook_retry_delay_ms: int = 1000
    webhook_timeout_s: float = 30.0  # Paystack's own delivery timeout
    refund_delay_ms: int = 2000  # per refund step: Paystack pending -> processing -> final, Flutterwave one step
    refund_auto_advance: bool = True  # False: refunds move only on POST /_sandbox/refunds/.../advance
    # Memory caps (docs/sandbox.md, "Bounded state"): benchmarks and chaos runs must not grow memory without bound.
    max_deliveries: int = 10_000  # ring buffer of delivery attempts
    max_refunds: int = 10_000  # the oldest finished refunds are forgotten past this
    max_transactions: int = 50_000  # references (with their charges and customers); the oldest go first
    # The API's rate limit per secret key (docs/sandbox.md, "Rate limit"): Paystack's published limit for its
    # verify endpoint in live mode, 3,000 a minute. 0 turns it off; the control API changes it at run time.
    rate_limit_per_s: float = 50.0
    rate_limit_burst: int = 50
    seed: int | None = None
    gateway_packages: tuple[str, ...] = (BUILTIN_PACKAGE,)
    faults: Faults = field(default_factory=Faults)
    gateway_settings: dict[str, Any] = field(default_factory=dict)

    def __init__(self, **values: Any) -> None:
        for item in dataclasses.fields(self):
            if item.name in values:
                setattr(self, item.name, values.pop(item.name))
            elif item.default_factory is not dataclasses.MISSING:
                setattr(self, item.name, item.default_factory())
            else:
                setattr(self, item.name, item.default)
        self.gateway_packages = tuple(self.gateway_packages)
        known = _setting_defaults(self.registry)
        settings = {**known, **self.gateway_settings, **values}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(f"unknown sandbox setting(s): {', '.join(unknown)}")
        self.gateway_settings = settings
        self._validate()

    def _validate(self) -> None:
        for gateway in self.registry.values():
            for setting in gateway.settings:
                setting.check(gateway.name, self.gateway_settings[f"{gateway.name}_{setting.name}"])
        if self.webhook_tries < 1:
            raise ValueError("webhook_tries must be >= 1")
        if self.refund_delay_ms < 0 or self.max_refunds < 1:
            raise ValueError("refund_delay_ms must be >= 0 and max_refunds >= 1")
        if self.max_deliveries < 1 or self.max_transactions < 1:
            raise ValueError("max_deliveries and max_transactions must be >= 1")
        self.rate_limit.validate()
        self.webhook_base_url = self.webhook_base_url.rstrip("/")
        self.public_url = self.public_url.rstrip("/")

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: a gateway's own key, e.g. config.paystack_secret_keys.
        settings = self.__dict__.get("gateway_settings", {})
        if name in settings:
            return settings[name]
        raise AttributeError(f"{type(self).__name__} has no setting {name!r}")

    @property
    def rate_limit(self) -> RateLimit:
        return RateLimit(float(self.rate_limit_per_s), int(self.rate_limit_burst))

    @property
    def registry(self) -> GatewayRegistry:
        return discover(self.gateway_packages)

    def setting(self, gateway: str, name: str) -> Any:
        return self.gateway_settings[f"{gateway}_{name}"]

    def webhook_url(self, gateway: str) -> str:
        return f"{self.webhook_base_url}/payment/webhooks/{gateway}/"

    def replaced(self, **changes: Any) -> SandboxConfig:
        """A copy with `changes` applied (common fields or gateway keys), validated again."""
        values = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)}
        return SandboxConfig(**{**values, **changes})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxConfig:
        """Every setting is SANDBOX_<FIELD>, e.g. SANDBOX_WEBHOOK_TRIES or SANDBOX_PAYSTACK_SECRET_KEYS;
        faults too (SANDBOX_ERROR_RATE)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            raw = env.get(f"SANDBOX_{item.name.upper()}", "").strip()
            if item.name not in ("faults", "gateway_settings") and raw:
                values[item.name] = parse_setting(item.name, raw, getattr(cls, item.name, None))
        packages = values.get("gateway_packages", cls.gateway_packages)
        for name, default in _setting_defaults(discover(tuple(packages))).items():
            if raw := env.get(f"SANDBOX_{name.upper()}", "").strip():
                values[name] = parse_setting(name, raw, default)
        fault_changes = {
            item.name: parse_setting(item.name, raw, getattr(Faults(), item.name))
            for item in dataclasses.fields(Faults)
            if (raw := env.get(f"SANDBOX_{item.name.upper()}", "").strip())
        }
        return cls(**values, faults=Faults().updated(fault_changes))


def _setting_defaults(registry: GatewayRegistry) -> dict[str, Any]:
    return {
        f"{gateway.name}_{setting.name}": setting.default
        for gateway in registry.values()
        for setting in gateway.settings
    }


def split_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def parse_setting(name: str, raw: str, default: Any) -> Any:
    """Parse an environment or CLI string to the type of the setting's default."""
    if isinstance(default, tuple):
        return split_list(raw)
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
