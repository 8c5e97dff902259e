"""Pacing of scheduler traffic: poll intervals that back off, and a cap on commands per minute.

* :class:`TokenBucket` caps the number of Slurm commands per minute, whatever the number of jobs:
  each command takes one token; tokens refill at ``rate_per_minute``; a burst of ``burst`` is
  allowed. :meth:`TokenBucket.acquire` sleeps until a token is free.
* :class:`Pacer` decides how long the tracking loop waits between cycles: ``interval_s`` after a
  cycle that saw a change, growing by ``backoff_factor`` while nothing changes, up to
  ``max_interval_s``; never less than ``min_call_factor`` times the last cycle's duration (a slow
  controller gets fewer calls).

Both take ``clock``/``sleep`` so tests run them on a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """At most ``rate_per_minute`` acquisitions per minute on average, ``burst`` at once."""

    def __init__(
        self,
        rate_per_minute: float,
        *,
        burst: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate_per_minute <= 0:
            raise ValueError("rate_per_minute must be positive")
        self.rate_per_s = rate_per_minute / 60.0
        self.capacity = float(burst if burst is not None else max(1, int(rate_per_minute // 6)))
        self._tokens = self.capacity
        self._clock = clock
        self._sleep = sleep
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate_per_s)
        self._stamp = now

    def try_acquire(self, n: int = 1) -> bool:
        """Take ``n`` tokens if they are there; never waits."""
        with self._lock:
            self._refill()
            if self._tokens >= n:
                self._tokens -= n
                return True
            return False

    def acquire(self, n: int = 1) -> float:
        """Take ``n`` tokens, sleeping until they are there; return the seconds waited."""
        if n > self.capacity:
            raise ValueError("cannot acquire more tokens than the bucket holds")
        waited = 0.0
        while True:
            with self._lock:
                self._refill()
                if self._tokens >= n:
                    self._tokens -= n
                    return waited
                delay = (n - self._tokens) / self.rate_per_s
            self._sleep(delay)
            waited += delay


class Pacer:
    """Interval between tracking cycles, plus the shared command budget (``bucket``)."""

    def __init__(
        self,
        *,
        interval_s: float = 30.0,
        max_interval_s: float = 300.0,
        backoff_factor: float = 1.5,
        min_call_factor: float = 10.0,
        max_commands_per_minute: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if interval_s <= 0 or max_interval_s < interval_s or backoff_factor < 1:
            raise ValueError("need 0 < interval_s <= max_interval_s and backoff_factor >= 1")
        self.interval_s = interval_s
        self.max_interval_s = max_interval_s
        self.backoff_factor = backoff_factor
        self.min_call_factor = min_call_factor
        self.current_s = interval_s
        self.bucket = TokenBucket(max_commands_per_minute, clock=clock, sleep=sleep)
        self._clock = clock
        self._sleep = sleep

    def record_cycle(self, *, changed: bool, duration_s: float = 0.0) -> float:
        """Update after a cycle; return the wait before the next one."""
        if changed:
            self.current_s = self.interval_s
        else:
            self.current_s = min(self.max_interval_s, self.current_s * self.backoff_factor)
        return max(self.current_s, self.min_call_factor * duration_s)

    def reset(self) -> None:
        """Something happened outside the loop (a new job): poll soon again."""
        self.current_s = self.interval_s

    def wait(self, *, changed: bool, duration_s: float = 0.0) -> float:
        """record_cycle, then sleep that long; return the seconds slept."""
        delay = self.record_cycle(changed=changed, duration_s=duration_s)
        self._sleep(delay)
        return delay
