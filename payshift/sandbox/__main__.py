"""CLI: `python -m payshift.sandbox --port 8100 --webhook-base-url URL [fault flags]` runs one uvicorn process."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import uvicorn

from payshift.sandbox.app import create_app
from payshift.sandbox.config import SandboxConfig, parse_setting, split_list
from payshift.sandbox.faults import Faults, FaultSpecError
from payshift.sandbox.registry import BUILTIN_PACKAGE, GatewayRegistry, discover

# (flag, SandboxConfig field, type, help). Flags left out keep the SANDBOX_<FIELD> env value or the default.
# Each gateway's own keys get flags too, from the registry: --<gateway>-<setting>, e.g. --paystack-secret-keys.
_CONFIG_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--webhook-base-url",
        "webhook_base_url",
        str,
        "Payshift's base URL; webhooks go to {base}/payment/webhooks/<gateway>/",
    ),
    ("--public-url", "public_url", str, "URL customers reach this sandbox on (checkout links)"),
    ("--gateway-packages", "gateway_packages", str, "comma list of packages whose folders are gateways"),
    ("--webhook-tries", "webhook_tries", int, "delivery attempts per webhook (default 3)"),
    ("--webhook-retry-delay-ms", "webhook_retry_delay_ms", int, "pause between attempts (default 1000)"),
    ("--webhook-timeout-s", "webhook_timeout_s", float, "per-delivery HTTP timeout (default 30)"),
    (
        "--refund-delay-ms",
        "refund_delay_ms",
        int,
        "time per refund step: Paystack pending -> processing -> processed, Flutterwave -> completed "
        "(default 2000)",
    ),
    ("--max-refunds", "max_refunds", int, "refunds kept in memory; the oldest finished go first (default 10000)"),
    ("--max-transactions", "max_transactions", int, "references kept in memory; the oldest go first (default 50000)"),
    ("--max-deliveries", "max_deliveries", int, "delivery attempts kept in the log (default 10000)"),
    (
        "--rate-limit-per-s",
        "rate_limit_per_s",
        float,
        "API requests a second per secret key before a 429 with Retry-After (default 50; 0 = no limit)",
    ),
    ("--rate-limit-burst", "rate_limit_burst", int, "requests a key may make at once within the limit (default 50)"),
    ("--seed", "seed", int, "seed for the fault dice (reproducible runs)"),
]
_FAULT_FLAGS: list[tuple[str, str, Any, str]] = [
    ("--latency-ms", "latency_ms", int, "added to every gateway API call"),
    ("--latency-jitter-ms", "latency_jitter_ms", int, "random extra latency, 0..N ms"),
    ("--error-rate", "error_rate", float, "probability of a 5xx answer"),
    ("--error-status", "error_status", int, "status used by --error-rate (default 503)"),
    ("--rate-limit-rate", "rate_limit_rate", float, "probability of a 429 with Retry-After"),
    ("--timeout-rate", "timeout_rate", float, "probability of a hang of --timeout-s, then 503"),
    ("--timeout-s", "timeout_s", float, "hang length for timeouts (default 28, like Flutterwave)"),
    ("--duplicate-webhooks", "duplicate_webhooks", int, "send each webhook N extra times (same bytes)"),
    ("--webhook-delay-ms", "webhook_delay_ms", int, "wait before delivering webhooks"),
    ("--webhook-amount-delta", "webhook_amount_delta", int, "webhook amount = verify amount + N minor units"),
    ("--refund-outcome", "refund_outcome", str, "new refunds end: '' (succeed), failed, needs-attention"),
]


def _registry(environ: dict[str, str] | None = None) -> GatewayRegistry:
    env = os.environ if environ is None else environ
    return discover(split_list(env.get("SANDBOX_GATEWAY_PACKAGES", "")) or (BUILTIN_PACKAGE,))


def _gateway_flags(registry: GatewayRegistry) -> list[tuple[str, str, Any, str]]:
    return [
        (f"--{gateway.name}-{setting.name}".replace("_", "-"), f"{gateway.name}_{setting.name}", str, setting.help)
        for gateway in registry.values()
        for setting in gateway.settings
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m payshift.sandbox", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("SANDBOX_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("SANDBOX_PORT", "8100")))
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--no-access-log", action="store_true", help="skip per-request logs (benchmarks)")
    for flag, dest, kind, text in _CONFIG_FLAGS + _gateway_flags(_registry()) + _FAULT_FLAGS:
        parser.add_argument(flag, dest=dest, type=kind, default=None, help=text)
    parser.add_argument(
        "--out-of-order", action="store_true", default=None, help="deliver multi-webhook batches in reverse"
    )
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SandboxConfig:
    env = dict(os.environ if environ is None else environ)
    config = SandboxConfig.from_env(env)
    changes: dict[str, Any] = {}
    for _flag, dest, _kind, _text in _CONFIG_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            changes[dest] = split_list(value) if dest == "gateway_packages" else value
    for _flag, dest, _kind, _text in _gateway_flags(config.registry):
        value = getattr(args, dest, None)
        if value is not None:
            changes[dest] = parse_setting(dest, value, config.gateway_settings[dest])
    if "public_url" not in changes and not env.get("SANDBOX_PUBLIC_URL"):
        # Follow --port so checkout links work without repeating it.
        host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host  # noqa: S104
        changes["public_url"] = f"http://{host}:{args.port}"
    faults = {
        dest: getattr(args, dest) for _flag, dest, *_ in _FAULT_FLAGS if getattr(args, dest) is not None
    }
    if args.out_of_order:
        faults["out_of_order"] = True
    changes["faults"] = config.faults.updated(faults)
    return config.replaced(**changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
    except (FaultSpecError, ValueError) as exc:
        print(f"sandbox: {exc}", file=sys.stderr)
        return 2
    served = ", ".join(f"{g.label} at {config.public_url}/{g.api_path}" for g in config.registry.values())
    print(
        f"sandbox: {served}, webhooks to {config.webhook_base_url}; faults {_active(config.faults)}; "
        f"rate limit {_limit(config)}",
        file=sys.stderr,
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal; exit 0 so
    # scripts that `kill` the sandbox see a clean stop (SIGINT already ends with 0).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # One process, one worker: all state lives in this process's memory.
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        workers=1,
    )
    return 0


def _exit_cleanly(_signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(0)


def _limit(config: SandboxConfig) -> str:
    limit = config.rate_limit
    return f"{limit.per_s:g}/s per key, bursts of {limit.burst}" if limit.per_s else "off"


def _active(faults: Faults) -> str:
    defaults = Faults()
    changed = {k: v for k, v in faults.as_dict().items() if getattr(defaults, k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "none"


if __name__ == "__main__":
    sys.exit(main())
