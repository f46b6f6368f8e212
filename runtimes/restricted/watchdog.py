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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runtimes.restricted.budget import Budget

_WATCHDOG_PERIOD = 0.005


class Watchdog:
    """One daemon thread that polls active budgets every few milliseconds.

    `register`/`unregister` are cheap (a dict operation under a lock). The thread starts on
    the first registration and exits after a second without runs. If a thread cannot be
    started (for example under a seccomp filter), runs rely on their own tick checks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[int, Budget] = {}
        self._thread: threading.Thread | None = None
        self._disabled = False

    def disable(self) -> None:
        """Never start the thread again (a process that forks or forbids threads); runs then
        rely on their own tick checks. A thread already running stops within a second of idling."""
        self._disabled = True

    def register(self, budget: Budget) -> None:
        try:
            budget.clock_id = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):
            budget.clock_id = None
        with self._lock:
            self._active[id(budget)] = budget
            if self._thread is None and not self._disabled:
                try:
                    thread = threading.Thread(target=self._loop, name="sandbox-restricted-watchdog", daemon=True)
                    thread.start()
                except Exception:  # cannot start threads here: ticks still check on their own
                    return
                self._thread = thread

    def unregister(self, budget: Budget) -> None:
        with self._lock:
            self._active.pop(id(budget), None)

    def _loop(self) -> None:
        idle_since = time.monotonic()
        while True:
            time.sleep(_WATCHDOG_PERIOD)
            now = time.monotonic()
            with self._lock:  # only copies: nothing runs under the lock
                active = list(self._active.values())
                if not active and now - idle_since > 1.0:
                    self._thread = None
                    return
            if active:
                idle_since = now
            for budget in active:
                budget.watchdog_poll(now)


    def _after_fork_in_child(self) -> None:
        # A forked child inherits the lock in whatever state the parent's watchdog left it, and
        # no watchdog thread: start afresh.
        self._lock = threading.Lock()
        self._active = {}
        self._thread = None


WATCHDOG = Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=WATCHDOG._after_fork_in_child)
