"""The gateway imitation: paced deliveries, concurrent copies, and resends on any non-200 with backoff."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from .scenarios import Case, Send


@dataclass
class Attempt:
    at: float  # seconds since the run started
    code: int | None  # None: no HTTP answer (connection refused, timeout)
    outcome: str  # the JSON "status" of the answer, or the transport error


@dataclass
class Delivery:
    case: Case
    send: Send
    copy: int
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def final(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def ok(self) -> bool:
        return self.final is not None and self.final.code == 200


class Driver:
    """Behaves like Paystack/Flutterwave: only HTTP 200 counts as delivered; anything else is sent again.

    Forged requests come from an attacker, who sends each one once. An authentic delivery answered 4xx is
    resent a few times (as a gateway would) and then reported: it would be a lost event.
    """

    def __init__(self, base_url: str, started: float, *, concurrency: int = 48, resend_window: float = 600.0,
                 seed: int = 0) -> None:
        self.base_url = base_url.rstrip("/")
        self.started = started
        self.concurrency = concurrency
        self.resend_window = resend_window
        self.rng = random.Random(seed)
        self.deliveries: list[Delivery] = []
        self.launched = 0  # deliveries started (copies included): the progress the fault script follows
        self.total = 0
        self.in_flight = 0
        self.first_send_at: float | None = None
        self.last_ok_at = 0.0
        self._gate = asyncio.Semaphore(concurrency)

    def now(self) -> float:
        return time.monotonic() - self.started

    async def run(self, cases: list[Case], rate: float,
                  after_first_ok: Callable[[Case], Awaitable[None]] | None = None) -> None:
        self.total = sum(c.sends for c in cases)
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        # 30 s, Paystack's own delivery timeout (docs/gateway-facts.md, Paystack webhooks).
        async with httpx.AsyncClient(timeout=30.0, limits=limits) as client:
            tasks: list[asyncio.Task[None]] = []
            self.first_send_at = self.now()
            next_at = time.monotonic()
            for case in cases:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(self._case(client, case, after_first_ok)))
                next_at += case.sends / rate
                # Back-pressure: never run far ahead of what is actually in flight.
                while self.in_flight >= self.concurrency:
                    await asyncio.sleep(0.05)
            await asyncio.gather(*tasks)

    async def _case(self, client: httpx.AsyncClient, case: Case,
                    after_first_ok: Callable[[Case], Awaitable[None]] | None) -> None:
        for index, send in enumerate(case.steps):
            batch = [Delivery(case, send, copy) for copy in range(send.copies)]
            self.deliveries.extend(batch)
            self.launched += len(batch)
            await asyncio.gather(*(self._deliver(client, d) for d in batch))
            if index == 0 and after_first_ok is not None and any(d.ok for d in batch):
                await after_first_ok(case)
            # The next fact of a case comes a moment later, as a customer's second attempt would.
            await asyncio.sleep(self.rng.uniform(0.0, 0.3))

    async def _deliver(self, client: httpx.AsyncClient, delivery: Delivery) -> None:
        send = delivery.send
        url = f"{self.base_url}/payment/webhooks/{send.gateway}/"
        first = time.monotonic()
        backoff = 0.5
        client_errors = 0
        self.in_flight += 1
        try:
            while True:
                async with self._gate:
                    at = self.now()
                    try:
                        answer = await client.post(url, content=send.body, headers=send.headers)
                        code: int | None = answer.status_code
                        try:
                            outcome = str(answer.json().get("status", ""))
                        except ValueError:
                            outcome = answer.text[:60]
                    except httpx.HTTPError as exc:
                        code, outcome = None, type(exc).__name__
                delivery.attempts.append(Attempt(at, code, outcome))
                if code == 200:
                    self.last_ok_at = max(self.last_ok_at, self.now())
                    return
                if not send.authentic:
                    return
                if code is not None and 400 <= code < 500:
                    client_errors += 1
                    if client_errors >= 3:
                        return
                if time.monotonic() - first > self.resend_window:
                    return
                await asyncio.sleep(self.rng.uniform(backoff / 2, backoff))
                backoff = min(backoff * 2, 10.0)
        finally:
            self.in_flight -= 1
