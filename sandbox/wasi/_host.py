"""The host side of the guest's ``sandbox:guest/host`` imports: the run state the host
functions see, capability calls, secret handles, and ``host.sleep``.

The run executing on a thread is `tls.state` (a `RunState`); host functions read it, so one
Linker serves every Store. Secret handles are WIT resources owned by the guest's resource table:
the guest cannot mint one, only pass the ones it was given, and the host maps a handle's
representation back to the token for the current run only (`token_of`); handles of finished
runs map to their revoked tokens, which the secrets broker refuses by name.
"""

from __future__ import annotations

import collections
import itertools
import json
import math
import threading
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

from wasmtime.component import ResourceHost

from runtimes import wire
from runtimes.wire import SECRET_MARKER, Fault
from sandbox.limits import Limits
from sandbox.runtime import Job, StreamedOutput, record_refusal
from sandbox.wasi import _ffi

INTERFACE = "sandbox:guest/host@0.1.0"
SECRET_TYPE = 0x5EC2E7
"""The host resource type id of ``secret``."""

TERMINATE_GRACE_FUEL = 20_000_000
"""Fuel left to a guest after a capability fault that terminates the run: enough to unwind and
report its output, not enough to keep working."""


@dataclass(slots=True)
class RunState:
    """Host-side state of the run executing on this thread (seen by the host functions)."""

    job: Job
    tokens: dict[int, str]
    deadline: float = math.inf
    output: StreamedOutput | None = None
    """What the guest streamed through ``host.output`` (the only copy of its output)."""
    terminate: Fault | None = None
    refused: str | None = None
    """The WASI call the host refused (see `sandbox.wasi._clock`), if one ended the run."""
    refused_past_deadline: bool = False
    """Whether that call asked to wait past the run's wall deadline."""
    oversized: int = 0
    """Size of a capability call's arguments refused unread (over ``max_value_bytes``)."""
    stop: str | None = None
    """Why the epoch callback trapped the guest: "wall" or "cancelled"."""

    def wait(self, seconds: float) -> bool:
        """Wait up to ``seconds``, less when the run is cancelled (also before the wait began);
        True when it was. Only a host call that waits pays for the event and the cancel hook."""
        wake = threading.Event()
        unregister = self.job.control.on_cancel(wake.set)
        try:
            return wake.wait(seconds)
        finally:
            unregister()


tls = threading.local()
reps = itertools.count(1)
# Handles of finished runs (rep -> token, newest last): a handle a session kept is sent to the
# host as its revoked token, which the secrets broker refuses by name.
_retired: collections.OrderedDict[int, str] = collections.OrderedDict()
_retired_lock = threading.Lock()
_MAX_RETIRED = 4096


def retire(tokens: dict[int, str]) -> None:
    with _retired_lock:
        _retired.update(tokens)
        while len(_retired) > _MAX_RETIRED:
            _retired.popitem(last=False)


def token_of(state: RunState, rep: int) -> str | None:
    token = state.tokens.get(rep)
    if token is None:
        with _retired_lock:
            token = _retired.get(rep)
    return token


_DECODER = json.JSONDecoder(object_hook=wire.decode_hook)
_scan = json.scanner.make_scanner(_DECODER)  # type: ignore[attr-defined]
_SHALLOW = min(wire.JSON_DEPTH, wire.max_nodes(0))


def decode_wire(text: str, max_bytes: int) -> Any:
    """`runtimes.wire.loads_bounded` (same result, same errors), without its structure scans
    for a small value: a text with at most `_SHALLOW` commas and openings (so any text of at
    most `_SHALLOW` characters) is under the node cap and cannot nest deeper than
    `wire.JSON_DEPTH`, so it is decoded directly: by the decoder's own scanner when the value
    spans the whole text (as compact JSON does), else by `json.JSONDecoder.decode` (whitespace,
    trailing data and errors as it handles them)."""
    size = len(text)
    if size <= max_bytes and (size <= _SHALLOW or text.count(",") + text.count("[") + text.count("{") <= _SHALLOW):
        try:
            value, end = _scan(text, 0)
            if end == size:
                return value
        except (StopIteration, ValueError):
            pass
        try:
            return _DECODER.decode(text)
        except ValueError as exc:
            raise wire.WireError(f"not wire JSON: {str(exc)[:200]}") from None
    return wire.loads_bounded(text, max_bytes=max_bytes)


def fault_payload(fault: Fault) -> str:
    return json.dumps(fault.to_wire())


def _resolve_handles(value: Any, tokens: list[str | None]) -> Any:
    """Replace ``{SECRET_MARKER: i}`` with ``{SECRET_MARKER: token}``; refuse anything else."""
    if isinstance(value, list):
        return [_resolve_handles(item, tokens) for item in value]
    if isinstance(value, tuple):
        return tuple(_resolve_handles(item, tokens) for item in value)
    if isinstance(value, dict):
        if SECRET_MARKER in value:
            index = value[SECRET_MARKER]
            if len(value) != 1 or type(index) is not int or not 0 <= index < len(tokens):
                raise Fault("TypeError", "not a secret handle: pass secrets.<name> itself")
            token = tokens[index]
            if token is None:
                raise Fault("CapabilityError", "this secret handle is not valid in this run")
            return {SECRET_MARKER: token}
        return {key: _resolve_handles(item, tokens) for key, item in value.items()}
    return value


def _value_fault(state: RunState, store: Any, message: str) -> Fault:
    """End the run on limit ``value``: the guest gets the fault, then only grace fuel."""
    fault = Fault("ValueError", message, terminate="limit_exceeded")
    state.terminate = fault
    _ffi.set_fuel(store, TERMINATE_GRACE_FUEL)
    return fault


def args_cap(limits: Limits) -> int:
    return limits.max_value_bytes + 1024  # the [args, kwargs] envelope


def host_call(store: Any, name: str, args_json: str | None, handles: Sequence[Any]) -> tuple[bool, str, list[ResourceHost]]:
    """The ``host.call`` import. Never raises: a Python exception here would become a trap
    (and wasmtime-py keeps it in a process-global slot that other threads could see).
    ``args_json`` is None when the trampoline refused it unread (over the size cap)."""
    reps: list[int] = []
    returned: list[ResourceHost] = []
    if handles:
        try:
            for handle in handles:
                host = handle.to_host(store)
                reps.append(host.rep)
                host.close()
                handle.close()
            returned = [ResourceHost.own(rep, SECRET_TYPE) for rep in reps]
        except Exception:  # noqa: BLE001 - a handle that is not ours; reject the whole call
            return (False, _refuse(getattr(tls, "state", None), name, Fault("TypeError", "invalid secret handle")),
                    returned)
    state: RunState | None = getattr(tls, "state", None)
    if state is None:
        return (False, fault_payload(Fault("CapabilityError", "no run is active")), returned)
    if state.terminate is not None:
        return (False, fault_payload(state.terminate), returned)
    reached_bridge = False
    try:
        # Guest code can call the raw host import with any name: only the job's grants pass.
        if name not in state.job.capabilities:
            raise Fault("CapabilityError", f"no capability named {name!r} was granted to this run")
        limits = state.job.limits
        if args_json is None:
            raise _value_fault(state, store, f"{name}() arguments: {state.oversized} bytes is over the "
                                             f"{args_cap(limits)}-byte cap (max_value_bytes)")
        try:
            decoded = decode_wire(args_json, args_cap(limits))
        except wire.ValueTooLarge as exc:
            raise _value_fault(state, store, f"{name}() arguments: {exc}") from None
        except wire.WireError:
            raise Fault("TypeError", "malformed capability call") from None
        if not (isinstance(decoded, list) and len(decoded) == 2 and isinstance(decoded[0], list) and isinstance(decoded[1], dict)):
            raise Fault("TypeError", "malformed capability call")
        args, kwargs = decoded
        if reps or SECRET_MARKER in args_json:
            tokens = [token_of(state, rep) for rep in reps]
            args = _resolve_handles(args, tokens)
            kwargs = _resolve_handles(kwargs, tokens)
        reached_bridge = True
        result = state.job.bridge.call(name, args, kwargs)
        if time.monotonic() >= state.deadline:  # the guest traps when it resumes: skip converting the result
            raise Fault("CapabilityError", "the run's wall-clock deadline passed during the call")
        try:
            text = wire.value_json(result, limits.max_value_bytes)
        except (TypeError, ValueError) as exc:
            raise Fault("CapabilityError", f"{name}() returned data that cannot reach the guest: {exc}") from None
        return (True, text, returned)
    except Fault as fault:
        if fault.terminate:
            state.terminate = fault
            # let the guest unwind and report its output, but not keep working
            _ffi.set_fuel(store, TERMINATE_GRACE_FUEL)
        return (False, fault_payload(fault) if reached_bridge else _refuse(state, name, fault), returned)
    except Exception as exc:  # noqa: BLE001 - a bridge bug must not crash the guest or the host
        failure = Fault("CapabilityError", f"capability {name!r} failed on the host: {type(exc).__name__}")
        return (False, fault_payload(failure) if reached_bridge else _refuse(state, name, failure), returned)


def _refuse(state: RunState | None, name: str, fault: Fault) -> str:
    """The payload of a call refused before it reached the bridge, once the run records it."""
    if state is not None:
        record_refusal(state.job.bridge, name, fault)
    return fault_payload(fault)


def host_sleep(store: Any, seconds: float) -> None:
    """The ``host.sleep`` import: sleep, but never past the current run's wall deadline."""
    state: RunState | None = getattr(tls, "state", None)
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
        if not state.wait(seconds):
            return None
    else:
        state.wait(max(0.0, remaining))
    # the run is over (deadline or cancel): make the guest trap at its next epoch check, where
    # `sandbox.wasi._engine.on_epoch_deadline` says why, as if it had been running all along
    _ffi.expire_epoch(store)
    return None




def drop_secret(store: Any, rep: int) -> None:
    """The ``secret`` resource's destructor: the token map is per run, so nothing to free."""
    return None
