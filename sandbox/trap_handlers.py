"""Keep Wasmtime's trap handlers installed while other libraries share the process.

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
        self._lock = threading.Lock()
        self._warned = False
        self._libc = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None

    def capture(self) -> None:
        """Record the current handlers (call right after the first Engine is made)."""
        if self._libc is None:
            return
        with self._lock:
            self._saved = {int(sig): self._read(sig) for sig in _SIGNALS}

    def ensure(self) -> None:
        """Reinstall the recorded handlers where another library replaced them."""
        if self._libc is None or not self._saved:
            return
        replaced = [sig for sig, raw in self._saved.items() if self._read(sig)[_HANDLER] != raw[_HANDLER]]
        if not replaced:
            return
        with self._lock:
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
