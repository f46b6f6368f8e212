"""Cooperative limits for one restricted run: ticks, deadlines, recursion, sizes, output.

A `Budget` is created per run. Compiled guest code calls into it through names the
transformer inserts (``_tick_``, ``_getiter_``, ``_mul_`` ...):

* **Ticks** are C-level. ``_tick_`` is an endless `itertools.chain` over chunks of one list of
  `_LOOP_CHUNK` Nones, shared by every ``while`` loop of the run (the transformer makes
  ``while test:`` a ``for`` over it that breaks when ``test`` is false), so an iteration costs
  one C ``next`` and no Python call. ``_getiter_`` wraps a ``for`` loop's iterable in a chain
  of `islice` (or sub-``range``) chunks. ``_enter_``, called on every function entry, is the
  ``__next__`` of a chain over chunks of function entries. Python code (the *check*) runs only
  once per chunk. A check counts down: every `_TIME_EVERY`-th check reads ``time.monotonic()``
  against the wall deadline (and a tripped allocator cap), every `_CPU_EVERY`-th of those reads
  ``time.thread_time()`` against ``cpu_seconds``.
* A shared **watchdog** thread (every `_WATCHDOG_PERIOD`) reads the wall clock and each run's
  thread CPU clock and, when a run is over a deadline, stops it and empties its chunk lists, so
  the very next tick or function entry runs the check and raises.

  What this guarantees for pure-Python code that never returns (``while True: pass``, ``for x
  in itertools.count(): ...``, endless recursion): with the watchdog running, a ``while`` loop
  or a function entry raises at its first tick after the watchdog's next poll past the wall
  deadline or the CPU limit (a few milliseconds); a ``for`` loop first finishes its current
  chunk (at most `_LOOP_CHUNK` items, and about `_CHUNK_SECONDS` of them: chunks shrink when
  iterations are slow). Without a watchdog (threads forbidden), every loop reads the wall
  clock at least every ``_LOOP_CHUNK * _TIME_EVERY`` iterations and the CPU clock
  ``_CPU_EVERY`` times less often, so it overshoots by that many iterations' time. A single
  long C call (one huge ``sorted``) is not interrupted: only the process runtime kills a run
  mid-call.
* **Recursion** is checked on function entry: before each chunk of entries a probe of the frame
  stack (`sys._getframe`) refuses a guest stack deeper than ``max_recursion_depth``. While the
  stack is under a quarter of the cap the next probe comes after a quarter of the cap's entries
  (at most `_LONG_CALL_CHUNK`), so the cap is not passed before it unless
  a guest call adds more than three Python frames; past a quarter, every `_CALL_CHUNK` entries
  (a recursion passes the cap by less than that many calls).
* **Size guards** (`runtimes.restricted.size_guards`, mixed into `Budget`) estimate the result
  of ``*``, ``**``, ``<<``, ``%``, format widths, ``bytes(n)`` and materialising ranges, and
  refuse results larger than ``memory_bytes``: the early, cheap check.
* The **allocator cap** (`alloc_cap`, when the budget has one) counts what the guest's thread
  makes the process allocate while armed; past ``memory_bytes`` allocations fail and the cap trips, which
  the next check (or the watchdog) turns into a memory stop.

When a limit trips, the budget becomes *stopped*: `LimitExceeded` (a `BaseException`, so
``except Exception`` does not catch it) is raised at once and again at every later tick, and
the executor reports the stop whatever the guest did with the exception.

The module stays whole (a little over 450 lines): the tick sources, their chunk lists and the
`Budget` that renews them share one invariant (a stopped or dismantled budget's sources keep
stopping resumed guest code), which is easier to check in one place.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain, islice
from typing import Any

from runtimes.guest import CPU, MEMORY, RECURSION, WALL
from runtimes.restricted import alloc_cap
from runtimes.restricted.size_guards import SizeGuards, human_size
from runtimes.restricted.watchdog import _WATCHDOG_PERIOD, WATCHDOG, Watchdog  # noqa: F401 - importers take WATCHDOG from here

_LOOP_CHUNK = 1000
"""Most loop iterations between two checks of the same loop (a check also runs when a loop starts)."""
_FIRST_CHUNK = 8
"""Iterations before a loop's first check after its start; also the largest iterable that
`Budget.getiter` hands out unwrapped (when it cannot grow)."""
_CHUNK_SECONDS = 0.002
"""Target time of one loop chunk: chunks shrink when iterations are slow."""
_CALL_CHUNK = 32
"""Function entries between two recursion probes once the stack is past a quarter of the cap."""
_LONG_CALL_CHUNK = 256
"""Most function entries between two probes while the stack is under a quarter of the cap."""
_TIME_EVERY = 8
"""Checks between two wall-clock reads; the watchdog bounds the latency in between."""
_CPU_EVERY = 8
"""Wall-clock reads between two thread-CPU-clock reads."""
_MAX_NESTING = 1000
"""Deepest chain of C iterators (``map(f, map(f, ...))``) a guest may consume: each level is
one C stack frame when the outer one is advanced, and C code does not check its depth."""
_C_ITERATORS = frozenset({
    map, filter, zip, enumerate, reversed, type(iter(int, 1)), type(iter(())), type(iter([])), type(iter(range(1))),
    *(getattr(itertools, name) for name in (
        "accumulate", "chain", "combinations", "combinations_with_replacement", "compress", "cycle", "dropwhile",
        "filterfalse", "groupby", "islice", "pairwise", "permutations", "product", "starmap", "takewhile",
        "zip_longest", "tee",
    )),
})
class Endless(chain):
    """A ticking view of an endless C iterator (``count()``, ``cycle(x)``, ``repeat(x)``,
    ``iter(f, sentinel)``) as the guest's itertools and ``iter`` hand it out: any C loop that
    consumes it (``set().update(it)``, ``x in it``, ``deque(it, maxlen=0)``) ticks."""

    __slots__ = ()


_CONTAINERS = frozenset({list, tuple, dict, set, frozenset, str, bytes, bytearray})
"""Iterables whose C loops are bounded by their (already allocated) size."""


_ACTIVE = threading.local()


def active_budget() -> Budget | None:
    """The budget of the run whose guest code is executing on this thread (None outside a run)."""
    return getattr(_ACTIVE, "budget", None)


def running_budget() -> Budget:
    """`active_budget`, or `LimitExceeded` when there is none (guest code resumed by the host
    after its run ended, e.g. a generator finalised later)."""
    budget = active_budget()
    if budget is None:
        raise LimitExceeded(CPU, "guest code ran after its run ended")
    return budget


def set_active_budget(budget: Budget | None) -> Budget | None:
    """Make ``budget`` this thread's active one; returns the previous one (to restore)."""
    previous = getattr(_ACTIVE, "budget", None)
    _ACTIVE.budget = budget
    return previous


class LimitExceeded(BaseException):
    """A resource limit tripped. ``limit`` is one of cpu, wall, memory, output, recursion, size."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit
        self.message = message


class Terminated(BaseException):
    """The host ended the run (a capability fault with ``terminate`` set)."""

    def __init__(self, kind: str, type_: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.type = type_
        self.message = message


class _Check:
    """Source of tick chunks: each request for a new chunk runs the budget's check first."""

    __slots__ = ("_budget", "_chunk")

    def __init__(self, budget: Budget, chunk: list) -> None:
        self._budget = budget
        self._chunk = chunk

    def __iter__(self) -> _Check:
        return self

    def __next__(self) -> Iterator[None]:
        try:
            self._budget.check()
        except BaseException:
            self._budget.renew_ticks = True  # the chain over this source is exhausted for good
            raise
        return iter(self._chunk)


class _EntryCheck:
    """Source of function-entry chunks: the check and a recursion probe before each; a long
    chunk while the stack is under a quarter of the cap, a short one past it."""

    __slots__ = ("_budget", "_short", "_long")

    def __init__(self, budget: Budget, short: list, long: list) -> None:
        self._budget = budget
        self._short = short
        self._long = long

    def __iter__(self) -> _EntryCheck:
        return self

    def __next__(self) -> Iterator[None]:
        budget = self._budget
        try:
            budget.check()
            shallow = budget.check_depth()
        except BaseException:
            budget.renew_ticks = True  # the chain over this source is exhausted for good
            raise
        return iter(self._long if shallow else self._short)


class _LoopChunks:
    """Chunks of one loop's iterator; the budget is checked before each chunk.

    A chunk is the next item (fetched here, so exhaustion is detected) followed by an
    `islice` of further items, pulled lazily: items are taken from the guest's iterator
    exactly when the loop asks for them. Chunks start at `_FIRST_CHUNK` items and adapt so
    one chunk takes about `_CHUNK_SECONDS`: slow iterations get checked often, fast ones
    rarely (at most `_LOOP_CHUNK` items per chunk).
    """

    __slots__ = ("_budget", "_it", "_rest", "_size", "_started")

    def __init__(self, budget: Budget, it: Iterator[Any]) -> None:
        self._budget = budget
        self._it = it
        self._rest = False
        self._size = _FIRST_CHUNK
        self._started = 0.0

    def __iter__(self) -> _LoopChunks:
        return self

    def __next__(self) -> Iterable[Any]:
        if self._rest:
            self._rest = False
            self._started = time.perf_counter()
            return islice(self._it, self._size - 1)
        if self._started:
            elapsed = time.perf_counter() - self._started
            if elapsed < _CHUNK_SECONDS / 2:
                self._size = min(self._size * 2, _LOOP_CHUNK)
            elif elapsed > _CHUNK_SECONDS:
                self._size = max(2, int(self._size * _CHUNK_SECONDS / elapsed))
        self._budget.check()
        for first in self._it:
            self._rest = True
            return (first,)
        raise StopIteration


def _long_call_chunk(max_recursion_depth: int) -> int:
    """Function entries per chunk while the stack is under a quarter of the cap."""
    return max(_CALL_CHUNK, min(_LONG_CALL_CHUNK, max_recursion_depth // 4))


class Budget(SizeGuards):
    """Limits and usage of one run; see the module docstring for how each limit is enforced."""

    def __init__(self, limits: Mapping[str, Any], cpu_start: float | None = None, deadline: float | None = None, *,
                 memory_cap: bool = False) -> None:
        self.cap: Any = alloc_cap.new_cap() if memory_cap else None
        """The allocator cap (`alloc_cap.new_cap`) the executor arms while guest code runs, or None."""
        # Filled here (not by `reset`, which would copy a temporary list into each).
        self._loop_chunk: list[None] = [None] * _LOOP_CHUNK
        self._call_chunk: list[None] = [None] * _CALL_CHUNK
        self.max_recursion_depth = int(limits["max_recursion_depth"])
        self._long_size = _long_call_chunk(self.max_recursion_depth)
        self._long_call_chunk: list[None] = [None] * self._long_size
        self.renew_ticks = True
        """Set when a tick source raised (its chain is then exhausted): `reset` makes new ones."""
        self.ticks: Iterator[None] = iter(())
        self.enter: Any = None
        self.anchor: Any = None
        """The executor's code object; frames above it are guest frames (for the depth probe)."""
        self.reset(limits, cpu_start, deadline)

    def reset(self, limits: Mapping[str, Any], cpu_start: float | None = None, deadline: float | None = None) -> None:
        """Start a new run with ``limits``; ``deadline`` (a `time.monotonic` instant) overrides
        ``wall_seconds`` from now. A session reuses its budget, so loops and generators
        suspended in an earlier run are checked against the current run's limits."""
        self.cpu_limit = float(limits["cpu_seconds"])
        self.wall_limit = float(limits["wall_seconds"])
        self.memory_bytes = int(limits["memory_bytes"])
        depth = int(limits["max_recursion_depth"])
        if depth != self.max_recursion_depth:
            self.max_recursion_depth = depth
            self._long_size = _long_call_chunk(depth)
        self.size_cap = self.memory_bytes
        self.cpu_start = time.thread_time() if cpu_start is None else cpu_start
        self.wall_start = time.monotonic()
        self.wall_deadline = self.wall_start + self.wall_limit if deadline is None else deadline
        self.clock_id: int | None = None
        self.on_time_check: Any = None
        """Called (no arguments) each time the clocks are read: a cheap periodic hook."""
        self.stop: BaseException | None = None
        self.host_failure: BaseException | None = None
        """An exception raised by the host's ``call_host`` (not a Fault); re-raised to the host."""
        self._countdown = _TIME_EVERY
        self._cpu_countdown = _CPU_EVERY
        self._base_depth: int | None = None
        # Only `trip` empties the chunk lists: refill them when a run was stopped (or the cap changed).
        if len(self._loop_chunk) != _LOOP_CHUNK:
            self._loop_chunk[:] = [None] * _LOOP_CHUNK
        if len(self._call_chunk) != _CALL_CHUNK:
            self._call_chunk[:] = [None] * _CALL_CHUNK
        if len(self._long_call_chunk) != self._long_size:
            self._long_call_chunk[:] = [None] * self._long_size
        # New chains whenever a check raised (such a chain is exhausted for good) or the
        # sources were replaced (a dismantled scaffold); otherwise the previous run's chains
        # keep checking this budget, now against this run's limits.
        if self.renew_ticks or type(self.ticks) is not chain:
            self.renew_ticks = False
            self.ticks = chain.from_iterable(_Check(self, self._loop_chunk))
            """``_tick_``: the endless iterator every ``while`` loop of the run iterates."""
            self.enter = chain.from_iterable(_EntryCheck(self, self._call_chunk, self._long_call_chunk)).__next__
            """``_enter_``: called on every function entry."""

    # --- stopping ---------------------------------------------------------------------------

    def trip(self, exc: BaseException) -> BaseException:
        """Stop the run with ``exc`` (the first stop wins) and make the next tick raise it."""
        if self.stop is None:
            self.stop = exc
        self._loop_chunk.clear()
        self._call_chunk.clear()
        self._long_call_chunk.clear()
        return self.stop

    def trip_limit(self, limit: str, message: str) -> LimitExceeded:
        """Stop the run on ``limit`` and return the exception to raise."""
        exc = self.trip(LimitExceeded(limit, message))
        return exc if isinstance(exc, LimitExceeded) else LimitExceeded(limit, message)

    def trip_memory(self) -> LimitExceeded:
        """Stop the run on the memory limit (the allocator cap refused an allocation)."""
        return self.trip_limit(MEMORY, f"memory limit of {human_size(self.memory_bytes)} exceeded")

    def reraise(self) -> BaseException:
        """A fresh copy of the stop exception (the guest may have kept the first one)."""
        stop = self.stop
        if isinstance(stop, LimitExceeded):
            return LimitExceeded(stop.limit, stop.message)
        if isinstance(stop, Terminated):
            return Terminated(stop.kind, stop.type, stop.message)
        return LimitExceeded(CPU, "run stopped")

    def check(self) -> None:
        """Raise if the run is stopped or over its CPU or wall time. Cheap: reads clocks rarely."""
        if self.stop is not None:
            raise self.reraise()
        self._countdown -= 1
        if self._countdown > 0:
            return
        self._countdown = _TIME_EVERY
        self.check_time()

    def check_time(self) -> None:
        """Read the clocks and raise `LimitExceeded` for cpu or wall when over.

        The wall clock is cheap and read every time; the thread CPU clock is a system call
        (about 1 µs here) and is read every `_CPU_EVERY` calls (the watchdog reads it too).
        A tripped allocator cap raises `LimitExceeded` memory.
        """
        if self.on_time_check is not None:
            self.on_time_check()
        if self.cap is not None and self.cap.tripped:
            raise self.trip_memory()
        if time.monotonic() > self.wall_deadline:
            raise self.trip_limit(WALL, f"wall time limit of {self.wall_limit:g} s exceeded")
        self._cpu_countdown -= 1
        if self._cpu_countdown > 0:
            return
        self._cpu_countdown = _CPU_EVERY
        if time.thread_time() - self.cpu_start > self.cpu_limit:
            raise self.trip_limit(CPU, f"CPU time limit of {self.cpu_limit:g} s exceeded")

    def check_depth(self) -> bool:
        """Raise `LimitExceeded` recursion when the guest stack is deeper than the cap; True
        when it is under a quarter of the cap."""
        if self._base_depth is None:
            self._base_depth = self._depth_below_guest()
        # From check_depth: itself, _EntryCheck.__next__, then the guest frames, then the anchor.
        base = self._base_depth + 2
        try:
            sys._getframe(base + self.max_recursion_depth // 4)
        except ValueError:
            return True
        try:
            sys._getframe(base + self.max_recursion_depth)
        except ValueError:
            return False
        raise self.trip_limit(RECURSION, f"maximum recursion depth of {self.max_recursion_depth} exceeded")

    def _depth_below_guest(self) -> int:
        frame: Any = sys._getframe(1)
        depth = 0
        anchor_depth = 0
        while frame is not None:
            depth += 1
            if frame.f_code is self.anchor:
                anchor_depth = depth
            frame = frame.f_back
        # Frames from the anchor (the executor's frame) down to the thread's first frame; when
        # the anchor is missing, count the whole current stack as host frames (lenient).
        return depth - anchor_depth + 1 if anchor_depth else depth

    def cpu_used(self) -> float:
        return time.thread_time() - self.cpu_start

    def watchdog_poll(self, now: float) -> None:
        """Called by the watchdog thread: trip the run when it is over a deadline. Runs no guest
        code: it reads clocks and, through `trip`, stores the stop and empties two host lists."""
        if self.stop is not None:
            return
        if self.cap is not None and self.cap.tripped:
            self.trip_memory()
        elif now > self.wall_deadline:
            self.trip(LimitExceeded(WALL, f"wall time limit of {self.wall_limit:g} s exceeded"))
        elif self.clock_id is not None:
            try:
                used = time.clock_gettime(self.clock_id) - self.cpu_start
            except OSError:
                return
            if used > self.cpu_limit:
                self.trip(LimitExceeded(CPU, f"CPU time limit of {self.cpu_limit:g} s exceeded"))

    # --- loops ------------------------------------------------------------------------------

    def getiter(self, iterable: Any) -> Iterator[Any]:
        """``iter(iterable)`` with a budget check every `_LOOP_CHUNK` items (``_getiter_``).

        Immutable iterables of at most `_FIRST_CHUNK` items (a small range, tuple or str) get
        one check and their plain iterator: they cannot grow while the loop runs.
        """
        if type(iterable) in _FIXED and len(iterable) <= _FIRST_CHUNK:
            if self.stop is not None:
                raise self.reraise()
            self._countdown -= 1
            if self._countdown <= 0:
                self._countdown = _TIME_EVERY
                self.check_time()
            return iter(iterable)
        if type(iterable) is range:
            try:
                return chain.from_iterable(self._range_chunks(iterable, len(iterable)))
            except OverflowError:  # longer than sys.maxsize: iterate it generically
                pass
        self.check_nesting(iterable)
        return chain.from_iterable(_LoopChunks(self, iter(iterable)))

    def _range_chunks(self, whole: range, length: int) -> Iterator[range]:
        """Sub-ranges of ``whole``, sized like `_LoopChunks`, with a check before each."""
        size = _FIRST_CHUNK
        start = 0
        while start < length:
            self.check()
            stop = start + size
            began = time.perf_counter()
            yield whole[start:stop]
            elapsed = time.perf_counter() - began
            if elapsed < _CHUNK_SECONDS / 2:
                size = min(size * 2, _LOOP_CHUNK)
            elif elapsed > _CHUNK_SECONDS:
                size = max(2, int(size * _CHUNK_SECONDS / elapsed))
            start = stop

    def check_nesting(self, value: Any) -> None:
        """Refuse a chain of C iterators nested deeper than `_MAX_NESTING` (advancing it would
        recurse in C past the end of the stack). Walks the iterators' ``__reduce__`` arguments."""
        if type(value) not in _C_ITERATORS:
            return
        pending = [(value, 1)]
        while pending:
            item, depth = pending.pop()
            if depth > _MAX_NESTING:
                raise self.trip_limit(RECURSION, f"iterators nested more than {_MAX_NESTING} deep")
            try:
                reduced = item.__reduce__()
            except Exception:  # noqa: BLE001 - an iterator that cannot say what it wraps wraps nothing we walk
                continue
            parts = [part for section in reduced[1:3] if type(section) is tuple for part in section]
            for part in parts:
                if type(part) is tuple:
                    parts.extend(part[:64])
                elif type(part) in _C_ITERATORS:
                    pending.append((part, depth + 1))

    def endless(self, iterator: Iterator[Any]) -> Endless:
        """``iterator`` (endless or of unknown length) as a ticking `Endless` view."""
        return Endless.from_iterable(_LoopChunks(self, iterator))  # type: ignore[return-value]

    def iterate(self, iterable: Any) -> Any:
        """The argument of a C consumer (``sum``, ``min``, ``sorted``, ``str.join``, ``list(...)``):
        containers as they are; anything else checked for nesting and, unless a small range,
        wrapped so the consumer's loop ticks like a guest loop."""
        kind = type(iterable)
        if kind in _CONTAINERS:
            return iterable
        if kind is range and len(iterable) <= _LOOP_CHUNK:
            return iterable
        return self.getiter(iterable)

    def check_materialise(self, value: Any) -> None:
        """Refuse turning a huge range or an infinite iterator (an `Endless` view included) into a collection."""
        if isinstance(value, Endless):
            raise self.refuse_size("materialising an endless iterator", float("inf"))
        super().check_materialise(value)


_FIXED = frozenset({range, tuple, str, bytes, frozenset})
