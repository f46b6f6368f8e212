"""The hard in-process memory cap: the `_alloccap` C extension, loaded on first use.

Loading the extension wraps the interpreter's MEM and OBJ allocators and pymalloc's arena
allocator for the whole process (see the design note at the top of ``_alloccap.c``). A `Budget` built with a cap arms it on
the guest's thread while guest code runs: past ``memory_bytes`` an allocation fails with
`MemoryError` and the cap is marked tripped, which stops the run as ``limit_exceeded``
(memory). The extension is built at install time (``pip install -e .`` or
``python setup.py build_ext --inplace``); without it `available` is False and runs keep only
the size guards.
"""

from __future__ import annotations

import threading
from typing import Any

_lock = threading.Lock()
_module: Any = None
_error: str | None = None


def _load() -> Any:
    global _module, _error
    if _module is None and _error is None:
        with _lock:
            if _module is None and _error is None:
                try:
                    from runtimes.restricted import _alloccap
                except ImportError as exc:
                    _error = f"the _alloccap extension is not built ({exc}); run `make setup`"
                else:
                    _module = _alloccap
    return _module


OVERHEAD_SHARE = 8
"""The cap charges small objects through the pymalloc arenas mapped for them (pool headers and
partly used pools included) but each larger block only its size rounded to its allocator unit,
not malloc's bookkeeping around it. `armed_limit` keeps 1/OVERHEAD_SHARE of ``memory_bytes``
for that, so resident growth stays within ``memory_bytes``."""


def armed_limit(memory_bytes: int) -> int:
    """The byte count the cap is armed with for a run allowed ``memory_bytes``."""
    return memory_bytes - memory_bytes // OVERHEAD_SHARE


def return_free_memory() -> None:
    """Give the C allocator's free heap memory back to the system (glibc ``malloc_trim``).

    glibc raises its mmap threshold after large blocks are freed, so a run's freed buffers may
    stay in the heap; trimming after a run that allocated much keeps the host's resident memory
    from carrying one run's peak into the next. A no-op where the extension is not built or the
    C library has no ``malloc_trim``. It imports nothing, so the host's ``sys.modules`` is the
    same before and after a run."""
    module = _load()
    if module is not None:
        module.trim()


def available() -> bool:
    """True when the extension is built; the first call installs the allocator hooks."""
    return _load() is not None


def unavailable_reason() -> str | None:
    """Why `available` is False (None when it is True)."""
    _load()
    return _error


def new_cap() -> Any:
    """A fresh, disarmed ``_alloccap.Cap``; raises `RuntimeError` when the extension is not built."""
    module = _load()
    if module is None:
        raise RuntimeError(_error)
    return module.Cap()
