"""The production-like stack the bench starts and always stops: PostgreSQL database, Redis, gunicorn, Celery."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from payshift.processes import (
    Supervisor,
    Topology,
    demo_gateway_environment,
    gunicorn_flags,
    manage_command,
    redis_command,
    sandbox_environment,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEER_VENV = BENCH / ".venv-peer"


@dataclass(frozen=True)
class Ports:
    """Unusual ports so a bench run never collides with the dev stack (8000/8100) or the test suite."""

    web: int = 18480
    peer: int = 18481
    sandbox: int = 18482
    redis: int = 18479


def bench_topology(ports: Ports) -> Topology:
    """The web as payshift/processes.py runs it everywhere (gthread, 2 workers x 8 threads), with no access
    log for every target alike: the bench measures the application, not gunicorn's log writes."""
    return Topology(
        web_port=ports.web, sandbox_port=ports.sandbox,
        web_workers=int(os.environ.get("BENCH_WEB_WORKERS", Topology.web_workers)),
        web_threads=int(os.environ.get("BENCH_WEB_THREADS", Topology.web_threads)),
        web_args=("--graceful-timeout", "5", "--timeout", "60", "--backlog", "2048"),
        # The product's worker command (all queues, no -Q), with the bench app that adds the no-op reference.
        celery_app="bench.celeryapp", celery_nodes={"worker": f"bench{secrets.token_hex(2)}@%h"},
        worker_args=("--without-gossip", "--without-mingle"), log_level="warning",
        # No beat: its periodic check would mix reconciliation into the webhook figures (see migrate()).
        beat_schedule=None, sandbox_args=("--no-access-log", "--log-level", "warning"))


@dataclass
class Stack:
    """Owns every process the bench starts; `close()` stops them all (also on Ctrl-C and on failure)."""

    workdir: Path
    ports: Ports = field(default_factory=Ports)
    db_name: str = "payshift_bench"
    peer_db_name: str = "payshift_bench_peer"
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        self.topology = bench_topology(self.ports)
        sandbox = self.topology.sandbox_url
        gateways = demo_gateway_environment(sandbox)
        prom = self.workdir / "prometheus"
        shutil.rmtree(prom, ignore_errors=True)
        prom.mkdir()
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("PAYSTACK_", "FLUTTERWAVE_", "SANDBOX_"))},
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            # Never read the developer's .env (scripts/up writes demo keys and sandbox URLs there).
            "PAYSHIFT_ENV_FILE": str(self.workdir / "no.env"),
            # "development" only relaxes the system checks: payshift.E002 refuses a loopback sandbox as the
            # gateway in production, and the network here is loopback only. DEBUG stays off (below).
            "PAYSHIFT_ENVIRONMENT": "development",
            "DJANGO_DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(40),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{self.db_name}",
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{self.ports.redis}/0",
            "BENCH_REDIS_URL": f"redis://127.0.0.1:{self.ports.redis}/1",
            **gateways,
            **sandbox_environment(gateways, webhook_base_url=self.topology.web_url, public_url=sandbox),
            # The bench measures Payshift, not a gateway's quota: an account with raised limits (the sandbox
            # enforces 1,000 calls/s per key), and each Payshift process stays under 900/s, so a run that
            # meets a 429 shows a client that ignores its limit (bench/README.md, scenario 5).
            "SANDBOX_RATE_LIMIT_PER_S": "1000",
            "SANDBOX_RATE_LIMIT_BURST": "100",
            "PAYSHIFT_GATEWAY_RATE_LIMIT": "900",
            "PAYSHIFT_VAR_DIR": str(self.workdir / "var"),
            "PAYMENT_LOG_FILE": str(self.workdir / "logs" / "payment.log"),
            # One file shared by many processes: logrotate-style handler, as the settings advise for production.
            "PAYMENT_LOG_MAX_BYTES": "0",
            "PROMETHEUS_MULTIPROC_DIR": str(prom),
            # Outgoing mail is not what is measured (SMTP is someone else's latency); rows are still written.
            "DJANGO_EMAIL_BACKEND": "django.core.mail.backends.dummy.EmailBackend",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(ROOT),
        }
        self.supervisor = Supervisor(self.env, cwd=ROOT, log_dir=self.workdir / "logs")

    # --- processes (payshift/processes.py) --------------------------------------------------------------
    def stop(self, name: str) -> None:
        self.supervisor.stop(name)

    def close(self) -> None:
        self.supervisor.stop_all()

    def check_alive(self, *names: str) -> None:
        self.supervisor.check_alive(*names)

    def pids(self, name: str) -> list[int]:
        """The main pid and its children (gunicorn or Celery workers)."""
        return self.supervisor.pids(name)

    def _start(self, name: str, url: str, *, env: dict[str, str] | None = None,
               argv: list[str] | None = None) -> None:
        self.supervisor.start(name, argv or self.topology.commands()[name], env=env)
        self.supervisor.wait_healthy({name: url}, 60.0, healthy=lambda status: status < 500)

    # --- services ---------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        """A private redis-server on its own port: stopping it (scenario 3) never touches the shared Redis."""
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        self.supervisor.start("redis", redis_command(self.ports.redis, data))
        deadline = time.monotonic() + 20
        while not self.redis_up():
            self.check_alive("redis")
            if time.monotonic() > deadline:
                raise RuntimeError("private redis-server did not start")
            time.sleep(0.1)

    def redis_up(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(port=self.ports.redis, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
        except redis.RedisError:
            return False

    def start_sandbox(self) -> None:
        self._start("sandbox", f"{self.topology.sandbox_url}/_sandbox/health")

    def start_web(self, **extra_env: str) -> None:
        self._start("web", f"{self.topology.web_url}/healthz", env={**self.env, **extra_env} if extra_env else None)

    def start_worker(self, concurrency: int) -> None:
        argv = dataclasses.replace(self.topology, celery_concurrency=concurrency).commands()["worker"]
        self.supervisor.start("worker", argv)
        deadline = time.monotonic() + 120  # a busy shared machine can take long to fork and import
        from bench.celeryapp import app

        while True:
            self.check_alive("worker")
            with contextlib.suppress(Exception):
                if app.control.ping(timeout=1.0):
                    return
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not answer a ping within 120s")

    def start_qcluster(self) -> None:
        """The Django Q cluster (the fallback queue), as `python manage.py qcluster` runs it in production."""
        self.supervisor.start("qcluster", self.topology.commands()["qcluster"])
        time.sleep(1.0)
        self.check_alive("qcluster")

    # --- databases --------------------------------------------------------------------------------------
    def create_databases(self) -> None:
        with psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            for name in (self.db_name, self.peer_db_name):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')

    def drop_databases(self) -> None:
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.pg_dsn, autocommit=True) as conn:
            for name in (self.db_name, self.peer_db_name):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def migrate(self) -> None:
        # --skip-checks: payshift.E002 refuses a local sandbox as the gateway in production, which is the
        # one deliberate difference from production here (the network is loopback only).
        subprocess.run([*manage_command(), "migrate", "--noinput", "--skip-checks", "-v", "0"], cwd=ROOT,
                       env=self.env, check=True)
        # Beat is not run (its periodic check would mix reconciliation into the webhook figures), so the
        # Django Q stand-in schedule that wakes when beat is silent is removed from the bench database.
        with psycopg.connect(self.env["DATABASE_URL"].replace("postgres://", "postgresql://"),
                             autocommit=True) as conn:
            conn.execute("DELETE FROM django_q_schedule")

    # --- the peer ---------------------------------------------------------------------------------------
    def peer_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k not in ("DJANGO_SETTINGS_MODULE", "VIRTUAL_ENV")}
        env.update({"DJANGO_SETTINGS_MODULE": "bench.peer.settings", "PEER_DB_NAME": self.peer_db_name,
                    "PATH": f"{PEER_VENV / 'bin'}:{os.environ.get('PATH', '')}"})
        return env

    def ensure_peer_venv(self) -> None:
        """bench/.venv-peer with paystack-django, rebuilt only when requirements-peer.txt changes."""
        requirements = BENCH / "requirements-peer.txt"
        stamp = PEER_VENV / ".requirements.sha256"
        digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
        if stamp.is_file() and stamp.read_text() == digest and (PEER_VENV / "bin" / "gunicorn").exists():
            return
        shutil.rmtree(PEER_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r",
                        str(requirements)], check=True)
        stamp.write_text(digest)

    def start_peer(self) -> None:
        env = self.peer_env()
        subprocess.run([str(PEER_VENV / "bin" / "django-admin"), "migrate", "--noinput", "-v", "0"], cwd=ROOT,
                       env=env, check=True)
        # The same gunicorn shape as the Payshift web, from the peer's own virtualenv.
        self._start("peer", f"http://127.0.0.1:{self.ports.peer}/paystack/webhook/", env=env,
                    argv=[str(PEER_VENV / "bin" / "gunicorn"), "bench.peer.wsgi:application", "--bind",
                          f"127.0.0.1:{self.ports.peer}", *gunicorn_flags(self.topology)])


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by each part of the stack during a measurement: where the cores went.

    PostgreSQL's share is its server processes' CPU: the backends of the bench's databases and the server's own
    processes (WAL writer, checkpointer, autovacuum). A backend can connect and disconnect within the
    measurement (Django closes a connection after CONN_MAX_AGE), so they are looked up every half second and
    each one's CPU counted up to the last time it was seen (from zero for one that connected since the start).
    """

    POLL_SECONDS = 0.5

    def __init__(self, stack: Stack, roles: dict[str, str]) -> None:
        self.stack = stack
        self.roles = roles  # label -> process name in the stack ("web", "worker", "sandbox", "redis", "peer")
        self.start: dict[str, float] = {}
        self._pg_first: dict[int, float] = {}
        self._pg_last: dict[int, float] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    def _snapshot(self) -> dict[str, float]:
        snap = {label: sum(cpu_seconds(p) for p in self.stack.pids(name)) for label, name in self.roles.items()}
        snap["machine"] = machine_busy_seconds()
        snap["self"] = cpu_seconds(os.getpid())
        snap["children"] = _children_cpu()
        return snap

    def _server_pids(self) -> list[int]:
        """PostgreSQL's processes working for the bench: its databases' backends and the server's own."""
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.stack.pg_dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s) "
                                "OR backend_type <> 'client backend'",
                                [[self.stack.db_name, self.stack.peer_db_name]]).fetchall()
            return [int(r[0]) for r in rows]
        return []

    def _pg_sample(self, *, first: bool = False) -> None:
        for pid in self._server_pids():
            seconds = cpu_seconds(pid)
            if seconds <= 0.0:
                continue  # gone between the lookup and the read
            # A process met after the start connected during the measurement: all of its CPU counts.
            self._pg_first.setdefault(pid, seconds if first else 0.0)
            self._pg_last[pid] = seconds

    def _poll(self) -> None:
        while not self._stop.wait(self.POLL_SECONDS):
            self._pg_sample()

    def __enter__(self) -> CpuMeter:
        self._pg_sample(first=True)
        self.start = self._snapshot()
        self._poller = threading.Thread(target=self._poll, name="cpu-meter", daemon=True)
        self._poller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        self._stop.set()
        if self._poller is not None:
            self._poller.join()
        self._pg_sample()
        delta = {k: end[k] - self.start.get(k, 0.0) for k in end}
        self.seconds = {k: round(v, 3) for k, v in delta.items()}
        self.seconds["postgres"] = round(sum(self._pg_last[p] - self._pg_first[p] for p in self._pg_last), 3)
        self.seconds["bench"] = round(self.seconds.pop("self") + self.seconds.pop("children"), 3)

    seconds: dict[str, float]

    def per_unit_ms(self, units: int) -> dict[str, float]:
        return {k: round(v * 1000 / units, 3) for k, v in self.seconds.items()} if units else {}


def _children_cpu() -> float:
    """CPU of this process's finished children (wrk runs as one)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB from /proc/<pid>/status; (0, 0) once the process is gone."""
    rss = hwm = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, hwm


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (for the generator's own cost)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def _interrupted(signum: int, frame: Any) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so `finally` stops every process we started.
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def probe_stack(base_port: int, name: str) -> Iterator[Stack]:
    """A scratch stack for a one-process probe (bench/worker_probe.py, bench/ingest_probe.py): its own migrated
    database `payshift_<name>_<port>`, the bench's ports from `base_port`, this process's environment pointed at
    them and SIGTERM turned into KeyboardInterrupt; the caller starts the processes it needs. Everything is
    stopped and dropped on the way out."""
    scratch = Path(tempfile.mkdtemp(prefix=f"payshift-{name}-"))
    db_name = f"payshift_{name.replace('-', '_')}_{base_port}"
    stack = Stack(workdir=scratch, ports=Ports(redis=base_port, web=base_port + 1, peer=base_port + 2,
                                               sandbox=base_port + 3), db_name=db_name, peer_db_name=db_name)
    os.environ.update(stack.env)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        stack.create_databases()
        stack.migrate()
        yield stack
    finally:
        stack.close()
        stack.drop_databases()
        shutil.rmtree(scratch, ignore_errors=True)


def profile_arguments(parser: Any) -> None:
    """The probes' --profile and --profile-out options (read by profile_print's callers)."""
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions (CPU time)")
    parser.add_argument("--profile-out", type=Path, default=None,
                        help="with --profile, also write cProfile's stats to this file (for pstats or snakeviz)")


def profile_print(profiler: Any, *, label: str, save_to: Path | None = None, top: int = 45) -> None:
    """A probe's cProfile, as both probes print it: the top functions by cumulative and by own CPU time;
    with `save_to`, the raw stats too (for `python -m pstats FILE` or snakeviz)."""
    import io
    import pstats

    if save_to is not None:
        profiler.dump_stats(save_to)
        print(f"[{label}] profile written to {save_to} (python -m pstats {save_to})")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top * 3 // 5)
    print(out.getvalue())
