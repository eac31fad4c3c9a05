"""Rate limits as sliding windows: at most N events in any `period` seconds.

IB disconnects clients that send more than 50 messages per second and penalises more than 60
historical-data requests in 10 minutes; `Pacer` makes a caller wait instead.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Callable


class Pacer:
    """Blocks `acquire()` until one more event fits into the window."""

    def __init__(self, limit: int, period: float, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if limit < 1 or period <= 0:
            raise ValueError(f"a pacer needs limit >= 1 and period > 0, got {limit}, {period}")
        self.limit, self.period = limit, period
        self._clock, self._sleep = clock, sleep
        self._events: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def acquire(self) -> float:
        """Record one event, first waiting as long as needed; returns the seconds waited."""
        waited = 0.0
        with self._lock:
            while True:
                now = self._clock()
                while self._events and now - self._events[0] >= self.period:
                    self._events.popleft()
                if len(self._events) < self.limit:
                    self._events.append(now)
                    return waited
                delay = self.period - (now - self._events[0])
                self._sleep(delay)
                waited += delay
