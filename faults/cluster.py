"""Private PostgreSQL and Redis instances plus a supervisor for the app processes, all on loopback."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
    """redis-server on a free port without persistence: a stop loses every queued message, on purpose."""

    def __init__(self, root: Path, port: int) -> None:
        self.dir = root / "redis"
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return self.db_url(0)

    def db_url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (lives as long as the server)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--protected-mode", "yes"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: port_open(self.port), 20, "redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    held_down: bool = False  # stopped on purpose by the fault script: the supervisor leaves it alone
    restarts: list[tuple[float, int | None]] = field(default_factory=list)


class Supervisor:
    """Starts the app processes in their own sessions and restarts unexpected exits, like systemd would."""

    def __init__(self, cwd: Path, logs: Path, started: float) -> None:
        self.cwd = cwd
        self.logs = logs
        self.started = started
        self.procs: dict[str, Proc] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        with self._lock:
            proc = self.procs.get(name) or Proc(name, argv, env)
            self.procs[name] = proc
            log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 (handed to the child)
            proc.popen = subprocess.Popen(argv, cwd=self.cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            log.close()
            proc.held_down = False
            return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker's pool children die with it), and hold it down."""
        with self._lock:
            proc = self.procs[name]
            proc.held_down = True
            popen = proc.popen
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=30)

    def restart(self, name: str) -> None:
        proc = self.procs[name]
        self.start(name, proc.argv, proc.env)

    def pids(self, name: str) -> list[int]:
        """The process and its children (Celery's pool), read from /proc."""
        popen = self.procs[name].popen
        if popen is None or popen.poll() is not None:
            return []
        found = [popen.pid]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == popen.pid:
                        found.append(int(entry.name))
        return found

    def watch(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(1.0):
            for name, proc in list(self.procs.items()):
                popen = proc.popen
                if proc.held_down or popen is None or popen.poll() is None:
                    continue
                proc.restarts.append((time.monotonic() - self.started, popen.returncode))
                print(f"  ! {name} exited unexpectedly (code {popen.returncode}); restarting it", flush=True)
                self.restart(name)

    def stop_all(self) -> None:
        self._stop.set()
        for proc in self.procs.values():
            proc.held_down = True
            if proc.popen is not None and proc.popen.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in self.procs.values():
            if proc.popen is None:
                continue
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.popen.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
