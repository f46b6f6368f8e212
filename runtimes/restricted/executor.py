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
import functools
import gc
import keyword
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runtimes.guest import CPU, LIMIT_MESSAGES, SecretHandle, error_kind, guest_lineno, limit_of
from runtimes.restricted import alloc_cap
from runtimes.restricted.budget import WATCHDOG, Budget, LimitExceeded, Terminated, set_active_budget
from runtimes.restricted.grants import install_grants, primitive_within
from runtimes.restricted.guest_stack import GUEST_STACK
from runtimes.restricted.guest_state import GuestState, Output, give_back, take_spare
from runtimes.restricted.scaffold import Scaffold
from runtimes.restricted.transformer import RESULT_NAME, Compiled, compile_guest
from runtimes.wire import DEFAULT_VALUE_BYTES, ValueTooLarge, WireError, error, outcome, plain, small_scalar, value_error

__all__ = ["GuestState", "Output", "execute"]

_MAX_STALE_HANDLES = 4096
_COLLECT_ABOVE = 8 << 20
"""Peak bytes of a fresh run above which its end runs a garbage collection."""


def _cancelled() -> Terminated:
    """The stop of a run the host cancelled."""
    return Terminated("cancelled", "Cancelled", "the run was cancelled by the host")


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
    ``state`` keeps globals across runs (None = fresh globals: a state an earlier fresh run left
    clean, see `guest_state`, or a new one). Capability arguments and
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
    guest_inputs = _check_inputs(inputs, copy=not inputs_are_private) if inputs else {}
    if memory_cap is None:
        memory_cap = alloc_cap.available()
    elif memory_cap and not alloc_cap.available():
        raise RuntimeError(alloc_cap.unavailable_reason())
    fresh = state is None
    guest = (take_spare(memory_cap) or GuestState()) if state is None else state
    run = functools.partial(contextvars.copy_context().run, _execute_safely, code, limits, call_host, capabilities,
                            secrets, guest_inputs, guest, fresh, memory_cap, deadline, on_stop, on_output, on_tick,
                            timings)
    try:
        return GUEST_STACK.run(run, int(limits["memory_bytes"]))
    except _HostFailure as failure:
        raise failure.original from None
    finally:
        if fresh:
            give_back(guest)


def _execute_safely(
    code: str | Compiled,
    limits: Mapping[str, Any],
    call_host: Callable[[str, list, dict], Any],
    capabilities: Sequence[str],
    secrets: Sequence[tuple[str, str, str]],
    inputs: dict[str, Any],
    state: GuestState,
    fresh: bool,
    memory_cap: bool,
    *hooks: Any,
) -> dict:
    """`_execute` on the thread that runs the guest; a fault in our own code becomes an internal error."""
    cpu_start = time.thread_time()
    try:
        return _execute(code, limits, call_host, capabilities, secrets, inputs, state, fresh, cpu_start, memory_cap,
                        *hooks)
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
    state: GuestState,
    fresh: bool,
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

    kit = state.kit
    if kit is None or (kit.budget.cap is not None) != memory_cap:
        kit = state.kit = Scaffold(Budget(limits, cpu_start, deadline, memory_cap=memory_cap),
                               Output(int(limits["max_output_bytes"]), on_output), state.globals, state.builtins)
        state.builtins.update(kit.builtins)  # the guest cannot reach this dict: later runs find them there
        kit.budget.anchor = _run_program.__code__
    else:
        kit.budget.reset(limits, cpu_start, deadline)
        kit.output.reset(int(limits["max_output_bytes"]), on_output)
        state.globals.pop(RESULT_NAME, None)
    budget, output, guest_globals = kit.budget, kit.output, state.globals
    value_cap = int(limits.get("max_value_bytes") or DEFAULT_VALUE_BYTES)
    budget.on_time_check = on_tick
    tokens: dict[int, tuple[SecretHandle, str]] = {}
    stale = state.stale_handles
    link = state.link
    link.bind(capabilities)  # before the baseline: the namespace is part of what a fresh run measures
    stopper = unregister = before = None
    WATCHDOG.register(budget)
    try:
        # Taken before anything of this run refers to the state's objects other than what the
        # end of the run takes back before `_release` measures again.
        before = state.baseline() if fresh else None
        link.open(call_host, budget, value_cap)
        guest_globals.update(kit.hooks)
        # The budget's tick sources (renewed by a reset after a check raised): these two hooks are the run's own.
        guest_globals["_tick_"] = budget.ticks
        guest_globals["_enter_"] = budget.enter
        if secrets or capabilities:
            install_grants(guest_globals, secrets, tokens, stale, link)
        if inputs:
            guest_globals.update(inputs)
        if on_stop is not None:
            stopper = _Stopper(budget)
            unregister = on_stop(stopper)
        if timings is not None:
            mark = _phase(timings, "setup", mark)
        # `execute` runs this in a copy of the caller's context made for this run alone, where
        # the guest gets a decimal context of its own (a new one per fresh run, the session's):
        # its arithmetic sets flags and traps there, never on the host thread's context.
        if fresh:
            decimal.setcontext(decimal.Context())
        else:
            if state.decimal_context is None:
                state.decimal_context = decimal.Context()
            decimal.setcontext(state.decimal_context)
        err, value = _run_program(compiled.code, guest_globals, budget, value_cap)
    finally:
        link.close()
        if stopper is not None:
            stopper.end()
        if unregister is not None:
            unregister()
        if fresh:
            _release(state, before)
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


class _Stopper:
    """What the host calls to cancel one run (`execute`'s ``on_stop``): trips the run's budget
    until the run ends, and never after, even from another thread (a session's or a reused
    fresh state's budget is the next run's)."""

    __slots__ = ("budget",)
    _lock = threading.Lock()

    def __init__(self, budget: Budget) -> None:
        self.budget: Budget | None = budget

    def __call__(self) -> None:
        with self._lock:
            if self.budget is not None:
                self.budget.trip(_cancelled())

    def end(self) -> None:
        """The run is over: from now on a call does nothing."""
        with self._lock:
            self.budget = None


def _release(state: GuestState, before: tuple[list[int], list[int]] | None) -> None:
    """Drop a fresh run's objects now (in the run's context: releasing them may run guest
    finalisers, which must find the run over): its globals, the frames its stop holds and,
    when the run allocated much (guest cycles keep objects alive past their last reference), a
    collection. The next run must not find the host still holding this run's memory on top of
    its own. The state is then kept for a later fresh run if the run `GuestState.left_clean`
    (``before`` measured when it started), or else dismantled: guest code that outlives the
    run (a finaliser, a generator) finds no hooks or builtins and fails."""
    kit = state.kit
    state.globals.clear()
    if kit is None:
        return
    # No local refers to the budget: `left_clean` counts the references to it.
    stop, cap = kit.budget.stop, kit.budget.cap
    if stop is not None:
        stop.__traceback__ = None
    if cap is not None and (cap.peak > _COLLECT_ABOVE or cap.held > _COLLECT_ABOVE):
        state.dismantle()
        gc.collect()
        alloc_cap.return_free_memory()
    elif state.left_clean(before):
        state.reusable = True
    else:
        state.dismantle()


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
            value = guest_globals.pop(RESULT_NAME, None)
            # `plain` would return a small scalar or a short str as it is: skip its walk.
            if not (small_scalar(value, value_cap) or primitive_within(value, value_cap)):
                value = plain(value, lenient=True, max_bytes=value_cap, check=budget.check_time)
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
