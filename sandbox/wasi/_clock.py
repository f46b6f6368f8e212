"""The guest's monotonic clock, shadowed by the host's: readings, and refused waits.

`wasi:clocks/monotonic-clock` `subscribe-duration` / `subscribe-instant` return a pollable that
`wasi:io/poll.poll` then waits on inside Wasmtime's host code, where neither fuel nor the epoch
deadline can interrupt it. The guest app routes `time.sleep` / `select.select` to `host.sleep`
instead, but guest code can reach CPython's original C functions (re-create the builtin `time`
module, or keep a reference), so the host shadows the whole monotonic-clock instance (`define`):
`now` and `resolution` are the host's monotonic clock (counted from when this module was
imported, 1 ns resolution), and both subscriptions are refused with a trap, which ends the run.
A pollable cannot be made ready from here (the resource belongs to Wasmtime's WASI), so there is
no way to let a bounded wait through.

A refused wait that would have ended at or past the run's deadline first waits out the
remaining wall time, then ends as `limit_exceeded` / `wall`: the same result, at the same
moment, as the rerouted `time.sleep`. A shorter one ends the run at once as
`guest_exception` / `WasiCallRefused`. Nothing else in the guest's WASI can block: stdin is
closed, stdout/stderr are sinks, there are no preopens, sockets and name lookups are refused
before they start, so every other pollable is ready at once.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox.wasi import _ffi
from sandbox.wasi._host import RunState, tls

MONOTONIC_CLOCK = "wasi:clocks/monotonic-clock@"
"""Prefix of the guest's monotonic-clock import names (any version is shadowed)."""
_CLOCK_ORIGIN_NS = time.monotonic_ns()
"""The guest's monotonic clock counts from here (process start), not from host boot."""
_monotonic_ns = time.monotonic_ns


@_ffi.host_function
def _clock_now(data, context, ty, args, nargs, results, nresults):
    """``monotonic-clock.now: func() -> instant`` (nanoseconds, u64)."""
    _ffi.put_u64(results[0], _monotonic_ns() - _CLOCK_ORIGIN_NS)
    return 0


@_ffi.host_function
def _clock_resolution(data, context, ty, args, nargs, results, nresults):
    """``monotonic-clock.resolution: func() -> duration``: 1 ns."""
    _ffi.put_u64(results[0], 1)
    return 0


def _refuse_clock_wait(call: str, end_ns: int | None) -> int:
    """Record the refusal on the run, wait out the deadline if the wait would pass it, trap."""
    try:
        state: RunState | None = getattr(tls, "state", None)
        if state is not None and state.refused is None:
            state.refused = call
            if end_ns is None or end_ns / 1e9 >= state.deadline:
                state.refused_past_deadline = True
                remaining = state.deadline - time.monotonic()
                if remaining > 0:
                    state.wait(remaining)
    except BaseException:  # noqa: BLE001 - never unwind into C; the trap below still happens
        pass
    return _ffi.trap(f"sandbox: the host refused {call} (a WASI clock wait it could not interrupt)")


def _clock_waiter(call: str, absolute: bool) -> Any:
    @_ffi.host_function
    def refuse(data, context, ty, args, nargs, results, nresults):
        end_ns = None
        try:
            value = _ffi.get_u64(args[0]) if nargs >= 1 else None
            if value is not None:
                end_ns = value + _CLOCK_ORIGIN_NS if absolute else _monotonic_ns() + value
        except BaseException:  # noqa: BLE001
            end_ns = None
        return _refuse_clock_wait(call, end_ns)

    return refuse


_CALLBACKS: list[Any] = []
"""Keeps the ctypes callbacks handed to linkers alive."""


def define(root: Any, name: str) -> None:
    """Shadow ``name`` (the guest's monotonic-clock import) in the linker instance ``root``
    with the host's own functions."""
    with root.add_instance(name) as clock:
        for func, callback in (
            ("now", _clock_now),
            ("resolution", _clock_resolution),
            ("subscribe-duration", _clock_waiter(f"{name}#subscribe-duration", absolute=False)),
            ("subscribe-instant", _clock_waiter(f"{name}#subscribe-instant", absolute=True)),
        ):
            _CALLBACKS.append(callback)
            _ffi.add_function(clock, func, callback)
