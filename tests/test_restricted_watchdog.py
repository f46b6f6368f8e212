"""The restricted runtime's watchdog: what its lock-free registration and its polls promise."""

from __future__ import annotations

import os
import threading
import time

from runtimes.restricted.budget import Budget
from runtimes.restricted.watchdog import WATCHDOG, Watchdog

LIMITS = {"cpu_seconds": 2.0, "wall_seconds": 5.0, "memory_bytes": 64 << 20, "max_output_bytes": 1 << 16,
          "max_recursion_depth": 200}


def test_a_measurement_overlapping_a_watchdog_poll_counts_for_nothing() -> None:
    watchdog = Watchdog()
    assert watchdog.measure_quietly(lambda: 1) == 1
    watchdog._polling = True
    assert watchdog.measure_quietly(lambda: 1) is None
    watchdog._polling = False

    def poll_meanwhile() -> int:
        watchdog._polls += 1
        return 1

    assert watchdog.measure_quietly(poll_meanwhile) is None


def test_a_registered_budget_reads_the_cpu_clock_of_its_own_thread() -> None:
    budgets = [Budget(LIMITS), Budget(LIMITS)]

    def register(budget: Budget) -> None:
        WATCHDOG.register(budget)
        WATCHDOG.unregister(budget)

    register(budgets[0])
    other = threading.Thread(target=register, args=(budgets[1],))
    other.start()
    other.join()
    assert budgets[0].clock_id is not None and budgets[1].clock_id is not None
    assert budgets[0].clock_id != budgets[1].clock_id
    assert budgets[0].clock_id == time.pthread_getcpuclockid(threading.get_ident())


def test_a_forked_child_reads_its_own_cpu_clock() -> None:
    budget = Budget(LIMITS)
    WATCHDOG.register(budget)
    WATCHDOG.unregister(budget)
    parent_clock = budget.clock_id
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child reports and exits without returning into pytest
        try:
            WATCHDOG.register(budget)
            WATCHDOG.unregister(budget)
            fine = budget.clock_id != parent_clock and time.clock_gettime(budget.clock_id) >= 0
            os.write(write, b"1" if fine else b"0")
        finally:
            os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 1)
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert answer == b"1"
