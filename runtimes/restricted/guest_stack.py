"""Where guest code runs in-process: on a C stack deep enough that it cannot overflow.

C code recurses without checking its depth in places a guest can reach: hashing a tuple nested
a million deep, advancing a chain of C iterators, calling nested C callables. On the default
8 MiB stack that is a SIGSEGV of the whole host. A guest pays heap memory for every level of
nesting (at least ~48 bytes per level, more than the C frames it costs), so a stack of
`guest_thread.stack_bytes` (3 × the run's memory limit plus a margin) cannot be exhausted before
memory is. `GuestStack.run` calls a function on such a stack, three ways, best first:

1. The ``_deepstack`` C extension (``_deepstack.c``): the calling thread switches to a stack
   mmap'd for it (``MAP_NORESERVE``, a guard region below), runs the function there and switches
   back. No thread hand-off, so a run costs a few microseconds instead of two cross-thread
   wake-ups. Sound because CPython (3.11–3.13) bounds recursion with counters, never by comparing
   stack addresses, keeps Python frames on the heap, and the switch is strictly LIFO: the function
   returns before the thread switches back, so no C frame on the deep stack outlives the call (the
   full argument is at the top of ``_deepstack.c``). Each thread keeps its stack for reuse; pages
   a deep run committed are given back after it.
2. Without the extension (not built, an unsupported Python, the mapping refused): a worker
   thread started with that stack size (`guest_thread.GuestThreads`), the same guarantee at the
   price of the hand-off.
3. `disable` (the process zygote and its children, which must stay single-threaded and may hold
   an address-space limit): the calling thread's own stack. Those runtimes rely on their process
   boundary, where a C stack overflow ends only the child.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from runtimes.restricted.guest_thread import GUEST_THREADS, GuestThreads, stack_bytes

try:
    from runtimes.restricted import _deepstack
except ImportError:  # not built: the thread path keeps the guarantee
    _deepstack = None  # type: ignore[assignment]

DISABLE_DEEP_STACK = "SANDBOX_DISABLE_DEEP_STACK"
"""Environment variable: ``1`` (read at import) runs guests on deep-stack worker threads instead
of switching stacks on the calling thread; for comparison and for debuggers that follow threads."""


class GuestStack:
    """Runs functions on a deep C stack (see the module docstring). Thread-safe."""

    def __init__(self, threads: GuestThreads = GUEST_THREADS) -> None:
        self._threads = threads
        usable = _deepstack is not None and bool(_deepstack.SUPPORTED)
        self._switch = usable and os.environ.get(DISABLE_DEEP_STACK) != "1"
        self._disabled = False
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        """``"switch"`` (the extension), ``"thread"`` (worker threads) or ``"caller"`` (disabled)."""
        if self._disabled:
            return "caller"
        return "switch" if self._switch else "thread"

    def disable(self) -> None:
        """Run on the calling thread's own stack from now on (a process that forks, forbids
        threads or limits its address space; it relies on its process boundary)."""
        with self._lock:
            self._disabled = True
        self._threads.disable()

    def run(self, function: Callable[[], Any], memory_bytes: int) -> Any:
        """``function()`` on a stack of `stack_bytes` (``memory_bytes``); its result, or its
        exception raised here. When the stack cannot be mapped, falls back to a worker thread."""
        if self._disabled:
            return function()
        if self._switch:
            try:
                return _deepstack.run(function, stack_bytes(memory_bytes))
            except _deepstack.StackUnavailable:
                pass  # e.g. the mapping was refused (address-space limit); the function did not run
        return self._threads.run(function, memory_bytes)


GUEST_STACK = GuestStack()
