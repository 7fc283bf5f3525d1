"""The client side of a gateway's rate limit: one token bucket per gateway, shared by a process's threads."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping

from payment.conf import app_settings


class RateLimiter:
    """`per_s` calls a second with bursts of `burst`, kept as the time the next call is due (GCRA).

    Callers reserve a slot and sleep until it outside the lock, so N threads are spaced 1/per_s apart
    instead of racing for tokens; a 429's Retry-After pushes every later slot past it (`pause`).
    """

    def __init__(self, per_s: float, burst: int, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if per_s <= 0 or burst < 1:
            raise ValueError("a rate limiter needs per_s > 0 and burst >= 1")
        self.per_s = per_s
        self.burst = burst
        self._interval = 1.0 / per_s
        self._tolerance = (burst - 1) * self._interval
        self._due = 0.0
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    def acquire(self, max_wait: float) -> float | None:
        """Wait for a slot and return the seconds waited; None (nothing reserved) if it is further than
        `max_wait` away: the caller fails fast rather than hold a thread past its own deadline."""
        with self._lock:
            now = self._clock()
            due = max(self._due, now)
            wait = max(0.0, due - self._tolerance - now)
            if wait > max_wait:
                return None
            self._due = due + self._interval
        if wait:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """The gateway said "not before `seconds`" (Retry-After): no call of this process goes before, and
        the calls after it resume at the rate, without a burst."""
        with self._lock:
            self._due = max(self._due, self._clock() + seconds + self._tolerance)


_limiters: dict[str, tuple[float, RateLimiter]] = {}
_limiters_lock = threading.Lock()


def limit_for(gateway: str, limits: Mapping[str, float]) -> float:
    """The calls per second allowed to `gateway` by PAYSHIFT_GATEWAY_RATE_LIMIT (0 = no limit)."""
    return limits.get(gateway, limits.get("*", 0.0))


def limiter_for(gateway: str) -> RateLimiter | None:
    """This process's limiter for `gateway`, or None when its limit is off; rebuilt when the setting changes."""
    per_s = limit_for(gateway, app_settings.PAYSHIFT_GATEWAY_RATE_LIMIT)
    if per_s <= 0:
        return None
    with _limiters_lock:
        known = _limiters.get(gateway)
        if known is None or known[0] != per_s:
            # Bursts of a tenth of a second's worth: in any t seconds a process makes at most per_s·t + burst
            # calls, which stays inside a gateway's bucket of the same rate and a burst at least as large.
            known = (per_s, RateLimiter(per_s, max(1, math.ceil(per_s / 10))))
            _limiters[gateway] = known
        return known[1]


def limiters_reset() -> None:
    """Forget every limiter (tests; a fresh process starts without any)."""
    with _limiters_lock:
        _limiters.clear()
