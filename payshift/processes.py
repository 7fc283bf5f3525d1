"""The processes Payshift runs, their command lines, and the one supervisor that starts, watches and stops them.

`./scripts/up` (payshift/devstack.py), the bench (bench/stack.py) and the chaos run (faults/chaos.py) all
build their command lines from `Topology` and run them under `Supervisor`. Nothing here imports Django at
module level, and every command runs through the current interpreter (`python -m gunicorn`, `-m celery`,
`-m payshift.sandbox`), so it works from an installed package as well as from a checkout.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"
# The checkout, when this package runs from one (it then holds manage.py); None for an installed package.
_PARENT = Path(__file__).resolve().parent.parent
CHECKOUT: Path | None = _PARENT if (_PARENT / "manage.py").is_file() else None

# `manage.py` without a checkout (and so without its .env): the Celery app the cluster publishes with, the
# working folders, then the command.
_MANAGE_INLINE = ("import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'payshift.settings'); "
                  "import django, payshift.celery; django.setup(); "
                  "from payshift.paths import var_dir_prepare; var_dir_prepare(); "
                  "from django.core.management import execute_from_command_line; "
                  "execute_from_command_line(['manage.py', *sys.argv[1:]])")


def manage_command(python: str = sys.executable, checkout: Path | None = CHECKOUT) -> list[str]:
    """`python manage.py` (the public contract) from a checkout; the same program from an installed package."""
    if checkout is not None:
        return [python, str(checkout / "manage.py")]
    return [python, "-c", _MANAGE_INLINE]


@dataclass(frozen=True)
class Topology:
    """What differs between the dev stack, the bench and the chaos run; the command lines are in COMMANDS."""

    web_port: int
    sandbox_port: int
    python: str = sys.executable
    checkout: Path | None = CHECKOUT  # whose manage.py runs the Q cluster (the chaos run: its code snapshot)
    web_workers: int = 2
    # A webhook's request mostly waits for its durable commit: 8 threads per process overlap those waits
    # (bench/FINDINGS.md: saturation up about a quarter from 4 threads, for about 16 database connections).
    web_threads: int = 8
    web_args: tuple[str, ...] = ()
    celery_app: str = "payshift"
    # Process name -> Celery node name; the chaos run starts two workers.
    celery_nodes: Mapping[str, str] = field(default_factory=lambda: {"worker": "payshift@%h"})
    celery_concurrency: int = 2
    worker_args: tuple[str, ...] = ()
    log_level: str = "info"
    beat_schedule: Path | None = None  # where beat keeps its state; None: no beat in this topology
    qcluster: bool = True
    sandbox_args: tuple[str, ...] = ()

    @property
    def web_url(self) -> str:
        return f"http://{LOOPBACK}:{self.web_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://{LOOPBACK}:{self.sandbox_port}"

    def commands(self) -> dict[str, list[str]]:
        """Every process of this topology, by name, in start order (the sandbox first: the web calls it)."""
        out: dict[str, list[str]] = {}
        for build in COMMANDS.values():
            out.update(build(self))
        return out


def gunicorn_flags(t: Topology) -> list[str]:
    """The web server's shape, also used by the bench for its reference server so both are alike."""
    return ["--workers", str(t.web_workers), "--threads", str(t.web_threads), "--worker-class", "gthread",
            *t.web_args]


def _sandbox(t: Topology) -> dict[str, list[str]]:
    return {"sandbox": [t.python, "-m", "payshift.sandbox", "--host", LOOPBACK, "--port", str(t.sandbox_port),
                        *t.sandbox_args]}


def _web(t: Topology) -> dict[str, list[str]]:
    return {"web": [t.python, "-m", "gunicorn", "payshift.wsgi:application", "--bind", f"{LOOPBACK}:{t.web_port}",
                    *gunicorn_flags(t)]}


def _workers(t: Topology) -> dict[str, list[str]]:
    # No -Q: a worker consumes every queue (webhooks, reconcile, refunds).
    return {name: [t.python, "-m", "celery", "-A", t.celery_app, "worker", "-l", t.log_level, "--concurrency",
                   str(t.celery_concurrency), "-n", node, *t.worker_args] for name, node in t.celery_nodes.items()}


def _beat(t: Topology) -> dict[str, list[str]]:
    if t.beat_schedule is None:
        return {}
    return {"beat": [t.python, "-m", "celery", "-A", t.celery_app, "beat", "-l", t.log_level, "-s",
                     str(t.beat_schedule)]}


def _qcluster(t: Topology) -> dict[str, list[str]]:
    return {"qcluster": [*manage_command(t.python, t.checkout), "qcluster"]} if t.qcluster else {}


# The one list of what Payshift runs. Each entry gives zero or more (name, argv) for a topology.
COMMANDS: dict[str, Callable[[Topology], dict[str, list[str]]]] = {
    "sandbox": _sandbox,
    "web": _web,
    "worker": _workers,
    "beat": _beat,
    "qcluster": _qcluster,
}


def redis_command(port: int, data_dir: Path) -> list[str]:
    """A private redis-server without persistence (bench and chaos): stopping it loses the queue, on purpose."""
    return ["redis-server", "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(data_dir), "--daemonize", "no", "--protected-mode", "yes"]


def demo_gateway_environment(sandbox_url: str) -> dict[str, str]:
    """The gateways' demo keys, their base URLs at the sandbox, and the sandbox's control URL."""
    from payment.gateways.registry import demo_environment  # imports Django: only when asked

    return {**demo_environment(sandbox_url), "PAYSHIFT_SANDBOX_URL": sandbox_url}


def sandbox_environment(env: Mapping[str, str], *, webhook_base_url: str, public_url: str) -> dict[str, str]:
    """The sandbox's settings (SANDBOX_*, payshift/sandbox/config.py) from Payshift's: it accepts exactly
    the keys Payshift uses, signs with the one Payshift signs with, and posts webhooks to `webhook_base_url`."""
    return {
        "SANDBOX_PAYSTACK_SECRET_KEYS": env.get("PAYSTACK_SECRET_KEY", ""),
        "SANDBOX_FLUTTERWAVE_SECRET_KEYS": env.get("FLUTTERWAVE_SECRET_KEY", ""),
        "SANDBOX_FLUTTERWAVE_WEBHOOK_HASH": env.get("FLUTTERWAVE_WEBHOOK_HASH", "").split(",")[0],
        "SANDBOX_WEBHOOK_BASE_URL": webhook_base_url,
        "SANDBOX_PUBLIC_URL": public_url,
    }


class ProcessError(RuntimeError):
    """A supervised process is not running, or did not become healthy in time."""


@dataclass
class Process:
    name: str
    argv: list[str]
    env: dict[str, str]
    popen: subprocess.Popen[bytes] | None = None
    held_down: bool = False  # stopped on purpose (chaos kill): never restarted behind the caller's back
    exits: list[tuple[float, int | None]] = field(default_factory=list)  # unexpected: (seconds in, code)
    restarts: list[float] = field(default_factory=list)  # monotonic times, for the give-up window
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=60))

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None


class Supervisor:
    """Starts processes in sessions of their own, restarts the ones that die, and stops them all.

    With `log_dir` each process writes `<log_dir>/<name>.log`; without, its output is pumped to our stdout
    prefixed with its name (the dev stack's one terminal)."""

    def __init__(self, env: Mapping[str, str], *, cwd: Path | None = None, log_dir: Path | None = None) -> None:
        self.env = dict(env)
        self.cwd = cwd or CHECKOUT or Path.cwd()
        self.log_dir = log_dir
        self.procs: dict[str, Process] = {}
        self.started = time.monotonic()
        self.given_up: list[str] = []
        self._lock = threading.RLock()
        self._watching = threading.Event()
        self._watcher: threading.Thread | None = None

    # --- one process --------------------------------------------------------------------------------------
    def start(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None) -> Process:
        with self._lock:
            old = self.procs.get(name)
            if old is not None and old.running():
                raise ProcessError(f"{name} is already running")
            proc = Process(name, list(argv), dict(env) if env is not None else self.env)
            if old is not None:
                proc.exits, proc.restarts = old.exits, old.restarts
            self._spawn(proc)
            self.procs[name] = proc
            return proc

    def _spawn(self, proc: Process) -> None:
        # A session of its own: signalling its group (gunicorn's or Celery's children) never signals us.
        if self.log_dir is not None:
            with (self.log_dir / f"{proc.name}.log").open("ab") as log:
                proc.popen = subprocess.Popen(proc.argv, cwd=self.cwd, env=proc.env, stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                              start_new_session=True)
            return
        proc.popen = subprocess.Popen(proc.argv, cwd=self.cwd, env=proc.env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        threading.Thread(target=self._pump, args=(proc, proc.popen), daemon=True).start()

    @staticmethod
    def _pump(proc: Process, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        for raw in popen.stdout:
            line = raw.decode(errors="replace")
            proc.tail.append(line)
            sys.stdout.write(f"{proc.name:>8} | {line}")
            sys.stdout.flush()

    def restart(self, name: str) -> Process:
        proc = self.procs[name]
        return self.start(name, proc.argv, env=proc.env)

    def stop(self, name: str, timeout: float = 15.0) -> None:
        """Stop one process for good (it leaves the table): warmly, then SIGKILL whatever is left of its group."""
        with self._lock:
            proc = self.procs.pop(name, None)
        if proc is not None:
            _stop_all([proc], timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (a Celery worker's pool dies with it) and keep it down until
        `restart`: the chaos injector's worker kill."""
        with self._lock:
            proc = self.procs[name]
            proc.held_down = True
            popen = proc.popen
        if popen is not None and popen.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=30)

    # --- all of them --------------------------------------------------------------------------------------
    def stop_all(self, timeout: float = 15.0) -> None:
        self._watching.clear()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        with self._lock:
            procs = list(self.procs.values())
            for proc in procs:
                proc.held_down = True
        _stop_all(procs, timeout)

    def dead(self) -> list[str]:
        """Processes that exited without being asked to."""
        with self._lock:
            return [n for n, p in self.procs.items() if not p.held_down and p.popen is not None
                    and p.popen.poll() is not None]

    def restart_dead(self, limit: int | None = 5, window: float = 120.0) -> list[str]:
        """Restart what died, like systemd would (a Celery worker can exit when its broker goes away); give
        up on a process that died `limit` times within `window` seconds. Returns the names given up on."""
        given_up = []
        with self._lock:
            for name in self.dead():
                proc = self.procs[name]
                now = time.monotonic()
                proc.restarts = [t for t in proc.restarts if now - t < window]
                if limit is not None and len(proc.restarts) >= limit:
                    given_up.append(name)
                    continue
                code = proc.popen.returncode if proc.popen is not None else None
                proc.exits.append((round(now - self.started, 1), code))
                proc.restarts.append(now)
                print(f"{name} exited with {code}; restarting it", flush=True)
                self.restart(name)
        return given_up

    def watch(self, *, limit: int | None = 5, window: float = 120.0, interval: float = 1.0) -> None:
        """restart_dead() once every `interval` seconds in a thread, until stop_all(); names given up on
        collect in `given_up` (and stay dead)."""
        self._watching.set()

        def loop() -> None:
            while self._watching.is_set():
                for name in self.restart_dead(limit, window):
                    if name not in self.given_up:
                        self.given_up.append(name)
                time.sleep(interval)

        self._watcher = threading.Thread(target=loop, name="supervisor", daemon=True)
        self._watcher.start()

    # --- looking at them ----------------------------------------------------------------------------------
    def check_alive(self, *names: str) -> None:
        for name in names or tuple(self.procs):
            proc = self.procs.get(name)
            if proc is None or not proc.running():
                raise ProcessError(f"{name} is not running; the end of its output:\n{self.output_tail(name)}")

    def output_tail(self, name: str, chars: int = 3000) -> str:
        if self.log_dir is not None:
            with contextlib.suppress(OSError):
                return (self.log_dir / f"{name}.log").read_text(errors="replace")[-chars:]
            return ""
        proc = self.procs.get(name)
        return "".join(proc.tail)[-chars:] if proc else ""

    def wait_healthy(self, urls: Mapping[str, str], timeout: float, *,
                     healthy: Callable[[int], bool] = lambda status: status == 200) -> None:
        """Wait until each process's URL answers healthy; fail at once if any supervised process exits."""
        deadline = time.monotonic() + timeout
        pending = dict(urls)
        while pending:
            self.check_alive()
            if time.monotonic() > deadline:
                raise ProcessError(f"not healthy after {timeout:.0f}s: {', '.join(pending.values())}")
            for name, url in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if healthy(httpx.get(url, timeout=2.0).status_code):
                        del pending[name]
            if pending:
                time.sleep(0.2)

    def pids(self, name: str) -> list[int]:
        """The main pid and all its descendants (gunicorn's or Celery's workers), from /proc (Linux)."""
        proc = self.procs.get(name)
        if proc is None or not proc.running() or proc.popen is None:
            return []
        return [proc.popen.pid, *descendants(proc.popen.pid)]


def _stop_all(procs: Iterable[Process], timeout: float) -> None:
    """SIGTERM to each main process (gunicorn, Celery and the Q cluster stop their children warmly), one
    shared deadline, then SIGKILL to each process group for whatever is left (a stuck child)."""
    popens = [p.popen for p in procs if p.popen is not None]
    for popen in popens:
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                popen.terminate()
    deadline = time.monotonic() + timeout
    for popen in popens:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=5)


def descendants(pid: int) -> list[int]:
    """Children, grandchildren, ... of `pid`, read from /proc (empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                    parents.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    frontier = [pid]
    while frontier:
        kids = parents.get(frontier.pop(), [])
        found.extend(kids)
        frontier.extend(kids)
    return found
