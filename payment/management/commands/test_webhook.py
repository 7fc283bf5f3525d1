"""`test_webhook --payment-method=<gateway>`: simulate a gateway callback against a running server.

It plays the gateway: makes (or reuses) a pending payment, tells the sandbox what the customer paid (so the
verify API agrees), builds the gateway's own payload, signs it with the configured secret exactly as the
gateway would, POSTs it, and waits until the payment reaches a final state.
"""

from __future__ import annotations

import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
from django.core.management.base import BaseCommand, CommandError, CommandParser

from payment.conf import app_settings
from payment.gateways.base import GatewayError, UnbuildableEventError, json_dumps
from payment.gateways.registry import UnknownGatewayError, gateway_get, gateway_names
from payment.models import Mode, Payment, PaymentStatus, WebhookEvent


@dataclass
class Delivery:
    reference: str
    http_status: int | None
    answer: str


class Command(BaseCommand):
    help = "Send a signed, realistic gateway webhook to a running Payshift and wait for the payment's final state."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--payment-method", required=True, help="gateway name: " + ", ".join(gateway_names()))
        parser.add_argument("--url", default="http://127.0.0.1:8000", help="base URL of the running server")
        parser.add_argument("--event", default="", help="event name (default: the gateway's charge event)")
        parser.add_argument("--reference", default="", help="use this payment (default: create a new one)")
        parser.add_argument("--create", action="store_true", help="create --reference if it does not exist")
        parser.add_argument("--amount", type=int, default=500000, help="minor units (default 500000)")
        parser.add_argument("--currency", default="NGN")
        parser.add_argument("--status", default="success", choices=["success", "failed"],
                            help="what the customer's payment did at the gateway")
        parser.add_argument("--mode", default="", choices=["", "test", "live"], help="payment mode")
        parser.add_argument("--count", type=int, default=1, help="number of payments")
        parser.add_argument("--duplicate", type=int, default=0, help="send each webhook N extra times")
        parser.add_argument("--concurrency", type=int, default=1, help="parallel senders")
        parser.add_argument("--bad-signature", action="store_true", help="sign with a wrong key (expect 401)")
        parser.add_argument("--amount-mismatch", action="store_true",
                            help="the customer paid less than expected; the webhook still claims full amount")
        parser.add_argument("--no-wait", action="store_true", help="do not wait for the final state")
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for final states")
        parser.add_argument("--sandbox-url", default=app_settings.PAYSHIFT_SANDBOX_URL,
                            help="sandbox control API (default PAYSHIFT_SANDBOX_URL); empty = do not seed it")

    def handle(self, *args: Any, **opts: Any) -> None:
        name = opts["payment_method"]
        try:
            gateway = gateway_get(name)
        except UnknownGatewayError:
            raise CommandError(f"unknown gateway {name!r}; known: {', '.join(gateway_names())}") from None
        if not gateway.webhook_secrets():
            raise CommandError(f"{gateway.secret_setting} is not set: there is no secret to sign with")
        if opts["count"] < 1 or opts["duplicate"] < 0 or opts["concurrency"] < 1:
            raise CommandError("--count and --concurrency must be >= 1, --duplicate >= 0")
        try:
            # Asked before anything is made: no payment row or sandbox transaction for an event never sent.
            gateway.build_test_webhook(event=opts["event"] or gateway.charge_event, reference="TW-check",
                                       transaction_id="1", status=opts["status"], amount=opts["amount"],
                                       currency=opts["currency"].upper(), mode="test", email="test-webhook@example.com")
        except UnbuildableEventError as exc:
            raise CommandError(str(exc)) from None
        url = opts["url"].rstrip("/") + f"/payment/webhooks/{name}/"
        try:
            httpx.get(opts["url"].rstrip("/") + "/healthz", timeout=5.0)
        except httpx.HTTPError as exc:
            raise CommandError(f"cannot reach the server at {opts['url']}: {type(exc).__name__}. "
                               "Is it running? (see README)") from None

        payments = [self._payment(gateway, opts, i) for i in range(opts["count"])]
        bodies = [(p, self._payload(gateway, p, opts)) for p in payments]
        jobs = [(p, body) for p, body in bodies for _ in range(1 + opts["duplicate"])]
        self.stdout.write(f"{name} {opts['event'] or gateway.charge_event} -> {url} "
                          f"({len(jobs)} deliveries, concurrency {opts['concurrency']})")
        with httpx.Client(timeout=30.0) as client, ThreadPoolExecutor(opts["concurrency"]) as pool:
            results = list(pool.map(lambda job: self._send(client, gateway, url, job, opts), jobs))
        for r in results:
            self.stdout.write(f"  {r.reference}: HTTP {r.http_status} {r.answer}")
        if opts["bad_signature"]:
            stored = WebhookEvent.objects.filter(reference__in=[p.reference for p in payments]).count()
            self.stdout.write(f"forged deliveries stored: {stored} (expected 0)")
            return
        for p in payments:
            ids = list(WebhookEvent.objects.filter(reference=p.reference, gateway=name).values_list("pk", flat=True))
            self.stdout.write(f"  {p.reference}: event id(s) {', '.join(f'#{i}' for i in ids) or '-'}")
        if opts["no_wait"]:
            return
        self._wait(payments, opts["timeout"])

    # -- steps ---------------------------------------------------------------------------------------------
    def _payment(self, gateway: Any, opts: dict[str, Any], index: int) -> Payment:
        reference = opts["reference"]
        if reference and opts["count"] > 1:
            reference = f"{reference}-{index + 1}"
        mode = opts["mode"] or gateway.key_mode()
        if reference:
            payment = Payment.objects.filter(reference=reference).first()
            if payment is not None:
                if payment.gateway != gateway.name:
                    raise CommandError(f"payment {reference} belongs to {payment.gateway}")
                return payment
            if not opts["create"]:
                raise CommandError(f"no payment {reference!r}; add --create to make a pending one")
        return Payment.objects.create(
            reference=reference or f"TW-{uuid.uuid4().hex[:16]}", gateway=gateway.name, amount=opts["amount"],
            currency=opts["currency"].upper(), mode=mode if mode in Mode.values else Mode.TEST,
            customer_email="test-webhook@example.com", metadata={"source": "test_webhook"},
        )

    def _payload(self, gateway: Any, payment: Payment, opts: dict[str, Any]) -> bytes:
        paid = payment.amount // 2 if opts["amount_mismatch"] else payment.amount
        transaction_id = str(int(time.time() * 1000) % 10**9 + payment.pk)
        sandbox = opts["sandbox_url"].rstrip("/")
        if sandbox and not opts["bad_signature"]:
            # The gateway side of the story: what the verify API will report.
            try:
                answer = httpx.post(f"{sandbox}/_sandbox/transactions", timeout=10.0, json={
                    "gateway": gateway.name, "reference": payment.reference, "amount": payment.amount,
                    "currency": payment.currency, "status": opts["status"], "email": payment.customer_email,
                    "mode": payment.mode, "verify_amount": paid, "send_webhook": False, "new_attempt": True,
                })
                answer.raise_for_status()
                transaction_id = str(answer.json().get("id") or transaction_id)
            except httpx.HTTPError as exc:
                raise CommandError(f"cannot seed the sandbox at {sandbox}: {exc}") from None
        payload = gateway.build_test_webhook(
            event=opts["event"] or gateway.charge_event,
            reference=payment.reference, transaction_id=transaction_id, status=opts["status"],
            amount=payment.amount, currency=payment.currency, mode=payment.mode, email=payment.customer_email)
        return json_dumps(payload)

    def _send(self, client: httpx.Client, gateway: Any, url: str, job: tuple[Payment, bytes],
              opts: dict[str, Any]) -> Delivery:
        payment, body = job
        try:
            headers = gateway.sign_webhook(body)
        except GatewayError as exc:
            raise CommandError(str(exc)) from None
        if opts["bad_signature"]:
            headers = {k: ("0" * len(v) if k != "content-type" else v) for k, v in headers.items()}
        try:
            response = client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Delivery(payment.reference, None, f"{type(exc).__name__}")
        try:
            answer = response.json().get("status", "")
        except ValueError:
            answer = response.text[:80]
        return Delivery(payment.reference, response.status_code, answer)

    def _wait(self, payments: list[Payment], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ids = [p.pk for p in payments]
        spinner = "|/-\\"
        tick = 0
        while True:
            open_count = Payment.objects.filter(pk__in=ids, status=PaymentStatus.PENDING).count()
            done = len(ids) - open_count
            if sys.stdout.isatty():
                self.stdout.write(f"\r  waiting {spinner[tick % 4]} {done}/{len(ids)} final", ending="")
                self.stdout.flush()
            if not open_count or time.monotonic() > deadline:
                break
            tick += 1
            time.sleep(0.25)
        if sys.stdout.isatty():
            self.stdout.write("")
        for payment in Payment.objects.filter(pk__in=ids).order_by("pk"):
            notes = ", ".join(f"{n.kind} ({n.recipient})" for n in payment.notifications.order_by("pk"))
            reason = f" ({payment.review_reason})" if payment.review_reason else ""
            self.stdout.write(f"  {payment.reference}: final status {payment.status}{reason}; "
                              f"notifications: {notes or 'none'}")
        if Payment.objects.filter(pk__in=ids, status=PaymentStatus.PENDING).exists():
            raise CommandError(f"still pending after {timeout:.0f}s: are the workers running?")
