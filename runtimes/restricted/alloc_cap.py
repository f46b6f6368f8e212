"""The hard in-process memory cap: the `_alloccap` C extension, loaded on first use.

Loading the extension wraps the interpreter's MEM and OBJ allocators for the whole process
(see the design note at the top of ``_alloccap.c``). A `Budget` built with a cap arms it on
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
