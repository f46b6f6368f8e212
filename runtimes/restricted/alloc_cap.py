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
"""`armed_limit` keeps 1/OVERHEAD_SHARE of ``memory_bytes`` for what the cap does not charge. What
that is depends on the cap's mode (``Cap.small_by_arena``, decided at each ``arm()``):

- By arena (CPython's pymalloc, 3.8 to 3.13, our arena hook outermost): small objects are
  charged through the pymalloc arenas mapped for them (pool headers and partly used pools
  included), each larger block its size rounded to its allocator unit. Only malloc's
  bookkeeping around the large blocks is left out, and the kept share covers it: resident
  growth stays within ``memory_bytes``. Freed large blocks stay charged (``Cap.held``) until a
  refused allocation makes the cap trim the C allocator (the share also covers the up to 1/16
  of the armed limit it gives back between trims), and a growing buffer is charged its old and
  new size at once, since the allocator may copy it (so one buffer grown in place stops at
  about half the limit).
- Per block (``PYTHONMALLOC=malloc`` or ``debug``, another allocator or arena hook installed
  over ours, CPython 3.14 or later): every block, small ones included, is charged its size
  rounded to 16 bytes. The cap then bounds the bytes the guest holds, not resident growth:
  pymalloc's pool headers and the free room of partly used pools, or malloc's per-chunk
  header and minimum chunk, are not charged, and for many tiny objects they can exceed the
  kept share (resident growth can then pass ``memory_bytes``; a run is still stopped once
  its live bytes pass the armed limit)."""


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
