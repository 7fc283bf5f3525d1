"""The outbox relay: events the webhook view stored are published off the request thread, many per message."""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator

from django.db import DatabaseError, InterfaceError, close_old_connections, connection

from payment.conf import app_settings

from . import queueing

logger = logging.getLogger("payment.outbox")

# The ids waiting in memory are only a hint: every one of them is a committed `received` row, which the
# periodic sweep publishes on its own after PAYSHIFT_SWEEP_AFTER_SECONDS. So when the relay cannot keep up
# (a broker and a database both hanging), ids beyond this bound are left to the sweep instead of growing
# the process without bound.
MAX_WAITING = 10_000

# PAYSHIFT_OUTBOX_RELAY's values (system check payshift.E010 refuses others).
RELAY_MODES = frozenset({"thread", "inline"})

# How much one new gap between stored events moves the relay's estimate of the arrival rate (a moving
# average), and the longest gap it counts, in lingers. A fifth, with gaps capped at four lingers: one pause
# ends a burst at once (a capped gap alone lifts the average over half a linger); however long the quiet was,
# a new burst is recognised within about ten events; and a single close pair in a slow stream is not.
GAP_WEIGHT = 0.2
GAP_CAP_LINGERS = 4.0


class Relay:
    """One per process. The webhook view stores an event as `received` and hands its id here after commit; a
    background thread publishes what has gathered, so a webhook's answer never waits on a broker, and a
    burst costs one broker message per batch instead of one per webhook (queueing.events_dispatch).

    Nothing is lost when this process dies with ids in memory: their rows are `received` in the database,
    and the sweep publishes `received` rows older than PAYSHIFT_SWEEP_AFTER_SECONDS (docs/reliability.md).
    With PAYSHIFT_OUTBOX_RELAY = "inline" the request thread publishes its own event after commit instead
    (for servers that run no threads of their own, and for the test suite's deterministic views).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[int] = []
        self._wake = threading.Event()
        self._full = threading.Event()  # a whole batch is waiting: the linger ends early
        self._thread: threading.Thread | None = None
        self._overflowed = False
        self._stopping = False
        self._last_submit = -math.inf
        self._gap = math.inf  # the moving average of the time between two submitted ids

    def after_fork(self) -> None:
        # A forked child has no relay thread, and the parent publishes the ids it holds.
        self._reset()

    def submit(self, event_id: int) -> None:
        """After the row is committed: publish it now (inline) or soon (the relay thread)."""
        if app_settings.PAYSHIFT_OUTBOX_RELAY == "inline":
            queueing.events_dispatch([event_id])
            return
        with self._lock:
            if len(self._waiting) >= MAX_WAITING:
                if not self._overflowed:
                    logger.warning("outbox relay behind: events left to the sweep", extra={"waiting": MAX_WAITING})
                self._overflowed = True
                return
            self._waiting.append(event_id)
            now = self._clock()
            if not math.isinf(self._last_submit):
                gap = min(now - self._last_submit, app_settings.PAYSHIFT_OUTBOX_LINGER_SECONDS * GAP_CAP_LINGERS)
                # The first gap after a start (or a stop) seeds the average: at worst one batch lingers for
                # nothing.
                self._gap = gap if math.isinf(self._gap) else self._gap + (gap - self._gap) * GAP_WEIGHT
            self._last_submit = now
            full = len(self._waiting) >= app_settings.PAYSHIFT_OUTBOX_BATCH_SIZE
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="payshift-outbox-relay", daemon=True)
                self._thread.start()
        self._wake.set()
        if full:
            self._full.set()

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def busy(self, linger: float) -> bool:
        """Whether ids arrive close enough together that lingering gathers a batch: on the recent average, two
        or more are due within one linger."""
        with self._lock:
            return self._gap <= linger / 2

    def drain(self) -> int:
        """Publish every id gathered so far, in batches; returns how many were taken from memory."""
        with self._lock:
            ids, self._waiting = self._waiting, []
            self._overflowed = False
        for batch in _batches(ids, max(1, app_settings.PAYSHIFT_OUTBOX_BATCH_SIZE)):
            try:
                queueing.events_dispatch(batch)
            except (DatabaseError, InterfaceError) as exc:
                # Published or not, the rows are still `received`: the sweep takes them. A fresh connection
                # next time, as Django does for a request after an error.
                logger.error("outbox relay: database error; the sweep will publish these",
                             extra={"event_ids": batch, "error": f"{type(exc).__name__}: {exc}"[:300]})
                connection.close()
            except Exception:
                logger.exception("outbox relay failed; the sweep will publish these", extra={"event_ids": batch})
        return len(ids)

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is held, then end the thread and close its database connection (process exit, tests)."""
        thread = self._thread
        self._stopping = True
        self._wake.set()
        self._full.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        self._stopping = False
        self._full.clear()
        self.drain()
        with self._lock:  # a relay started again learns the arrival rate afresh
            self._last_submit, self._gap = -math.inf, math.inf

    def _run(self) -> None:
        # Under load, a short linger after the first id (PAYSHIFT_OUTBOX_LINGER_SECONDS, or until a batch is
        # full): each publish costs a broker message whatever its size, and each message costs Celery its
        # per-task work (bench/FINDINGS.md), so a few milliseconds turn one message per webhook into one per
        # batch. "Under load" is the arrival rate, not the last publish: ids that arrive on average less than
        # half a linger apart make a lingered batch three or more long, while a slower stream is published at
        # once, id by id, and pays no wait for a batch of one or two. The gateway's answer waits for neither.
        try:
            while not self._stopping:
                self._wake.wait()
                self._wake.clear()
                linger = app_settings.PAYSHIFT_OUTBOX_LINGER_SECONDS
                if linger > 0 and not self._stopping and self.busy(linger):
                    self._full.wait(linger)
                self._full.clear()
                # What Django does before each request: drop a connection past CONN_MAX_AGE or broken.
                close_old_connections()
                self.drain()
        finally:
            connection.close()


def _batches(ids: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(ids), size):
        yield ids[start:start + size]


relay = Relay()
os.register_at_fork(after_in_child=relay.after_fork)
# A server stopping gracefully (gunicorn's SIGTERM, the end of a management command) publishes what it holds
# rather than leaving it to the sweep's delay.
atexit.register(relay.stop)
