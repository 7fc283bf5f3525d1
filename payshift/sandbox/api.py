"""The shared edge of both gateway APIs: fault injection, Bearer auth, JSON bodies and error envelopes."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from payshift.sandbox.faults import FAULT_HEADER, FaultPlan, FaultSpecError, parse_fault_header, roll_faults
from payshift.sandbox.money import dumps

if TYPE_CHECKING:
    from payshift.sandbox.config import SandboxConfig
    from payshift.sandbox.runtime import Runtime

log = logging.getLogger("sandbox")
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def ascii_int(raw: str, max_digits: int = 18) -> int | None:
    """A path or query id of ASCII digits as an int; None otherwise.

    str.isdigit() also accepts "²", which int() then refuses with a ValueError (a 500), and int() of a
    huge digit string is slow before it fails: both are turned away here.
    """
    if not raw or len(raw) > max_digits or not (raw.isascii() and raw.isdigit()):
        return None
    return int(raw)


class ApiError(Exception):
    """Answered with the gateway's error envelope and `status`; `code` and `next_step` feed gateways whose
    errors carry a machine-readable code and a hint (Paystack), others ignore them."""

    def __init__(self, status: int, message: str, *, code: str | None = None, next_step: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.next_step = next_step


# (status, message, code, next_step) -> the gateway's JSON error body.
ErrorBody = Callable[[int, str, "str | None", "str | None"], dict[str, Any]]


@dataclass(frozen=True)
class ApiCall:
    """What a gateway handler gets besides the request: the runtime and the mode of the key used."""

    runtime: Runtime
    mode: str


Handler = Callable[[Request, ApiCall], Awaitable[tuple[int, dict[str, Any]]]]


def json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, headers=headers, media_type="application/json")


async def read_json(request: Request, *, accept_form: bool = False) -> dict[str, Any]:
    """The JSON object body; numbers with a fraction become Decimal so no amount passes through float.

    With `accept_form`, an application/x-www-form-urlencoded body is read too (see `form_fields`).
    """
    raw = await request.body()
    if accept_form and request.headers.get("content-type", "").split(";")[0].strip().lower() == FORM_CONTENT_TYPE:
        return form_fields(raw)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "Invalid JSON body") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def form_fields(raw: bytes) -> dict[str, Any]:
    """A urlencoded body as the JSON handlers expect it: repeated or `name[]` keys become lists, and a value
    that is a JSON object or array (a stringified `metadata`) is decoded; everything else stays a string."""
    try:
        pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=bool(raw.strip()))
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "Invalid form body") from None
    fields: dict[str, Any] = {}
    for key, value in pairs:
        name = key.removesuffix("[]")
        item: Any = value
        if value[:1] in ("{", "["):
            try:
                item = json.loads(value, parse_float=Decimal)
            except ValueError:
                item = value
        if key.endswith("[]") or name in fields:
            previous = fields.get(name, [])
            fields[name] = [*(previous if isinstance(previous, list) else [previous]), item]
        else:
            fields[name] = item
    return fields


@dataclass(frozen=True)
class GatewayApi:
    """One gateway's API conventions; `route` wraps a handler with faults, auth and envelopes."""

    name: str
    error_body: ErrorBody
    keys: Callable[[SandboxConfig], tuple[str, ...]]
    mode_for_key: Callable[[str], str]
    unauthorised_message: str

    def error(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        code: str | None = None,
        next_step: str | None = None,
    ) -> Response:
        return json_response(status, self.error_body(status, message, code, next_step), headers)

    def rate_limited(self, retry_after_s: int) -> Response:
        """The 429 of a key over its limit (or of the rate_limit fault), in the gateway's error envelope."""
        return self.error(
            429,
            "Too many requests",
            headers={"Retry-After": str(retry_after_s)},
            code="rate_limited",
            next_step="Wait for the Retry-After seconds, then try again",
        )

    def route(self, path: str, handler: Handler, methods: list[str]) -> Route:
        async def endpoint(request: Request) -> Response:
            return await self._serve(request, handler)

        return Route(path, endpoint, methods=methods, name=f"{self.name}:{handler.__name__}")

    async def _serve(self, request: Request, handler: Handler) -> Response:
        runtime: Runtime = request.app.state.runtime
        header = request.headers.get(FAULT_HEADER)
        try:
            plan = (
                parse_fault_header(header, runtime.faults)
                if header is not None
                else roll_faults(runtime.faults, runtime.rng)
            )
        except FaultSpecError as exc:
            return self.error(400, f"Invalid X-Sandbox-Fault header: {exc}")
        # Faults strike before auth, as an overloaded edge fails before the app looks at the key.
        if plan.latency_s:
            await asyncio.sleep(plan.latency_s)
        if plan.error_status is not None:
            return self.error(plan.error_status, "An error occurred while processing your request", code="unknown")
        if plan.rate_limit_retry_after_s is not None:
            return self.rate_limited(plan.rate_limit_retry_after_s)
        response = await self._authorised(request, handler, runtime)
        return await self._maybe_time_out(plan, response)

    async def _maybe_time_out(self, plan: FaultPlan, response: Response) -> Response:
        # A timeout loses the answer, not the work: the request has been processed, as can
        # happen for real: a timeout is not a failure, the client must query the status.
        if plan.timeout_s is None:
            return response
        await asyncio.sleep(plan.timeout_s)
        return self.error(503, "Service unavailable: the request timed out", code="timeout")

    async def _authorised(self, request: Request, handler: Handler, runtime: Runtime) -> Response:
        key = self._matching_key(request.headers.get("authorization", ""), runtime.config)
        if key is None:
            return self.error(
                401,
                self.unauthorised_message,
                code="invalid_Key",
                next_step="Ensure that you provide the correct authorization key for the request",
            )
        retry_after = runtime.rate_limiter.retry_after(key)
        if retry_after is not None:
            log.info("sandbox %s %s %s: 429 rate limited", self.name, request.method, request.url.path)
            return self.rate_limited(retry_after)
        try:
            status, body = await handler(request, ApiCall(runtime, self.mode_for_key(key)))
        except ApiError as exc:
            log.info("sandbox %s %s %s: %s %s", self.name, request.method, request.url.path, exc.status, exc.message)
            return self.error(exc.status, exc.message, code=exc.code, next_step=exc.next_step)
        return json_response(status, body)

    def _matching_key(self, authorization: str, config: SandboxConfig) -> str | None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        presented = token.strip().encode()
        match: str | None = None
        # Compare against every key in constant time; no early exit on the first hit.
        for key in self.keys(config):
            if hmac.compare_digest(presented, key.encode()) and match is None:
                match = key
        return match
