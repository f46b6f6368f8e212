"""Threads with a deep C stack for running guest code in-process.

C code recurses without checking its depth in places a guest can reach: hashing a tuple nested
a million deep, advancing a chain of C iterators, calling nested C callables. On the default
8 MiB stack that is a SIGSEGV of the whole host. A guest pays heap memory for every level of
nesting (at least ~48 bytes per level, more than the C frames it costs), so a stack sized to
a multiple of the run's memory limit cannot be exhausted before memory is. `run` executes a
function on a reusable worker thread with such a stack and returns its result or raises its
exception in the caller. Only address space is reserved; pages are committed as used.

Where threads cannot be started (a seccomp filter, an address-space rlimit) or are not wanted
(`GuestThreads.disable`: the process zygote), `run` calls the function on the calling thread;
such runtimes rely on their process boundary instead.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

_STACK_PER_MEMORY = 3
"""Stack bytes reserved per byte of the run's memory limit."""
_STACK_EXTRA = 64 << 20
_STACK_MIN = 256 << 20
_STACK_MAX = 16 << 30
_MAX_IDLE = 4
"""Idle workers kept for reuse; more concurrent runs start more threads, which exit when done."""
_IDLE_SECONDS = 2.0
"""An idle worker exits after this long without a run, so a quiet host holds no guest threads."""
_RETIRE_AFTER = 0.02
"""Seconds of run after which the worker exits instead of being reused: a long run may have
grown its stack (committed pages stay with a living thread), and a new thread costs far less."""


@functools.lru_cache(maxsize=64)
def stack_bytes(memory_bytes: int) -> int:
    """The stack reserved for a run with ``memory_bytes`` of memory (rounded to MiB); cached,
    as a host runs with a handful of memory limits."""
    wanted = _STACK_PER_MEMORY * max(memory_bytes, 0) + _STACK_EXTRA
    return (min(max(wanted, _STACK_MIN), _STACK_MAX) + (1 << 20) - 1) & ~((1 << 20) - 1)


class _Worker:
    __slots__ = ("stack", "inbox", "outbox", "thread", "retire")

    def __init__(self, stack: int, retire: Callable[[_Worker], bool]) -> None:
        self.stack = stack
        self.retire = retire
        self.inbox: queue.SimpleQueue[Callable[[], Any] | None] = queue.SimpleQueue()
        self.outbox: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="sandbox-restricted-guest", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                job = self.inbox.get(timeout=_IDLE_SECONDS)
            except queue.Empty:
                if self.retire(self):
                    return
                continue  # taken just now: its job is on the way
            if job is None:
                return
            try:
                self.outbox.put((True, job()))
            except BaseException as exc:  # noqa: BLE001 - handed back to the caller as is
                self.outbox.put((False, exc))
            del job


class GuestThreads:
    """A pool of deep-stack worker threads (see the module docstring). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._unavailable = False

    def disable(self) -> None:
        """Run on the calling thread from now on (a process that forks, or forbids threads)."""
        with self._lock:
            self._unavailable = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.inbox.put(None)

    def run(self, function: Callable[[], Any], memory_bytes: int) -> Any:
        """``function()`` on a worker whose stack suits ``memory_bytes``; its result, or its
        exception raised here. Falls back to the calling thread when no thread can be started."""
        worker = self._take(stack_bytes(memory_bytes))
        if worker is None:
            return function()
        started = time.monotonic()
        worker.inbox.put(function)
        ok, value = worker.outbox.get()
        if time.monotonic() - started < _RETIRE_AFTER:
            self._give_back(worker)
        else:
            worker.inbox.put(None)
        if ok:
            return value
        raise value

    def _take(self, stack: int) -> _Worker | None:
        with self._lock:
            if self._unavailable:
                return None
            for index, worker in enumerate(self._idle):
                if worker.stack >= stack:
                    return self._idle.pop(index)
            worker = _Worker(stack, self._retire)
            previous = threading.stack_size()
            try:
                threading.stack_size(stack)
                worker.thread.start()
            except (RuntimeError, ValueError, MemoryError):
                self._unavailable = True
                return None
            finally:
                threading.stack_size(previous)
            return worker

    def _give_back(self, worker: _Worker) -> None:
        with self._lock:
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(worker)
                return
        worker.inbox.put(None)

    def _retire(self, worker: _Worker) -> bool:
        """Called by an idle worker that timed out: True (and forgotten) when nobody took it."""
        with self._lock:
            if worker in self._idle:
                self._idle.remove(worker)
                return True
            return False

    def _after_fork_in_child(self) -> None:
        # Workers do not survive a fork; a forked child starts with none.
        self._lock = threading.Lock()
        self._idle = []


GUEST_THREADS = GuestThreads()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=GUEST_THREADS._after_fork_in_child)
