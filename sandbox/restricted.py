"""Driver for the in-process restricted runtime (RestrictedPython, cooperative limits).

The guest runs in the host process, on the calling thread switched to a deep C stack (or on a
deep-stack worker thread where the ``_deepstack`` extension is not built; see
`runtimes.restricted.guest_stack`). Limits are enforced by checks the
transformer inserts (ticks, size guards, recursion depth) and hold for Python-level code; a
single long C-level operation cannot be interrupted. Use ``isolation="process"`` for hard limits.

Memory is capped hard by the allocator cap (layer ``alloc-cap``, `runtimes.restricted.alloc_cap`)
when its C extension is built: every byte the guest's thread allocates during a run counts
against ``memory_bytes``. Set ``SANDBOX_DISABLE_ALLOC_CAP=1`` (read when a driver is built) to
run without it; the layer is then absent and ``require={"alloc-cap"}`` raises
`IsolationUnavailable`.
"""

from __future__ import annotations

import os
from typing import Any

from runtimes.restricted import alloc_cap
from runtimes.restricted.executor import GuestState, execute
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, trusted
from sandbox.runtime import Job, Outcome

LAYERS = ("restricted-python",)
DISABLE_ALLOC_CAP = "SANDBOX_DISABLE_ALLOC_CAP"
"""Environment variable: ``1`` builds drivers without the allocator cap."""


def alloc_cap_in_force() -> bool:
    """True when new drivers arm the allocator cap: the extension is built (loading it installs
    the allocator hooks) and `DISABLE_ALLOC_CAP` is not ``1``."""
    return os.environ.get(DISABLE_ALLOC_CAP) != "1" and alloc_cap.available()


_LIMITS_DICTS: dict[int, tuple[Limits, dict[str, Any]]] = {}


def _limits_dict(limits: Limits) -> dict[str, Any]:
    """``limits.model_dump()`` (the fields are plain numbers, so their values as they are), cached
    by identity (hashing a pydantic model costs more than the run it is for); the cache holds the
    models it keys, so an id is never reused while cached. Read without pydantic's serializer,
    which `Limits` builds only on first use."""
    entry = _LIMITS_DICTS.get(id(limits))
    if entry is None or entry[0] is not limits:
        if len(_LIMITS_DICTS) >= 64:
            _LIMITS_DICTS.clear()
        entry = _LIMITS_DICTS[id(limits)] = (limits, {name: getattr(limits, name) for name in Limits.model_fields})
    return entry[1]


def _why_no_cap() -> str:
    if os.environ.get(DISABLE_ALLOC_CAP) == "1":
        return f"disabled by {DISABLE_ALLOC_CAP}=1 (unset it)"
    return alloc_cap.unavailable_reason() or "unavailable"


def _execute(job: Job, state: GuestState | None, layers: tuple[str, ...]) -> Outcome:
    timings: dict[str, float] | None = {} if job.timings else None
    on_output = job.on_output
    raw = execute(
        job.code,
        limits=_limits_dict(job.limits),
        call_host=job.bridge.call,
        capabilities=job.capabilities,
        secrets=[(s.name, s.token, s.description) for s in job.secrets] if job.secrets else (),
        inputs=job.inputs,
        state=state,
        memory_cap="alloc-cap" in layers,
        deadline=job.control.deadline,
        on_stop=job.control.on_cancel,
        on_output=(lambda text: on_output("stdout", text)) if on_output is not None else None,
        inputs_are_private=True,  # Sandbox.run made them with wire.plain for this run alone
        timings=timings,
    )
    # The executor is host code building plain data in the wire format: construct, don't re-validate.
    error = raw["error"]
    return trusted(Outcome, {
        "ok": raw["ok"],
        "value": raw["value"],
        "stdout": raw["stdout"],
        "stderr": raw["stderr"],
        "output_truncated": raw["output_truncated"],
        "error": ErrorInfo(**error) if error is not None else None,
        "cpu_seconds": raw["cpu_seconds"],
        "peak_memory_bytes": raw["peak_memory_bytes"],
        "layers": layers,
        "session_reset": False,
        "timings": timings,
    })


class RestrictedSession:
    """Guest globals kept across runs; not for concurrent use (the `Session` serialises runs)."""

    def __init__(self, layers: tuple[str, ...]) -> None:
        self._state: GuestState | None = GuestState()
        self._layers = layers

    def run(self, job: Job) -> Outcome:
        if self._state is None:
            raise RuntimeError("session is closed")
        return _execute(job, self._state, self._layers)

    def close(self) -> None:
        self._state = None


class RestrictedDriver:
    """Runs each job with fresh globals; the calling thread waits for it. Thread-safe."""

    name = "restricted"
    isolation = "none"

    def __init__(self) -> None:
        cap = alloc_cap_in_force()
        self.layers: tuple[str, ...] = LAYERS + (("alloc-cap",) if cap else ())
        self.unavailable: dict[str, str] = {} if cap else {"alloc-cap": _why_no_cap()}

    def run(self, job: Job) -> Outcome:
        return _execute(job, None, self.layers)

    def open_session(self) -> RestrictedSession:
        return RestrictedSession(self.layers)

    def warm(self, timeout: float | None = None) -> bool:
        """Nothing is prepared in the background: always ready."""
        return True

    def close(self) -> None:
        pass
