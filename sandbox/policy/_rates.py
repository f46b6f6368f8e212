"""Where rate windows live: the `RateStore` protocol and the in-memory default."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol, runtime_checkable

@runtime_checkable
class RateStore(Protocol):
    """Where rate windows live: one sliding window per key (a principal and a rule).

    `admit` must be atomic per key: with many runs (or processes) admitting under one key at
    once, at most ``limit`` calls are admitted per ``window`` seconds.
    """

    def admit(self, key: str, limit: int, window: float) -> bool:
        """Count one call under ``key`` and return True when fewer than ``limit`` calls were
        admitted in the last ``window`` seconds; else return False and count nothing."""
        ...


class MemoryRateStore:
    """The default `RateStore`: sliding windows in this process's memory; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._windows: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str, limit: int, window: float) -> bool:
        with self._lock:
            now = self._clock()
            stamps = self._windows.setdefault(key, deque())
            while stamps and now - stamps[0] >= window:
                stamps.popleft()
            if len(stamps) >= limit:
                return False
            stamps.append(now)
            return True

