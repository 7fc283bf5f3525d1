"""The fault script: Redis stopped, Celery workers SIGKILLed mid-task, PostgreSQL restarted, a flaky gateway."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from payshift.processes import Supervisor

from .cluster import PrivatePostgres, PrivateRedis

# The gateway's weather for the whole run: 10 % 5xx, some jitter, and a rare hang longer than our read timeout.
BASELINE_FAULTS: dict[str, Any] = {"error_rate": 0.10, "error_status": 503, "latency_ms": 0,
                                   "latency_jitter_ms": 100, "timeout_rate": 0.002, "timeout_s": 12.0}
SPIKE_FAULTS: dict[str, Any] = {"latency_ms": 1500, "latency_jitter_ms": 1500}
SPIKE_SECONDS = 6.0
REDIS_DOWN_SECONDS = 15.0
POSTGRES_DOWN_SECONDS = 3.0


@dataclass
class FaultRecord:
    name: str
    start: float
    end: float = 0.0
    detail: str = ""


@dataclass
class Plan:
    """(fault, progress threshold) in order; each waits for its threshold and for the one before it."""

    steps: list[tuple[str, float]] = field(default_factory=list)

    @classmethod
    def for_kills(cls, kills: int) -> Plan:
        steps = [("latency_spike", 0.08), ("redis_stop", 0.18), ("worker_kill", 0.35), ("latency_spike", 0.45),
                 ("postgres_restart", 0.55), ("web_worker_kill", 0.62), ("worker_kill", 0.70),
                 ("latency_spike", 0.85)]
        kept: list[tuple[str, float]] = []
        for name, at in steps:
            if name == "worker_kill":
                if kills <= 0:
                    continue
                kills -= 1
            kept.append((name, at))
        return cls(kept)


class Injector:
    def __init__(self, *, plan: Plan, sandbox: str, redis: PrivateRedis, postgres: PrivatePostgres,
                 supervisor: Supervisor, workers: list[str], progress: Callable[[], float], started: float,
                 active_tasks: Callable[[str], list[Any] | None]) -> None:
        self.plan = plan
        self.sandbox = sandbox
        self.redis = redis
        self.postgres = postgres
        self.supervisor = supervisor
        self.workers = workers
        self.progress = progress
        self.started = started
        self.active_tasks = active_tasks
        self.records: list[FaultRecord] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults", daemon=True)
        self._kills = 0

    def now(self) -> float:
        return time.monotonic() - self.started

    def start(self) -> None:
        self.sandbox_faults(BASELINE_FAULTS)
        self.records.append(FaultRecord("gateway 10% 5xx + jitter + 0.2% hangs", self.now(), -1.0,
                                        "whole run, drain included"))
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def done(self) -> bool:
        return not self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    def sandbox_faults(self, values: dict[str, Any]) -> None:
        for _ in range(20):
            try:
                httpx.post(f"{self.sandbox}/_sandbox/faults", json=values, timeout=5).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.5)
        self.errors.append(f"could not set sandbox faults {values}")

    def _run(self) -> None:
        for name, at in self.plan.steps:
            while self.progress() < at:
                if self._stop.wait(0.2):
                    return
            try:
                getattr(self, name)()
            except Exception as exc:  # record and carry on: the run's verdict still comes from the database
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"  ! fault {name} failed: {exc}", flush=True)

    def _say(self, record: FaultRecord) -> None:
        print(f"  [t={record.start:6.1f}s] fault: {record.name} {record.detail}".rstrip(), flush=True)

    def latency_spike(self) -> None:
        record = FaultRecord("gateway latency spike 1.5-3 s", self.now())
        self._say(record)
        self.sandbox_faults(SPIKE_FAULTS)
        time.sleep(SPIKE_SECONDS)
        self.sandbox_faults({k: BASELINE_FAULTS[k] for k in SPIKE_FAULTS})
        record.end = self.now()
        self.records.append(record)

    def redis_stop(self) -> None:
        record = FaultRecord(f"Redis stopped {REDIS_DOWN_SECONDS:.0f} s (restarted empty)", self.now())
        self._say(record)
        self.redis.stop()
        time.sleep(REDIS_DOWN_SECONDS)
        self.redis.start()
        record.end = self.now()
        self.records.append(record)

    def postgres_restart(self) -> None:
        record = FaultRecord("PostgreSQL restarted (fast stop, 3 s down)", self.now())
        self._say(record)
        self.postgres.stop("fast")
        time.sleep(POSTGRES_DOWN_SECONDS)
        self.postgres.start()
        record.end = self.now()
        self.records.append(record)

    def web_worker_kill(self) -> None:
        """SIGKILL one gunicorn worker while webhooks flow: its answers in flight are lost (the driver resends)
        and so are the event ids its outbox relay held in memory, which the sweep must publish from the
        database (`received` rows). gunicorn's master starts a new worker."""
        children = self.supervisor.pids("web")[1:]
        record = FaultRecord("SIGKILL a gunicorn worker", self.now())
        if not children:
            record.detail = "no gunicorn worker found"
            self.errors.append("web_worker_kill: no gunicorn worker found")
        else:
            os.kill(children[0], signal.SIGKILL)
            record.detail = f"pid {children[0]} (the master starts another)"
        self._say(record)
        record.end = self.now()
        self.records.append(record)

    def worker_kill(self) -> None:
        """SIGKILL a Celery worker (and its pool) while it runs a task, then start it again."""
        name = self.workers[self._kills % len(self.workers)]
        self._kills += 1
        # Slow the gateway so tasks sit inside the verify call, then wait until this worker has one running.
        self.sandbox_faults(SPIKE_FAULTS)
        active: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not active:
            active = self.active_tasks(name) or []
            if not active:
                time.sleep(0.3)
        record = FaultRecord(f"SIGKILL Celery {name}", self.now())
        # Periodic tasks run with no args: name them by task instead.
        events = sorted({str((t.get("args") or [t.get("name", "?")])[0]) for t in active if isinstance(t, dict)})
        record.detail = (f"mid-task: {len(active)} running (events {', '.join(events[:6])})" if active
                         else "no running task seen in 30 s; killed anyway")
        self._say(record)
        self.supervisor.kill(name)
        time.sleep(3)
        self.sandbox_faults({k: BASELINE_FAULTS[k] for k in SPIKE_FAULTS})
        self.supervisor.restart(name)
        record.end = self.now()
        record.detail += "; restarted"
        self.records.append(record)
