"""Lifting and lowering the values of the guest's fixed WIT signatures.

wasmtime-py's generic component calls reflect over the function type on every call (about
200 µs per host call, 100 µs per export call). Our signatures are fixed by the WIT world
(``runtimes/wasi/wit/world.wit``), so the host functions here read their arguments and write
their results directly (through `sandbox.wasi._ffi`), and `call_run` calls the ``run`` export
the same way. The host-side meaning of each call lives in `sandbox.wasi._host`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from wasmtime import Store, WasmtimeError
from wasmtime.component import ResourceHost

from runtimes import wire
from sandbox.runtime import Job
from sandbox.capabilities import MAX_NAME_LENGTH
from sandbox.wasi import _ffi
from sandbox.wasi._host import RunState, args_cap, host_call, tls

_cabi: Any
try:
    from sandbox.wasi import _cabi
except ImportError:  # not built (pip install -e . / make setup builds it): `call_trampoline` serves
    _cabi = None


class ReportTooLarge(Exception):
    """The guest's report is over the report cap; it was not read."""


_MAX_NAME_BYTES = MAX_NAME_LENGTH + 1
"""A call's name is read no further: a longer name is no capability's (the call is refused),
so it is never decoded whole on the host."""


def _over_cap(size: int) -> bool:
    """Whether arguments of ``size`` bytes are over the current run's cap; if so the run notes
    it, the arguments are dropped unread and `host_call` gets None (and ends the run on limit
    ``value``)."""
    state: RunState | None = getattr(tls, "state", None)
    if state is not None and size > args_cap(state.job.limits):
        state.oversized = size
        return True
    return False


def _take_args(args: Any) -> tuple[str, str | None]:
    """The capability name and arguments text of a call (None: over the size cap, unread)."""
    name = _ffi.take_string(args[0], _MAX_NAME_BYTES)
    if _over_cap(_ffi.string_size(args[1])):
        _ffi.drop_string(args[1])
        return name, None
    return name, _ffi.take_string(args[1])


def _native_call(context: int, name: str, args: Any) -> str | int:
    """``host.call`` for the C trampoline of `sandbox.wasi._cabi`, which has decoded the
    name (within `_MAX_NAME_BYTES`) and lends the arguments (``size``, ``text()``). Returns what
    `call_trampoline` gives: the result's JSON, or ``!`` and a fault's; or a trap (an
    `_ffi.trap` error) when the host side itself failed."""
    store = _ffi.CallContext(context)
    try:
        ok, text, _ = host_call(store, name, None if _over_cap(args.size) else args.text(), ())
        return text if ok else "!" + text
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        return _ffi.trap(f"sandbox host call failed: {type(exc).__name__}: {exc}")
    finally:
        _ffi.release(store)


@_ffi.host_function
def call_trampoline(data, context, ty, args, nargs, results, nresults):
    """``host.call(name: string, args-json: string) -> string``: the result's JSON, or ``!``
    and a fault's."""
    store = _ffi.store_context(context)
    try:
        name, args_json = _take_args(args)
        ok, text, _ = host_call(store, name, args_json, ())
        _ffi.put_string(results[0], text if ok else "!" + text)
        return 0
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        return _ffi.trap(f"sandbox host call failed: {type(exc).__name__}: {exc}")
    finally:
        _ffi.release(store)


host_call_function: Any = call_trampoline
"""What the linker defines as ``host.call``: the C trampoline when built, else `call_trampoline`."""
if _cabi is not None:
    try:
        host_call_function = _ffi.NativeHostFunction(_cabi, _native_call, _MAX_NAME_BYTES)
    except (TypeError, ValueError) as exc:  # built from another version of _cabi.c, or for another wasmtime
        logging.getLogger("sandbox.wasi").warning(
            "sandbox: the built sandbox/wasi/_cabi extension does not fit this checkout (%s); wasi calls go "
            "through ctypes instead (slower): rebuild it (pip install -e . or make setup)", exc)
        _cabi = None


@_ffi.host_function
def call_with_handles_trampoline(data, context, ty, args, nargs, results, nresults):
    """``host.call-with-handles(name: string, args-json: string, handles: list<secret>)
    -> tuple<bool, string, list<secret>>``."""
    store = _ffi.store_context(context)
    try:
        name, args_json = _take_args(args)
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
def output_trampoline(data, context, ty, args, nargs, results, nresults):
    """``host.output(stderr: bool, text: string)``: keep the text (within the cap) and stream it."""
    try:
        stderr = _ffi.get_bool(args[0])
        state: RunState | None = getattr(tls, "state", None)
        output = state.output if state is not None else None
        room = output.room if output is not None else 0
        cut = _ffi.string_size(args[1]) > room
        text = _ffi.take_string(args[1], room)  # past the room the output is dropped anyway
        if output is not None:
            output.add("stderr" if stderr else "stdout", text, cut=cut)
        return 0
    except BaseException as exc:  # noqa: BLE001 - becomes a trap; never unwinds into C
        return _ffi.trap(f"sandbox host output failed: {type(exc).__name__}: {exc}")


def call_run(store: Store, func: Any, code: str, options: _ffi.StaticString, inputs: str | _ffi.StaticString,
             handles: list[ResourceHost], max_report: int = 1 << 30, fuel: int | None = None) -> str:
    """Call the ``run`` export directly, first giving the store ``fuel`` and an epoch deadline
    of one tick when ``fuel`` is given. A report over ``max_report`` bytes raises
    `ReportTooLarge` without being decoded; a trap raises `WasmtimeError`.

    ``options`` (and ``inputs`` when it is a `StaticString`) are lent to the call, not copied
    into values of their own: Wasmtime only reads a call's arguments. Without handles the call
    is made by `sandbox.wasi._cabi` when it is built."""
    if _cabi is not None and not handles:
        kind, payload = _cabi.call_run(*_ffi.native_run_arguments(store, func), code, options.address,
                                       inputs if isinstance(inputs, str) else inputs.address,
                                       _ffi.EMPTY_LIST_ADDRESS, max_report, -1 if fuel is None else fuel)
        if kind == 0:
            return payload
        if kind == 1:
            raise ReportTooLarge(f"the guest's report of {payload} bytes is over the {max_report}-byte cap")
        if kind == 2:
            raise _ffi.error_at(payload)
        raise WasmtimeError("the guest's run export returned a non-string")
    if fuel is not None:
        store.set_fuel(fuel)
        store.set_epoch_deadline(1)
    params = _ffi.new_values(4)
    result = _ffi.new_value()
    owned = [0]
    try:
        _ffi.put_string(params[0], code)
        _ffi.put_static(params[1], options)
        if isinstance(inputs, str):
            _ffi.put_string(params[2], inputs)
            owned.append(2)
        else:
            _ffi.put_static(params[2], inputs)
        if handles:
            _ffi.put_resources(store, params[3], handles)
            owned.append(3)
        else:
            _ffi.put_empty_list(params[3])
        _ffi.call(store, func, params, 4, result)
        if not _ffi.is_string(result):
            raise WasmtimeError("the guest's run export returned a non-string")
        size = _ffi.string_size(result)
        if size > max_report:
            _ffi.drop_string(result)
            raise ReportTooLarge(f"the guest's report of {size} bytes is over the {max_report}-byte cap")
        return _ffi.take_string(result)
    finally:
        for i in owned:
            _ffi.delete_value(params[i])


_OPTIONS_CACHE: dict[tuple, _ffi.StaticString] = {}
_OPTIONS_CACHE_MAX = 256
NO_INPUTS = _ffi.StaticString("{}")


def run_options(job: Job, *, session: bool) -> _ffi.StaticString:
    """The ``options-json`` argument of ``run`` for ``job``: the same text for every run of one
    configuration (the guest parses a text it has seen once only)."""
    limits = job.limits
    secrets = tuple((spec.name, spec.description) for spec in job.secrets) if job.secrets else ()
    key = (job.capabilities, secrets, limits.max_output_bytes, limits.max_value_bytes,
           limits.max_recursion_depth, session)
    text = _OPTIONS_CACHE.get(key)
    if text is None:
        text = _ffi.StaticString(json.dumps(
            {
                "capabilities": list(job.capabilities),
                "secrets": [list(pair) for pair in secrets],
                "max_output": limits.max_output_bytes,
                "max_value": limits.max_value_bytes,
                "recursion": limits.max_recursion_depth,
                "session": session,
            }
        ))
        if len(_OPTIONS_CACHE) >= _OPTIONS_CACHE_MAX:
            _OPTIONS_CACHE.clear()
        _OPTIONS_CACHE[key] = text
    return text


def run_inputs(job: Job) -> str | _ffi.StaticString:
    """The ``inputs-json`` argument of ``run``: the wire JSON object of the job's inputs."""
    if not job.inputs:
        return NO_INPUTS
    return json.dumps(wire.encode(dict(job.inputs)))


WARM_INPUTS = _ffi.StaticString("")
"""The ``inputs-json`` that marks the host's warm-up of a fresh instance (see `sandbox.wasi._engine`)."""
FIRST_WARM_OPTIONS = _ffi.StaticString(json.dumps({"capabilities": [], "secrets": [], "max_output": 1024, "recursion": 100,
                                                   "session": False}))
"""The options a spare is warmed up with before any fresh run has shown the ones to expect."""
