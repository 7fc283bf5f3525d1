"""The /_sandbox/ control API for tests and demos: seed transactions, read deliveries, set faults."""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from payshift.sandbox.api import ascii_int
from payshift.sandbox.faults import FaultSpecError
from payshift.sandbox.money import AmountError, format_major, parse_minor
from payshift.sandbox.ratelimit import KeyBuckets, RateLimit
from payshift.sandbox.registry import GatewayRegistry
from payshift.sandbox.runtime import Runtime
from payshift.sandbox.state import STATUSES, Checkout, Refund, Store, StoreFullError, TransactionSpec, iso

log = logging.getLogger("sandbox")


def _error(status: int, message: str) -> JSONResponse:
    log.info("sandbox control API: %s %s", status, message)
    return JSONResponse({"error": message}, status_code=status)


def transaction_view(store: Store, checkout: Checkout, runtime: Runtime) -> dict[str, Any]:
    """The neutral view of a reference: amounts in minor units, `id` = the latest gateway transaction id."""
    attempts = store.attempts(checkout)
    latest = attempts[-1] if attempts else None
    return {
        "gateway": checkout.gateway,
        "reference": checkout.reference,
        "id": latest.id if latest else None,
        "status": checkout.status,
        "amount": checkout.amount,
        "charged_amount": latest.amount if latest else None,
        "verify_amount": latest.verify_amount if latest else None,
        "amount_display": format_major(checkout.amount, checkout.currency),
        "currency": checkout.currency,
        "email": checkout.email,
        "mode": checkout.mode,
        "access_code": checkout.access_code,
        "checkout_url": f"{runtime.config.public_url}/checkout/{checkout.access_code}",
        "callback_url": checkout.callback_url,
        "metadata": checkout.metadata,
        "created_at": iso(checkout.created_at),
        "paid_at": iso(latest.paid_at) if latest else None,
        "refunded_amount": latest.refunded if latest else 0,
        "attempts": [
            {"id": a.id, "status": a.status, "amount": a.amount, "verify_amount": a.verify_amount}
            for a in attempts
        ],
        "channel": checkout.channel,
        "refunds": [refund_view(r) for r in store.refunds_of_reference(checkout.gateway, checkout.reference)],
    }


def refund_view(refund: Refund) -> dict[str, Any]:
    """The neutral view of a refund, in the gateway's own status words; amounts in minor units."""
    return {
        "gateway": refund.gateway,
        "id": refund.id,
        "transaction_id": refund.charge_id,
        "reference": refund.reference,
        "amount": refund.amount,
        "currency": refund.currency,
        "status": refund.status,
        "outcome": refund.outcome,
        "refund_reference": refund.refund_reference,
        "flw_ref": refund.gateway_ref or None,  # the name kept for existing clients; any gateway's own ref
    }


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    if body.get(name) is None:
        return None
    try:
        return parse_minor(body[name])
    except AmountError:
        raise ValueError(f"{name} must be an integer in minor units") from None


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value or None


def _spec(body: dict[str, Any], registry: GatewayRegistry) -> TransactionSpec:
    gateway = body.get("gateway")
    if not isinstance(gateway, str) or gateway not in registry:
        raise ValueError(f"gateway must be one of {', '.join(registry)}")
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference:
        raise ValueError("reference is required")
    status = _optional_str(body, "status")
    if status is not None and status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}")
    mode = _optional_str(body, "mode")
    if mode is not None and mode not in ("test", "live"):
        raise ValueError("mode must be test or live")
    amount = _optional_int(body, "amount")
    if amount is not None and amount <= 0:
        raise ValueError("amount must be positive")
    for flag in ("send_webhook", "new_attempt"):
        if not isinstance(body.get(flag, False), bool):
            raise ValueError(f"{flag} must be true or false")
    currency = _optional_str(body, "currency")
    return TransactionSpec(
        gateway=gateway,
        reference=reference,
        amount=amount,
        currency=currency.upper() if currency else None,
        status=status,
        email=_optional_str(body, "email"),
        mode=mode,
        callback_url=_optional_str(body, "callback_url"),
        metadata=body.get("metadata"),
        verify_amount=_optional_int(body, "verify_amount"),
        verify_amount_given="verify_amount" in body,
        send_webhook=body.get("send_webhook", False),
        new_attempt=body.get("new_attempt", False),
        channel=_optional_str(body, "channel"),
    )


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ValueError("body must be JSON") from None
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


async def transaction_upsert(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    try:
        spec = _spec(await _json_object(request), runtime.registry)
        checkout, created = runtime.registry[spec.gateway].control_upsert(runtime, spec)
    except ValueError as exc:
        return _error(400, str(exc))
    except StoreFullError as exc:
        return _error(503, str(exc))
    with runtime.store.lock:
        view = transaction_view(runtime.store, checkout, runtime)
    view["created"] = created
    return JSONResponse(view, status_code=201)


async def transaction_detail(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    key = (request.path_params["gateway"], request.path_params["reference"])
    with runtime.store.lock:
        checkout = runtime.store.checkouts.get(key)
        if checkout is None:
            return _error(404, "no such transaction")
        return JSONResponse(transaction_view(runtime.store, checkout, runtime))


async def refund_advance(request: Request) -> JSONResponse:
    """Nudge a refund one step on (or to `{"status": ...}`), sending that step's webhook, as time would."""
    runtime: Runtime = request.app.state.runtime
    gateway, raw_id = request.path_params["gateway"], request.path_params["refund_id"]
    if gateway not in runtime.registry:
        return _error(404, "no such gateway")
    try:
        body = await _json_object(request)
        target = _optional_str(body, "status")
    except ValueError as exc:
        return _error(400, str(exc))
    with runtime.store.lock:
        refund_id = ascii_int(raw_id)
        refund = runtime.store.refunds.get((gateway, refund_id)) if refund_id is not None else None
        if refund is None:
            return _error(404, "no such refund")
        try:
            runtime.registry[gateway].refund_advance(runtime, refund, target)
        except ValueError as exc:
            return _error(409, str(exc))
        return JSONResponse(refund_view(refund))


async def deliveries(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    reference = request.query_params.get("reference")
    gateway = request.query_params.get("gateway")
    with runtime.store.lock:
        rows = [
            d.as_dict()
            for d in runtime.store.deliveries
            if (reference is None or d.reference == reference) and (gateway is None or d.gateway == gateway)
        ]
    return JSONResponse({"count": len(rows), "pending_tasks": runtime.pending_tasks, "deliveries": rows})


async def faults_get(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(runtime.faults.as_dict())


async def faults_set(request: Request) -> JSONResponse:
    """Merge the given settings into the run-wide faults (POST /_sandbox/reset restores the start values)."""
    runtime: Runtime = request.app.state.runtime
    try:
        runtime.faults = runtime.faults.updated(await _json_object(request))
    except (FaultSpecError, ValueError) as exc:
        return _error(400, str(exc))
    return JSONResponse(runtime.faults.as_dict())


def _rate_limit_view(limit: RateLimit) -> dict[str, Any]:
    return {"per_s": limit.per_s, "burst": limit.burst}


async def rate_limit_get(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    return JSONResponse(_rate_limit_view(runtime.rate_limiter.limit))


async def rate_limit_set(request: Request) -> JSONResponse:
    """Change the per-key rate limit (`{"per_s": 10, "burst": 5}`, either key); the buckets start full again.
    POST /_sandbox/reset restores the start values."""
    runtime: Runtime = request.app.state.runtime
    try:
        body = await _json_object(request)
        unknown = sorted(set(body) - {"per_s", "burst"})
        if unknown:
            raise ValueError(f"unknown rate limit setting(s): {', '.join(unknown)}")
        current = runtime.rate_limiter.limit
        per_s, burst = body.get("per_s", current.per_s), body.get("burst", current.burst)
        if isinstance(per_s, bool) or not isinstance(per_s, int | float):
            raise ValueError("per_s must be a number")
        if isinstance(burst, bool) or not isinstance(burst, int):
            raise ValueError("burst must be an integer")
        limit = RateLimit(float(per_s), burst)
        limit.validate()
    except ValueError as exc:
        return _error(400, str(exc))
    runtime.rate_limiter = KeyBuckets(limit)
    return JSONResponse(_rate_limit_view(limit))


async def reset(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.runtime
    await runtime.reset()
    return JSONResponse({"status": "reset"})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


ROUTES = [
    Route("/_sandbox/health", health, methods=["GET"]),
    Route("/_sandbox/transactions", transaction_upsert, methods=["POST"]),
    Route("/_sandbox/transactions/{gateway}/{reference}", transaction_detail, methods=["GET"]),
    Route("/_sandbox/refunds/{gateway}/{refund_id}/advance", refund_advance, methods=["POST"]),
    Route("/_sandbox/deliveries", deliveries, methods=["GET"]),
    Route("/_sandbox/faults", faults_get, methods=["GET"]),
    Route("/_sandbox/faults", faults_set, methods=["POST"]),
    Route("/_sandbox/rate-limit", rate_limit_get, methods=["GET"]),
    Route("/_sandbox/rate-limit", rate_limit_set, methods=["POST"]),
    Route("/_sandbox/reset", reset, methods=["POST"]),
]
