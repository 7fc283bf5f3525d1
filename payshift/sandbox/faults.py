"""Injected failures: run-wide fault settings, the X-Sandbox-Fault header, and the dice."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

FAULT_HEADER = "x-sandbox-fault"
REFUND_OUTCOMES = ("", "failed", "needs-attention")


class FaultSpecError(ValueError):
    """A fault setting or X-Sandbox-Fault header that cannot be understood."""


@dataclass(frozen=True)
class Faults:
    """Run-wide faults. Rates are probabilities in [0, 1] rolled per gateway API request."""

    latency_ms: int = 0
    latency_jitter_ms: int = 0
    error_rate: float = 0.0
    error_status: int = 503
    rate_limit_rate: float = 0.0
    rate_limit_retry_after_s: int = 1
    timeout_rate: float = 0.0
    timeout_s: float = 28.0  # Flutterwave answers 503 after about 28 s
    duplicate_webhooks: int = 0
    out_of_order: bool = False
    webhook_delay_ms: int = 0
    webhook_amount_delta: int = 0
    # How refunds created from now on end: "" (they succeed), "failed", or Paystack's "needs-attention"
    # (a Flutterwave refund then fails: it has no such state).
    refund_outcome: str = ""

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def updated(self, changes: dict[str, Any]) -> Faults:
        """A copy with `changes` applied; unknown names and out-of-range values raise FaultSpecError."""
        values = self.as_dict()
        for name, raw in changes.items():
            if name not in values:
                raise FaultSpecError(f"unknown fault setting {name!r}")
            values[name] = _coerce(name, raw, type(values[name]))
        result = Faults(**values)
        result.validate()
        return result

    def validate(self) -> None:
        for name in ("error_rate", "rate_limit_rate", "timeout_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise FaultSpecError(f"{name} must be between 0 and 1")
        for name in (
            "latency_ms",
            "latency_jitter_ms",
            "duplicate_webhooks",
            "webhook_delay_ms",
            "rate_limit_retry_after_s",
        ):
            if getattr(self, name) < 0:
                raise FaultSpecError(f"{name} must be >= 0")
        if self.timeout_s < 0:
            raise FaultSpecError("timeout_s must be >= 0")
        if not 400 <= self.error_status <= 599:
            raise FaultSpecError("error_status must be an HTTP 4xx/5xx code")
        if self.refund_outcome not in REFUND_OUTCOMES:
            raise FaultSpecError(f"refund_outcome must be one of {', '.join(map(repr, REFUND_OUTCOMES))}")


def _coerce(name: str, raw: Any, kind: type) -> Any:
    # bool is an int subclass in Python: reject it where a number is meant, and vice versa.
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        raise FaultSpecError(f"{name} must be true or false")
    if kind is str:
        if isinstance(raw, str):
            return raw
        raise FaultSpecError(f"{name} must be a string")
    if isinstance(raw, bool):
        raise FaultSpecError(f"{name} must be a number")
    try:
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError
            return int(raw)
        return float(raw)
    except (TypeError, ValueError):
        raise FaultSpecError(f"{name} must be a {kind.__name__}") from None


@dataclass(frozen=True)
class FaultPlan:
    """What to do to one API request."""

    latency_s: float = 0.0
    error_status: int | None = None
    rate_limit_retry_after_s: int | None = None
    timeout_s: float | None = None


def parse_fault_header(value: str, faults: Faults) -> FaultPlan:
    """Parse `X-Sandbox-Fault`, e.g. `error=503`, `rate_limit`, `timeout=5`, `latency=200`, `none`.

    Items may be combined with commas (`latency=200,error=502`). The header
    replaces the run-wide dice for that request, so `none` means "no fault here".
    """
    latency_s = 0.0
    error_status: int | None = None
    retry_after: int | None = None
    timeout_s: float | None = None
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        name, _, arg = (piece.strip() for piece in item.partition("="))
        name = name.lower().replace("-", "_")
        try:
            if name == "none":
                continue
            if name == "error":
                error_status = int(arg) if arg else faults.error_status
                if not 400 <= error_status <= 599:
                    raise ValueError
            elif name == "rate_limit":
                retry_after = int(arg) if arg else faults.rate_limit_retry_after_s
                if retry_after < 0:
                    raise ValueError
            elif name == "timeout":
                timeout_s = float(arg) if arg else faults.timeout_s
                if timeout_s < 0:
                    raise ValueError
            elif name == "latency":
                latency_s = int(arg) / 1000
                if latency_s < 0:
                    raise ValueError
            else:
                raise FaultSpecError(f"unknown fault {name!r}")
        except ValueError:
            raise FaultSpecError(f"bad fault item {item!r}") from None
    return FaultPlan(latency_s, error_status, retry_after, timeout_s)


def roll_faults(faults: Faults, rng: random.Random) -> FaultPlan:
    """Roll the run-wide dice for one request; the order decides which fault wins when several hit."""
    latency_s = faults.latency_ms / 1000
    if faults.latency_jitter_ms:
        latency_s += rng.uniform(0, faults.latency_jitter_ms) / 1000
    if faults.timeout_rate and rng.random() < faults.timeout_rate:
        return FaultPlan(latency_s, timeout_s=faults.timeout_s)
    if faults.error_rate and rng.random() < faults.error_rate:
        return FaultPlan(latency_s, error_status=faults.error_status)
    if faults.rate_limit_rate and rng.random() < faults.rate_limit_rate:
        return FaultPlan(latency_s, rate_limit_retry_after_s=faults.rate_limit_retry_after_s)
    return FaultPlan(latency_s)
