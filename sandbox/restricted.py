"""Driver for the in-process restricted runtime (RestrictedPython, cooperative limits).

The guest runs in the host process, on a deep-stack worker thread while the calling thread
waits (`runtimes.restricted.guest_thread`). Limits are enforced by checks the
transformer inserts (ticks, size guards, recursion depth) and hold for Python-level code; a
single long C-level operation cannot be interrupted. Use ``isolation="process"`` for hard limits.
"""

from __future__ import annotations

import functools
from typing import Any

from runtimes.restricted.executor import GuestState, execute
from sandbox.limits import Limits
from sandbox.results import ErrorInfo
from sandbox.runtime import Job, Outcome

LAYERS = ("restricted-python",)


@functools.lru_cache(maxsize=64)
def _limits_dict(limits: Limits) -> dict[str, Any]:
    return limits.model_dump()


def _execute(job: Job, state: GuestState | None) -> Outcome:
    raw = execute(
        job.code,
        limits=_limits_dict(job.limits),
        call_host=job.bridge.call,
        capabilities=job.capabilities,
        secrets=[(s.name, s.token, s.description) for s in job.secrets],
        inputs=job.inputs,
        state=state,
    )
    # The executor is host code building plain data in the wire format: construct, don't re-validate.
    error = raw["error"]
    return Outcome.model_construct(
        ok=raw["ok"],
        value=raw["value"],
        stdout=raw["stdout"],
        stderr=raw["stderr"],
        output_truncated=raw["output_truncated"],
        error=ErrorInfo(**error) if error is not None else None,
        cpu_seconds=raw["cpu_seconds"],
        peak_memory_bytes=raw["peak_memory_bytes"],
        layers=LAYERS,
    )


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
    """Runs each job with fresh globals; the calling thread waits for it. Thread-safe."""

    name = "restricted"
    isolation = "none"
    layers = LAYERS

    def run(self, job: Job) -> Outcome:
        return _execute(job, None)

    def open_session(self) -> RestrictedSession:
        return RestrictedSession()

    def close(self) -> None:
        pass
