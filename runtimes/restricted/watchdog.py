"""The restricted runtime's watchdog: one thread that stops runs past their deadlines.

Ticks check the clocks themselves only every few thousand iterations (`runtimes.restricted.budget`);
the watchdog bounds the latency in between: every `_WATCHDOG_PERIOD` it asks each active
`Budget` to compare its clocks with its limits (`Budget.watchdog_poll`), which stops a run that
is over and empties its tick chunks, so the run's very next tick raises.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from runtimes.restricted.budget import Budget

_WATCHDOG_PERIOD = 0.005
T = TypeVar("T")


_THREAD = threading.local()
"""``clock_id``: the calling thread's CPU clock, looked up once per thread."""


def _thread_clock_id() -> int | None:
    try:
        return time.pthread_getcpuclockid(threading.get_ident())
    except (AttributeError, OSError):
        return None


class Watchdog:
    """One daemon thread that polls active budgets every few milliseconds.

    `register`/`unregister` are one dict operation each (atomic under the GIL); only starting
    the thread takes a lock. The thread starts on the first registration and exits after a
    second without runs. If a thread cannot be started (for example under a seccomp filter),
    runs rely on their own tick checks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, Budget] = {}
        self._thread: threading.Thread | None = None
        self._disabled = False
        self._polls = 0
        """Polls begun; with ``_polling``, tells `measure_quietly` whether a poll overlapped it."""
        self._polling = False

    def disable(self) -> None:
        """Never start the thread again (a process that forks or forbids threads); runs then
        rely on their own tick checks. A thread already running stops within a second of idling."""
        self._disabled = True

    def register(self, budget: Budget) -> None:
        """Poll ``budget`` (run on the calling thread) until `unregister`."""
        try:
            budget.clock_id = _THREAD.clock_id
        except AttributeError:
            budget.clock_id = _THREAD.clock_id = _thread_clock_id()
        self._active[id(budget)] = budget
        if self._thread is None and not self._disabled:
            self._start()

    def unregister(self, budget: Budget) -> None:
        self._active.pop(id(budget), None)

    def measure_quietly(self, measure: Callable[[], T]) -> T | None:
        """``measure()``, or None when a poll of this watchdog overlapped it: a poll holds
        references to the budgets it polls, which a reference count must not include."""
        polls = self._polls
        if self._polling:
            return None
        result = measure()
        if self._polling or self._polls != polls:
            return None
        return result

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._disabled:
                return
            try:
                thread = threading.Thread(target=self._loop, name="sandbox-restricted-watchdog", daemon=True)
                thread.start()
            except Exception:  # cannot start threads here: ticks still check on their own
                return
            self._thread = thread

    def _loop(self) -> None:
        idle_since = time.monotonic()
        me = threading.current_thread()
        while True:
            time.sleep(_WATCHDOG_PERIOD)
            now = time.monotonic()
            # `measure_quietly` relies on this order: ``_polling`` set before the count moves
            # and before any budget is referenced, cleared after the references are dropped.
            self._polling = True
            self._polls += 1
            try:
                busy = self._poll(now)
            finally:
                self._polling = False
            if busy:
                idle_since = now
            elif now - idle_since > 1.0:
                with self._lock:
                    self._thread = None
                    if not self._active:
                        return
                    self._thread = me  # a run registered meanwhile: keep polling

    def _poll(self, now: float) -> bool:
        """Poll every active budget; True when there was one. Its references end with the call."""
        active = self._active.copy()  # one step under the GIL; runs register without a lock
        for budget in active.values():
            budget.watchdog_poll(now)
        return bool(active)

    def _after_fork_in_child(self) -> None:
        # A forked child inherits the lock in whatever state the parent's watchdog left it, and
        # no watchdog thread: start afresh.
        self._lock = threading.Lock()
        self._active = {}
        self._thread = None
        self._polling = False
        vars(_THREAD).clear()  # the child's one thread has a thread id of its own


WATCHDOG = Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._after_fork_in_child)
