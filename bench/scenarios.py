"""The six scenarios of issue 6, each measured against a reference taken in the same run."""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis
from django.db import connection
from django.test.utils import CaptureQueriesContext

from bench import loadgen, payloads
from bench.loadgen import Req
from bench.stack import ROOT, CpuMeter, Stack, rss_kib


@dataclass(frozen=True)
class Sizes:
    """How big and how long: `full` is the documented run, `smoke` proves every code path in seconds."""

    warmup_s: float
    repeats: int
    saturation_s: float
    connections: int
    rate_s: float
    rates: tuple[int, ...]
    saturation_pool: int
    redis_down_saturation_s: float
    redis_down_rate: int
    redis_down_backend_rate: int
    e2e_low_rate: int
    e2e_low_seconds: float
    e2e_count: int
    e2e_rate: int
    e2e_settle_timeout_s: float
    backlog_count: int
    noop_seconds: float
    worker_concurrency: int
    reconcile_count: int
    reconcile_seeded_share: float
    reconcile_budget_s: float


FULL = Sizes(warmup_s=3, repeats=3, saturation_s=8, connections=16, rate_s=10, rates=(100, 300),
             saturation_pool=15_000,
             redis_down_saturation_s=10, redis_down_rate=100, redis_down_backend_rate=50, e2e_low_rate=60,
             e2e_low_seconds=30,
             e2e_count=20_000, e2e_rate=300, e2e_settle_timeout_s=180, backlog_count=3_000, noop_seconds=10,
             worker_concurrency=4, reconcile_count=100_000, reconcile_seeded_share=0.1, reconcile_budget_s=30)
SMOKE = Sizes(warmup_s=0.5, repeats=1, saturation_s=2, connections=8, rate_s=1.5, rates=(100, 300),
              saturation_pool=3_000,
              redis_down_saturation_s=1, redis_down_rate=100, redis_down_backend_rate=50, e2e_low_rate=50,
              e2e_low_seconds=1,
              e2e_count=200, e2e_rate=100,
              e2e_settle_timeout_s=60, backlog_count=100, noop_seconds=1, worker_concurrency=2,
              reconcile_count=2_000, reconcile_seeded_share=0.1, reconcile_budget_s=5)

def sizes_with(sizes: Sizes, overrides: Sequence[str]) -> Sizes:
    """Apply NAME=VALUE overrides (--set), converted to the type of the default."""
    changes: dict[str, Any] = {}
    for item in overrides:
        name, _, raw = item.partition("=")
        if not hasattr(sizes, name):
            raise SystemExit(f"--set: no size named {name!r}")
        current = getattr(sizes, name)
        if isinstance(current, tuple):
            changes[name] = tuple(int(x) for x in raw.split(","))
        else:
            changes[name] = type(current)(raw)
    return dataclasses.replace(sizes, **changes)


# Ingest targets: (name, URL path, which server). The same payloads go to each.
TARGETS = (
    ("bare Django view", "/bench/bare/", "web"),
    ("minimal ingest", "/bench/minimal/", "web"),
    ("Payshift", "/payment/webhooks/paystack/", "web"),
    ("paystack-django", "/paystack/webhook/", "peer"),
)


# CPU accounting (CpuMeter): the web side alone for ingest, every processing part for end to end.
WEB_ROLES = {"web": "web", "peer": "peer", "redis": "redis"}
E2E_ROLES = {"web": "web", "celery": "worker", "qcluster": "qcluster", "sandbox": "sandbox", "redis": "redis"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


class BlackHole:
    """A port that accepts TCP connections and never answers: a hung Redis, or a firewall that lets the
    handshake through. Connections are held open until `close()`."""

    def __init__(self, port: int) -> None:
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(1024)
        self._listener.settimeout(0.2)
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                self._held.append(self._listener.accept()[0])
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        for conn in self._held:
            conn.close()
        self._listener.close()


class Bench:
    def __init__(self, stack: Stack, sizes: Sizes, scratch: Path, profile_dir: Path | None = None) -> None:
        self.stack = stack
        self.sizes = sizes
        self.scratch = scratch
        self.profile_dir = profile_dir
        self.web = f"http://127.0.0.1:{stack.ports.web}"
        self.peer = f"http://127.0.0.1:{stack.ports.peer}"
        self.sandbox = f"http://127.0.0.1:{stack.ports.sandbox}"
        self._files = 0

    # --- helpers ------------------------------------------------------------------------------------------
    def _base(self, server: str) -> str:
        return self.peer if server == "peer" else self.web

    def _file(self, reqs: Sequence[Req]) -> Path:
        self._files += 1
        return loadgen.write_requests_file(self.scratch / f"requests-{self._files}.tsv", reqs)

    def _wrk(self, server: str, path: str, file: Path, seconds: float, pool: int) -> dict[str, Any]:
        self._files += 1
        with CpuMeter(self.stack, WEB_ROLES) as cpu:
            result = loadgen.run_wrk(base_url=self._base(server), path=path, requests_file=file, duration=seconds,
                                     connections=self.sizes.connections,
                                     out=self.scratch / f"wrk-{self._files}.json")
        # Only the storing targets answer a repeated body differently ("duplicate").
        result["wrapped"] = result["requests"] > pool and path != "/bench/bare/"
        result["cpu_ms_per_request"] = cpu.per_unit_ms(result["requests"])
        return result

    def _open(self, server: str, path: str, reqs: Sequence[Req], rate: float) -> dict[str, Any]:
        routed = [dataclasses.replace(r, path=path) for r in reqs]
        with CpuMeter(self.stack, WEB_ROLES) as cpu:
            result = loadgen.run_open_loop(base_url=self._base(server), reqs=routed, rate=rate)
        result["cpu_ms_per_request"] = cpu.per_unit_ms(result["requests"])
        return result

    def _redis(self, db: int = 0) -> redis.Redis:
        return redis.Redis(port=self.stack.ports.redis, db=db)

    def _sandbox_reset(self) -> None:
        httpx.post(f"{self.sandbox}/_sandbox/reset", timeout=30.0).raise_for_status()

    def _queue_purge(self) -> None:
        if self.stack.redis_up():
            self._redis(0).flushdb()
            self._redis(1).flushdb()

    def _py_spy(self, pid: int, seconds: float, name: str) -> subprocess.Popen[bytes] | None:
        """py-spy flame graph of one process while a measurement runs (--profile)."""
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        py_spy = Path(sys.executable).parent / "py-spy"
        return subprocess.Popen([str(py_spy), "record", "--pid", str(pid), "--duration", str(max(1, int(seconds))),
                                 "--rate", "200", "--format", "raw", "--output",
                                 str(self.profile_dir / f"{name}.folded.txt"), "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # --- 1 + 2: ingest, references and the peer -----------------------------------------------------------
    def ingest(self, with_peer: bool) -> dict[str, Any]:
        """Every target, every mode, `repeats` times, interleaved so a burst of noise on this shared machine
        hits one repetition of each target alike; the median repetition is reported, all are kept."""
        s = self.sizes
        targets = [t for t in TARGETS if with_peer or t[2] != "peer"]
        rate_counts = [int(rate * s.rate_s) for rate in s.rates]
        per_rep = s.saturation_pool + sum(rate_counts)
        total = s.saturation_pool + per_rep * s.repeats
        log(f"ingest: creating {total} pending payments and signing their webhooks")
        made = payloads.payments_create("ING", total)
        reqs = payloads.signed_requests(made)
        warm_file = self._file(reqs[:s.saturation_pool])
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {name: {} for name, _, _ in targets}
        log("ingest: warm-up (each target, wrk)")
        for _name, path, server in targets:
            self._wrk(server, path, warm_file, s.warmup_s, s.saturation_pool)
        for rep in range(s.repeats):
            at = s.saturation_pool + rep * per_rep
            sat_file = self._file(reqs[at:at + s.saturation_pool])
            at += s.saturation_pool
            for name, path, server in targets:
                pid = self.stack.pids(server)[1:2]
                spy = self._py_spy(pid[0], s.saturation_s, f"ingest-{name.replace(' ', '-')}") \
                    if pid and name == "Payshift" and rep == 0 else None
                result = self._wrk(server, path, sat_file, s.saturation_s, s.saturation_pool)
                if spy is not None:
                    spy.wait()
                runs[name].setdefault("saturation", []).append(result)
                log(f"ingest saturation  {name:>16} #{rep + 1}: {result['rps']:8.1f} req/s  p50 "
                    f"{result['latency_ms']['p50']} ms  p99 {result['latency_ms']['p99']} ms  "
                    f"errors {result['errors']}")
            for rate, n in zip(s.rates, rate_counts, strict=True):
                chunk = reqs[at:at + n]
                at += n
                for name, path, server in targets:
                    result = self._open(server, path, chunk, rate)
                    runs[name].setdefault(f"rate_{rate}", []).append(result)
                    log(f"ingest {rate:>4} req/s   {name:>16} #{rep + 1}: {result['rps']:8.1f} req/s  p50 "
                        f"{result['latency_ms']['p50']} ms  p99 {result['latency_ms']['p99']} ms  "
                        f"errors {result['errors']}")
        results: dict[str, Any] = {name: {mode: _median_run(mode, rs) for mode, rs in modes.items()}
                                   for name, modes in runs.items()}
        results["_stored"] = self._stored_counts()
        self._queue_purge()
        return results

    def _stored_counts(self) -> dict[str, int]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM payment_webhookevent")
            payshift = cursor.fetchone()
            cursor.execute("SELECT count(*) FROM bench_minimal_event")
            minimal = cursor.fetchone()
        return {"payshift_events": payshift[0] if payshift else 0, "minimal_rows": minimal[0] if minimal else 0}

    # --- 3: Redis stopped -------------------------------------------------------------------------------
    def redis_down(self) -> dict[str, Any]:
        s = self.sizes
        rate_n = int(s.redis_down_rate * s.rate_s)
        made = payloads.payments_create("RDN", s.saturation_pool + rate_n)
        reqs = payloads.signed_requests(made)
        sat, rate_reqs = reqs[:s.saturation_pool], reqs[s.saturation_pool:]
        sat_file = self._file(sat)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM django_q_ormq")
            before_row = cursor.fetchone()
        before = before_row[0] if before_row else 0
        log("redis down: stopping the bench's private redis-server")
        self.stack.stop("redis")
        try:
            path = "/payment/webhooks/paystack/"
            rate = self._open("web", path, rate_reqs, s.redis_down_rate)
            log(f"redis down {s.redis_down_rate} req/s: p50 {rate['latency_ms']['p50']} ms "
                f"p99 {rate['latency_ms']['p99']} ms errors {rate['errors']} 5xx {rate['errors_5xx']}")
            saturation = self._wrk("web", path, sat_file, s.redis_down_saturation_s, len(sat))
            log(f"redis down saturation: {saturation['rps']} req/s p99 {saturation['latency_ms']['p99']} ms "
                f"errors {saturation['errors']} 5xx {saturation['errors_5xx']}")
            time.sleep(2.0)  # requests wrk left in flight finish server-side after it exits
            handed = self._handed_to_django_q("RDN")
            with connection.cursor() as cursor:
                cursor.execute("SELECT count(*) FROM django_q_ormq")
                after_row = cursor.fetchone()
                cursor.execute("SELECT count(*) FROM payment_webhookevent WHERE reference LIKE 'RDN-%%'")
                stored_row = cursor.fetchone()
        finally:
            self.stack.start_redis()
            # Fresh web workers for what follows: their pooled broker connections died with the server.
            self.stack.stop("web")
            self.stack.start_web()
        return {"saturation": saturation, f"rate_{s.redis_down_rate}": rate,
                "django_q_tasks_enqueued": (after_row[0] if after_row else 0) - before,
                "events_to_django_q": handed,
                "events_stored": stored_row[0] if stored_row else 0,
                "result_backend": self._redis_down_result_backend()}

    def _handed_to_django_q(self, prefix: str, *, skip: int = 0, wait_s: float = 20.0) -> int:
        """Events of this prefix (past the first `skip`, the warm-up) that a queue took while Redis was down:
        the event ids in the Django Q tasks waiting in its ORM broker (no worker runs in this scenario and
        Celery could not take them; the relay does not mark what it published, so the rows stay `received`).
        The outbox relay hands them over in batches (one Django Q task per batch) a little after the answers,
        so wait until the count stops moving."""
        deadline, last = time.monotonic() + wait_s, -1
        while True:
            count = self._events_in_django_q(prefix, skip)
            if count == last or time.monotonic() > deadline:
                return count
            last = count
            time.sleep(1.0)

    def _events_in_django_q(self, prefix: str, skip: int) -> int:
        from django_q.models import OrmQ

        ids: set[int] = set()
        for task in OrmQ.objects.all():
            body = task.task
            if body.get("func") == "payment.q_tasks.process_payment_webhooks_q":
                ids.update(int(i) for i in body["args"][0])
            elif body.get("func") == "payment.q_tasks.process_payment_webhook_q":
                ids.add(int(body["args"][0]))
        if not ids:
            return 0
        return self._count("SELECT count(*) FROM payment_webhookevent WHERE reference LIKE %s AND reference >= %s "
                           "AND id = ANY(%s)", [f"{prefix}-%", f"{prefix}-{skip:07d}", sorted(ids)])

    def _redis_down_result_backend(self) -> dict[str, Any]:
        """The configuration users copy: broker AND result backend on the one Redis, which then dies, either
        stopped (connection refused) or black-holed (accepts connections, never answers). The web workers
        first publish while Redis is up, so their pools (and, before the fix, result subscriptions) are live."""
        s = self.sizes
        path = "/payment/webhooks/paystack/"
        warm_n, rate_n = 40, int(s.redis_down_backend_rate * s.rate_s)
        backend = f"redis://127.0.0.1:{self.stack.ports.redis}/2"
        results: dict[str, Any] = {"result_backend": backend}
        for mode in ("stopped", "blackholed"):
            prefix = f"RB{mode[0].upper()}"
            reqs = payloads.signed_requests(payloads.payments_create(prefix, warm_n + rate_n))
            self.stack.stop("web")
            self.stack.start_web(CELERY_RESULT_BACKEND=backend)
            self._open("web", path, reqs[:warm_n], 20)
            queued_before = self._count("SELECT count(*) FROM django_q_ormq")
            log(f"redis down, result backend on it ({mode}): stopping the bench's private redis-server")
            self.stack.stop("redis")
            hole = BlackHole(self.stack.ports.redis) if mode == "blackholed" else None
            try:
                rate = self._open("web", path, reqs[warm_n:], s.redis_down_backend_rate)
                time.sleep(2.0)
                rate["events_to_django_q"] = self._handed_to_django_q(prefix, skip=warm_n)
                rate["django_q_tasks_enqueued"] = self._count("SELECT count(*) FROM django_q_ormq") - queued_before
                rate["events_stored"] = self._count(
                    "SELECT count(*) FROM payment_webhookevent WHERE reference LIKE %s", [f"{prefix}-%"]) - warm_n
            finally:
                if hole is not None:
                    hole.close()
                self.stack.start_redis()
            log(f"redis {mode}, result backend on it, {s.redis_down_backend_rate} req/s: first "
                f"{rate['first_ms']} ms, p50 {rate['latency_ms']['p50']} ms, p99 {rate['latency_ms']['p99']} ms, "
                f"max {rate['latency_ms']['max']} ms, errors {rate['errors']} 5xx {rate['errors_5xx']}, "
                f"to Django Q {rate['events_to_django_q']} of {rate['events_stored']} stored "
                f"({rate['django_q_tasks_enqueued']} tasks)")
            results[mode] = rate
        self.stack.stop("web")
        self.stack.start_web()  # what follows runs on the configuration without a result backend
        return results

    @staticmethod
    def _count(sql: str, params: Sequence[Any] = ()) -> int:
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return int(row[0]) if row else 0

    # --- 4 + 6: end to end, the no-op reference, memory -------------------------------------------------
    def e2e(self) -> dict[str, Any]:
        s = self.sizes
        payloads.tables_truncate()
        self._queue_purge()
        self._sandbox_reset()
        low_count = int(s.e2e_low_rate * s.e2e_low_seconds)
        log(f"e2e: {low_count + s.e2e_count} pending payments, seeding the sandbox")
        made = payloads.payments_create("E2E", s.e2e_count, flutterwave_share=0.25)
        low_made = payloads.payments_create("E2L", low_count, flutterwave_share=0.25)
        ids = payloads.sandbox_seed(self.sandbox, [*made, *low_made])
        reqs, low_reqs = payloads.signed_requests(made, ids), payloads.signed_requests(low_made, ids)
        queries = self._query_counts()
        self.stack.start_worker(s.worker_concurrency)
        # The complete processing side: whatever the circuit breaker hands to Django Q is processed too.
        self.stack.start_qcluster()
        log(f"e2e: {low_count} webhooks at {s.e2e_low_rate}/s (a rate this machine sustains)")
        low = self._sustained("E2L-%", low_reqs, s.e2e_low_rate, s.e2e_settle_timeout_s)
        sampler = RssSampler({"web": lambda: self.stack.pids("web")[1:],
                              "celery": lambda: self.stack.pids("worker")})
        sampler.start()
        spy = None
        if self.profile_dir is not None:
            pool = self.stack.pids("worker")[1:2]
            if pool:
                spy = self._py_spy(pool[0], min(30.0, s.e2e_count / s.e2e_rate), "e2e-celery-child")
        log(f"e2e: {s.e2e_count} webhooks at {s.e2e_rate}/s (the goal)")
        high = self._sustained("E2E-%", reqs, s.e2e_rate, s.e2e_settle_timeout_s)
        samples = sampler.stop()
        if spy is not None:
            spy.wait()
        # Whatever the goal run left unsettled is dropped, so the reference and the backlog start clean.
        self.stack.stop("worker")
        self.stack.stop("qcluster")
        self._queue_purge()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE django_q_ormq")
        self.stack.start_worker(s.worker_concurrency)
        noop_rate = self._noop_at_rate(s.e2e_rate, s.noop_seconds)
        log(f"e2e: no-op task at {s.e2e_rate}/s: p50 {noop_rate['latency_ms']['p50']} ms p99 "
            f"{noop_rate['latency_ms']['p99']} ms, drained {noop_rate['drain_s']} s after the last send")
        minimal = self._minimal_pipeline([r for p, r in zip(made, reqs, strict=True) if p.gateway == "paystack"])
        backlog = self._backlog_payshift()
        noop_backlog = self._backlog_noop()
        self.stack.stop("worker")
        return {**high, "low": low, "noop_rate": noop_rate, "minimal": minimal, "backlog": backlog,
                "noop_backlog": noop_backlog, "memory": memory_summary(samples), "query_counts": queries}

    def _minimal_pipeline(self, paystack_reqs: Sequence[Req]) -> dict[str, Any]:
        """The hand-written minimal pipeline (bench/refviews.py, bench/celeryapp.py) at the goal's rate, over the
        goal run's Paystack payments set back to pending: the same webhooks, the same verify answers, the same
        payment rows, none of Payshift's safety work. Its CPU per webhook is what this machine needs at least."""
        s = self.sizes
        with connection.cursor() as cursor:
            cursor.execute("UPDATE payment_payment SET status = 'pending', amount_paid = NULL, paid_at = NULL "
                           "WHERE reference LIKE 'E2E-%%' AND gateway = 'paystack'")
            cursor.execute("TRUNCATE bench_minimal_event, bench_minimal_settled")
        reqs = [dataclasses.replace(r, path="/bench/minimal-pipeline/") for r in paystack_reqs]
        log(f"e2e: hand-written minimal pipeline, {len(reqs)} Paystack webhooks at {s.e2e_rate}/s")
        with CpuMeter(self.stack, E2E_ROLES) as cpu:
            ingest = loadgen.run_open_loop(base_url=self.web, reqs=reqs, rate=s.e2e_rate)
            settled_at = self._wait_rows("SELECT count(*), extract(epoch FROM max(settled_at)) "
                                         "FROM bench_minimal_settled", [], len(reqs), s.e2e_settle_timeout_s)
        with connection.cursor() as cursor:
            cursor.execute("SELECT extract(epoch FROM m.settled_at - e.received_at) * 1000 "
                           "FROM bench_minimal_settled m JOIN bench_minimal_event e ON e.id = m.event_id")
            latency = np.array([float(r[0]) for r in cursor.fetchall()], dtype=float)
        drain = (settled_at - ingest["ended_at"]) if settled_at else None
        log(f"e2e minimal pipeline: ingest p99 {ingest['latency_ms']['p99']} ms, errors {ingest['errors']}; "
            f"settled {len(latency)}/{len(reqs)}; last {drain if drain is None else round(drain, 2)} s after the load")
        return {"ingest": ingest, "settled": len(latency), "count": len(reqs), "rate": s.e2e_rate,
                "load_seconds": ingest["duration_s"], "drain_after_load_s": drain,
                "settle_timeout_s": s.e2e_settle_timeout_s, "latency_ms": loadgen.summarize(latency),
                "cpu_ms_per_payment": cpu.per_unit_ms(len(latency))}

    def _sustained(self, like: str, reqs: Sequence[Req], rate: float, timeout: float) -> dict[str, Any]:
        """Webhooks at a fixed rate with the workers running; then wait (bounded) for every payment to settle."""
        with CpuMeter(self.stack, E2E_ROLES) as cpu:
            ingest = loadgen.run_open_loop(base_url=self.web, reqs=reqs, rate=rate)
            settled_at = self._wait_settled(like, len(reqs), timeout)
        timing = self._settle_timing(like)
        drain = (settled_at - ingest["ended_at"]) if settled_at else None
        log(f"e2e {rate}/s: ingest p99 {ingest['latency_ms']['p99']} ms, errors {ingest['errors']}; receipt->"
            f"notification p50 {timing['notification_ms']['p50']} ms p99 {timing['notification_ms']['p99']} ms; "
            f"settled {timing['settled']}/{len(reqs)}; last {drain if drain is None else round(drain, 2)} s after "
            "the load stopped")
        return {"ingest": ingest, "settle": timing, "drain_after_load_s": drain, "load_seconds": ingest["duration_s"],
                "rate": rate, "count": len(reqs), "settle_timeout_s": timeout,
                "cpu_ms_per_payment": cpu.per_unit_ms(timing["settled"])}

    def _wait_settled(self, like: str, count: int, timeout: float) -> float | None:
        return self._wait_rows("SELECT count(*), extract(epoch FROM max(n.created_at)) FROM payment_notification n "
                               "JOIN payment_payment p ON p.id = n.payment_id "
                               "WHERE p.reference LIKE %s AND n.kind = 'payment_succeeded'", [like], count, timeout)

    def _wait_rows(self, sql: str, params: list[Any], count: int, timeout: float) -> float | None:
        """Poll `sql` (a count and the epoch of the last row) until the count reaches `count`: that epoch."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.stack.check_alive("worker", "web")
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                row = cursor.fetchone()
            if row and row[0] >= count:
                return float(row[1])
            # The answer is the last row's own timestamp, so polling once a second loses no precision; the
            # query over every payment of the run is the bench's own PostgreSQL load, kept small.
            time.sleep(1.0)
        return None

    def _settle_timing(self, like: str) -> dict[str, Any]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT extract(epoch FROM e.received_at), extract(epoch FROM e.processed_at), "
                "extract(epoch FROM t.created_at), extract(epoch FROM n.created_at) "
                "FROM payment_webhookevent e JOIN payment_paymenttransition t ON t.event_id = e.id "
                "JOIN payment_notification n ON n.transition_id = t.id AND n.kind = 'payment_succeeded' "
                "WHERE e.reference LIKE %s AND t.to_status = 'success'", [like])
            rows = np.array(cursor.fetchall(), dtype=float)
            cursor.execute("SELECT status, count(*) FROM payment_payment WHERE reference LIKE %s GROUP BY status",
                           [like])
            statuses = {str(k): int(v) for k, v in cursor.fetchall()}
            # Every stored webhook, settled or not, for the "received" series.
            cursor.execute("SELECT extract(epoch FROM received_at) FROM payment_webhookevent WHERE reference LIKE %s",
                           [like])
            all_received = np.array([r[0] for r in cursor.fetchall()], dtype=float)
        if not len(rows):
            empty = loadgen.summarize(np.array([]))
            return {"settled": 0, "statuses": statuses, "notification_ms": empty, "transition_ms": empty,
                    "processed_ms": empty, "received_per_second": [], "settled_per_second": []}
        received, processed, transition, notified = rows.T
        t0 = float(all_received.min()) if len(all_received) else float(received.min())
        return {
            "settled": len(rows),
            "statuses": statuses,
            "notification_ms": loadgen.summarize((notified - received) * 1000),
            "transition_ms": loadgen.summarize((transition - received) * 1000),
            "processed_ms": loadgen.summarize((processed - received) * 1000),
            "received_per_second": _per_second(all_received if len(all_received) else received, t0),
            "settled_per_second": _per_second(notified, t0),
            "first_received": t0,
            "last_notified": float(notified.max()),
            "first_notified": float(notified.min()),
        }

    def _query_counts(self) -> dict[str, int]:
        """Queries per webhook on each side (receive in the web process, process in the worker)."""
        from payment import services

        made = payloads.payments_create("QRY", 1)
        ids = payloads.sandbox_seed(self.sandbox, made)
        req = payloads.signed_requests(made, ids)[0]
        with CaptureQueriesContext(connection) as receive:
            result = services.webhook_receive(gateway_name="paystack", body=req.body,
                                              headers={"content-type": "application/json", req.header: req.value},
                                              source_ip="127.0.0.1")
        assert result.event_id is not None
        with CaptureQueriesContext(connection) as process:
            services.webhook_event_process(result.event_id, via="bench")
        return {"receive": len(receive.captured_queries), "process": len(process.captured_queries)}

    def _noop_at_rate(self, rate: float, seconds: float) -> dict[str, Any]:
        from bench.celeryapp import app

        r = self._redis(1)
        r.delete("bench:noop")
        n = int(rate * seconds)
        start = time.monotonic()
        for i in range(n):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            app.send_task("bench_noop", args=[time.time()], queue="webhooks", routing_key="webhooks")
        last_sent = time.time()
        done = self._noop_wait(n)
        lat = np.array([(d - s) * 1000 for s, d in done])
        return {"count": n, "received": len(done), "latency_ms": loadgen.summarize(lat),
                "drain_s": round(max(d for _, d in done) - last_sent, 3) if done else None}

    def _noop_wait(self, n: int, timeout: float = 120.0) -> list[tuple[float, float]]:
        r = self._redis(1)
        deadline = time.monotonic() + timeout
        while r.llen("bench:noop") < n and time.monotonic() < deadline:
            time.sleep(0.1)
        raw = r.lrange("bench:noop", 0, -1)
        return [(float(a), float(b)) for a, b in (x.split() for x in raw)]

    def _backlog_payshift(self) -> dict[str, Any]:
        """Settled payments/s at saturation: a backlog ingested with the worker stopped, then drained."""
        s = self.sizes
        self.stack.stop("worker")
        made = payloads.payments_create("BLG", s.backlog_count, flutterwave_share=0.25)
        ids = payloads.sandbox_seed(self.sandbox, made)
        reqs = payloads.signed_requests(made, ids)
        loadgen.run_open_loop(base_url=self.web, reqs=reqs, rate=400)
        started = time.time()
        self.stack.start_worker(s.worker_concurrency)
        with CpuMeter(self.stack, E2E_ROLES) as cpu:
            settled_at = self._wait_settled("BLG-%", s.backlog_count, s.e2e_settle_timeout_s)
        timing = self._settle_timing("BLG-%")
        span = timing.get("last_notified", 0) - timing.get("first_notified", 0)
        rate = round(timing["settled"] / span, 1) if span > 0 else None
        log(f"e2e backlog: {timing['settled']} settled at {rate} payments/s (worker started "
            f"{round(timing.get('first_notified', started) - started, 2)} s before the first)")
        return {"count": s.backlog_count, "settled": timing["settled"], "settled_per_s": rate,
                "drain_s": round(span, 3), "all_settled": settled_at is not None,
                "settled_per_second": timing["settled_per_second"],
                "cpu_ms_per_payment": cpu.per_unit_ms(timing["settled"])}

    def _backlog_noop(self) -> dict[str, Any]:
        from bench.celeryapp import app

        s = self.sizes
        self.stack.stop("worker")
        self._redis(1).delete("bench:noop")
        for _ in range(s.backlog_count):
            app.send_task("bench_noop", args=[time.time()], queue="webhooks", routing_key="webhooks")
        self.stack.start_worker(s.worker_concurrency)
        with CpuMeter(self.stack, E2E_ROLES) as cpu:
            done = self._noop_wait(s.backlog_count)
        finished = sorted(d for _, d in done)
        span = finished[-1] - finished[0] if len(finished) > 1 else 0.0
        rate = round(len(finished) / span, 1) if span > 0 else None
        log(f"e2e backlog no-op: {len(finished)} tasks at {rate} tasks/s")
        return {"count": s.backlog_count, "done": len(finished), "tasks_per_s": rate, "drain_s": round(span, 3),
                "cpu_ms_per_task": cpu.per_unit_ms(len(finished))}

    # --- 5: reconciliation ------------------------------------------------------------------------------
    def reconcile(self) -> dict[str, Any]:
        s = self.sizes
        payloads.tables_truncate()
        self._sandbox_reset()
        log(f"reconcile: {s.reconcile_count} pending payments, {s.reconcile_seeded_share:.0%} known to the sandbox")
        made = payloads.payments_create("REC", s.reconcile_count)
        payloads.sandbox_seed(self.sandbox, made[::round(1 / s.reconcile_seeded_share)])
        out = self.scratch / "reconcile.json"
        env = {**self.stack.env, "PAYSHIFT_PENDING_RECHECK_SECONDS": "0"}
        subprocess.run([sys.executable, "-m", "bench.reconcile_probe", "--budget", str(s.reconcile_budget_s),
                        "--out", str(out)], cwd=ROOT, env=env, check=True)
        result: dict[str, Any] = json.loads(out.read_text())
        result["pending_payments"] = s.reconcile_count
        log(f"reconcile: {result['counts']['verified']} verified in {result['elapsed_s']} s = "
            f"{result['verified_per_s']}/s; peak RSS {result['peak_rss_mib']} MiB (baseline "
            f"{result['baseline_rss_mib']} MiB)")
        return result


def _median_run(mode: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median repetition (by req/s at saturation, by p99 at a fixed rate), with every repetition's
    headline figures attached."""
    key = (lambda r: r["rps"]) if mode == "saturation" else (lambda r: r["latency_ms"]["p99"])
    ordered = sorted(runs, key=key)
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["repetitions"] = [{"rps": r["rps"], "latency_ms": r["latency_ms"], "errors": r["errors"]} for r in runs]
    return chosen


def _per_second(stamps: np.ndarray, t0: float) -> list[list[float]]:
    counts = np.bincount((stamps - t0).astype(int))
    return [[float(i), float(c)] for i, c in enumerate(counts)]


class RssSampler:
    """Samples the RSS of groups of processes once a second (scenario 6)."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]], interval: float = 1.0) -> None:
        self.groups = groups
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._t0 = time.monotonic()
        self.peaks: dict[str, dict[int, int]] = {name: {} for name in groups}

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            row: dict[str, Any] = {"t": round(time.monotonic() - self._t0, 2)}
            for name, pids in self.groups.items():
                per_pid = {}
                for pid in pids():
                    rss, hwm = rss_kib(pid)
                    if rss:
                        per_pid[pid] = rss
                        self.peaks[name][pid] = max(self.peaks[name].get(pid, 0), hwm)
                row[name] = per_pid
            self.samples.append(row)
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=5)
        return {"samples": self.samples, "peaks": self.peaks}


def memory_summary(data: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS per role and the growth of each process from the first half of the run to the second."""
    samples = data["samples"]
    out: dict[str, Any] = {}
    if not samples:
        return out
    half = samples[-1]["t"] / 2
    for role in data["peaks"]:
        growth = []
        series: dict[str, list[list[float]]] = {}
        for pid in {p for row in samples for p in row.get(role, {})}:
            first = [row[role][pid] for row in samples if row["t"] <= half and pid in row.get(role, {})]
            second = [row[role][pid] for row in samples if row["t"] > half and pid in row.get(role, {})]
            if first and second:
                growth.append((max(second) - max(first)) / max(first) * 100)
            series[str(pid)] = [[row["t"], row[role][pid] / 1024] for row in samples if pid in row.get(role, {})]
        peaks = data["peaks"][role]
        out[role] = {
            "peak_rss_mib": round(max(peaks.values()) / 1024, 1) if peaks else None,
            "processes": len(peaks),
            "growth_pct": round(max(growth), 2) if growth else None,
            "series_mib": series,
        }
    return out
