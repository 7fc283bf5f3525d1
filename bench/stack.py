"""The production-like stack the bench starts and always stops: PostgreSQL database, Redis, gunicorn, Celery."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import psycopg

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV_BIN = Path(sys.executable).parent
PEER_VENV = BENCH / ".venv-peer"


@dataclass(frozen=True)
class Ports:
    """Unusual ports so a bench run never collides with the dev stack (8000/8100) or the test suite."""

    web: int = 18480
    peer: int = 18481
    sandbox: int = 18482
    redis: int = 18479


# Gunicorn exactly as payshift/devstack.py runs the web (gthread, 2 workers x 4 threads), DEBUG off, and
# no access log for every target alike: the bench measures the application, not gunicorn's log writes.
GUNICORN_FLAGS = ["--workers", os.environ.get("BENCH_WEB_WORKERS", "2"), "--threads",
                  os.environ.get("BENCH_WEB_THREADS", "4"), "--worker-class", "gthread", "--graceful-timeout", "5",
                  "--timeout", "60", "--backlog", "2048"]


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: IO[bytes]


@dataclass
class Stack:
    """Owns every process the bench starts; `close()` stops them all (also on Ctrl-C and on failure)."""

    workdir: Path
    ports: Ports = field(default_factory=Ports)
    db_name: str = "payshift_bench"
    peer_db_name: str = "payshift_bench_peer"
    pg_dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    procs: dict[str, Proc] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        run_id = secrets.token_hex(4)
        paystack_key = f"sk_test_bench_{run_id}"
        flw_hash = f"bench-webhook-hash-{run_id}"
        sandbox = f"http://127.0.0.1:{self.ports.sandbox}"
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
            "PAYSTACK_SECRET_KEY": paystack_key,
            "PAYSTACK_PUBLIC_KEY": f"pk_test_bench_{run_id}",
            "FLUTTERWAVE_SECRET_KEY": f"FLWSECK_TEST-bench{run_id}-X",
            "FLUTTERWAVE_PUBLIC_KEY": f"FLWPUBK_TEST-bench{run_id}-X",
            "FLUTTERWAVE_WEBHOOK_HASH": flw_hash,
            "PAYSTACK_BASE_URL": f"{sandbox}/paystack",
            "FLUTTERWAVE_BASE_URL": f"{sandbox}/flutterwave/v3",
            "PAYSHIFT_SANDBOX_URL": sandbox,
            "SANDBOX_PAYSTACK_SECRET_KEYS": paystack_key,
            "SANDBOX_FLUTTERWAVE_SECRET_KEYS": f"FLWSECK_TEST-bench{run_id}-X",
            "SANDBOX_FLUTTERWAVE_WEBHOOK_HASH": flw_hash,
            "SANDBOX_WEBHOOK_BASE_URL": f"http://127.0.0.1:{self.ports.web}",
            "SANDBOX_PUBLIC_URL": sandbox,
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

    # --- processes --------------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], *, env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> Proc:
        if name in self.procs and self.procs[name].popen.poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = (self.workdir / "logs" / f"{name}.log").open("ab")
        # A session of its own: stopping it (and its children: gunicorn and Celery workers) never signals us.
        popen = subprocess.Popen(argv, cwd=cwd, env=env or self.env, stdout=log, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, start_new_session=True)
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def stop(self, name: str, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None:
            return
        if proc.popen.poll() is None:
            # SIGTERM to the main process: gunicorn and Celery then stop their own children warmly.
            proc.popen.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(timeout=timeout)
        # Whatever is left in its process group (a stuck child) is killed.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=5)
        proc.log.close()

    def close(self) -> None:
        for name in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(name)

    def check_alive(self, *names: str) -> None:
        for name in names:
            proc = self.procs.get(name)
            if proc is None or proc.popen.poll() is not None:
                tail = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} is not running; the end of its log:\n{tail}")

    def pids(self, name: str) -> list[int]:
        """The main pid and its children (gunicorn or Celery workers)."""
        proc = self.procs.get(name)
        if proc is None:
            return []
        return [proc.popen.pid, *_children(proc.popen.pid)]

    def wait_http(self, url: str, name: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(name)
            try:
                if httpx.get(url, timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer {url} within {timeout:.0f}s")
            time.sleep(0.2)

    # --- services ---------------------------------------------------------------------------------------
    def start_redis(self) -> None:
        """A private redis-server on its own port: stopping it (scenario 3) never touches the shared Redis."""
        data = self.workdir / "redis"
        data.mkdir(exist_ok=True)
        self.start("redis", ["redis-server", "--bind", "127.0.0.1", "--port", str(self.ports.redis), "--save", "",
                             "--appendonly", "no", "--dir", str(data), "--daemonize", "no"])
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
        self.start("sandbox", [sys.executable, "-m", "payshift.sandbox", "--host", "127.0.0.1", "--port",
                               str(self.ports.sandbox), "--no-access-log", "--log-level", "warning"])
        self.wait_http(f"http://127.0.0.1:{self.ports.sandbox}/_sandbox/health", "sandbox")

    def start_web(self, **extra_env: str) -> None:
        self.start("web", [str(VENV_BIN / "gunicorn"), "payshift.wsgi:application", "--bind",
                           f"127.0.0.1:{self.ports.web}", *GUNICORN_FLAGS],
                   env={**self.env, **extra_env} if extra_env else None)
        self.wait_http(f"http://127.0.0.1:{self.ports.web}/healthz", "web")

    def start_worker(self, concurrency: int) -> None:
        # The product's worker command (all queues, no -Q), with the bench app that adds the no-op reference.
        self.start("worker", [str(VENV_BIN / "celery"), "-A", "bench.celeryapp", "worker", "-l", "warning",
                              "--concurrency", str(concurrency), "-n", f"bench{secrets.token_hex(2)}@%h",
                              "--without-gossip", "--without-mingle"])
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
        self.start("qcluster", [sys.executable, "manage.py", "qcluster"])
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
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "--skip-checks", "-v", "0"], cwd=ROOT,
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
        self.start("peer", [str(PEER_VENV / "bin" / "gunicorn"), "bench.peer.wsgi:application", "--bind",
                            f"127.0.0.1:{self.ports.peer}", *GUNICORN_FLAGS], env=env)
        self.wait_http(f"http://127.0.0.1:{self.ports.peer}/paystack/webhook/", "peer")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (/proc/stat: everything but idle and iowait)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by each part of the stack during a measurement: where the cores went."""

    def __init__(self, stack: Stack, roles: dict[str, str]) -> None:
        self.stack = stack
        self.roles = roles  # label -> process name in the stack ("web", "worker", "sandbox", "redis", "peer")
        self.start: dict[str, float] = {}

    def _snapshot(self) -> dict[str, float]:
        snap = {label: sum(cpu_seconds(p) for p in self.stack.pids(name)) for label, name in self.roles.items()}
        snap.update({f"pg:{p}": cpu_seconds(p) for p in self._backends()})
        snap["machine"] = machine_busy_seconds()
        snap["self"] = cpu_seconds(os.getpid())
        snap["children"] = _children_cpu()
        return snap

    def _backends(self) -> list[int]:
        """Server processes of the bench's databases (connections persist, so they span the measurement)."""
        with contextlib.suppress(psycopg.Error), psycopg.connect(self.stack.pg_dsn, autocommit=True) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = ANY(%s)",
                                [[self.stack.db_name, self.stack.peer_db_name]]).fetchall()
            return [int(r[0]) for r in rows]
        return []

    def __enter__(self) -> CpuMeter:
        self.start = self._snapshot()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._snapshot()
        # Per backend: one that connected during the measurement started from zero.
        delta = {k: end[k] - self.start.get(k, 0.0) for k in end}
        self.seconds = {k: round(v, 3) for k, v in delta.items() if not k.startswith("pg:")}
        self.seconds["postgres"] = round(sum(v for k, v in delta.items() if k.startswith("pg:")), 3)
        self.seconds["bench"] = round(self.seconds.pop("self") + self.seconds.pop("children"), 3)

    seconds: dict[str, float]

    def per_unit_ms(self, units: int) -> dict[str, float]:
        return {k: round(v * 1000 / units, 3) for k, v in self.seconds.items()} if units else {}


def _children_cpu() -> float:
    """CPU of this process's finished children (wrk runs as one)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _children(pid: int) -> list[int]:
    """Direct and indirect children, from /proc (Linux)."""
    found: list[int] = []
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        path = Path(f"/proc/{parent}/task/{parent}/children")
        try:
            kids = [int(x) for x in path.read_text().split()]
        except (OSError, ValueError):
            kids = []
        found.extend(kids)
        frontier.extend(kids)
    return found


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
