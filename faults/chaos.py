"""`python -m faults.chaos [--events N]`: the whole system under faults, judged from the database afterwards.

Starts a private PostgreSQL cluster and a private redis-server on free 19xxx ports, the sandbox, gunicorn,
two Celery workers, beat and the Django Q cluster; sends N webhooks like the gateways would while a fault
script stops Redis, SIGKILLs workers mid-task, restarts PostgreSQL and makes the gateway flaky; then waits
for the system to drain and checks every case against its expected outcome. Exit 0 only when nothing was
lost, applied twice, left in a wrong state, falsely granted, or leaked. docs/reliability.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from payshift.processes import Supervisor, Topology, demo_gateway_environment, manage_command, sandbox_environment

from . import scenarios, verify
from .cluster import PrivatePostgres, PrivateRedis, free_port, wait_until
from .driver import Driver
from .injector import Injector, Plan

ROOT = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m faults.chaos", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000, help="webhook deliveries to send (default 10000)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="deliveries per second (default: 10/s up to 1,000 events, else 30/s)")
    parser.add_argument("--worker-kills", type=int, default=2, help="Celery workers SIGKILLed mid-task (default 2)")
    parser.add_argument("--celery-concurrency", type=int, default=3, help="pool size of each of the two workers")
    parser.add_argument("--drain-timeout", type=float, default=420.0, help="seconds to wait for the backlog")
    parser.add_argument("--seed", type=int, default=7, help="seed for the plan, the driver and the sandbox dice")
    parser.add_argument("--keep", action="store_true", help="keep the run folder (logs, data) even on success")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def stack_env(run: Path, pg: PrivatePostgres, redis: PrivateRedis, topology: Topology) -> dict[str, str]:
    """One environment for every process: the gateways' demo keys (the log scan looks for them) and
    short cycles so the safety nets act within the run (payshift/settings.py documents each one)."""
    gateways = demo_gateway_environment(topology.sandbox_url)
    values = {
        "DATABASE_URL": pg.url,
        "CELERY_BROKER_URL": redis.url,
        # As production configures it: results on the same Redis, so stopping Redis takes both away
        # (docs/reliability.md "Redis down with a result backend").
        "CELERY_RESULT_BACKEND": redis.db_url(1),
        "PAYSHIFT_ENV_FILE": str(run / "no.env"),  # never read the developer's .env
        "PAYSHIFT_VAR_DIR": str(run / "var"),
        "PAYMENT_LOG_FILE": str(run / "payment.log"),
        "PAYMENT_LOG_MAX_BYTES": "0",  # several processes share the file: no in-process rotation
        "DJANGO_SECRET_KEY": f"chaos-django-{secrets.token_hex(16)}",
        "PAYSHIFT_METRICS_TOKEN": f"chaos-metrics-{secrets.token_hex(12)}",
        **gateways,
        "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.locmem.EmailBackend",
        "PROMETHEUS_MULTIPROC_DIR": str(run / "prometheus"),
        "PYTHONUNBUFFERED": "1",
        "PAYSHIFT_RECONCILE_INTERVAL_SECONDS": "10",
        "PAYSHIFT_SWEEP_AFTER_SECONDS": "20",
        "PAYSHIFT_PROCESSING_STUCK_SECONDS": "45",
        "PAYSHIFT_PENDING_RECHECK_SECONDS": "120",
        "CELERY_VISIBILITY_TIMEOUT": "60",
        "CELERY_UNACKED_RESTORE_INTERVAL": "5",
        "PAYSHIFT_CELERY_RETRY_BASE_SECONDS": "1",
        "PAYSHIFT_CELERY_RETRY_MAX_SECONDS": "8",
        "PAYSHIFT_Q_RETRY_BASE_SECONDS": "2",
        "PAYSHIFT_Q_RETRY_MAX_SECONDS": "15",
        "PAYSHIFT_HTTP_READ_TIMEOUT": "5",
        "Q_CLUSTER_POLL": "0.2",
        "Q_CLUSTER_WORKERS": "2",
        # The driver is the only webhook sender: the sandbox's own deliveries go nowhere.
        **sandbox_environment(gateways, webhook_base_url="http://127.0.0.1:9", public_url=topology.sandbox_url),
    }
    inherited = {k: v for k, v in os.environ.items()
                 if not k.startswith(("PAYSHIFT_", "PAYSTACK_", "FLUTTERWAVE_", "SANDBOX_", "CELERY_", "DJANGO_"))
                 and k not in ("DATABASE_URL", "PAYMENT_LOG_FILE", "PROMETHEUS_MULTIPROC_DIR")}
    return {**inherited, **values}


class Run:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.monotonic()
        self.dir = Path(tempfile.mkdtemp(prefix="payshift-chaos-"))
        self.dir.chmod(0o755)  # the postgres user must reach its data folder inside
        (self.dir / "logs").mkdir()
        (self.dir / "var").mkdir()
        (self.dir / "prometheus").mkdir()
        self.pg = PrivatePostgres(self.dir, free_port())
        redis_port = free_port(start=self.pg.port + 1)
        self.web_port = free_port(start=max(self.pg.port, redis_port) + 1)
        self.sandbox_port = free_port(start=max(self.pg.port, redis_port, self.web_port) + 1)
        # Every process of the stack runs a snapshot of the code taken now: edits made in the tree while the
        # run goes on (other people work there) cannot mix two versions of the models and the database
        # schema. (This process, the judge, imports the tree's models once, when the stack starts.)
        self.src = self.dir / "src"
        for name in ("payment", "payshift"):
            shutil.copytree(ROOT / name, self.src / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
        shutil.copy2(ROOT / "manage.py", self.src / "manage.py")
        self.workers = ["w1@chaos", "w2@chaos"]
        self.topology = Topology(
            web_port=self.web_port, sandbox_port=self.sandbox_port, checkout=self.src,
            web_args=("--timeout", "60", "--graceful-timeout", "10"),
            celery_nodes={name: name for name in self.workers}, celery_concurrency=args.celery_concurrency,
            beat_schedule=self.dir / "var" / "celerybeat-schedule",
            sandbox_args=("--seed", str(args.seed), "--no-access-log", "--log-level", "warning",
                          "--webhook-tries", "1"))
        self.supervisor = Supervisor({}, cwd=self.src, log_dir=self.dir / "logs")
        self.redis = PrivateRedis(self.dir, redis_port, self.supervisor)
        self.env = stack_env(self.dir, self.pg, self.redis, self.topology)
        self.env["PYTHONPATH"] = str(self.src)
        self.supervisor.env = self.env

    def t(self) -> float:
        return time.monotonic() - self.started

    def say(self, text: str) -> None:
        print(f"[t={self.t():6.1f}s] {text}", flush=True)

    @property
    def sandbox(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    # --- bring-up ---------------------------------------------------------------------------------------
    def services_up(self) -> None:
        self.say(f"private PostgreSQL on :{self.pg.port}, Redis on :{self.redis.port} (run folder {self.dir})")
        self.pg.init()
        self.pg.start()
        self.pg.create_database()
        self.redis.start()
        os.environ.clear()
        os.environ.update(self.env)
        os.environ["DJANGO_SETTINGS_MODULE"] = "payshift.settings"
        subprocess.run([*manage_command(sys.executable, self.src), "migrate", "--noinput", "-v", "0"],
                       cwd=self.src, env=self.env, check=True)
        import django

        django.setup()

    def stack_up(self) -> None:
        for name, command in self.topology.commands().items():
            self.supervisor.start(name, command)
        self.supervisor.wait_healthy({"web": f"{self.web}/healthz", "sandbox": f"{self.sandbox}/_sandbox/health"},
                                     60)
        wait_until(lambda: all(self.active_tasks(w) is not None for w in self.workers), 90, "both Celery workers")
        # Never gives up: a worker that exits when Redis goes away comes back as often as it takes.
        self.supervisor.watch(limit=None)
        self.say("stack up: sandbox, gunicorn (2x4), 2 Celery workers, beat, Django Q cluster")

    def active_tasks(self, worker: str) -> list[Any] | None:
        """The tasks a worker is running right now (celery inspect), None when it does not answer."""
        from payshift.celery import app

        try:
            answer = app.control.inspect(destination=[worker], timeout=2.0).active()
        except Exception:
            return None
        if not answer or worker not in answer:
            return None
        return list(answer[worker])

    # --- the cases --------------------------------------------------------------------------------------
    def keys(self) -> scenarios.Keys:
        return scenarios.Keys(self.env["PAYSTACK_SECRET_KEY"], self.env["FLUTTERWAVE_SECRET_KEY"],
                              self.env["FLUTTERWAVE_WEBHOOK_HASH"])

    async def seed_sandbox(self, cases: list[scenarios.Case]) -> None:
        gate = asyncio.Semaphore(16)
        async with httpx.AsyncClient(timeout=30) as client:
            async def one(case: scenarios.Case) -> None:
                async with gate:
                    for seed in case.seeds:
                        answer = await client.post(f"{self.sandbox}/_sandbox/transactions", json=seed.body)
                        answer.raise_for_status()
                        case.tx_ids.append(str(answer.json()["id"]))

            await asyncio.gather(*(one(c) for c in cases))

    def create_rows(self, cases: list[scenarios.Case]) -> None:
        from django.utils import timezone

        from payment.models import Payment, Refund

        rows = [self._payment(c) for c in cases if c.payment_row != "late"]
        Payment.objects.bulk_create(rows, batch_size=1000)
        by_ref = dict(Payment.objects.filter(reference__in=[c.reference for c in cases if c.payment_row ==
                                                            "settled"]).values_list("reference", "pk"))
        Refund.objects.bulk_create([
            # A refund we sent and the gateway accepted (so submitted_at is set): its webhooks close it.
            Refund(payment_id=by_ref[c.reference], amount=c.refund_amount, currency=c.currency,
                   status="processing", idempotency_key=f"chaos:{c.reference}", requested_by="chaos",
                   reason="chaos run", submitted_at=timezone.now())
            for c in cases if c.payment_row == "settled"], batch_size=1000)

    @staticmethod
    def _payment(case: scenarios.Case) -> Any:
        from django.utils import timezone

        from payment.models import Payment

        settled = case.payment_row == "settled"
        return Payment(reference=case.reference, gateway=case.gateway, amount=case.amount, currency=case.currency,
                       mode=case.mode, customer_email=f"c{case.id}@example.com",
                       status="success" if settled else "pending", amount_paid=case.amount if settled else None,
                       paid_at=timezone.now() if settled else None)

    async def create_late(self, case: scenarios.Case) -> None:
        """The payment row of an 'unknown reference' case appears a few seconds after its webhook."""
        if case.payment_row != "late":
            return

        async def later() -> None:
            await asyncio.sleep(random.uniform(1.0, 12.0))
            await asyncio.to_thread(self._insert_late, case)

        self.late_tasks.append(asyncio.create_task(later()))

    def _insert_late(self, case: scenarios.Case) -> None:
        from django.db import DatabaseError, connection

        for _ in range(120):
            try:
                self._payment(case).save(force_insert=True)
                return
            except DatabaseError:
                connection.close()  # PostgreSQL may be restarting: wait and try again
                time.sleep(1)
        raise RuntimeError(f"could not create the late payment {case.reference}")

    # --- the run ----------------------------------------------------------------------------------------
    def execute(self) -> int:
        args = self.args
        rate = args.rate or (10.0 if args.events <= 1000 else 30.0)
        self.services_up()
        self.stack_up()
        run_tag = secrets.token_hex(3)
        cases = scenarios.plan(args.events, args.seed, run_tag)
        asyncio.run(self.seed_sandbox(cases))
        rng = random.Random(args.seed)
        keys = self.keys()
        for case in cases:
            scenarios.build_steps(case, keys, rng)
        self.create_rows(cases)
        keys_by_body = verify.fact_keys(cases)
        kinds: dict[str, int] = {}
        for case in cases:
            kinds[case.kind] = kinds.get(case.kind, 0) + 1
        self.say(f"{len(cases)} cases, {sum(c.sends for c in cases)} deliveries at ~{rate:.0f}/s: "
                 + ", ".join(f"{k} {n}" for k, n in kinds.items()))
        driver = Driver(self.web, self.started, seed=args.seed)
        injector = Injector(plan=Plan.for_kills(args.worker_kills), sandbox=self.sandbox, redis=self.redis,
                            postgres=self.pg, supervisor=self.supervisor, workers=self.workers,
                            progress=lambda: driver.launched / max(1, driver.total), started=self.started,
                            active_tasks=self.active_tasks)
        injector.start()
        self.late_tasks: list[asyncio.Task[None]] = []

        async def send_all() -> None:
            reporter = asyncio.create_task(self._report(driver))
            await driver.run(cases, rate, after_first_ok=self.create_late)
            await asyncio.gather(*self.late_tasks)
            reporter.cancel()

        send_started = self.t()
        asyncio.run(send_all())
        sent_done = self.t()
        self.say(f"all deliveries answered 200 or given up ({sent_done - send_started:.0f}s); waiting for faults")
        injector.join()
        drain_from = max(sent_done, self.t())
        drained = self.drain(cases, drain_from)
        drain_seconds = self.t() - drain_from
        if drained:
            time.sleep(15)  # a late redelivery (visibility timeout) must not change anything either
        verdict = verify.judge(cases, driver.deliveries, injector.records, keys_by_body)
        self.security_checks(verdict, driver)
        self.print_table(verdict, injector, drained=drained, drain_seconds=drain_seconds,
                         send_seconds=sent_done - send_started, rate=rate)
        if args.json:
            args.json.write_text(json.dumps({**asdict(verdict), "drained": drained,
                                             "drain_seconds": round(drain_seconds, 1),
                                             "send_seconds": round(sent_done - send_started, 1),
                                             "faults": [asdict(r) for r in injector.records]}, indent=2))
        return 0 if verdict.ok and drained and not injector.errors else 1

    async def _report(self, driver: Driver) -> None:
        while True:
            await asyncio.sleep(10)
            fives = sum(1 for d in driver.deliveries for a in d.attempts if a.code and a.code >= 500)
            self.say(f"sent {driver.launched}/{driver.total}, in flight {driver.in_flight}, 5xx so far {fives}")

    def drain(self, cases: list[scenarios.Case], since: float) -> bool:
        from django.db import DatabaseError, connection

        last = (-1, -1)
        while self.t() - since < self.args.drain_timeout:
            try:
                state = verify.outstanding(cases)
            except DatabaseError:
                connection.close()
                time.sleep(1)
                continue
            if state != last:
                self.say(f"drain: {state[0]} event(s) unfinished, {state[1]} payment(s) not in their final state")
                last = state
            if state == (0, 0):
                return True
            time.sleep(1)
        return False

    def security_checks(self, verdict: verify.Verdict, driver: Driver) -> None:
        named = {name: self.env[name] for name in ("PAYSTACK_SECRET_KEY", "FLUTTERWAVE_SECRET_KEY",
                                                  "FLUTTERWAVE_WEBHOOK_HASH", "DJANGO_SECRET_KEY",
                                                  "PAYSHIFT_METRICS_TOKEN")}
        named["card authorization code"] = "AUTH_chaos"
        signatures = {d.send.headers["x-paystack-signature"].lower() for d in driver.deliveries
                      if "x-paystack-signature" in d.send.headers}
        found = verify.scan_log(self.dir / "payment.log", named, signatures)
        verdict.secrets_in_log = len(found)
        for item in found:
            verdict.problem(f"secret in log: {item}")
        # /metrics answers only with the token (or a staff session).
        if _get(f"{self.web}/metrics") != 401 or _get(f"{self.web}/metrics", named["PAYSHIFT_METRICS_TOKEN"]) != 200:
            verdict.secrets_in_admin += 1
            verdict.problem("/metrics authorisation is not enforced")
        admin = self.admin_pages()
        named.pop("card authorization code")
        for url, html in admin:
            for item in verify.scan_text(html, named, signatures, url):
                verdict.secrets_in_admin += 1
                verdict.problem(f"secret in admin: {item}")
        self.admin_pages_seen = len(admin)

    def admin_pages(self) -> list[tuple[str, str]]:
        """Log in as staff over HTTP and read the admin's lists and a sample of detail pages."""
        from django.contrib.auth import get_user_model

        from payment.models import Payment, WebhookEvent

        password = secrets.token_urlsafe(12)
        get_user_model().objects.create_superuser("chaos-admin", "chaos@example.com", password)
        pages: list[tuple[str, str]] = []
        with httpx.Client(base_url=self.web, timeout=30, follow_redirects=True) as client:
            login = client.get("/admin/login/")
            token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text)
            if token is None:
                return pages
            client.post("/admin/login/", data={"username": "chaos-admin", "password": password,
                                               "csrfmiddlewaretoken": token.group(1), "next": "/admin/"},
                        headers={"Referer": f"{self.web}/admin/login/"})
            urls = ["/admin/", "/admin/payment/webhookevent/", "/admin/payment/payment/",
                    "/admin/payment/notification/", "/admin/payment/refund/", "/admin/payment/paymenttransition/"]
            urls += [f"/admin/payment/webhookevent/{pk}/change/"
                     for pk in WebhookEvent.objects.order_by("?").values_list("pk", flat=True)[:40]]
            urls += [f"/admin/payment/payment/{pk}/change/"
                     for pk in Payment.objects.order_by("?").values_list("pk", flat=True)[:20]]
            for url in urls:
                answer = client.get(url)
                if answer.status_code == 200:
                    pages.append((url, answer.text))
        return pages

    def print_table(self, v: verify.Verdict, injector: Injector, *, drained: bool, drain_seconds: float,
                    send_seconds: float, rate: float) -> None:
        rows = [
            ("sent (deliveries, copies included)", v.sent),
            ("accepted (200 stored)", v.accepted),
            ("duplicates (200 duplicate)", v.duplicates),
            ("rejected (4xx: forged)", v.rejected),
            ("resends by the driver", v.resends),
            ("5xx answered", v.five_xx),
            ("no answer (connection refused/timeout)", v.no_answer),
            ("lost", v.lost),
            ("applied twice", v.applied_twice),
            ("wrong final state", v.wrong_state),
            ("falsely granted", v.falsely_granted),
            ("forged requests stored", v.forged_stored),
            ("notification mismatches", v.notifications_wrong),
            ("secrets in payment.log", v.secrets_in_log),
            (f"secrets in admin ({getattr(self, 'admin_pages_seen', 0)} pages) or /metrics open",
             v.secrets_in_admin),
            ("send phase", f"{send_seconds:.0f} s at ~{rate:.0f}/s"),
            ("time to drain", f"{drain_seconds:.1f} s" + ("" if drained else " (NOT drained)")),
        ]
        width = max(len(r[0]) for r in rows)
        print("\n" + "=" * (width + 14))
        for name, value in rows:
            print(f"{name:<{width}}  {value:>10}")
        print("=" * (width + 14))
        print("5xx answered, when:", "; ".join(v.five_xx_windows) or "never")
        print("faults:")
        for r in injector.records:
            end = "end of run" if r.end < 0 else f"{r.end:.1f}s"
            print(f"  t={r.start:6.1f}s .. {end:>10}  {r.name}  {r.detail}")
        for name, proc in self.supervisor.procs.items():
            if proc.exits:
                print(f"  unexpected exits of {name}: {proc.exits} (restarted by the supervisor)")
        print("events by dispatch path:", v.dispatched_via, " attempts per event:", v.event_attempts)
        for error in injector.errors:
            print("  fault script error:", error)
        if v.problems:
            print("problems:")
            for p in v.problems:
                print("  -", p)
        print(f"RESULT: {'PASS' if v.ok and drained and not injector.errors else 'FAIL'} "
              f"(whole run {self.t():.0f} s, start-up and checks included)", flush=True)

    def cleanup(self, keep: bool) -> None:
        self.supervisor.stop_all()
        self.redis.stop()
        if self.pg.running():
            self.pg.stop("immediate")
        if keep:
            print(f"run folder kept: {self.dir}", flush=True)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def _get(url: str, token: str = "") -> int:
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(url, timeout=5, headers=headers).status_code
    except httpx.HTTPError:
        return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(args)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    code = 2
    try:
        code = run.execute()
    except KeyboardInterrupt:
        print("interrupted: stopping everything", flush=True)
        code = 130
    finally:
        with contextlib.suppress(Exception):
            run.cleanup(keep=args.keep or code != 0)
    return code


if __name__ == "__main__":
    sys.exit(main())
