"""Driver for the in-process restricted runtime (RestrictedPython, cooperative limits).

The guest runs on the calling thread, in the host process. Limits are enforced by checks the
transformer inserts (ticks, size guards, recursion depth) and hold for Python-level code; a
single long C-level operation cannot be interrupted. Use ``isolation="process"`` for hard limits.
"""

from __future__ import annotations

from runtimes.restricted.executor import GuestState, execute
from sandbox.runtime import Job, Outcome

LAYERS = ("restricted-python",)


def _execute(job: Job, state: GuestState | None) -> Outcome:
    raw = execute(
        job.code,
        limits=job.limits.model_dump(),
        call_host=job.bridge.call,
        capabilities=job.capabilities,
        secrets=[(s.name, s.token, s.description) for s in job.secrets],
        inputs=job.inputs,
        state=state,
    )
    return Outcome.model_validate({**raw, "layers": LAYERS})


class RestrictedSession:
    """Guest globals kept across runs; not for concurrent use (the `Session` serialises runs)."""

    def __init__(self) -> None:
        self._state: GuestState | None = GuestState()

    def run(self, job: Job) -> Outcome:
        if self._state is None:
            raise RuntimeError("session is closed")
        return _execute(job, self._state)

    def close(self) -> None:
        self._state = None


class RestrictedDriver:
    """Runs each job on the calling thread with fresh globals. Thread-safe."""

    name = "restricted"
    isolation = "none"
    layers = LAYERS

    def run(self, job: Job) -> Outcome:
        return _execute(job, None)

    def open_session(self) -> RestrictedSession:
        return RestrictedSession()

    def close(self) -> None:
        pass
