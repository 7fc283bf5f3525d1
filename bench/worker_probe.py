"""`python -m bench.worker_probe`: the worker's cost per settled payment, in one process, statement by statement.

Starts a private sandbox and a scratch PostgreSQL database (as the bench does), stores N webhooks for pending
payments the sandbox reports as paid, then runs each the way a Celery child does (the per-task connection
recycle, then services.webhook_event_process) and prints, per event: CPU ms of this process
(time.process_time), of its PostgreSQL backend and of the sandbox; SQL statements and commits (each
autocommit write and each COMMIT, counted on 20 more events with Django's query log on, which costs CPU of its
own); with --profile, cProfile's top functions. The first --warmup events are not counted (imports, the first
connection, the httpx pool).
"""

from __future__ import annotations

import argparse
import cProfile
import re
import time
from collections import Counter
from pathlib import Path
from unittest import mock

from bench.stack import cpu_seconds, probe_stack, profile_arguments, profile_print

_COUNTED = 20  # events whose statements are counted, after the measured ones

_WRITE = re.compile(r"^\s*(UPDATE|INSERT|DELETE|WITH)\b", re.IGNORECASE)  # WITH: a data-modifying CTE


def statement_kinds(sqls: list[str]) -> tuple[int, int, Counter[str]]:
    """(statements, commits, count by first word) of what one event ran. BEGIN/COMMIT/ROLLBACK are Django's
    transaction markers (logged, not statements); a write outside BEGIN..COMMIT is its own commit (autocommit)."""
    commits = 0
    in_block = False
    kinds: Counter[str] = Counter()
    statements = 0
    for sql in sqls:
        word = sql.split(None, 1)[0].upper() if sql.strip() else ""
        kinds[word] += 1
        if word == "BEGIN":
            in_block = True
            continue
        if word in ("COMMIT", "ROLLBACK"):
            commits += word == "COMMIT"
            in_block = False
            continue
        statements += 1
        if not in_block and _WRITE.match(sql):
            commits += 1
    return statements, commits, kinds


def _probe(count: int, warmup: int, profile: bool, sandbox_pids: list[int], sandbox_url: str, *,
           profile_out: Path | None = None) -> None:
    import django

    django.setup()
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from bench import payloads
    from payment import services
    from payment.models import Payment, PaymentStatus
    from payshift.celery import task_connections_recycle

    # The statements are counted on events of their own: Django's query log (CaptureQueriesContext) composes
    # each statement with its values, CPU the worker does not spend outside DEBUG.
    counted = _COUNTED
    total = count + warmup + counted
    made = payloads.payments_create("PRB", total, flutterwave_share=0.25)
    ids = payloads.sandbox_seed(sandbox_url, made)
    reqs = payloads.signed_requests(made, ids)
    event_ids = []
    with mock.patch("payment.outbox.relay.submit"):  # the probe runs them itself, no broker
        for req in reqs:
            result = services.webhook_receive(gateway_name=req.path.rstrip("/").rsplit("/", 1)[1], body=req.body,
                                              headers={"content-type": "application/json", req.header: req.value},
                                              source_ip="127.0.0.1")
            assert result.event_id is not None
            event_ids.append(result.event_id)

    def one(event_id: int) -> None:
        # What a Celery child does per task (payshift/celery.py), around the task body.
        task_connections_recycle()
        services.webhook_event_process(event_id, via="celery")
        task_connections_recycle()

    for event_id in event_ids[:warmup]:
        one(event_id)
    measured = event_ids[warmup:warmup + count]
    backends: set[int] = set()
    backend_cpu_start: dict[int, float] = {}
    statements = commits = 0
    kinds: Counter[str] = Counter()
    cpu = 0.0
    # CPU time, not wall: waiting on PostgreSQL or the sandbox is their cost, counted on their side.
    profiler = cProfile.Profile(time.process_time) if profile else None
    sandbox_start = sum(cpu_seconds(p) for p in sandbox_pids)
    for event_id in measured:
        pid = connection.connection.info.backend_pid if connection.connection is not None else None
        if pid is not None and pid not in backends:
            backends.add(pid)
            backend_cpu_start[pid] = cpu_seconds(pid)
        started = time.process_time()
        if profiler is not None:
            profiler.enable()
        one(event_id)
        if profiler is not None:
            profiler.disable()
        cpu += time.process_time() - started
    sandbox_cpu = sum(cpu_seconds(p) for p in sandbox_pids) - sandbox_start
    pg_cpu = sum(cpu_seconds(p) - backend_cpu_start[p] for p in backends)
    for event_id in event_ids[warmup + count:]:
        with CaptureQueriesContext(connection) as captured:
            one(event_id)
        n, c, k = statement_kinds([q["sql"] for q in captured.captured_queries])
        statements += n
        commits += c
        kinds.update(k)
    settled = Payment.objects.filter(reference__startswith="PRB-", status=PaymentStatus.SUCCESS).count()
    n = len(measured)
    print(f"[probe] {n} events measured ({warmup} warm-up), {settled}/{total} payments settled")
    print(f"[probe] per event: worker CPU {cpu * 1000 / n:.2f} ms, PostgreSQL backend {pg_cpu * 1000 / n:.2f} ms, "
          f"sandbox {sandbox_cpu * 1000 / n:.2f} ms, total {(cpu + pg_cpu + sandbox_cpu) * 1000 / n:.2f} ms")
    print(f"[probe] per event ({counted} more events, query log on): {statements / counted:.2f} SQL statements, "
          f"{commits / counted:.2f} commits; by kind: "
          + ", ".join(f"{word} {v / counted:.2f}" for word, v in kinds.most_common()))
    if profiler is not None:
        profile_print(profiler, label="probe", save_to=profile_out, top=45)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker_probe", description=__doc__)
    parser.add_argument("--count", type=int, default=500, help="events measured (default 500)")
    parser.add_argument("--warmup", type=int, default=50, help="events run first and not counted (default 50)")
    profile_arguments(parser)
    parser.add_argument("--base-port", type=int, default=18479,
                        help="ports as the bench uses them; the probe starts only the sandbox (base + 3)")
    args = parser.parse_args(argv)
    try:
        with probe_stack(args.base_port, "probe") as stack:
            stack.start_sandbox()
            _probe(args.count, args.warmup, args.profile, stack.pids("sandbox"), stack.topology.sandbox_url,
                   profile_out=args.profile_out)
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
