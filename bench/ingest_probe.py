"""`python -m bench.ingest_probe`: the webhook edge's cost per request, in one process, against the minimal ingest.

Starts a private redis-server and a scratch PostgreSQL database (as the bench does), then sends pre-signed
webhooks through Django's WSGI handler (the product's settings and middleware, no HTTP server), in interleaved
rounds: the minimal ingest (bench/refviews.py), then Payshift's view with its outbox relay thread. Prints, per
request and per target: CPU ms of this process (time.process_time, so the relay thread's share counts), of
the database's server processes (the request's connection and the relay's), and wall ms. With --profile,
cProfile's top functions over Payshift's requests (the request thread's own CPU time). The first --warmup
requests of each target are not counted.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import time
from pathlib import Path
from typing import Any

from bench.stack import cpu_seconds, machine_busy_seconds, probe_stack, profile_arguments, profile_print


def _environ(path: str, header: str, value: str, body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST", "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": str(len(body)),
        "HTTP_" + header.upper().replace("-", "_"): value, "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }


def _probe(count: int, warmup: int, rounds: int, profile: bool, db_name: str, *,
           profile_out: Path | None = None) -> None:
    import django

    django.setup()
    from django.core.handlers.wsgi import WSGIHandler
    from django.db import connection

    from bench import payloads, refviews
    from payment.outbox import relay

    with connection.cursor() as cursor:
        cursor.execute(refviews.CREATE_TABLE)
    per_target = warmup + count * rounds
    made = payloads.payments_create("IPR", per_target * 2, shares={"paystack": 1.0})
    reqs = payloads.signed_requests(made)
    handler = WSGIHandler()

    def backends() -> dict[int, float]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", [db_name])
            return {int(row[0]): cpu_seconds(int(row[0])) for row in cursor.fetchall()}

    def send(path: str, req: Any) -> None:
        status: list[str] = []

        def start_response(code: str, headers: Any, exc_info: Any = None) -> Any:
            status.append(code)
            return lambda data: None

        chunks = handler(_environ(path, req.header, req.value, req.body), start_response)
        b"".join(chunks)
        if not status or not status[0].startswith("200"):
            raise RuntimeError(f"{path}: {status}")

    def settle() -> None:
        deadline = time.monotonic() + 10
        while relay.waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)

    targets = {"minimal": "/bench/minimal/", "payshift": "/payment/webhooks/paystack/"}
    queues = {"minimal": iter(reqs[:per_target]), "payshift": iter(reqs[per_target:])}
    for name, path in targets.items():
        for _ in range(warmup):
            send(path, next(queues[name]))
        settle()
    totals = {name: [0.0, 0.0, 0.0, 0.0, 0.0] for name in targets}  # process, pg, wall, request thread, machine
    profiler = cProfile.Profile(time.thread_time) if profile else None
    per_round: dict[str, list[float]] = {name: [] for name in targets}  # process CPU of each round
    for _round in range(rounds):
        for name, path in targets.items():
            start_pg = backends()
            cpu0, wall0, thread0 = time.process_time(), time.perf_counter(), time.thread_time()
            machine0 = machine_busy_seconds()
            for _ in range(count):
                req = next(queues[name])
                if profiler is not None and name == "payshift":
                    profiler.enable()
                    send(path, req)
                    profiler.disable()
                else:
                    send(path, req)
            wall = time.perf_counter() - wall0
            thread = time.thread_time() - thread0
            if name == "payshift":
                settle()  # the relay's publishes and marks belong to these requests
            cpu = time.process_time() - cpu0
            end_pg = backends()
            machine = machine_busy_seconds() - machine0
            pg = sum(end_pg[p] - start_pg.get(p, 0.0) for p in end_pg)
            for i, v in enumerate((cpu, pg, wall, thread, machine)):
                totals[name][i] += v
            per_round[name].append(cpu + pg)
    n = count * rounds
    for name, (cpu, pg, wall, thread, machine) in totals.items():
        print(f"[ingest-probe] {name:>8}: {n} requests, per request: process CPU {cpu * 1000 / n:.3f} ms "
              f"(request thread {thread * 1000 / n:.3f}), PostgreSQL {pg * 1000 / n:.3f} ms, "
              f"wall {wall * 1000 / n:.3f} ms, whole machine {machine * 1000 / n:.3f} ms")
    mc, mp, _, _, _ = totals["minimal"]
    pc, pp, _, _, _ = totals["payshift"]
    print(f"[ingest-probe] payshift / minimal: process CPU {pc / mc:.2f} x, PostgreSQL {pp / mp:.2f} x" if mc and mp
          else "[ingest-probe] (no minimal figures)")
    # Each round's two targets ran back to back: on a shared machine their ratio is steadier than the totals.
    ratios = sorted(p / m for p, m in zip(per_round["payshift"], per_round["minimal"], strict=True) if m)
    if ratios:
        print(f"[ingest-probe] payshift / minimal, process + PostgreSQL CPU, per round: median "
              f"{ratios[len(ratios) // 2]:.2f} x (min {ratios[0]:.2f}, max {ratios[-1]:.2f})")
    if profiler is not None:
        profile_print(profiler, label="ingest-probe", save_to=profile_out, top=50)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_probe", description=__doc__)
    parser.add_argument("--count", type=int, default=1000, help="requests per target per round (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--warmup", type=int, default=200, help="requests per target not counted (default 200)")
    profile_arguments(parser)
    parser.add_argument("--base-port", type=int, default=18479,
                        help="ports as the bench uses them; the probe starts only Redis (the base port)")
    args = parser.parse_args(argv)
    try:
        with probe_stack(args.base_port, "ingest-probe") as stack:
            stack.start_redis()
            _probe(args.count, args.warmup, args.rounds, args.profile, stack.db_name, profile_out=args.profile_out)
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
