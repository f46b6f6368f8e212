"""Lifting and lowering the values of the guest's fixed WIT signatures.

wasmtime-py's generic component calls reflect over the function type on every call (about
200 µs per host call, 100 µs per export call). Our signatures are fixed by the WIT world
(``runtimes/wasi/wit/world.wit``), so the host functions here read their arguments and write
their results directly (through `sandbox.wasi._ffi`), and `call_run` calls the ``run`` export
the same way. The host-side meaning of each call lives in `sandbox.wasi._host`.
"""

from __future__ import annotations

import json
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime.component import ResourceHost

from runtimes import wire
from sandbox.runtime import Job
from sandbox.wasi import _ffi
from sandbox.wasi._host import RunState, args_cap, host_call, tls


class ReportTooLarge(Exception):
    """The guest's report is over the report cap; it was not read."""


@_ffi.host_function
def call_trampoline(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
    """``host.call(name: string, args-json: string, handles: list<secret>)
    -> tuple<bool, string, list<secret>>`` without type reflection. Arguments over the size cap
    are dropped unread (`host_call` then ends the run on limit ``value``)."""
    store = _ffi.store_context(context)
    try:
        name = _ffi.take_string(args[0])
        state: RunState | None = getattr(tls, "state", None)
        size = _ffi.string_size(args[1])
        if state is not None and size > args_cap(state.job.limits):
            state.oversized = size
            _ffi.drop_string(args[1])
            args_json = None
        else:
            args_json = _ffi.take_string(args[1])
        handles = _ffi.take_resources(args[2])
        ok, text, returned = host_call(store, name, args_json, handles)

        def fill(values: Any) -> None:
            _ffi.put_bool(values[0], ok)
            _ffi.put_string(values[1], text)
            _ffi.put_resources(store, values[2], returned)

        _ffi.put_tuple(results[0], fill, 3)
        return 0
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        return _ffi.trap(f"sandbox host call failed: {type(exc).__name__}: {exc}")
    finally:
        _ffi.release(store)


@_ffi.host_function
def output_trampoline(data, context, ty, args, nargs, results, nresults):  # type: ignore[no-untyped-def]
    """``host.output(stderr: bool, text: string)``: keep the text (within the cap) and stream it."""
    try:
        stderr = _ffi.get_bool(args[0])
        text = _ffi.take_string(args[1])
        state: RunState | None = getattr(tls, "state", None)
        if state is not None and state.output is not None:
            state.output.add("stderr" if stderr else "stdout", text)
        return 0
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        return _ffi.trap(f"sandbox host output failed: {type(exc).__name__}: {exc}")


def call_run(store: Store, func: Any, code: str, options: str, handles: list[ResourceHost], max_report: int = 1 << 30) -> str:
    """Call the ``run`` export directly. A report over ``max_report`` bytes raises
    `ReportTooLarge` without being decoded; a trap raises `WasmtimeError`."""
    params = _ffi.new_values(3)
    result = _ffi.new_value()
    try:
        _ffi.put_string(params[0], code)
        _ffi.put_string(params[1], options)
        _ffi.put_resources(store, params[2], handles)
        _ffi.call(store, func, params, 3, result)
        if not _ffi.is_string(result):
            raise WasmtimeError("the guest's run export returned a non-string")
        size = _ffi.string_size(result)
        if size > max_report:
            _ffi.drop_string(result)
            raise ReportTooLarge(f"the guest's report of {size} bytes is over the {max_report}-byte cap")
        return _ffi.take_string(result)
    finally:
        for i in range(3):
            _ffi.delete_value(params[i])


def run_options(job: Job, *, session: bool) -> str:
    """The ``options-json`` argument of ``run`` for ``job``."""
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


WARM_OPTIONS = json.dumps({"capabilities": [], "secrets": [], "inputs": {}, "max_output": 1024, "recursion": 100, "session": False})
"""Options of the empty program a spare runs once to warm up (see `sandbox.wasi._engine`)."""
