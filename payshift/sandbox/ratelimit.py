"""The gateways' rate limit: a token bucket per secret key, answered with a 429 and Retry-After when empty."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateLimit:
    """`per_s` requests a second per secret key, `burst` of them at once; `per_s` 0 turns the limit off."""

    per_s: float = 50.0
    burst: int = 50

    def validate(self) -> None:
        if not (self.per_s >= 0 and math.isfinite(self.per_s)):
            raise ValueError("rate_limit_per_s must be a number >= 0 (0 = no limit)")
        if self.burst < 1:
            raise ValueError("rate_limit_burst must be >= 1")


class KeyBuckets:
    """One bucket per key, kept as the time its next request is due (GCRA): one float per configured key.

    Only keys that authenticated reach it, so its size is bounded by the configured keys.
    """

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self._clock = clock
        self._due: dict[str, float] = {}
        # The app runs on one event loop, but the in-process test client may call it from several threads.
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int | None:
        """None when `key` may make this request now (it is counted), else the whole seconds to wait."""
        if not self.limit.per_s:
            return None
        interval = 1.0 / self.limit.per_s
        tolerance = (self.limit.burst - 1) * interval
        with self._lock:
            now = self._clock()
            due = max(self._due.get(key, now), now)
            if due - tolerance > now:
                # A refused request takes no token: a client that waits Retry-After then finds one.
                return max(1, math.ceil(due - tolerance - now))
            self._due[key] = due + interval
            return None
