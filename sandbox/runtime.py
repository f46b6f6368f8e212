"""The protocol every runtime driver implements.

A driver takes a `Job` (code, inputs, limits, the guest-visible capability names and secret
handles, and a `HostBridge` for capability calls) and returns an `Outcome`. The `Sandbox`
builds jobs and turns outcomes into `RunResult`s; drivers never see secrets, policy or the
capability functions themselves, only the bridge.

Drivers must guarantee: fresh guest state per `run`; persistent guest state per session;
every guest failure reported as an `Outcome` error, never raised; `limits` enforced as
strictly as the runtime can, with the limit named in the error.
"""

from __future__ import annotations

import functools
import os
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from runtimes.wire import Fault
from sandbox.limits import LimitName, Limits
from sandbox.results import ErrorInfo, trusted

KNOWN_LAYERS = frozenset({
    "restricted-python", "alloc-cap",                                       # restricted
    "rlimits", "seccomp", "netns", "landlock", "userns", "uid",              # + isolation="process"
    "wasm", "wasi-no-ambient", "fuel", "epoch-deadline", "store-memory-limit",  # wasi
})
"""Every isolation layer name a driver may report in `Outcome.layers`, and a caller may require."""

CapabilityFault = Fault
"""Raised by the host bridge when a capability call fails (see `runtimes.wire.Fault`)."""


class HostBridge(Protocol):
    """How guest code reaches the host: one call per capability invocation."""

    def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """Run capability ``name`` with wire-format arguments; return a wire-format value.

        Raises `CapabilityFault` when the call is invalid, denied or fails. Thread-safe.
        """
        ...


def record_refusal(bridge: HostBridge, name: Any, fault: Fault) -> None:
    """Have ``bridge`` record a call the driver refused before `HostBridge.call` (a name not
    granted, a malformed payload or handle). Bridges with a ``refuse(name, reason)`` method
    record it (the `Sandbox`'s does); others are left alone. Never raises."""
    refuse = getattr(bridge, "refuse", None)
    if refuse is not None:
        try:
            refuse(name if isinstance(name, str) else repr(name), fault.message)
        except Exception:  # noqa: BLE001 - recording must not turn a refusal into a driver failure
            logging.getLogger("sandbox").exception("could not record a refused capability call")


@dataclass(frozen=True)
class SecretHandleSpec:
    """A secret handle as the guest sees it: ``secrets.<name>``, shown as ``description``."""

    name: str
    token: str
    description: str


class RunControl:
    """The clock and the stop switch of one run, shared by the `Sandbox`, the host bridge and the driver.

    ``deadline`` is a `time.monotonic` instant: the run's whole wall budget ends there, setup
    and capability calls included. `cancel` sets ``cancelled`` and calls every hook registered
    with `on_cancel` (a driver registers how to stop its guest: a tick flag, an epoch deadline,
    a kill), each exactly once. Hooks run on the cancelling thread, must be quick and must not raise.
    """

    __slots__ = ("deadline", "cancelled", "abandoned", "_hooks")
    _lock = threading.Lock()
    """Makes `cancel` a test-and-set; one for every control (a cancel is rare and short), made
    anew in a forked child (a fork while another thread held it would leave it held there)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.cancelled = False
        self.abandoned: str | None = None
        """The capability that was still running at the deadline (its result was discarded)."""
        self._hooks: list[Callable[[], None]] = []

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - time.monotonic()

    def cancel(self) -> bool:
        """Stop the run as soon as the runtime can; False when it was already cancelled."""
        with self._lock:
            if self.cancelled:
                return False
            self.cancelled = True
        # Each hook is taken out of the list by one atomic operation, here or in `on_cancel`
        # (a registration that raced with this cancel): whoever takes it calls it.
        hooks = self._hooks
        while True:
            try:
                hook = hooks.pop(0)
            except IndexError:
                return True
            try:
                hook()
            except Exception:  # noqa: BLE001 - a hook failing must not keep the others from running
                pass

    def on_cancel(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call ``hook`` when the run is cancelled (at once if it already is); returns a remover."""
        hooks = self._hooks
        hooks.append(hook)
        if self.cancelled:  # `cancel` may have emptied the list before the append: take it back
            try:
                hooks.remove(hook)
            except ValueError:  # `cancel` took it and calls it
                return _nothing
            hook()
            return _nothing
        return functools.partial(_discard, hooks, hook)


def _new_cancel_lock() -> None:
    RunControl._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_cancel_lock)


def _discard(hooks: list[Callable[[], None]], hook: Callable[[], None]) -> None:
    try:
        hooks.remove(hook)
    except ValueError:  # taken by `cancel`, or removed before
        pass


def _nothing() -> None:
    pass


@dataclass(slots=True)
class Job:
    """One run, as handed to a driver (read-only for drivers). ``control`` defaults to a deadline
    of ``limits.wall_seconds`` from now."""

    run_id: str
    code: str
    limits: Limits
    bridge: HostBridge
    inputs: Mapping[str, Any] = field(default_factory=dict)
    """Plain data (`runtimes.wire.plain`) made for this run alone: a driver may hand it to the
    guest without copying it again."""
    capabilities: tuple[str, ...] = ()
    """Guest-visible capability names; a dotted name ``sql.query`` appears as ``sql.query``."""
    secrets: tuple[SecretHandleSpec, ...] = ()
    control: RunControl = None  # type: ignore[assignment]
    on_output: Callable[[str, str], None] | None = None
    """Called with (stream, text) as the guest writes output ("stdout" or "stderr"), within the
    output limit; drivers call it from whatever thread reads the output."""
    timings: bool = False
    """Report per-phase durations in `Outcome.timings` (drivers that measure phases do; the
    others leave it None). Off, a driver must not spend anything on measuring."""

    def __post_init__(self) -> None:
        if self.control is None:
            self.control = RunControl(time.monotonic() + self.limits.wall_seconds)


class Outcome(BaseModel):
    """A driver's report of one run (the wire outcome of `runtimes.wire`, validated)."""

    model_config = ConfigDict(frozen=True, defer_build=True)

    ok: bool
    value: Any = None
    stdout: str = ""
    stderr: str = ""
    output_truncated: bool = False
    error: ErrorInfo | None = None
    cpu_seconds: float | None = None
    peak_memory_bytes: int | None = None
    layers: tuple[str, ...] = ()
    session_reset: bool = False
    """A session run that started on fresh guest state because the previous one was lost."""
    timings: dict[str, float] | None = None
    """Seconds per phase of the driver's own work, when `Job.timings` asked for them and the
    driver measures phases (names are the driver's: restricted reports compile, setup,
    execute, finish)."""


class DriverSession(Protocol):
    """Guest state that persists across runs (globals, imports, definitions)."""

    def run(self, job: Job) -> Outcome: ...

    def close(self) -> None:
        """Release the state; idempotent."""
        ...


class Driver(Protocol):
    """A runtime. One instance serves many runs, from several threads at once."""

    name: str
    isolation: str

    @property
    def layers(self) -> tuple[str, ...]:
        """The isolation layers this driver applies to every run (checked against ``require``)."""
        ...

    def run(self, job: Job) -> Outcome:
        """Run ``job`` with fresh guest state."""
        ...

    def open_session(self) -> DriverSession: ...

    def warm(self, timeout: float | None = None) -> bool:
        """Wait until what the driver prepares ahead of runs (spare instances, pre-forked
        children) is ready and no such work runs in the background; start any that is due.
        True once so, False at ``timeout`` seconds (None: no limit) or when the preparation
        failed. A driver that prepares nothing returns True at once."""
        ...

    def close(self) -> None:
        """Release workers, caches and engines; idempotent."""
        ...


class StreamedOutput:
    """A run's output as the guest streams it out of its boundary (process child, wasi guest).

    Kept within the job's ``max_output_bytes`` (the guest is not trusted to respect the cap:
    the rest is dropped and ``truncated`` set) and passed on to the job's ``on_output`` as it
    arrives. It is the only copy of the output, so it survives a guest that is then killed.
    """

    def __init__(self, job: Job) -> None:
        self._on_output = job.on_output
        self._room = job.limits.max_output_bytes
        self._parts: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self.truncated = False

    @property
    def room(self) -> int:
        """Bytes of output still kept; anything past them is dropped and ``truncated`` set."""
        return self._room

    def add(self, stream: Any, text: Any, *, cut: bool = False) -> None:
        """Keep ``text`` written to ``stream`` ("stdout" or "stderr"; anything else is ignored).
        ``cut``: the writer already dropped what was past the room (the output is truncated,
        and nothing written later is kept: the room left by a character cut in two is not)."""
        if cut:
            self.truncated = True
        if stream not in self._parts or not isinstance(text, str) or not text:
            if cut:
                self._room = 0
            return
        if self._room <= 0:
            self.truncated = True
            return
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > self._room:
            text = data[: self._room].decode("utf-8", "ignore")
            self.truncated = True
            self._room = 0
        else:
            self._room = 0 if cut else self._room - len(data)
        self._parts[stream].append(text)
        if self._on_output is not None and text:
            self._on_output(stream, text)

    def outcome(self, values: dict[str, Any]) -> Outcome:
        """An `Outcome` of ``values`` carrying this output, built without validation
        (`sandbox.results.trusted`): for host-built values already of the field types. Fields
        left out get their defaults; ``values`` becomes the outcome's own."""
        values["stdout"] = "".join(self._parts["stdout"])
        values["stderr"] = "".join(self._parts["stderr"])
        values["output_truncated"] = self.truncated or bool(values.get("output_truncated"))
        return trusted(Outcome, values)

    def attach(self, outcome: Outcome) -> Outcome:
        """``outcome`` carrying this output."""
        return outcome.model_copy(update={
            "stdout": "".join(self._parts["stdout"]), "stderr": "".join(self._parts["stderr"]),
            "output_truncated": self.truncated or outcome.output_truncated})


def limit_error(limit: LimitName, message: str) -> ErrorInfo:
    """The error of a run that hit ``limit``; ``type`` is the limit's name, as in every runtime."""
    return ErrorInfo(kind="limit_exceeded", type=limit, message=message, limit=limit)


def internal_error(message: str) -> Outcome:
    """An outcome for a fault on the host side of a driver (never the guest's doing)."""
    return Outcome(ok=False, error=ErrorInfo(kind="internal", type="InternalError", message=message))
