"""Run guest code under the restricted policy and report a wire outcome.

`execute` is the one entry point, called in-process by the host driver and inside the
confined worker's child. It never raises for anything the guest does: compile errors, guest
exceptions, limits and capability terminations all come back as `runtimes.wire.outcome`
dicts. Only host misuse (invalid input names, inputs that are not JSON data) raises
`ValueError`/`TypeError` before any guest code runs.
"""

from __future__ import annotations

import contextvars
import decimal
import gc
import keyword
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtimes.guest import CPU, LIMIT_MESSAGES, OutputCap, SecretHandle, error_kind, guest_lineno, limit_of
from runtimes.restricted import alloc_cap
from runtimes.restricted.budget import WATCHDOG, Budget, LimitExceeded, Terminated, set_active_budget
from runtimes.restricted.grants import CallLink, install_grants
from runtimes.restricted.guest_stack import GUEST_STACK
from runtimes.restricted.guest_builtins import base_builtins
from runtimes.restricted.scaffold import Scaffold
from runtimes.restricted.transformer import RESULT_NAME, Compiled, compile_guest
from runtimes.wire import DEFAULT_VALUE_BYTES, ValueTooLarge, WireError, error, outcome, plain, value_error

_BASE_BUILTINS = base_builtins()

_MAX_STALE_HANDLES = 4096
_COLLECT_ABOVE = 8 << 20
"""Peak bytes of a fresh run above which its end runs a garbage collection."""


def _cancelled() -> Terminated:
    """The stop of a run the host cancelled."""
    return Terminated("cancelled", "Cancelled", "the run was cancelled by the host")


class GuestState:
    """Guest globals that persist across runs of a session. Opaque to callers.

    Holds the guest's globals, one builtins dict that every run refreshes in place (functions
    defined in an earlier run keep the builtins they were created with, so they print into
    the current run's output), and one `Scaffold` (a `Budget` that every run resets, the guards,
    builtins and hooks bound to it, an `Output` every run empties): loops and generators
    suspended in an earlier run are checked against the current run's limits.
    """

    __slots__ = ("globals", "builtins", "kit", "stale_handles", "link")

    def __init__(self) -> None:
        self.globals: dict[str, Any] = {}
        self.builtins: dict[str, Any] = dict(_BASE_BUILTINS)
        self.kit: Scaffold | None = None
        # Handles issued by earlier runs, with their (revoked) tokens: a handle kept in the
        # session's globals is sent to the host as its old token, which the host refuses by name.
        self.stale_handles: dict[int, tuple[SecretHandle, str]] = {}
        # The capabilities, built once: one kept in a session's globals calls the host through
        # the run that is current when it is called.
        self.link = CallLink()

    @property
    def budget(self) -> Budget | None:
        """The budget the session's runs share (None before the first run)."""
        return self.kit.budget if self.kit is not None else None


class Output(OutputCap):
    """stdout of one run: kept up to ``cap`` bytes (UTF-8, `OutputCap`), the rest dropped and flagged.

    ``sink``, when given, also receives each kept piece as it is written (streaming).
    """

    __slots__ = ("parts", "sink")

    def __init__(self, cap: int, sink: Callable[[str], None] | None = None) -> None:
        super().__init__(cap)
        self.parts: list[str] = []
        self.sink = sink

    def reset(self, cap: int, sink: Callable[[str], None] | None) -> None:
        """Empty, for a new run that keeps ``cap`` bytes and streams to ``sink``."""
        OutputCap.__init__(self, cap)
        self.parts = []
        self.sink = sink

    def write(self, text: str) -> int:
        kept = self.keep(text)
        if kept:
            self.parts.append(kept)
            if self.sink is not None:
                self.sink(kept)
        return len(text)

    def print(self, *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
        """The guest's ``print``; ``file`` may be an object of the guest's with a ``write`` method."""
        if sep is None:
            sep = " "
        if end is None:
            end = "\n"
        if type(sep) is not str or type(end) is not str:
            raise TypeError("print(): sep and end must be strings")
        if file is None and self.truncated:
            return
        text = sep.join([str(arg) for arg in args]) + end
        if file is None:
            self.write(text)
        else:
            file.write(text)

    def text(self) -> str:
        return "".join(self.parts)


def execute(
    code: str | Compiled,
    *,
    limits: Mapping[str, Any],
    call_host: Callable[[str, list, dict], Any],
    capabilities: Sequence[str] = (),
    secrets: Sequence[tuple[str, str, str]] = (),
    inputs: Mapping[str, Any] | None = None,
    state: GuestState | None = None,
    memory_cap: bool | None = None,
    deadline: float | None = None,
    on_stop: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    on_output: Callable[[str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    inputs_are_private: bool = False,
    timings: dict[str, float] | None = None,
) -> dict:
    """Run ``code`` with the restricted policy and return a `runtimes.wire.outcome` dict.

    ``code`` is source text, or a program `compile_guest` already compiled (the process
    runtime's host compiles small programs once and ships the bytecode to its children).

    ``limits`` needs cpu_seconds, wall_seconds, memory_bytes, max_output_bytes and
    max_recursion_depth. ``capabilities`` are guest names (``sql.query`` becomes ``sql.query``
    on a namespace ``sql``) that call ``call_host(name, args, kwargs)`` with wire data;
    ``secrets`` are (name, token, description) triples the guest sees as ``secrets.<name>``
    handles; ``inputs`` become guest globals (copied as plain data, `runtimes.wire.plain`);
    ``inputs_are_private=True`` says ``inputs`` are already plain data made for this run alone
    (a `runtimes.wire.plain` copy or freshly decoded wire JSON that nothing else holds): the guest
    gets them as they are, without a second copy (names are still checked).
    ``state`` keeps globals across runs (None = fresh globals). Capability arguments and
    results are copied as plain data too, within ``max_value_bytes`` (optional in ``limits``).
    ``memory_cap`` arms the allocator cap (`alloc_cap`) at ``memory_bytes`` (less the allocator overhead share, see `alloc_cap.armed_limit`) while guest code
    runs: None uses it when the extension is built, True requires it (`RuntimeError` when it is
    not built), False leaves only the size guards. The outcome's ``peak_memory_bytes`` is the
    cap's peak (None without the cap).
    ``deadline`` (a `time.monotonic` instant) replaces ``wall_seconds`` from now. ``on_stop(stop)``
    registers ``stop``, a thread-safe function that ends the run at its next tick as
    ``cancelled``, and returns a function that unregisters it. ``on_output(text)`` receives
    stdout as it is written, within the output cap; ``on_tick()`` is called every few
    milliseconds while guest code runs (when the budget reads its clocks). ``timings``, when
    given, receives the seconds spent in each phase: ``compile``, ``setup`` (namespace, limits),
    ``execute`` (guest code and converting its value; a fresh run's clean-up too) and ``finish``.

    The outcome's value is the last expression statement's value, as lenient
    `runtimes.wire.plain` makes it; over ``max_value_bytes`` the run ends with
    ``limit_exceeded`` / ``"value"``. Raises only for host-side problems: `ValueError`/`TypeError`
    for an input name that is not a public identifier or an input value that is not plain data, and whatever
    ``call_host`` raised when it failed with something other than a `Fault` (e.g. a closed
    channel), after the run has been stopped.

    The guest runs on a C stack sized to the memory limit (`guest_stack`: the calling thread
    switched to a deep stack, or a worker thread), so C recursion over deeply nested guest objects
    runs out of memory, not stack; it runs in a copy of the caller's context and the call returns
    when the run is over.
    """
    guest_inputs = _check_inputs(inputs, copy=not inputs_are_private)
    if memory_cap is None:
        memory_cap = alloc_cap.available()
    elif memory_cap and not alloc_cap.available():
        raise RuntimeError(alloc_cap.unavailable_reason())
    context = contextvars.copy_context()

    def run() -> dict:
        return context.run(_execute_safely, code, limits, call_host, capabilities, secrets, guest_inputs, state,
                           memory_cap, deadline, on_stop, on_output, on_tick, timings)

    try:
        return GUEST_STACK.run(run, int(limits["memory_bytes"]))
    except _HostFailure as failure:
        raise failure.original from None


def _execute_safely(
    code: str | Compiled,
    limits: Mapping[str, Any],
    call_host: Callable[[str, list, dict], Any],
    capabilities: Sequence[str],
    secrets: Sequence[tuple[str, str, str]],
    inputs: dict[str, Any],
    state: GuestState | None,
    memory_cap: bool,
    *hooks: Any,
) -> dict:
    """`_execute` on the thread that runs the guest; a fault in our own code becomes an internal error."""
    cpu_start = time.thread_time()
    try:
        return _execute(code, limits, call_host, capabilities, secrets, inputs, state, cpu_start, memory_cap, *hooks)
    except (KeyboardInterrupt, SystemExit, _HostFailure):
        raise
    except BaseException as exc:  # a fault in our own code, never the guest's
        return outcome(
            error=error("internal", "InternalError", f"restricted executor failed: {type(exc).__name__}: {exc}"),
            cpu_seconds=time.thread_time() - cpu_start,
        )


class _HostFailure(Exception):
    """Carries an exception from ``call_host`` (other than a `Fault`) out to the caller."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def _check_inputs(inputs: Mapping[str, Any] | None, *, copy: bool = True) -> dict[str, Any]:
    if not inputs:
        return {}
    result = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
            raise ValueError(f"input name {name!r} is not usable in guest code: use a public identifier")
        if not copy:
            result[name] = value
            continue
        try:
            result[name] = plain(value)
        except WireError as exc:
            raise TypeError(f"input {name!r}: {exc}") from None
    return result


def _execute(
    code: str | Compiled,
    limits: Mapping[str, Any],
    call_host: Callable[[str, list, dict], Any],
    capabilities: Sequence[str],
    secrets: Sequence[tuple[str, str, str]],
    inputs: dict[str, Any],
    state: GuestState | None,
    cpu_start: float,
    memory_cap: bool,
    deadline: float | None = None,
    on_stop: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
    on_output: Callable[[str], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    timings: dict[str, float] | None = None,
) -> dict:
    if timings is not None:
        mark = time.perf_counter()
    compiled = code if isinstance(code, Compiled) else compile_guest(code) if isinstance(code, str) else None
    if timings is not None:
        mark = _phase(timings, "compile", mark)
    if compiled is None or compiled.code is None:
        message = compiled.error_message if compiled is not None else "code must be a str"
        lineno = compiled.lineno if compiled is not None else None
        return outcome(
            error=error("compile_error", compiled.error_type if compiled else "TypeError", message, lineno=lineno),
            cpu_seconds=time.thread_time() - cpu_start,
        )

    fresh = state is None
    if state is None:
        state = GuestState()
    kit = state.kit
    if kit is None or (kit.budget.cap is not None) != memory_cap:
        kit = state.kit = Scaffold(Budget(limits, cpu_start, deadline, memory_cap=memory_cap),
                               Output(int(limits["max_output_bytes"]), on_output), state.globals, state.builtins)
    else:
        kit.budget.reset(limits, cpu_start, deadline)
        kit.output.reset(int(limits["max_output_bytes"]), on_output)
        state.globals.pop(RESULT_NAME, None)
    budget, output, guest_globals = kit.budget, kit.output, state.globals
    budget.anchor = _run_program.__code__
    value_cap = int(limits.get("max_value_bytes") or DEFAULT_VALUE_BYTES)
    budget.on_time_check = on_tick
    tokens: dict[int, tuple[SecretHandle, str]] = {}
    stale = state.stale_handles
    link = state.link
    link.open(call_host, budget, value_cap)
    state.builtins.update(kit.builtins)
    guest_globals.update(kit.hooks)
    # The budget's tick sources (renewed by a reset after a check raised): these two hooks are the run's own.
    guest_globals["_tick_"] = budget.ticks
    guest_globals["_enter_"] = budget.enter
    if secrets or capabilities:
        install_grants(guest_globals, capabilities, secrets, tokens, stale, link)
    if inputs:
        guest_globals.update(inputs)

    WATCHDOG.register(budget)
    def stop() -> None:
        budget.trip(_cancelled())

    unregister = on_stop(stop) if on_stop is not None else None
    if timings is not None:
        mark = _phase(timings, "setup", mark)
    try:
        # `execute` runs this in a copy of the caller's context made for this run alone.
        err, value = _run_isolated(compiled.code, state, value_cap, link, fresh)
    finally:
        link.close()
        if unregister is not None:
            unregister()
        WATCHDOG.unregister(budget)
        if not fresh and len(stale) < _MAX_STALE_HANDLES:
            stale.update(tokens)
        tokens.clear()
    if budget.host_failure is not None:
        raise _HostFailure(budget.host_failure)
    if timings is not None:
        mark = _phase(timings, "execute", mark)
    result = outcome(
        value=value,
        stdout=output.text(),
        output_truncated=output.truncated,
        error=err,
        cpu_seconds=time.thread_time() - cpu_start,
        peak_memory_bytes=budget.cap.peak if budget.cap is not None else None,
    )
    if timings is not None:
        _phase(timings, "finish", mark)
    return result


def _phase(timings: dict[str, float], name: str, since: float) -> float:
    """Record ``name`` as the seconds from ``since`` to now; returns now."""
    now = time.perf_counter()
    timings[name] = now - since
    return now


def _run_isolated(code: Any, state: GuestState, value_cap: int, link: CallLink, fresh: bool) -> tuple[dict | None, Any]:
    """`_run_program` in the run's own copy of the caller's context, with a decimal context of its own:
    the guest's arithmetic sets flags and traps there, never on the host thread's context. A
    fresh run's objects are released (`_release`) in that context too: releasing them may run
    guest finalisers, which must find the run over."""
    decimal.setcontext(decimal.Context())
    kit = state.kit
    assert kit is not None
    try:
        return _run_program(code, state.globals, kit.budget, value_cap)
    finally:
        if fresh:
            link.close()
            _release(state)


def _release(state: GuestState) -> None:
    """Drop a fresh run's objects now and leave no cyclic garbage behind: its globals, its
    builtins, the frames its stop holds, the cycles of its `Scaffold`, and, when the run allocated
    much (guest cycles keep objects alive past their last reference), a collection. The next
    run must not find the host still holding this run's memory on top of its own. Guest code
    that outlives the run (a finaliser, a generator) finds no hooks or builtins and fails."""
    kit = state.kit
    state.globals.clear()
    state.builtins.clear()
    if kit is None:
        return
    budget = kit.budget
    if budget.stop is not None:
        budget.stop.__traceback__ = None
    kit.dismantle()
    if budget.cap is not None and budget.cap.peak > _COLLECT_ABOVE:
        gc.collect()
        alloc_cap.return_free_memory()


def _run_program(code: Any, guest_globals: dict[str, Any], budget: Budget, value_cap: int) -> tuple[dict | None, Any]:
    """Execute and convert the result while the budget (and its allocator cap) is active;
    returns (error, value). The cap is disarmed before any error is built."""
    cap = budget.cap
    if cap is not None:
        cap.arm(alloc_cap.armed_limit(budget.memory_bytes))
    previous = set_active_budget(budget)
    try:
        try:
            exec(code, guest_globals)
            value = plain(guest_globals.pop(RESULT_NAME, None), lenient=True, max_bytes=value_cap,
                          check=budget.check_time)
        finally:
            set_active_budget(previous)
            if cap is not None:
                cap.disarm()
                if cap.tripped:
                    budget.trip_memory()
    except ValueTooLarge as exc:
        if budget.stop is not None:
            return _stop_error(budget.stop), None
        return value_error(exc), None
    except (LimitExceeded, Terminated) as exc:
        return _stop_error(budget.stop or exc, guest_lineno(exc)), None
    except BaseException as exc:
        if budget.stop is not None:
            return _stop_error(budget.stop, guest_lineno(exc)), None
        return _exception_error(exc, budget), None
    if budget.stop is not None:  # the guest caught the stop and finished anyway
        return _stop_error(budget.stop), None
    return None, value


def _stop_error(stop: BaseException, lineno: int | None = None) -> dict:
    if isinstance(stop, Terminated):
        return error(stop.kind, stop.type, stop.message, lineno=lineno)
    if isinstance(stop, LimitExceeded):
        return error("limit_exceeded", stop.limit, stop.message, lineno=lineno, limit=stop.limit)
    return error("internal", "InternalError", "run stopped for an unknown reason")


def _exception_error(exc: BaseException, budget: Budget) -> dict:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) and type(exc).__module__ == "builtins":
        raise exc
    lineno = guest_lineno(exc)
    limit = limit_of(exc)
    if limit is not None:
        return error("limit_exceeded", limit, LIMIT_MESSAGES[limit], lineno=lineno, limit=limit)
    try:
        message = str(exc)
    except (LimitExceeded, Terminated):
        return _stop_error(budget.stop) if budget.stop else error("limit_exceeded", CPU, "limit", limit=CPU)
    except BaseException:  # noqa: BLE001 - a guest __str__ may raise anything
        message = f"<{type(exc).__name__} with an unprintable message>"
    return error(error_kind(exc), type(exc).__name__, message, lineno=lineno)


# --- the guest's namespace -------------------------------------------------------------------
