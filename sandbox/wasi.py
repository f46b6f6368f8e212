"""The ``wasi`` runtime driver: CPython compiled to WebAssembly, run inside Wasmtime.

One process-wide `_Runtime` holds the Engine, the compiled guest component (see
`sandbox.wasi_build`) and a Linker with WASI p2 and the capability interface. Every run gets a
fresh Store and a fresh instance of the pre-initialised guest; a session keeps one instance.

Limits, all enforced by Wasmtime outside the guest:

- **CPU** — fuel. Instantiating the guest (interpreter start-up) gets its own allowance,
  `STARTUP_FUEL`; the user's budget, ``cpu_seconds * fuel_per_cpu_second``, is set only after
  that. Running out traps; the result is ``limit_exceeded`` / ``cpu``.
- **Wall** and **cancel** — epoch interruption. A ticker thread advances the engine epoch
  every `TICK_SECONDS` while any run is active; every Store has an epoch deadline of one
  tick and a deadline callback (`_on_epoch_deadline`) that, on the thread running the guest,
  traps the run once the job's deadline has passed or the host cancelled it, and otherwise
  lets it go on for one more tick. So a run stops within a tick or two of either. Capability
  calls and ``host.sleep`` are bounded by the same deadline on the host side.
  → ``limit_exceeded`` / ``wall``, or ``cancelled``.
- **Memory** — ``Store.set_limits(memory_size=memory_bytes)``: ``memory.grow`` fails past the
  limit and CPython raises ``MemoryError`` → ``limit_exceeded`` / ``memory``.
- **Recursion** — ``sys.setrecursionlimit`` in the guest; a Wasm stack overflow traps →
  ``limit_exceeded`` / ``recursion``.
- **Output** — the guest streams stdout/stderr through ``host.output`` as it writes them
  (coalesced to one call per couple of milliseconds), so output written before a trap is
  kept; the host trims to ``max_output_bytes`` (the guest's own cap is never trusted).
- **Data** — the guest's report and each capability call's arguments are size-checked on
  the raw string, before it is decoded or parsed (`runtimes.wire.report_bytes`,
  ``max_value_bytes``), then parsed with `runtimes.wire.loads_bounded` (node and depth caps):
  a guest that rewrote its own serialiser still cannot make the host parse more. Over a cap:
  ``limit_exceeded`` / ``value``.

Nothing ambient: the WasiConfig grants no preopened directories, an empty environment, no
arguments, empty stdin, stdout/stderr discarded (guest ``print`` is captured in the guest),
and no network (Wasmtime's WASI context allows no socket addresses unless
``inherit_network`` is called, which we never do). What WASI still gives by default: the
wall clock (real host time, full resolution) and random bytes from a cryptographically secure
host RNG (``os.urandom``, ``random``'s seed). The monotonic clock is the driver's own (host
time since this process started, 1 ns resolution): its clock *waits* would block inside
Wasmtime where no limit can stop them, so they are refused (see `_refuse_clock_wait`). The guest's ``hash()``
salt is fixed at build time (pre-initialisation), identical in every instance.

Secret handles are WIT resources (``sandbox:guest/host.secret``) owned by the guest's
resource table: the guest cannot mint one, only pass the ones it was given. The host maps a
handle's representation back to the token for the current run only.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import itertools
import json
import math
import os
import threading
import time
import typing
from dataclasses import dataclass, field
from typing import Any

import wasmtime
from wasmtime import Store, StoreContext, WasiConfig, WasmtimeError
from wasmtime import _ffi as ffi
from wasmtime.component import Component, Linker, ResourceAny, ResourceHost, ResourceType

from runtimes import wire
from runtimes.wire import SECRET_MARKER, Fault
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, ErrorKind
from sandbox.runtime import Job, Outcome, StreamedOutput, internal_error, limit_error, record_refusal
from sandbox.trap_handlers import TrapHandlers
from sandbox.wasi_build import WasiBuildError, load_component, make_engine

__all__ = ["WasiDriver", "WasiSession", "WasiBuildError", "FUEL_PER_CPU_SECOND", "STARTUP_FUEL", "TICK_SECONDS"]

INTERFACE = "sandbox:guest/host@0.1.0"
SECRET_TYPE = 0x5EC2E7
"""The host resource type id of ``secret``."""

FUEL_PER_CPU_SECOND = 5_000_000_000
"""Fuel (≈ Wasm instructions) per CPU second of the guest interpreter.

Measured on the dev machine: CPython-in-Wasm burns 2.6 G fuel/s (sorting, memory-bound) to
8 G fuel/s (tight loops); typical code 6 G/s. So ``cpu_seconds`` is enforced to within about
a factor of two either way, deterministically (the same code always stops at the same point);
the wall-clock limit is the hard backstop.
"""

STARTUP_FUEL = 200_000_000
"""Allowance for instantiating the guest (its start-up); not charged to the user's budget."""

TERMINATE_GRACE_FUEL = 20_000_000
"""Fuel left to a guest after a capability fault that terminates the run: enough to unwind and
report its output, not enough to keep working."""

SPARES = 2
"""Pre-instantiated guest instances kept ready (fresh: only the guest's start-up has run in
them). Instantiating the guest costs about 1 ms (mostly filling its function tables, which
componentize-py's dynamic linking does in a start function), so a background thread does it
ahead of time and also drops finished Stores. ``SANDBOX_WASI_SPARES=0`` turns this off."""

SPARE_MIN_MEMORY = 32 << 20
"""Runs whose memory limit is below this instantiate directly (the guest needs ~15 MiB to
start, and Wasmtime checks that against the run's own limit)."""

TICK_SECONDS = 0.005
"""Epoch tick period; wall limits are accurate to about one tick."""


class _Ticker:
    """Advances the engine epoch every `TICK_SECONDS` while at least one run is active."""

    def __init__(self, engine: wasmtime.Engine, interval: float) -> None:
        self._engine = engine
        self._interval = interval
        self._cond = threading.Condition()
        self._active = 0
        self._thread: threading.Thread | None = None

    def enter(self) -> None:
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandbox-wasi-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def exit(self) -> None:
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        engine, interval = self._engine, self._interval
        while True:
            with self._cond:
                while self._active == 0:
                    if not self._cond.wait(timeout=30.0) and self._active == 0:
                        self._thread = None  # idle for 30 s: stop; the next run restarts it
                        return
            time.sleep(interval)
            engine.increment_epoch()


@dataclass
class _RunState:
    """Host-side state of the run executing on this thread (seen by the host functions)."""

    job: Job
    tokens: dict[int, str]
    deadline: float = math.inf
    terminate: Fault | None = None
    refused: str | None = None
    """The WASI call the host refused (see `_refuse_clock_wait`), if one ended the run."""
    refused_past_deadline: bool = False
    """Whether that call asked to wait past the run's wall deadline."""
    oversized: int = 0
    """Size of a capability call's arguments refused unread (over ``max_value_bytes``)."""
    stop: str | None = None
    """Why the epoch callback trapped the guest: "wall" or "cancelled"."""
    wake: threading.Event = field(default_factory=threading.Event)
    """Set when the run is cancelled: ends a ``host.sleep`` early."""
    output: StreamedOutput | None = None
    """What the guest streamed through ``host.output`` (the only copy of its output)."""


_tls = threading.local()
_reps = itertools.count(1)
# Handles of finished runs (rep -> token, newest last): a handle a session kept is sent to the
# host as its revoked token, which the secrets broker refuses by name.
_retired: collections.OrderedDict[int, str] = collections.OrderedDict()
_retired_lock = threading.Lock()
_MAX_RETIRED = 4096


def _retire(tokens: dict[int, str]) -> None:
    with _retired_lock:
        _retired.update(tokens)
        while len(_retired) > _MAX_RETIRED:
            _retired.popitem(last=False)


def _token_of(state: _RunState, rep: int) -> str | None:
    token = state.tokens.get(rep)
    if token is None:
        with _retired_lock:
            token = _retired.get(rep)
    return token


def _fault_payload(fault: Fault) -> str:
    return json.dumps(fault.to_wire())


def _resolve_handles(value: Any, tokens: list[str | None], depth: int = 0) -> Any:
    """Replace ``{SECRET_MARKER: i}`` with ``{SECRET_MARKER: token}``; refuse anything else."""
    if isinstance(value, list):
        return [_resolve_handles(item, tokens, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_resolve_handles(item, tokens, depth + 1) for item in value)
    if isinstance(value, dict):
        if SECRET_MARKER in value:
            index = value[SECRET_MARKER]
            if len(value) != 1 or type(index) is not int or not 0 <= index < len(tokens):
                raise Fault("TypeError", "not a secret handle: pass secrets.<name> itself")
            token = tokens[index]
            if token is None:
                raise Fault("CapabilityError", "this secret handle is not valid in this run")
            return {SECRET_MARKER: token}
        return {key: _resolve_handles(item, tokens, depth + 1) for key, item in value.items()}
    return value


def _value_fault(state: _RunState, store: Any, message: str) -> Fault:
    """End the run on limit ``value``: the guest gets the fault, then only grace fuel."""
    fault = Fault("ValueError", message, terminate="limit_exceeded")
    state.terminate = fault
    ffi.wasmtime_context_set_fuel(store._context(), TERMINATE_GRACE_FUEL)
    return fault


def _args_cap(limits: Limits) -> int:
    return limits.max_value_bytes + 1024  # the [args, kwargs] envelope


def _host_call(store: Any, name: str, args_json: str | None, handles: list) -> tuple:
    """The ``host.call`` import. Never raises: a Python exception here would become a trap
    (and wasmtime-py keeps it in a process-global slot that other threads could see).
    ``args_json`` is None when the trampoline refused it unread (over the size cap)."""
    reps: list[int] = []
    returned: list[ResourceHost] = []
    try:
        for handle in handles:
            host = handle.to_host(store)
            reps.append(host.rep)
            host.close()
            handle.close()
        returned = [ResourceHost.own(rep, SECRET_TYPE) for rep in reps]
    except Exception:  # noqa: BLE001 - a handle that is not ours; reject the whole call
        return (False, _refuse(getattr(_tls, "state", None), name, Fault("TypeError", "invalid secret handle")), returned)
    state: _RunState | None = getattr(_tls, "state", None)
    if state is None:
        return (False, _fault_payload(Fault("CapabilityError", "no run is active")), returned)
    if state.terminate is not None:
        return (False, _fault_payload(state.terminate), returned)
    reached_bridge = False
    try:
        # Guest code can call the raw host import with any name: only the job's grants pass.
        if name not in state.job.capabilities:
            raise Fault("CapabilityError", f"no capability named {name!r} was granted to this run")
        limits = state.job.limits
        if args_json is None:
            raise _value_fault(state, store, f"{name}() arguments: {state.oversized} bytes is over the "
                                             f"{_args_cap(limits)}-byte cap (max_value_bytes)")
        try:
            decoded = wire.loads_bounded(args_json, max_bytes=_args_cap(limits))
        except wire.ValueTooLarge as exc:
            raise _value_fault(state, store, f"{name}() arguments: {exc}") from None
        except wire.WireError:
            raise Fault("TypeError", "malformed capability call") from None
        if not (isinstance(decoded, list) and len(decoded) == 2 and isinstance(decoded[0], list) and isinstance(decoded[1], dict)):
            raise Fault("TypeError", "malformed capability call")
        args, kwargs = decoded
        if reps or SECRET_MARKER in args_json:
            tokens = [_token_of(state, rep) for rep in reps]
            args = _resolve_handles(args, tokens)
            kwargs = _resolve_handles(kwargs, tokens)
        reached_bridge = True
        result = state.job.bridge.call(name, args, kwargs)
        if time.monotonic() >= state.deadline:  # the guest traps when it resumes: skip converting the result
            raise Fault("CapabilityError", "the run's wall-clock deadline passed during the call")
        try:
            text = wire.dumps(wire.encode(result, max_bytes=limits.max_value_bytes))
        except (TypeError, ValueError) as exc:
            raise Fault("CapabilityError", f"{name}() returned data that cannot reach the guest: {exc}") from None
        return (True, text, returned)
    except Fault as fault:
        if fault.terminate:
            state.terminate = fault
            # let the guest unwind and report its output, but not keep working
            ffi.wasmtime_context_set_fuel(store._context(), TERMINATE_GRACE_FUEL)
        return (False, _fault_payload(fault) if reached_bridge else _refuse(state, name, fault), returned)
    except Exception as exc:  # noqa: BLE001 - a bridge bug must not crash the guest or the host
        fault = Fault("CapabilityError", f"capability {name!r} failed on the host: {type(exc).__name__}")
        return (False, _fault_payload(fault) if reached_bridge else _refuse(state, name, fault), returned)


def _refuse(state: _RunState | None, name: str, fault: Fault) -> str:
    """The payload of a call refused before it reached the bridge, once the run records it."""
    if state is not None:
        record_refusal(state.job.bridge, name, fault)
    return _fault_payload(fault)


# -- fast paths over the C API ------------------------------------------------------------
#
# wasmtime-py's generic component calls reflect over the function type on every call (about
# 200 µs per host call, 100 µs per export call). Our two signatures are fixed by the WIT world,
# so we lift and lower their values directly. Layouts come from wasmtime's C API (`val.h`).

_K_BOOL = ffi.WASMTIME_COMPONENT_BOOL
_K_STRING = ffi.WASMTIME_COMPONENT_STRING
_K_LIST = ffi.WASMTIME_COMPONENT_LIST
_K_TUPLE = ffi.WASMTIME_COMPONENT_TUPLE
_K_RESOURCE = ffi.WASMTIME_COMPONENT_RESOURCE
_byref = ctypes.byref


def _take_string(val: Any) -> str:
    text = ctypes.string_at(val.of.string.data, val.of.string.size).decode("utf-8")
    ffi.wasm_byte_vec_delete(_byref(val.of.string))
    val.kind = _K_BOOL
    val.of.boolean = False
    return text


def _drop_string(val: Any) -> None:
    ffi.wasm_byte_vec_delete(_byref(val.of.string))
    val.kind = _K_BOOL
    val.of.boolean = False


class _ReportTooLarge(Exception):
    """The guest's report is over the report cap; it was not read."""


def _put_string(val: Any, text: str) -> None:
    data = text.encode("utf-8")
    vec = ffi.wasm_byte_vec_t()
    ffi.wasm_byte_vec_new_uninitialized(_byref(vec), len(data))
    ctypes.memmove(vec.data, data, len(data))
    val.kind = _K_STRING
    val.of.string = vec


def _put_handles(store: Any, val: Any, handles: list) -> None:
    lst = ffi.wasmtime_component_vallist_t()
    ffi.wasmtime_component_vallist_new_uninit(lst, len(handles))
    for i, handle in enumerate(handles):
        lst.data[i].kind = _K_RESOURCE
        lst.data[i].of.resource = handle.to_any(store)._consume()
    val.kind = _K_LIST
    val.of.list = lst


@ffi.wasmtime_component_func_callback_t
def _call_trampoline(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
    """``host.call(name: string, args-json: string, handles: list<secret>)
    -> tuple<bool, string, list<secret>>`` without type reflection."""
    store = StoreContext(context)
    try:
        name = _take_string(args[0])
        state: _RunState | None = getattr(_tls, "state", None)
        size = args[1].of.string.size
        if state is not None and size > _args_cap(state.job.limits):
            state.oversized = size
            _drop_string(args[1])
            args_json = None
        else:
            args_json = _take_string(args[1])
        lst = args[2].of.list
        handles = []
        for i in range(lst.size):
            element = lst.data[i]
            handles.append(ResourceAny._from_ptr(ffi.take_pointer(element.of, "resource")))
            element.kind = _K_BOOL
            element.of.boolean = False
        ffi.wasmtime_component_vallist_delete(_byref(lst))
        args[2].kind = _K_BOOL
        ok, text, returned = _host_call(store, name, args_json, handles)
        tup = ffi.wasmtime_component_valtuple_t()
        ffi.wasmtime_component_valtuple_new_uninit(tup, 3)
        tup.data[0].kind = _K_BOOL
        tup.data[0].of.boolean = bool(ok)
        _put_string(tup.data[1], text)
        _put_handles(store, tup.data[2], returned)
        results[0].kind = _K_TUPLE
        results[0].of.tuple = tup
        return 0
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        error = WasmtimeError(f"sandbox host call failed: {type(exc).__name__}: {exc}")
        return ctypes.cast(error._consume(), ctypes.c_void_p).value
    finally:
        store._invalidate()


@ffi.wasmtime_component_func_callback_t
def _output_trampoline(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
    """``host.output(stderr: bool, text: string)``: keep the text (within the cap) and stream it."""
    try:
        stderr = bool(args[0].of.boolean)
        text = _take_string(args[1])
        state: _RunState | None = getattr(_tls, "state", None)
        if state is not None and state.output is not None:
            state.output.add("stderr" if stderr else "stdout", text)
        return 0
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        error = WasmtimeError(f"sandbox host output failed: {type(exc).__name__}: {exc}")
        return ctypes.cast(error._consume(), ctypes.c_void_p).value


@ctypes.CFUNCTYPE(None, ctypes.c_void_p)
def _no_finalizer(data):  # type: ignore[no-untyped-def]
    return None


def _call_run(store: Store, func: Any, code: str, options: str, handles: list, max_report: int = 1 << 30) -> str:
    """Call the ``run`` export directly (its signature is fixed by the WIT world). A report
    over ``max_report`` bytes raises `_ReportTooLarge` without being decoded."""
    params = (ffi.wasmtime_component_val_t * 3)()
    result = ffi.wasmtime_component_val_t()
    try:
        _put_string(params[0], code)
        _put_string(params[1], options)
        _put_handles(store, params[2], handles)
        error = ffi.wasmtime_component_func_call(_byref(func._func), store._context(), params, 3, _byref(result), 1)
        if error:
            raise WasmtimeError._from_ptr(error)
        if result.kind != _K_STRING.value:
            raise WasmtimeError("the guest's run export returned a non-string")
        if result.of.string.size > max_report:
            size = result.of.string.size
            _drop_string(result)
            raise _ReportTooLarge(f"the guest's report of {size} bytes is over the {max_report}-byte cap")
        return _take_string(result)
    finally:
        for i in range(3):
            ffi.wasmtime_component_val_delete(_byref(params[i]))


class _Spares:
    """A background thread that keeps `SPARES` fresh instances ready and closes used Stores."""

    def __init__(self, rt: "_Runtime", target: int) -> None:
        self._rt = rt
        self._target = target
        self._ready: collections.deque[_Instance] = collections.deque()
        self._garbage: collections.deque[Store] = collections.deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="sandbox-wasi-spares", daemon=True)
            self._thread.start()
        self._cond.notify()

    def stop(self) -> None:
        """Stop refilling (interpreter exit): no instantiation races with finalisation."""
        with self._cond:
            self._target = 0
            self._ready.clear()
            self._cond.notify()

    def take(self) -> "_Instance | None":
        if self._target <= 0:
            return None
        with self._cond:
            inst = self._ready.popleft() if self._ready else None
            self._wake()
        return inst

    def discard(self, store: Store) -> None:
        """Close ``store`` off the caller's critical path."""
        if self._target <= 0:
            store.close()
            return
        with self._cond:
            self._garbage.append(store)
            self._wake()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._target <= 0 and not self._garbage:
                    self._thread = None
                    return
                while not self._garbage and len(self._ready) >= self._target:
                    if not self._cond.wait(timeout=60.0) and not self._garbage and len(self._ready) >= self._target:
                        self._thread = None
                        return
                store = self._garbage.popleft() if self._garbage else None
            if store is not None:
                store.close()
                continue
            try:
                inst = self._rt.new_instance(_SPARE_LIMIT, warm=True)
            except Exception:  # noqa: BLE001 - runs fall back to instantiating themselves
                return
            with self._cond:
                self._ready.append(inst)


_SPARE_LIMIT = Limits().memory_bytes
"""Spares are made with the default memory limit; a run with another limit re-sets it
(``Store.set_limits`` costs ~0.2 ms, so it is skipped when the limit is the same)."""
_WARM_OPTIONS = json.dumps({"capabilities": [], "secrets": [], "inputs": {}, "max_output": 1024, "recursion": 100, "session": False})


def _host_sleep(store: Any, seconds: float) -> None:
    """The ``host.sleep`` import: sleep, but never past the current run's wall deadline."""
    state: _RunState | None = getattr(_tls, "state", None)
    if state is None:
        return None
    remaining = state.deadline - time.monotonic()
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return None
    if seconds != seconds or seconds <= 0:
        return None
    if seconds < remaining:
        if not state.wake.wait(seconds):
            return None
    else:
        state.wake.wait(max(0.0, remaining))
    # the run is over (deadline or cancel): make the guest trap at its next epoch check, where
    # `_on_epoch_deadline` says why, as if it had been running all along
    ffi.wasmtime_context_set_epoch_deadline(store._context(), 0)
    return None


# -- WASI clock waits ------------------------------------------------------------------------
#
# `wasi:clocks/monotonic-clock` `subscribe-duration` / `subscribe-instant` return a pollable that
# `wasi:io/poll.poll` then waits on inside Wasmtime's host code, where neither fuel nor the
# epoch deadline can interrupt it. The guest app routes `time.sleep` / `select.select` to
# `host.sleep` instead, but guest code can reach CPython's original C functions (re-create the
# builtin `time` module, or keep a reference), so the host shadows the whole monotonic-clock
# instance: `now` and `resolution` are the host's monotonic clock, and both subscriptions are
# refused with a trap, which ends the run. A pollable cannot be made ready from here (the
# resource belongs to Wasmtime's WASI), so there is no way to let a bounded wait through.
#
# A refused wait that would have ended at or past the run's deadline first waits out the
# remaining wall time, then ends as `limit_exceeded` / `wall`: the same result, at the same
# moment, as the rerouted `time.sleep`. A shorter one ends the run at once as
# `guest_exception` / `WasiCallRefused`. Nothing else in the guest's WASI can block: stdin is
# closed, stdout/stderr are sinks, there are no preopens, sockets and name lookups are refused
# before they start, so every other pollable is ready at once.

MONOTONIC_CLOCK = "wasi:clocks/monotonic-clock@"
_CLOCK_ORIGIN_NS = time.monotonic_ns()
"""The guest's monotonic clock counts from here (process start), not from host boot."""
_K_U64 = ffi.WASMTIME_COMPONENT_U64
_monotonic_ns = time.monotonic_ns


@ffi.wasmtime_component_func_callback_t
def _clock_now(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
    """``monotonic-clock.now: func() -> instant`` (nanoseconds, u64)."""
    results[0].kind = _K_U64
    results[0].of.u64 = _monotonic_ns() - _CLOCK_ORIGIN_NS
    return 0


@ffi.wasmtime_component_func_callback_t
def _clock_resolution(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
    """``monotonic-clock.resolution: func() -> duration``: 1 ns."""
    results[0].kind = _K_U64
    results[0].of.u64 = 1
    return 0


def _refuse_clock_wait(call: str, end_ns: int | None) -> int:
    """Record the refusal on the run, wait out the deadline if the wait would pass it, trap."""
    try:
        state: _RunState | None = getattr(_tls, "state", None)
        if state is not None and state.refused is None:
            state.refused = call
            if end_ns is None or end_ns / 1e9 >= state.deadline:
                state.refused_past_deadline = True
                remaining = state.deadline - time.monotonic()
                if remaining > 0:
                    state.wake.wait(remaining)
    except BaseException:  # noqa: BLE001 - never unwind into C; the trap below still happens
        pass
    error = WasmtimeError(f"sandbox: the host refused {call} (a WASI clock wait it could not interrupt)")
    return ctypes.cast(error._consume(), ctypes.c_void_p).value or 0


def _clock_waiter(call: str, absolute: bool) -> Any:
    @ffi.wasmtime_component_func_callback_t
    def refuse(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
        end_ns = None
        try:
            value = int(args[0].of.u64) if nargs >= 1 and args[0].kind == _K_U64.value else None
            if value is not None:
                end_ns = value + _CLOCK_ORIGIN_NS if absolute else _monotonic_ns() + value
        except BaseException:  # noqa: BLE001
            end_ns = None
        return _refuse_clock_wait(call, end_ns)

    return refuse


def _define_clock(root: Any, name: str) -> None:
    """Shadow ``name`` (the guest's monotonic-clock import) with the host's own functions."""
    with root.add_instance(name) as clock:
        for func, callback in (
            ("now", _clock_now),
            ("resolution", _clock_resolution),
            ("subscribe-duration", _clock_waiter(f"{name}#subscribe-duration", absolute=False)),
            ("subscribe-instant", _clock_waiter(f"{name}#subscribe-instant", absolute=True)),
        ):
            _CALLBACKS.append(callback)
            raw = func.encode()
            error = ffi.wasmtime_component_linker_instance_add_func(
                clock.ptr(), ctypes.create_string_buffer(raw), len(raw), callback, None, _no_finalizer
            )
            if error:
                raise WasmtimeError._from_ptr(error)


_CALLBACKS: list = []
"""Keeps the ctypes callbacks handed to the linker alive."""


_EPOCH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_size_t, ctypes.POINTER(ffi.wasmtime_context_t), ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64),
    ctypes.POINTER(ffi.wasmtime_update_deadline_kind_t),
)


@_EPOCH_CALLBACK
def _on_epoch_deadline(context, data, delta, kind):  # type: ignore[no-untyped-def]
    """Wasmtime calls this on the thread running a Store when its epoch deadline passes.

    During a run: trap when the job's deadline has passed or the run was cancelled (noting
    which on the run state), else continue for one more tick. Outside a run (start-up,
    warm-up): trap, as a plain epoch deadline would.
    """
    try:
        state: _RunState | None = getattr(_tls, "state", None)
        if state is not None and state.stop is None:
            if state.job.control.cancelled:
                state.stop = "cancelled"
            elif time.monotonic() >= state.deadline:
                state.stop = "wall"
            else:
                delta[0] = 1
                kind[0] = 0  # WASMTIME_UPDATE_DEADLINE_CONTINUE
                return 0
    except BaseException:  # noqa: BLE001 - never unwind into C; trapping is the safe answer
        pass
    error = WasmtimeError("sandbox: interrupt (the run's deadline passed or it was cancelled)")
    return ctypes.cast(error._consume(), ctypes.c_void_p).value or 0


class _Runtime:
    """Engine + compiled guest + Linker, shared by every driver in the process."""

    def __init__(self) -> None:
        self.engine = make_engine()
        self.trap_handlers = TrapHandlers()
        self.trap_handlers.capture()  # the Engine has just installed them
        self.component: Component = load_component(self.engine)
        self.linker = Linker(self.engine)
        self.linker.add_wasip2()
        clocks = [name for name in self.component.type.imports(self.engine) if name.startswith(MONOTONIC_CLOCK)]
        self.linker.allow_shadowing = True  # replace WASI's monotonic clock (see `_refuse_clock_wait`)
        with self.linker.root() as root:
            for name in clocks:
                _define_clock(root, name)
            with root.add_instance(INTERFACE) as host:
                host.add_resource("secret", ResourceType.host(SECRET_TYPE), _drop_secret)
                for name, trampoline in ((b"call", _call_trampoline), (b"output", _output_trampoline)):
                    error = ffi.wasmtime_component_linker_instance_add_func(
                        host.ptr(), ctypes.create_string_buffer(name), len(name), trampoline, None, _no_finalizer
                    )
                    if error:
                        raise WasmtimeError._from_ptr(error)
                host.add_func("sleep", _host_sleep)
        self.linker.allow_shadowing = False
        index = self.component.get_export_index("run")
        if index is None:
            raise WasiBuildError("the cached wasi guest has no `run` export; rebuild it with `python -m sandbox.wasi_build --force`")
        self.run_index = index
        self.ticker = _Ticker(self.engine, TICK_SECONDS)
        self.spares = _Spares(self, int(os.environ.get("SANDBOX_WASI_SPARES", SPARES)))

    def new_instance(self, memory_limit: int, *, warm: bool = False) -> "_Instance":
        """A fresh Store and guest instance (start-up fuel allowance, no deadline pressure).

        With ``warm``, the guest's runner then runs an empty program once (our code, no user
        input, nothing kept: each run builds new globals and reseeds ``random``), so that the
        pages the runner writes are already copied when the real run comes; that is most of a
        fresh run's cost (copy-on-write faults on the pre-initialised heap), now paid off the
        critical path. The fuel it burns is start-up fuel, not the user's.

        Raises `WasmtimeError` when the guest cannot start (e.g. the memory limit is too low).
        """
        self.trap_handlers.ensure()
        store = Store(self.engine)
        ffi.wasmtime_store_epoch_deadline_callback(store.ptr(), _on_epoch_deadline, None, _no_finalizer)
        store.set_limits(memory_size=memory_limit)
        store.set_wasi(WasiConfig())  # nothing inherited, nothing preopened, no network
        store.set_epoch_deadline(_deadline_ticks(60.0))
        store.set_fuel(STARTUP_FUEL)
        try:
            instance = self.linker.instantiate(store, self.component)
        except BaseException:
            store.close()
            raise
        func = instance.get_func(store, self.run_index)
        if warm:
            try:
                _call_run(store, func, "pass", _WARM_OPTIONS, [])
            except BaseException:
                store.close()
                raise
        startup = STARTUP_FUEL - store.get_fuel()
        return _Instance(store, instance, func, startup, memory_limit)


def _drop_secret(store: Any, rep: int) -> None:
    return None


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = _Runtime()
                atexit.register(_runtime.spares.stop)
    return _runtime


def _deadline_ticks(wall_seconds: float) -> int:
    return max(1, math.ceil(wall_seconds / TICK_SECONDS)) + 1


def _options(job: Job, *, session: bool) -> str:
    return json.dumps(
        {
            "capabilities": list(job.capabilities),
            "secrets": [[spec.name, spec.description] for spec in job.secrets],
            "inputs": wire.encode(dict(job.inputs)),
            "max_output": job.limits.max_output_bytes,
            "max_value": job.limits.max_value_bytes,
            "recursion": job.limits.max_recursion_depth,
            "session": session,
        }
    )


_LAYERS = ("wasm", "wasi-no-ambient", "fuel", "epoch-deadline", "store-memory-limit")


_KINDS = typing.get_args(ErrorKind)


def _terminate_error(fault: Fault) -> ErrorInfo:
    """The error a terminating capability fault ends the run with (whatever the guest did)."""
    if fault.terminate == "limit_exceeded":
        return limit_error("value", fault.message)
    kind = fault.terminate if fault.terminate in _KINDS else "policy_denied"
    return ErrorInfo(kind=kind, type=fault.guest_type, message=fault.message)  # type: ignore[arg-type]


_ALLOC_FAILURE_FRAMES = ("!std::alloc::rust_oom", "!__rustc::__rust_alloc_error_handler", "!alloc::alloc::handle_alloc_error")
"""Backtrace frames of the abort the guest's Rust runtime (componentize-py) takes when an
allocation fails."""


def _trap_cause(text: str) -> str:
    """The reason line of a wasmtime trap ("wasm trap: ..."), without the backtrace."""
    if "Caused by:" in text:  # "error while executing at wasm backtrace: ... Caused by: <why>"
        causes = [line.strip().split(": ", 1)[-1] if line.strip()[:1].isdigit() else line.strip()
                  for line in text.rsplit("Caused by:", 1)[1].splitlines() if line.strip()]
        if causes:
            return causes[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("wasm trap:") or "trap" in line and not line[0].isdigit():
            return line
    return lines[0] if lines else "trap"


@dataclass
class _Instance:
    store: Store
    instance: Any
    func: Any
    startup_fuel: int
    memory_limit: int
    poisoned: bool = False


class WasiDriver:
    """The ``wasi`` runtime. One instance serves many runs, from several threads at once."""

    name = "wasi"
    isolation = "wasm"
    layers = _LAYERS

    def __init__(self, *, fuel_per_cpu_second: int = FUEL_PER_CPU_SECOND) -> None:
        self.fuel_per_cpu_second = fuel_per_cpu_second
        _get_runtime()  # build or load the guest now: a missing toolchain fails here, clearly

    # -- instances -------------------------------------------------------------------------

    def _instantiate(self, rt: _Runtime, limits: Limits, *, spare: bool = True) -> _Instance | ErrorInfo:
        inst = rt.spares.take() if spare and limits.memory_bytes >= SPARE_MIN_MEMORY else None
        if inst is not None:
            if inst.memory_limit != limits.memory_bytes:
                inst.store.set_limits(memory_size=limits.memory_bytes)
                inst.memory_limit = limits.memory_bytes
            return inst
        try:
            return rt.new_instance(limits.memory_bytes)
        except WasmtimeError as exc:
            text = str(exc)
            if "memory" in text and ("limit" in text or "minimum" in text):
                return limit_error("memory", f"memory limit {limits.memory_bytes} bytes is below what the interpreter needs to start")
            if "fuel" in text:
                return ErrorInfo(kind="internal", type="InternalError", message="guest start-up exceeded its fuel allowance")
            raise

    def _call(self, rt: _Runtime, inst: _Instance, job: Job, *, session: bool) -> Outcome:
        rt.trap_handlers.ensure()
        limits = job.limits
        budget = max(1, int(limits.cpu_seconds * self.fuel_per_cpu_second))
        store = inst.store
        store.set_fuel(budget)
        store.set_epoch_deadline(1)  # then every tick, `_on_epoch_deadline` decides
        tokens: dict[int, str] = {}
        handles = []
        for spec in job.secrets:
            rep = next(_reps)
            tokens[rep] = spec.token
            handles.append(ResourceHost.own(rep, SECRET_TYPE))
        state = _RunState(job=job, tokens=tokens, deadline=job.control.deadline, output=StreamedOutput(job))
        options = _options(job, session=session)
        previous = getattr(_tls, "state", None)
        _tls.state = state
        unregister = job.control.on_cancel(state.wake.set)
        started_wall = time.monotonic()
        started_cpu = time.thread_time()
        trap: WasmtimeError | None = None
        text = None
        oversized: _ReportTooLarge | None = None
        try:
            text = _call_run(store, inst.func, job.code, options, handles,
                             wire.report_bytes(limits.max_value_bytes, limits.max_output_bytes))
        except WasmtimeError as exc:
            trap = exc
        except _ReportTooLarge as exc:
            oversized = exc
        finally:
            unregister()
            _tls.state = previous
            _retire(tokens)
            cpu = time.thread_time() - started_cpu
            wall = time.monotonic() - started_wall
        try:
            remaining = store.get_fuel()
        except WasmtimeError:
            remaining = 0
        output = state.output
        if trap is not None:
            inst.poisoned = True
            error = self._classify(trap, state, limits, remaining, wall)
            return output.attach(Outcome(ok=False, error=error, cpu_seconds=cpu, layers=_LAYERS))
        if oversized is not None:
            inst.poisoned = True  # the guest broke the report protocol: do not reuse its state
            return output.attach(Outcome(ok=False, error=limit_error("value", str(oversized)), cpu_seconds=cpu,
                                         layers=_LAYERS))
        return output.attach(self._outcome(text, state, limits, cpu))

    def _classify(self, trap: WasmtimeError, state: _RunState, limits: Limits, remaining: int, wall: float) -> ErrorInfo:
        text = str(trap)
        if state.stop == "cancelled":
            return ErrorInfo(kind="cancelled", type="Cancelled", message="the run was cancelled by the host")
        if state.terminate is not None:
            return _terminate_error(state.terminate)
        if state.stop == "wall":
            return limit_error("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded")
        if state.refused is not None:
            if state.refused_past_deadline:
                return limit_error("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded (waiting in {state.refused})")
            return ErrorInfo(
                kind="guest_exception",
                type="WasiCallRefused",
                message=f"{state.refused} is refused: a WASI clock wait blocks where the wall-clock limit cannot stop it; "
                "use time.sleep or select.select",
            )
        if remaining == 0 or "all fuel consumed" in text:
            return limit_error("cpu", f"CPU limit of {limits.cpu_seconds:g} s exceeded")
        if "interrupt" in text:
            return limit_error("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded")
        if "stack" in text and ("overflow" in text or "exhausted" in text):
            return limit_error("recursion", "call stack exhausted (recursion too deep)")
        if wall >= limits.wall_seconds:
            return limit_error("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded")
        cause = _trap_cause(text)
        if "unreachable" in cause and any(frame in text for frame in _ALLOC_FAILURE_FRAMES):
            # the guest's Rust runtime aborts when an allocation fails: the memory is full.
            # (Wasmtime's component API does not expose the guest's memory, so the host cannot
            # compare its size with the limit; the abort path in the backtrace is the evidence.)
            return limit_error("memory", f"the guest runtime ran out of memory (memory limit {limits.memory_bytes} bytes)")
        if "out of bounds" in text or "memory" in cause:
            return limit_error("memory", f"the guest interpreter stopped: {cause} (memory limit {limits.memory_bytes} bytes)")
        # `unreachable`: the interpreter or its runtime aborted (e.g. a made-up resource handle)
        return ErrorInfo(kind="guest_exception", type="GuestCrash", message=f"the guest interpreter aborted: {cause}")

    def _outcome(self, text: str | None, state: _RunState, limits: Limits, cpu: float) -> Outcome:
        try:
            cap = wire.report_bytes(limits.max_value_bytes, limits.max_output_bytes)
            data = wire.loads_bounded(text, max_bytes=cap) if isinstance(text, str) else None
            if not isinstance(data, dict):
                raise ValueError("not an object")
            error = data.get("error")
            error_info = ErrorInfo.model_validate(error) if error is not None else None
        except wire.ValueTooLarge as exc:
            return Outcome(ok=False, error=limit_error("value", f"the guest's report: {exc}"), cpu_seconds=cpu,
                           layers=_LAYERS)
        except (ValueError, TypeError) as exc:
            return internal_error(f"the wasi guest returned a malformed outcome: {exc}")
        if state.terminate is not None:
            error_info = _terminate_error(state.terminate)
        return Outcome(
            ok=error_info is None,
            value=data.get("value") if error_info is None else None,
            output_truncated=bool(data.get("output_truncated")),
            error=error_info,
            cpu_seconds=cpu,
            peak_memory_bytes=None,
            layers=_LAYERS,
        )

    # -- Driver protocol ---------------------------------------------------------------------

    def run(self, job: Job) -> Outcome:
        """Run ``job`` in a fresh Store and a fresh instance of the guest."""
        rt = _get_runtime()
        rt.ticker.enter()
        try:
            inst = self._instantiate(rt, job.limits)
            if isinstance(inst, ErrorInfo):
                return Outcome(ok=False, error=inst)
            try:
                return self._call(rt, inst, job, session=False)
            finally:
                rt.spares.discard(inst.store)
        except WasmtimeError as exc:
            return internal_error(f"wasmtime failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
        finally:
            rt.ticker.exit()

    def open_session(self) -> "WasiSession":
        return WasiSession(self)

    def close(self) -> None:
        """Nothing to release per driver: the engine, compiled component and spare instances are
        shared by every driver in the process."""

    # -- diagnostics ---------------------------------------------------------------------------

    def startup_fuel(self, limits: Limits | None = None) -> int:
        """Fuel the guest's start-up (instantiation) consumed, for benchmarks and tests."""
        rt = _get_runtime()
        inst = self._instantiate(rt, limits or Limits(), spare=False)
        assert not isinstance(inst, ErrorInfo)
        try:
            return inst.startup_fuel
        finally:
            inst.store.close()


class WasiSession:
    """One guest instance reused across runs, so globals persist. Runs are serialised.

    When a run traps (a CPU, wall or memory limit), the instance cannot be trusted any more:
    the next run starts a fresh one, and its globals are gone.
    """

    def __init__(self, driver: WasiDriver) -> None:
        self._driver = driver
        self._lock = threading.Lock()
        self._inst: _Instance | None = None
        self._closed = False

    def run(self, job: Job) -> Outcome:
        with self._lock:
            if self._closed:
                return internal_error("the session is closed")
            rt = _get_runtime()
            rt.ticker.enter()
            try:
                reset = False
                if self._inst is not None and self._inst.poisoned:
                    self._inst.store.close()
                    self._inst = None
                    reset = True
                if self._inst is None:
                    inst = self._driver._instantiate(rt, job.limits)
                    if isinstance(inst, ErrorInfo):
                        return Outcome(ok=False, error=inst)
                    self._inst = inst
                if job.limits.memory_bytes != self._inst.memory_limit:
                    self._inst.store.set_limits(memory_size=job.limits.memory_bytes)
                    self._inst.memory_limit = job.limits.memory_bytes
                outcome = self._driver._call(rt, self._inst, job, session=True)
                return outcome.model_copy(update={"session_reset": True}) if reset else outcome
            except WasmtimeError as exc:
                if self._inst is not None:
                    self._inst.poisoned = True
                return internal_error(f"wasmtime failed: {exc}")
            finally:
                rt.ticker.exit()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._inst is not None:
                self._inst.store.close()
                self._inst = None
