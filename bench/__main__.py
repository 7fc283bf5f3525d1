"""`python -m bench [--smoke]`: start a production-like stack, run the six scenarios, write the report."""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from bench.stack import BENCH, Ports, Stack
from payshift.processes import gunicorn_flags

SCENARIOS = ("ingest", "peer", "redis_down", "e2e", "reconcile")


def _interrupted(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so `finally` stops every process we started.
    raise KeyboardInterrupt(f"signal {signum}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _db_name(stem: str, args: argparse.Namespace) -> str:
    """One database per run size and port range: two runs on one PostgreSQL server (other --base-port) never
    share or drop each other's database."""
    name = stem + ("_smoke" if args.smoke else "")
    return name if args.base_port == 18479 else f"{name}_{args.base_port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true",
                        help="seconds and small numbers, every scenario's code path; writes to a temp dir")
    parser.add_argument("--out", type=Path, default=None,
                        help="where results go (default: bench/results, or a temp dir with --smoke)")
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma list of scenarios to run (default all: {','.join(SCENARIOS)})")
    parser.add_argument("--profile", action="store_true",
                        help="record py-spy profiles of the Payshift web worker and a Celery child")
    parser.add_argument("--keep", action="store_true", help="keep the bench databases and scratch files")
    parser.add_argument("--base-port", type=int, default=18479, help="first of the four ports used (default 18479)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override one size of the run, e.g. --set e2e_count=5000 (see bench/scenarios.py Sizes)")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite report.md and the charts from <out>/results.json, start nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        import json

        from bench import report

        out = args.out or BENCH / "results"
        results = json.loads((out / "results.json").read_text())
        print(f"[bench] report: {report.write(results, out)}")
        return 0
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if not shutil.which("wrk"):
        parser.error("wrk is not installed: run bench/run (it installs it) or apt-get install wrk")
    if not shutil.which("redis-server"):
        parser.error("redis-server is not installed (apt-get install redis-server)")

    out = args.out or (Path(tempfile.mkdtemp(prefix="payshift-bench-")) if args.smoke else BENCH / "results")
    scratch = Path(tempfile.mkdtemp(prefix="payshift-bench-scratch-"))
    base = args.base_port
    stack = Stack(workdir=scratch, ports=Ports(redis=base, web=base + 1, peer=base + 2, sandbox=base + 3),
                  db_name=_db_name("payshift_bench", args), peer_db_name=_db_name("payshift_bench_peer", args))
    # The driver itself talks to the same database and broker as the stack (to seed and to read timings).
    os.environ.update(stack.env)
    signal.signal(signal.SIGTERM, _interrupted)
    started = time.time()
    ok = False
    try:
        code = _run(args, only=only, stack=stack, out=out, scratch=scratch, started=started)
        ok = code == 0
        return code
    except KeyboardInterrupt:
        print("\n[bench] interrupted: stopping everything it started", flush=True)
        return 130
    finally:
        stack.close()
        if not args.keep:
            stack.drop_databases()
        if args.keep or not ok:
            # The processes' logs are the evidence when something failed.
            print(f"[bench] scratch files and logs kept in {scratch}", flush=True)
        else:
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, *, only: set[str], stack: Stack, out: Path, scratch: Path,
         started: float) -> int:
    import django

    django.setup()  # settings only; the database is created below, before the first query
    from bench import refviews, report, scenarios

    sizes = scenarios.sizes_with(scenarios.SMOKE if args.smoke else scenarios.FULL, args.set)
    scenarios.log(f"{'smoke' if args.smoke else 'full'} run; results -> {out}; scratch {scratch}")
    if "peer" in only:
        scenarios.log("peer: preparing bench/.venv-peer (paystack-django)")
        stack.ensure_peer_venv()
    stack.create_databases()
    stack.migrate()
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(refviews.CREATE_TABLE)
        cursor.execute(refviews.CREATE_SETTLED_TABLE)
        cursor.execute("SELECT version()")
        row = cursor.fetchone()
    pg_version = str(row[0]).split(" on ")[0] if row else "PostgreSQL"
    stack.start_redis()
    stack.start_sandbox()
    stack.start_web()
    if "peer" in only:
        stack.start_peer()
    bench = scenarios.Bench(stack, sizes, scratch, profile_dir=out / "profiles" if args.profile else None)
    results: dict[str, Any] = {"meta": {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "mode": "smoke" if args.smoke else "full", "cpus": os.cpu_count(), "cpu_model": _cpu_model(),
        "python": platform.python_version(), "django": django.get_version(), "postgres": pg_version,
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout.split(
            "\n")[0].strip(), "gunicorn": gunicorn_flags(stack.topology),
        "worker_concurrency": sizes.worker_concurrency,
        "sizes": sizes.__dict__, "command": " ".join(["python -m bench", *(sys.argv[1:])]),
    }}
    if "ingest" in only or "peer" in only:
        results["ingest"] = bench.ingest(with_peer="peer" in only)
        stack.stop("peer")
    if "redis_down" in only:
        results["redis_down"] = bench.redis_down()
    if "e2e" in only:
        results["e2e"] = bench.e2e()
    if "reconcile" in only:
        results["reconcile"] = bench.reconcile()
    results["meta"]["elapsed_s"] = round(time.time() - started, 1)
    path = report.write(results, out)
    print("\n" + report.goals_table(results) + "\n\n" + report.tables(results), flush=True)
    print(f"\n[bench] report: {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
