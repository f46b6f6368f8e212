"""What a guest trap means, and keeping Wasmtime's trap handlers installed.

`classify` turns a trap that ended a run into its `ErrorInfo` (limit, cancel, refusal or crash).

Wasmtime turns a guest's faults (``unreachable``, out-of-bounds memory, stack overflow) into
traps through process-wide handlers for SIGILL, SIGSEGV, SIGBUS and SIGFPE, installed once when
the first Engine is made; they pass faults outside WebAssembly on to the handlers they
replaced. A library that installs its own fatal-signal handlers later (``ray.init()`` does, to
print crash reports) puts itself in front: the next guest trap then kills the host with
"Illegal instruction" instead of ending the run with a limit.

`TrapHandlers.capture` records the handlers right after the Engine is made; `ensure`, called
before every guest call, puts them back when something replaced them (one warning is logged,
naming what happened). The replaced handler only ever saw faults that were Wasmtime's to handle
or that Wasmtime passes on to its own predecessor, so nothing else is lost but a crash report.
Linux only; elsewhere both are no-ops.
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
import typing
from typing import TYPE_CHECKING

from wasmtime import WasmtimeError

from runtimes.wire import Fault
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, ErrorKind
from sandbox.runtime import limit_error

_handlers_are: typing.Callable[[tuple[int, ...], tuple[int, ...]], bool] | None
try:
    from sandbox.wasi._cabi import handlers_are as _handlers_are
except ImportError:  # not built, or built from an older _cabi.c: the ctypes reads below serve
    _handlers_are = None

if TYPE_CHECKING:
    from sandbox.wasi._host import RunState

_SIGNALS = (signal.SIGILL, signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE)
_STRUCT_BYTES = 256
"""Room for the C library's ``struct sigaction`` (152 bytes on x86-64 glibc)."""
_HANDLER = slice(0, ctypes.sizeof(ctypes.c_void_p))
"""The handler's address, the struct's first field on Linux: what decides who sees a fault (the
rest of the mask area past the kernel's signal set is not meaningful, so it is not compared)."""

_log = logging.getLogger("sandbox.wasi")


class TrapHandlers:
    """The fatal-signal handlers Wasmtime installed, and their restoration."""

    def __init__(self) -> None:
        self._saved: dict[int, bytes] = {}
        self._signals: tuple[int, ...] = ()
        self._addresses: tuple[int, ...] = ()
        self._lock = threading.Lock()
        self._warned = False
        self._libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
        self._probe = ctypes.create_string_buffer(_STRUCT_BYTES)
        self._probe_handler = ctypes.c_void_p.from_buffer(self._probe)

    def capture(self) -> None:
        """Record the current handlers (call right after the first Engine is made)."""
        if self._libc is None:
            return
        with self._lock:
            self._saved = {int(sig): self._read(sig) for sig in _SIGNALS}
            self._signals = tuple(self._saved)
            self._addresses = tuple(ctypes.c_void_p.from_buffer_copy(raw[_HANDLER]).value or 0
                                    for raw in self._saved.values())

    def ensure(self) -> None:
        """Reinstall the recorded handlers where another library replaced them."""
        if self._libc is None or not self._saved:
            return
        if _handlers_are is not None and _handlers_are(self._signals, self._addresses):
            return  # all in place (read without ctypes); otherwise the locked check below decides
        with self._lock:
            sigaction, probe, handler = self._libc.sigaction, self._probe, self._probe_handler
            replaced = []
            for sig, address in zip(self._signals, self._addresses):
                if sigaction(sig, None, probe) != 0:
                    raise OSError(ctypes.get_errno(), f"sandbox: cannot read the handler for signal {sig}")
                if (handler.value or 0) != address:
                    replaced.append(sig)
            if not replaced:
                return
            for sig in replaced:
                buffer = ctypes.create_string_buffer(self._saved[sig], _STRUCT_BYTES)
                if self._libc.sigaction(sig, buffer, None) != 0:
                    raise OSError(ctypes.get_errno(), f"sandbox: cannot reinstall the handler for signal {sig}")
            if not self._warned:
                self._warned = True
                names = ", ".join(signal.Signals(sig).name for sig in replaced)
                _log.warning(
                    "sandbox: another library replaced Wasmtime's handlers for %s (ray.init() does); "
                    "they are reinstalled before every wasi run so guest traps stay run results", names,
                )

    def _read(self, sig: int) -> bytes:
        assert self._libc is not None
        buffer = ctypes.create_string_buffer(_STRUCT_BYTES)
        if self._libc.sigaction(int(sig), None, buffer) != 0:
            raise OSError(ctypes.get_errno(), f"sandbox: cannot read the handler for signal {sig}")
        return buffer.raw


_KINDS = typing.get_args(ErrorKind)


def terminate_error(fault: Fault) -> ErrorInfo:
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


def classify(trap: WasmtimeError, state: RunState, limits: Limits, remaining: int, wall: float) -> ErrorInfo:
    """The error a run that trapped ends with: why the host stopped it (cancel, a terminating
    capability fault, the wall deadline, a refused clock wait), else what the trap says (fuel,
    stack, memory), else a guest crash."""
    text = str(trap)
    if state.stop == "cancelled":
        return ErrorInfo(kind="cancelled", type="Cancelled", message="the run was cancelled by the host")
    if state.terminate is not None:
        return terminate_error(state.terminate)
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
