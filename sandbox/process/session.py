"""`ProcessSession`: a dedicated confined child that keeps its guest globals across runs."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from sandbox.process.child_handle import KILLED_EXIT_TIMEOUT, ChildHandle
from sandbox.process.phases import PhaseClock
from sandbox.runtime import Job, Outcome, internal_error, limit_error

if TYPE_CHECKING:
    from sandbox.process.driver import ProcessDriver


class ProcessSession:
    """A dedicated confined child that keeps its guest globals across runs.

    If a run kills the child (a limit), the outcome says so and the next run starts on a
    fresh child with empty globals.
    """

    def __init__(self, driver: ProcessDriver) -> None:
        self._driver = driver
        self._child: ChildHandle | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._lost = False

    def run(self, job: Job) -> Outcome:
        deadline = job.control.deadline
        slots = self._driver._slots
        with self._lock:
            if self._closed:
                return internal_error("the session is closed")
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return waited_too_long()
            try:
                reset, self._lost = self._lost, False
                outcome = self._run_child(job, deadline)
            finally:
                slots.release()
        return outcome.model_copy(update={"session_reset": True}) if reset else outcome

    def _run_child(self, job: Job, deadline: float) -> Outcome:
        clock = PhaseClock(job.timings)
        if self._child is None:
            child = self._driver._take_child(deadline)
            if isinstance(child, Outcome):
                return child
            self._child = child
            child.zygote.replenish()
        clock.taken()
        outcome, alive = self._driver._run_on(self._child, job, deadline, session=True)
        clock.exchanged()
        if not alive:
            self._child.end(max(KILLED_EXIT_TIMEOUT, deadline + KILLED_EXIT_TIMEOUT - time.monotonic()))
            self._child = None
            self._lost = True
            if outcome.error is not None:
                outcome = outcome.model_copy(update={"error": outcome.error.model_copy(update={
                    "message": outcome.error.message + " (the session's worker ended; its globals are lost)"})})
        return clock.apply(outcome)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._child is not None:
                self._child.end()
                self._child = None


def waited_too_long() -> Outcome:
    """The outcome of a run that found no process worker free before its deadline."""
    return Outcome(ok=False, error=limit_error("wall", "wall-clock limit exceeded while waiting for a process worker"))
