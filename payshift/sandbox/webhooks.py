"""Webhook sending: deliver a gateway's signed bytes in the background, retry non-200, log every attempt."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from payshift.sandbox.faults import Faults

if TYPE_CHECKING:
    from payshift.sandbox.runtime import Runtime


@dataclass(frozen=True)
class Webhook:
    """One event, serialised once: retries and duplicates resend these very bytes."""

    gateway: str
    url: str
    event: str
    reference: str
    body: bytes
    headers: dict[str, str]


async def deliver_batch(runtime: Runtime, batch: list[Webhook], faults: Faults) -> None:
    """First attempts go out one after another in batch order; failures retry in their own tasks.

    Retrying inline would hold back the next event of the batch for seconds,
    which real gateways do not do: they only keep their own first-send order.
    """
    if faults.webhook_delay_ms:
        await asyncio.sleep(faults.webhook_delay_ms / 1000)
    ordered = list(reversed(batch)) if faults.out_of_order else batch
    for webhook in ordered:
        for copy in range(1 + faults.duplicate_webhooks):
            if (
                not await _attempt(runtime, webhook, attempt=1, copy=copy)
                and runtime.config.webhook_tries > 1
            ):
                runtime.spawn(_retry(runtime, webhook, copy))


async def _retry(runtime: Runtime, webhook: Webhook, copy: int) -> None:
    for attempt in range(2, runtime.config.webhook_tries + 1):
        await asyncio.sleep(runtime.config.webhook_retry_delay_ms / 1000)
        if await _attempt(runtime, webhook, attempt=attempt, copy=copy):
            return


async def _attempt(runtime: Runtime, webhook: Webhook, *, attempt: int, copy: int) -> bool:
    """POST once and log it. Only HTTP 200 counts as delivered, as at both gateways."""
    started = time.perf_counter()
    status_code: int | None = None
    error: str | None = None
    try:
        response = await runtime.client.post(webhook.url, content=webhook.body, headers=webhook.headers)
        status_code = response.status_code
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"
    with runtime.store.lock:
        runtime.store.record_delivery(
            gateway=webhook.gateway,
            url=webhook.url,
            event=webhook.event,
            reference=webhook.reference,
            attempt=attempt,
            copy=copy,
            status_code=status_code,
            error=error,
            duration_ms=int((time.perf_counter() - started) * 1000),
            body=webhook.body.decode("utf-8"),
        )
    return status_code == 200
