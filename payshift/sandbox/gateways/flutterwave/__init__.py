"""Flutterwave (v3) in the sandbox: served under /flutterwave, with its config keys and the registry entry."""

from __future__ import annotations

from payshift.sandbox.gateway import SandboxGateway, Setting
from payshift.sandbox.gateways.flutterwave import api

# Clearly-marked demo secrets. Payshift's demo setup uses the same values; they unlock nothing outside this sandbox.
DEMO_SECRET_KEY = "FLWSECK_TEST-payshiftdemo-do-not-use-X"
DEMO_WEBHOOK_HASH = "payshift-demo-webhook-hash"

GATEWAY = SandboxGateway(
    name=api.NAME,
    label="Flutterwave",
    api=api.API,
    routes=api.ROUTES,
    api_path="flutterwave/v3",
    settings=(
        Setting("secret_keys", (DEMO_SECRET_KEY,), "comma list of accepted Flutterwave keys"),
        Setting("webhook_hash", DEMO_WEBHOOK_HASH, "sent verbatim in the verif-hash header"),
        Setting(
            "webhook_format",
            "v3",
            "charge webhooks in the v3 {event, data} envelope, or 'legacy': the older flat body",
            choices=("v3", "legacy"),
        ),
    ),
    checkout_actions=api.CHECKOUT_ACTIONS,
    channels=api.CHANNELS,
    complete_checkout=api.complete_checkout,
    control_upsert=api.control_upsert,
    refund_advance=api.refund_advance,
    refund_final_statuses=api.REFUND_FINAL_STATUSES,
    first_charge_id=288_200_108,
)
