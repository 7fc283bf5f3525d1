"""Private PostgreSQL and Redis instances on loopback (the app processes run under payshift/processes.py)."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from payshift.processes import Supervisor, redis_command

PG_BIN = Path(os.environ.get("PAYSHIFT_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port(start: int | None = None, end: int = 19999) -> int:
    """A port in the 19xxx range that nothing listens on (chaos traffic stays off shared ports). With no
    start, one is spread by pid so concurrent runs do not race for the same ports."""
    first = 19000 + os.getpid() % 500 if start is None else start
    for port in range(first, end):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 19000-19999")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _as_postgres_user() -> list[str]:
    # PostgreSQL refuses to run as root; when we are root, run its tools as the packaged `postgres` user.
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """A throwaway cluster (initdb into the run folder, pg_ctl on a free port): faults never touch :5432."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root / "pg"
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "postgres.log"
        self.port = port

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/payshift"

    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([*_as_postgres_user(), *argv], check=check, capture_output=True, timeout=120)

    def init(self) -> None:
        self.sock.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            for path in (self.root, self.sock):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")

    def start(self) -> None:
        # fsync off: a private throwaway cluster; a process restart (the fault we inject) still loses nothing,
        # because every commit is written to the OS before it returns (synchronous_commit stays on).
        options = (f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=300 -c log_min_messages=warning")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                  "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop", check=False)

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self) -> None:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE payshift")


class PrivateRedis:
    """redis-server on a free port without persistence, under the run's supervisor: a stop loses every
    queued message, on purpose."""

    def __init__(self, root: Path, port: int, supervisor: Supervisor) -> None:
        self.dir = root / "redis"
        self.port = port
        self.supervisor = supervisor

    @property
    def url(self) -> str:
        return self.db_url(0)

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.supervisor.start("redis", redis_command(self.port, self.dir))
        wait_until(lambda: port_open(self.port), 20, "redis")

    def stop(self) -> None:
        self.supervisor.stop("redis", timeout=10)
