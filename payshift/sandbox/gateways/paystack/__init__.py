"""Paystack in the sandbox: served under /paystack, with its config keys and the registry entry `GATEWAY`."""

from __future__ import annotations

from payshift.sandbox.gateway import SandboxGateway, Setting
from payshift.sandbox.gateways.paystack import api
from payshift.sandbox.gateways.paystack.shapes import CHANNELS, NAME, REFUND_FINAL_STATUSES

# A clearly-marked demo secret. Payshift's demo setup uses the same value; it unlocks nothing outside this sandbox.
DEMO_SECRET_KEY = "sk_test_payshift_demo_do_not_use_in_production"

GATEWAY = SandboxGateway(
    name=NAME,
    label="Paystack",
    api=api.API,
    routes=api.ROUTES,
    api_path="paystack",
    settings=(
        Setting("secret_keys", (DEMO_SECRET_KEY,), "comma list of accepted Paystack keys; the first signs webhooks"),
    ),
    checkout_actions=api.CHECKOUT_ACTIONS,
    channels=CHANNELS,
    complete_checkout=api.complete_checkout,
    control_upsert=api.control_upsert,
    refund_advance=api.refund_advance,
    refund_final_statuses=REFUND_FINAL_STATUSES,
    first_charge_id=4_099_260_516,
)
