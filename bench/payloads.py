"""Pending payments, the sandbox's side of each payment, and pre-signed webhook bodies built by the gateways."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import httpx
from django.db import connection

from bench.loadgen import Req
from payment.gateways.base import json_dumps
from payment.gateways.registry import gateway_get
from payment.models import Payment

# Typical Nigerian checkout amounts in kobo (N1,500 to N99,999), so bodies have realistic sizes and values.
_AMOUNTS = (150_000, 250_000, 500_000, 750_000, 1_000_000, 1_250_000, 2_500_000, 4_999_900, 9_999_900)


@dataclass(frozen=True)
class PendingPayment:
    reference: str
    gateway: str
    amount: int
    currency: str = "NGN"
    email: str = "customer@example.com"


def _gateway_pick(rng: random.Random, shares: Mapping[str, float]) -> str:
    """One gateway name, each drawn with its share of the traffic (the shares need not add up to 1)."""
    point = rng.random() * sum(shares.values())
    for name, share in shares.items():
        point -= share
        if point < 0:
            return name
    return next(reversed(list(shares)))


def payments_create(prefix: str, count: int, *, shares: Mapping[str, float] | None = None,
                    flutterwave_share: float = 0.0, seed: int = 7, batch_size: int = 5000) -> list[PendingPayment]:
    """Insert `count` pending payments (as Payment.objects.create would, in batches) and return them.

    `shares` is the traffic mix, gateway name -> share; `flutterwave_share` is the scenarios' shorthand for
    the mix bench/README.md describes (that share Flutterwave, the rest Paystack).
    """
    if shares is None:
        # Flutterwave first: the same seed draws the same payments as the runs recorded in bench/results/.
        shares = {"flutterwave": flutterwave_share, "paystack": 1.0 - flutterwave_share}
    shares = {name: share for name, share in shares.items() if share > 0}
    if not shares:
        raise ValueError("payments_create: no gateway has a share of the traffic")
    rng = random.Random(f"{seed}:{prefix}")
    made = [PendingPayment(reference=f"{prefix}-{i:07d}", gateway=_gateway_pick(rng, shares),
                           amount=rng.choice(_AMOUNTS), email=f"customer{i}@example.com")
            for i in range(count)]
    modes = {name: gateway_get(name).key_mode() for name in shares}
    for start in range(0, count, batch_size):
        Payment.objects.bulk_create([
            Payment(reference=p.reference, gateway=p.gateway, amount=p.amount, currency=p.currency,
                    mode=modes[p.gateway], customer_email=p.email, metadata={"source": "bench"})
            for p in made[start:start + batch_size]])
    return made


def sandbox_seed(sandbox_url: str, payments: Sequence[PendingPayment], *, status: str = "success",
                 concurrency: int = 16) -> dict[str, str]:
    """Tell the sandbox what its verify API reports for each payment; returns reference -> transaction id."""

    async def run() -> dict[str, str]:
        ids: dict[str, str] = {}
        queue = list(payments)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=sandbox_url, limits=limits, timeout=30.0) as client:

            async def worker() -> None:
                while queue:
                    p = queue.pop()
                    spec = {"gateway": p.gateway, "reference": p.reference, "amount": p.amount,
                            "currency": p.currency, "status": status, "email": p.email, "mode": "test",
                            "send_webhook": False}
                    for attempt in range(3):
                        try:
                            answer = await client.post("/_sandbox/transactions", json=spec)
                            break
                        except httpx.TransportError:
                            # A keep-alive connection closed under us; the upsert is idempotent, so resend.
                            if attempt == 2:
                                raise
                            await asyncio.sleep(0.2)
                    answer.raise_for_status()
                    ids[p.reference] = str(answer.json()["id"])

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return ids

    return asyncio.run(run())


def signed_requests(payments: Sequence[PendingPayment], transaction_ids: dict[str, str] | None = None,
                    *, id_base: int = 4_000_000_000) -> list[Req]:
    """One successful-charge webhook per payment, built and signed by the product's own gateway code, as the gateway
    would send it. Without the sandbox's ids each body gets a unique made-up id (dedupe keys stay unique)."""
    reqs = []
    for i, p in enumerate(payments):
        gateway = gateway_get(p.gateway)
        transaction_id = (transaction_ids or {}).get(p.reference) or str(id_base + i)
        body = json_dumps(gateway.build_test_webhook(
            event=gateway.charge_event, reference=p.reference, transaction_id=transaction_id, status="success",
            amount=p.amount, currency=p.currency, mode=gateway.key_mode(), email=p.email))
        # wrk_cycle.lua sends one header besides the content type: the one that carries the proof.
        signed = gateway.sign_webhook(body)
        header = next(name for name in signed if name in gateway.secret_headers)
        reqs.append(Req(path=f"/payment/webhooks/{p.gateway}/", header=header, value=signed[header], body=body))
    return reqs


def tables_truncate() -> None:
    """Empty the product's tables between scenarios so each one starts from the same state."""
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE payment_notification, payment_paymenttransition, payment_refund, "
                       "payment_webhookevent, payment_payment, django_q_ormq, django_q_task RESTART IDENTITY")
