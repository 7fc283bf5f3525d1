"""The sandbox ASGI app: one mount per registered gateway, the checkout page and the /_sandbox/ control API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount

from payshift.sandbox import checkout, control
from payshift.sandbox.config import SandboxConfig
from payshift.sandbox.runtime import Runtime

MAX_BODY_BYTES = 1024 * 1024


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods under a gateway prefix answer in that gateway's JSON envelope.

    A client with a wrong base URL then still gets JSON it can log, like from the real APIs.
    """
    assert isinstance(exc, HTTPException)
    runtime: Runtime = request.app.state.runtime
    gateway = runtime.registry.for_path(request.url.path)
    if gateway is not None:
        return gateway.api.error(exc.status_code, exc.detail, headers=dict(exc.headers or {}))
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def create_app(
    config: SandboxConfig | None = None, *, webhook_transport: httpx.AsyncBaseTransport | None = None
) -> Starlette:
    """Build the app; `webhook_transport` lets tests catch webhooks without a network (httpx.MockTransport).

    Also usable as `uvicorn --factory payshift.sandbox.app:create_app` (config from the environment).
    """
    runtime = Runtime(config or SandboxConfig.from_env(), webhook_transport)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await runtime.aclose()

    gateway_mounts: list[BaseRoute] = [
        Mount(f"/{gateway.name}", routes=list(gateway.routes)) for gateway in runtime.registry.values()
    ]
    app = Starlette(
        routes=[*gateway_mounts, *checkout.ROUTES, *control.ROUTES],
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
        exception_handlers={HTTPException: _http_error},
    )
    app.state.runtime = runtime
    return app
