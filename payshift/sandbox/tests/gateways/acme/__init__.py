"""Acme Pay: a test-only gateway in one folder, proving a new gateway needs no edit outside its folder."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.requests import Request

from payshift.sandbox.api import ApiCall, ApiError, GatewayApi, read_json
from payshift.sandbox.gateway import SandboxGateway, Setting
from payshift.sandbox.money import dumps
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import Charge, Checkout, Refund, TransactionSpec
from payshift.sandbox.webhooks import Webhook

NAME = "acme"

API = GatewayApi(
    name=NAME,
    error_body=lambda status, message, _code, _step: {"ok": False, "error": message, "http": status},
    keys=lambda config: config.setting(NAME, "secret_keys"),
    mode_for_key=lambda key: "live" if key.startswith("live_") else "test",
    unauthorised_message="bad key",
)


def _view(checkout: Checkout, charge: Charge | None) -> dict[str, Any]:
    return {"reference": checkout.reference, "amount": checkout.amount, "state": charge.status if charge else None}


async def charge_create(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    body = await read_json(request)
    if not isinstance(body.get("amount"), int) or not isinstance(body.get("reference"), str):
        raise ApiError(422, "amount and reference are required")
    with call.runtime.store.lock:
        checkout = call.runtime.store.add_checkout(
            gateway=NAME, reference=body["reference"], access_code=secrets.token_hex(8), amount=body["amount"],
            currency="NGN", email="payer@acme.test", mode=call.mode, callback_url=body.get("return_url"),
        )
    return 201, {"ok": True, "pay_at": f"{call.runtime.config.public_url}/checkout/{checkout.access_code}"}


async def charge_fetch(request: Request, call: ApiCall) -> tuple[int, dict[str, Any]]:
    store = call.runtime.store
    with store.lock:
        checkout = store.checkouts.get((NAME, request.path_params["reference"]))
        if checkout is None:
            raise ApiError(404, "no such charge")
        return 200, {"ok": True, "charge": _view(checkout, store.latest_charge(checkout))}


def _webhook(runtime: Runtime, checkout: Checkout, charge: Charge) -> Webhook:
    body = dumps({"kind": f"charge.{charge.status}", "charge": _view(checkout, charge)})
    headers = {"content-type": "application/json", "acme-token": runtime.config.setting(NAME, "webhook_token")}
    return Webhook(NAME, runtime.config.webhook_url(NAME), f"charge.{charge.status}", charge.reference, body, headers)


def complete_checkout(runtime: Runtime, checkout: Checkout, action: str) -> list[tuple[str, str]]:
    status = {"pay": "success", "decline": "failed"}[action]
    with runtime.store.lock:
        charge = runtime.store.add_charge(checkout, status)
        hook = _webhook(runtime, checkout, charge)
    runtime.send_webhooks([hook])
    return [("ref", checkout.reference), ("state", status)]


def control_upsert(runtime: Runtime, spec: TransactionSpec) -> tuple[Checkout, bool]:
    with runtime.store.lock:
        checkout = runtime.store.checkouts.get((NAME, spec.reference))
        if checkout is None:
            checkout = runtime.store.add_checkout(
                gateway=NAME, reference=spec.reference, access_code=secrets.token_hex(8), amount=spec.amount or 100,
                currency="NGN", email="payer@acme.test", mode="test",
            )
            runtime.store.add_charge(checkout, spec.status or "success")
            return checkout, True
    return checkout, False


def refund_advance(runtime: Runtime, refund: Refund, target: str | None) -> None:
    raise ValueError("Acme has no refunds")


GATEWAY = SandboxGateway(
    name=NAME,
    label="Acme Pay",
    api=API,
    routes=[API.route("/charges", charge_create, ["POST"]), API.route("/charges/{reference}", charge_fetch, ["GET"])],
    api_path="acme",
    settings=(
        Setting("secret_keys", ("test_acme_key",), "comma list of accepted Acme keys"),
        Setting("webhook_token", "acme-token", "sent in the acme-token header"),
    ),
    checkout_actions=(("pay", "Pay"), ("decline", "Decline")),
    channels=("card", "wallet"),
    complete_checkout=complete_checkout,
    control_upsert=control_upsert,
    refund_advance=refund_advance,
    refund_final_statuses=frozenset(),
    first_charge_id=7_000_000,
)
