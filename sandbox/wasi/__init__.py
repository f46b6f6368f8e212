"""The ``wasi`` runtime: CPython compiled to WebAssembly, run inside Wasmtime.

Public names: `WasiDriver`, `WasiSession` and `WasiBuildError`, and the tuning constants
`FUEL_PER_CPU_SECOND`, `STARTUP_FUEL` and `TICK_SECONDS`. They load on first use, so importing
this package (or ``sandbox.wasi.build``) does not load Wasmtime's engine or the driver.

Modules, each named for what it owns:

- `driver` — the Driver protocol: runs, sessions, outcomes.
- `build` — building, caching and loading the guest component (``python -m sandbox.wasi.build``).
- `_engine` — the process-wide Engine, compiled guest, Linker, epoch ticker and spare instances.
- `_host` — the host functions the guest imports (capability calls, secret handles, sleep).
- `_abi` — lifting and lowering the values of the guest's fixed WIT signatures.
- `_clock` — the guest's monotonic clock, shadowed, and its refused waits.
- `_trap` — what a trap means, and keeping Wasmtime's trap handlers installed.
- `_ffi` — the only module that uses wasmtime-py's private C bindings (its docstring says why).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox.wasi._engine import STARTUP_FUEL, TICK_SECONDS
    from sandbox.wasi.build import WasiBuildError
    from sandbox.wasi.driver import FUEL_PER_CPU_SECOND, WasiDriver, WasiSession

__all__ = ["WasiDriver", "WasiSession", "WasiBuildError", "FUEL_PER_CPU_SECOND", "STARTUP_FUEL", "TICK_SECONDS"]

_HOMES = {
    "WasiDriver": "sandbox.wasi.driver",
    "WasiSession": "sandbox.wasi.driver",
    "FUEL_PER_CPU_SECOND": "sandbox.wasi.driver",
    "WasiBuildError": "sandbox.wasi.build",
    "STARTUP_FUEL": "sandbox.wasi._engine",
    "TICK_SECONDS": "sandbox.wasi._engine",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sandbox.wasi' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
