"""What one sandbox gateway folder provides: the `SandboxGateway` it exports as `GATEWAY`, and its settings."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

if TYPE_CHECKING:
    from payshift.sandbox.api import GatewayApi
    from payshift.sandbox.runtime import Runtime
    from payshift.sandbox.state import Checkout, Refund, TransactionSpec

CheckoutCompleter = Callable[["Runtime", "Checkout", str], list[tuple[str, str]]]
ControlUpsert = Callable[["Runtime", "TransactionSpec"], tuple["Checkout", bool]]
RefundAdvance = Callable[["Runtime", "Refund", "str | None"], None]


@dataclass(frozen=True)
class Setting:
    """One gateway config key: SandboxConfig attribute / env SANDBOX_<GATEWAY>_<NAME> / --<gateway>-<name>.

    The default's type decides how the environment string is read (a tuple is a comma list).
    """

    name: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()

    def check(self, gateway: str, value: Any) -> None:
        """ValueError for a value this setting refuses (empty key lists, an unknown choice)."""
        key = f"{gateway}_{self.name}"
        if isinstance(self.default, tuple) and not value:
            raise ValueError(f"{key} needs at least one value")
        if isinstance(self.default, str) and not self.choices and not value:
            raise ValueError(f"{key} must not be empty")
        if self.choices and value not in self.choices:
            raise ValueError(f"{key} must be one of {', '.join(self.choices)}")


@dataclass(frozen=True)
class SandboxGateway:
    """Everything the shared sandbox modules need from a gateway; nothing outside its folder names it.

    `routes` are relative to `/<name>` (so they read like the real API's paths); `api_path` is where a
    client's base URL points (`paystack`, `flutterwave/v3`), shown in the start-up banner.
    """

    name: str
    label: str
    api: GatewayApi
    routes: Sequence[BaseRoute]
    api_path: str
    settings: tuple[Setting, ...]
    checkout_actions: tuple[tuple[str, str], ...]
    channels: tuple[str, ...]  # payment channels the checkout page offers, the default first
    complete_checkout: CheckoutCompleter
    control_upsert: ControlUpsert
    refund_advance: RefundAdvance
    refund_final_statuses: frozenset[str]
    first_charge_id: int  # ids look like the gateway's (large ints) so clients never assume small counters
