"""The live sandbox: config, state, current faults, background tasks and the webhook HTTP client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Coroutine
from typing import Any

import httpx

from payshift.sandbox import webhooks
from payshift.sandbox.config import SandboxConfig
from payshift.sandbox.faults import Faults
from payshift.sandbox.ratelimit import KeyBuckets
from payshift.sandbox.state import Store

log = logging.getLogger("sandbox")


class Runtime:
    """One per app. Everything runs on the server's single event loop; `store.lock` guards the data."""

    def __init__(
        self, config: SandboxConfig, webhook_transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.registry = config.registry
        self.store = Store(
            config.max_deliveries,
            config.max_refunds,
            config.max_transactions,
            first_charge_ids={name: gateway.first_charge_id for name, gateway in self.registry.items()},
        )
        self.faults: Faults = config.faults
        self.rate_limiter = KeyBuckets(config.rate_limit)
        self.rng = random.Random(config.seed)
        self._transport = webhook_transport
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def client(self) -> httpx.AsyncClient:
        # Created lazily on the running loop so the app also works without a lifespan run.
        if self._client is None:
            self._client = httpx.AsyncClient(
                transport=self._transport,
                timeout=self.config.webhook_timeout_s,
                follow_redirects=False,  # the gateways do not follow redirects either
            )
        return self._client

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run `coro` in the background; keep a reference so the loop does not drop it half-way."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sandbox background task failed", exc_info=task.exception())

    def send_webhooks(self, batch: list[webhooks.Webhook]) -> None:
        """Deliver a batch (the webhooks of one customer action) in order, applying the webhook faults."""
        if batch:
            self.spawn(webhooks.deliver_batch(self, batch, self.faults))

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)

    async def reset(self) -> None:
        await self._cancel_tasks()
        with self.store.lock:
            self.store.reset()
        self.faults = self.config.faults
        self.rate_limiter = KeyBuckets(self.config.rate_limit)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def aclose(self) -> None:
        await self._cancel_tasks()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
