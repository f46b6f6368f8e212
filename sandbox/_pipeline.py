"""The run pipeline behind `Sandbox.run` and `Session.run`: check the arguments (`prepare`),
run the prepared run through the driver with its secrets, policy, records, overlay layer and
capability bridge (`execute`, or `start` on a thread of its own), and build the `RunResult`.

Functions here take the `Sandbox` whose configuration they read as their first argument
(``self``): they are its private methods, kept apart so that the facade stays a facade.
"""

from __future__ import annotations

import functools
import itertools
import keyword
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from runtimes.wire import WireError, plain
from sandbox import call_threads
from sandbox._bridge import RunBridge
from sandbox.errors import ConfigurationError
from sandbox.handles import RunHandle, StreamRedactor
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, RunResult, Usage, trusted
from sandbox.runtime import Job, Outcome, RunControl, limit_error
from sandbox.secrets import NO_REDACTION, Redactor, SecretBroker

if TYPE_CHECKING:
    import asyncio

    from sandbox._session import Session
    from sandbox.policy import Principal
    from sandbox.sandbox import Sandbox

log = logging.getLogger("sandbox")
POST_RUN_GRACE = 0.25
"""Seconds past the run's deadline that post-run steps (redaction, overlay changes) may take;
past it they are abandoned and the run ends with ``limit_exceeded`` / ``wall``."""

SESSION_RESET_NOTICE = (
    "[sandbox] this session's guest state was reset before this run (a limit ended its worker or instance, "
    "or it was released); globals from earlier runs are gone\n"
)

OutputCallback = Callable[[str, str], None]
"""``on_output(stream, text)``: ``stream`` is ``"stdout"`` or ``"stderr"``."""


class RunSpec(NamedTuple):
    """A run's checked arguments and its clock, made before anything runs."""

    run_id: str
    code: str
    inputs: dict[str, Any]
    limits: Limits
    principal: Principal | None
    control: RunControl
    started: float


class _RunIds:
    """Run ids: 32 hex digits, a random per-process prefix (new in a forked child) and a counter.
    Unique within the process and across processes; not secret (nothing is granted by a run id)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_RUN_IDS = _RunIds()
_next_run_id = _RUN_IDS.next
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUN_IDS.reseed)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running on this thread, or None. A process that never imported asyncio
    has none, so asyncio is not imported to ask."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is None:
        return None
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def output_sink(on_output: OutputCallback | None, handle: RunHandle | None, redactor: Redactor
                 ) -> tuple[OutputCallback | None, StreamRedactor | None]:
    """The driver's ``on_output``: the host callback and the handle's iterator, redacted; None
    when nobody listens (drivers then skip streaming)."""
    targets = [t for t in (on_output, handle._emit if handle is not None else None) if t is not None]
    if not targets:
        return None, None

    def emit(stream: str, text: str) -> None:
        for target in targets:
            try:
                target(stream, text)
            except Exception:  # a host callback failing must not end the run
                log.exception("on_output callback failed")

    if not redactor:
        return emit, None
    streamer = StreamRedactor(redactor, emit)
    return streamer.write, streamer


def stopped_outcome(outcome: Outcome, control: RunControl, limits: Limits) -> Outcome:
    """The outcome of a run the host stopped: cancelled, or a capability abandoned at the
    deadline. What the guest wrote before is kept; the value is dropped."""
    if control.cancelled and not outcome.ok:
        lineno = outcome.error.lineno if outcome.error is not None else None
        error = ErrorInfo(kind="cancelled", type="Cancelled", message="the run was cancelled by the host", lineno=lineno)
    elif control.abandoned is not None:
        error = limit_error("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded while capability "
                                    f"{control.abandoned}() was running; the call was abandoned and its result discarded")
    else:
        return outcome
    return outcome.model_copy(update={"ok": False, "value": None, "error": error})


def prepare(self: Sandbox, code: str, inputs: Mapping[str, Any] | None, limits: Limits | None,
            principal: Principal | Mapping[str, Any] | str | None) -> RunSpec:
    """Check a run's arguments (host misuse raises here) and start its clock."""
    self._check_open()
    if not isinstance(code, str):
        raise TypeError(f"code must be str, not {type(code).__name__}")
    run_limits = self.limits if limits is None else self._limits_for(limits)
    wire_inputs: dict[str, Any] = {}
    if inputs:
        try:
            wire_inputs = plain(dict(inputs))
        except WireError as exc:
            raise TypeError(f"inputs must be plain data (JSON types, tuple, set, bytes, date, datetime, time, "
                            f"timedelta, Decimal, UUID): {exc}") from None
        for name in wire_inputs:
            if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
                raise ConfigurationError(f"input name {name!r} must be an identifier, not a keyword, not starting with '_'")
    who = self.principal
    if principal is not None:
        from sandbox.policy import coerce_principal

        who = coerce_principal(principal)
    started = time.perf_counter()
    control = RunControl(time.monotonic() + run_limits.wall_seconds)
    return RunSpec(_next_run_id(), code, wire_inputs, run_limits, who, control, started)


def start(self: Sandbox, spec: RunSpec, session: Session | None, loop: asyncio.AbstractEventLoop | None,
          on_output: OutputCallback | None) -> RunHandle:
    """Run a prepared run on a new daemon thread; returns its handle at once."""
    handle = RunHandle(spec.run_id, spec.control)

    def target() -> None:
        try:
            result = execute(self, spec, session, loop, on_output=on_output, handle=handle)
        except BaseException as exc:  # noqa: BLE001 - host errors reach whoever waits on the handle
            handle._finish(None, exc)
        else:
            handle._finish(result)

    threading.Thread(target=target, name=f"sandbox-run-{spec.run_id[:8]}", daemon=True).start()
    return handle

def execute(
    self: Sandbox,
    spec: RunSpec,
    session: Session | None,
    loop: asyncio.AbstractEventLoop | None,
    *,
    on_output: OutputCallback | None = None,
    handle: RunHandle | None = None,
) -> RunResult:
    """Run a prepared run to its `RunResult`: every step, post-run work included, inside the
    run's wall budget (plus `POST_RUN_GRACE` for the post-run steps)."""
    run_id, code, _, run_limits, principal, control, started = spec
    # Secret values are read now (just in time); SecretUnavailable propagates to the host.
    broker = SecretBroker(self.secrets, run_id=run_id) if self.secrets else None
    redactor = broker.redactor if broker is not None else NO_REDACTION
    redacting = broker is not None and bool(redactor)
    state = recorder = None
    if self.policy is not None:
        state = self.policy.start(run_id, principal)
        state.bind_loop(loop)
    if self.records is not None:
        from sandbox.audit import RunRecorder, secret_grants

        recorder = RunRecorder(
            run_id=run_id, code=code, runtime=self.runtime, isolation=self.isolation,
            principal=principal, session_id=session.id if session is not None else None, limits=run_limits,
            capabilities=self.capabilities, policy=self.policy.describe() if self.policy is not None else None,
            secrets=secret_grants(self.secrets), redact=redactor if redacting else None,
        )
    files = self.files
    layer = files.layer() if files is not None else None
    granted = self.capabilities
    if layer is not None and files is not None:  # the overlay's capabilities, bound to this run's scratch layer
        granted = {**granted, **layer.bind({c.name: self.capabilities[c.name] for c in files.capabilities})}
    bridge = RunBridge(granted, loop, control, broker, state, recorder)
    sink = streamer = None
    if on_output is not None or handle is not None:
        sink, streamer = output_sink(on_output, handle, redactor)
    measure = self.timings
    job = Job(run_id, code, run_limits, bridge, spec.inputs, self._capability_names,
              broker.handles if broker is not None else (), control, sink, measure)
    driver_start = time.perf_counter() if measure else 0.0
    try:
        if session is not None:
            outcome = session._driver_run(job)
        else:
            outcome = self._driver.run(job)
    except Exception as exc:
        message = redactor.text(str(exc))
        # A traceback repeats the messages of the exception and its chain: attach it only
        # when none of them holds a secret.
        log.error(
            "driver %s failed on run %s: %s: %s", self._driver.name, run_id, type(exc).__name__, message,
            exc_info=exc if not _holds_secret(exc, redactor) else None,
        )
        outcome = Outcome(
            ok=False,
            error=ErrorInfo(kind="internal", type=type(exc).__name__, message=f"runtime failure: {message}"),
        )
    finally:
        if broker is not None:
            broker.revoke()
    outcome = stopped_outcome(outcome, control, run_limits)
    finish_start = time.perf_counter() if measure else 0.0
    timings = _host_timings(started, driver_start, finish_start, outcome.timings) if measure else None

    if redacting or layer is not None:  # work that grows with what the guest produced: bounded
        future = call_threads.submit(functools.partial(
            _build_result, self, outcome, run_id, started, bridge, timings, layer, redactor if redacting else None,
            streamer))
        if call_threads.wait(future, control.remaining() + POST_RUN_GRACE):
            result = future.result()
        else:
            result = RunResult.model_construct(
                ok=False, output_truncated=True, error=limit_error("wall", (
                    f"wall-clock limit of {run_limits.wall_seconds:g} s exceeded while preparing the result "
                    "(redaction, file changes): output, value and changes were dropped")),
                usage=Usage.model_construct(wall_seconds=time.perf_counter() - started,
                                            cpu_seconds=outcome.cpu_seconds or 0.0,
                                            peak_memory_bytes=outcome.peak_memory_bytes,
                                            capability_calls=bridge.calls),
                run_id=run_id, runtime=self.runtime, isolation=self.isolation, layers=outcome.layers,
                changes=() if layer is not None else None, session_reset=outcome.session_reset,
                warnings=list(bridge.warnings), timings=timings,
            )
    else:
        result = _build_result(self, outcome, run_id, started, bridge, timings, None, None, streamer)
    if timings is not None:
        timings["finish"] = time.perf_counter() - finish_start
    if recorder is not None and self.records is not None:
        try:
            self.records.emit(recorder.finish(result))
        except Exception:
            log.exception("could not emit the run record of run %s", run_id)
    return result


def _build_result(self: Sandbox, outcome: Outcome, run_id: str, started: float, bridge: RunBridge,
                  timings: dict[str, float] | None, layer: Any, redactor: Redactor | None,
                  streamer: StreamRedactor | None) -> RunResult:
    """The run's `RunResult` from the driver's outcome: redacted when ``redactor`` is given, with
    the overlay ``layer``'s changes when there is one."""
    error = outcome.error
    stdout, stderr, value, truncated = outcome.stdout, outcome.stderr, outcome.value, outcome.output_truncated
    if outcome.session_reset:
        stderr = SESSION_RESET_NOTICE + stderr
    if streamer is not None:
        streamer.flush(truncated)
    if redactor is not None:
        if error is not None:
            error = error.model_copy(update={"message": redactor.text(error.message), "type": redactor.text(error.type)})
        value = redactor.value(value)
        stdout = redactor.text(stdout, truncated=truncated)
        stderr = redactor.text(stderr, truncated=truncated)
    changes = layer.changes(redactor.text if redactor is not None else None) if layer is not None else None
    # Every field below is already validated (the driver's Outcome) or made here: construct
    # without validating again, which is most of the host's cost on a trivial run.
    return trusted(RunResult, {
        "ok": outcome.ok,
        "value": value,
        "stdout": stdout,
        "stderr": stderr,
        "output_truncated": truncated,
        "error": error,
        "usage": trusted(Usage, {
            "wall_seconds": time.perf_counter() - started,
            "cpu_seconds": outcome.cpu_seconds or 0.0,
            "peak_memory_bytes": outcome.peak_memory_bytes,
            "capability_calls": bridge.calls,
        }),
        "run_id": run_id,
        "runtime": self.runtime,
        "isolation": self.isolation,
        "layers": outcome.layers,
        "warnings": list(bridge.warnings),
        "changes": changes,
        "session_reset": outcome.session_reset,
        "timings": timings,
    })


def _host_timings(started: float, driver_start: float, driver_end: float,
                  driver: dict[str, float] | None) -> dict[str, float]:
    """The host's phases up to the driver's end (``prepare``, ``driver``) and the driver's own,
    prefixed ``driver.``; the caller adds ``finish`` once the result is built."""
    timings = {"prepare": driver_start - started, "driver": driver_end - driver_start}
    if driver:
        timings.update((f"driver.{name}", seconds) for name, seconds in driver.items())
    return timings


def _holds_secret(exc: BaseException, redactor: Redactor) -> bool:
    """True when ``exc`` or an exception chained to it has a message that ``redactor`` changes."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 20:
        text = str(current)
        if redactor.text(text) != text:
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False
