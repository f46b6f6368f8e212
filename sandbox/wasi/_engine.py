"""The process-wide Wasmtime state shared by every wasi driver: the Engine, the compiled guest,
the Linker that defines the guest's imports, the epoch ticker and the spare instances.

`get_runtime` makes it once (loading or building the guest, see `sandbox.wasi.build`).
`Runtime.new_instance` gives a fresh Store and guest instance with the isolation settings every
run relies on: no ambient WASI, the start-up fuel allowance, the Store memory limit, and the
epoch-deadline callback (`on_epoch_deadline`) that ends a run at its wall deadline or on cancel.
"""

from __future__ import annotations

import atexit
import collections
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

import wasmtime
from wasmtime import Store, WasiConfig
from wasmtime.component import Component, Linker, ResourceType

from sandbox.errors import ConfigurationError
from sandbox.limits import DEFAULT_LIMITS
from sandbox.wasi import _ffi, _clock, build
from sandbox.wasi._abi import FIRST_WARM_OPTIONS, WARM_INPUTS, call_run, call_with_handles_trampoline, host_call_function, output_trampoline
from sandbox.wasi._host import INTERFACE, SECRET_TYPE, RunState, drop_secret, host_sleep, tls
from sandbox.wasi._trap import TrapHandlers

_ticker: Any
try:
    from sandbox.wasi import _ticker
except ImportError:  # not built (pip install -e . / make setup builds it): `Ticker` uses a Python thread
    _ticker = None

STARTUP_FUEL = 200_000_000
"""Allowance for instantiating the guest (its start-up); not charged to the user's budget."""

SPARES = 2
"""Pre-instantiated guest instances kept ready (fresh: only the guest's start-up has run in
them). Instantiating the guest costs about 1 ms (mostly filling its function tables, which
componentize-py's dynamic linking does in a start function), so a background thread does it
ahead of time and also drops finished Stores. ``SANDBOX_WASI_SPARES=0`` turns this off."""

SPARE_MIN_MEMORY = 32 << 20
"""Runs whose memory limit is below this instantiate directly (the guest needs ~15 MiB to
start, and Wasmtime checks that against the run's own limit)."""

TICK_SECONDS = 0.005
"""Epoch tick period; wall limits are accurate to about one tick."""

_SPARE_LIMIT = DEFAULT_LIMITS.memory_bytes
"""Spares are made with the default memory limit; a run with another limit re-sets it
(``Store.set_limits`` costs ~0.2 ms, so it is skipped when the limit is the same)."""


def deadline_ticks(wall_seconds: float) -> int:
    """Epoch ticks that cover ``wall_seconds``, plus one."""
    return max(1, math.ceil(wall_seconds / TICK_SECONDS)) + 1


@_ffi.epoch_callback
def on_epoch_deadline(context, data, delta, kind):
    """Wasmtime calls this on the thread running a Store when its epoch deadline passes.

    During a run: trap when the job's deadline has passed or the run was cancelled (noting
    which on the run state), else continue for one more tick. Outside a run (start-up,
    warm-up): trap, as a plain epoch deadline would.
    """
    try:
        state: RunState | None = getattr(tls, "state", None)
        if state is not None and state.stop is None:
            if state.job.control.cancelled:
                state.stop = "cancelled"
            elif time.monotonic() >= state.deadline:
                state.stop = "wall"
            else:
                delta[0] = 1
                kind[0] = _ffi.EPOCH_CONTINUE
                return 0
    except BaseException:  # noqa: BLE001 - never unwind into C; trapping is the safe answer
        pass
    return _ffi.trap("sandbox: interrupt (the run's deadline passed or it was cancelled)")


class Ticker:
    """Advances the engine epoch every `TICK_SECONDS` while at least one run is active: on a
    native thread that never takes the GIL (`sandbox.wasi._ticker`) when that is built, else on
    a Python thread."""

    def __init__(self, engine: wasmtime.Engine, interval: float) -> None:
        self._engine = engine
        self._interval = interval
        self._cond = threading.Condition()
        self._active = 0
        self._thread: threading.Thread | None = None
        self._native: Any = None
        if _ticker is not None:
            try:
                _ffi.start_native_ticker(_ticker, engine, interval)
            except (TypeError, ValueError, RuntimeError) as exc:  # a stale build, or one serving another engine
                warnings.warn(f"sandbox.wasi._ticker unusable ({exc}); the epoch ticks on a Python thread "
                              "(rebuild it with `make setup`)", RuntimeWarning, stacklevel=2)
            else:
                self._native = _ticker

    def enter(self) -> None:
        if self._native is not None:
            self._native.enter()
            return
        with self._cond:
            self._active += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="sandbox-wasi-epoch", daemon=True)
                self._thread.start()
            self._cond.notify()

    def exit(self) -> None:
        if self._native is not None:
            self._native.exit()
            return
        with self._cond:
            self._active -= 1

    def _loop(self) -> None:
        engine, interval = self._engine, self._interval
        while True:
            with self._cond:
                while self._active == 0:
                    if not self._cond.wait(timeout=30.0) and self._active == 0:
                        self._thread = None  # idle for 30 s: stop; the next run restarts it
                        return
            time.sleep(interval)
            engine.increment_epoch()


@dataclass
class Instance:
    """A guest instance in its own Store, and what the driver tracks about it."""

    store: Store
    instance: Any
    func: Any
    startup_fuel: int
    memory_limit: int
    poisoned: bool = False



class Spares:
    """Fresh, warmed-up instances kept ready, made by one background thread that also closes
    used Stores.

    Refills happen after runs, never on a run's critical path: `take` only pops a ready
    instance (a run that finds none instantiates its own, it never waits for a refill), and
    the thread is woken when a run ends (`discard`, `run_finished`). Back-pressure: the thread
    starts a refill only while fewer runs are in progress than the machine has cores, so a
    refill uses a core no run needs, and under full load runs get every core and instantiate
    for themselves. Closing used Stores is never deferred (their memory must go back).
    """

    def __init__(self, rt: "Runtime", target: int) -> None:
        self._rt = rt
        self._target = target
        self._cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
        self._running = 0
        self._ready: collections.deque[Instance] = collections.deque()
        self._garbage: collections.deque[Store] = collections.deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._idle = threading.Condition(lock)
        """Notified (all waiters) whenever the thread finishes a piece of work or stops."""
        self._busy = False
        self._failures = 0
        self.warm_options: _ffi.StaticString = FIRST_WARM_OPTIONS
        """The options of the latest fresh run: a spare is warmed up with them (see
        `Runtime.new_instance`)."""
        self._thread: threading.Thread | None = None

    def _wake(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="sandbox-wasi-spares", daemon=True)
            self._thread.start()
        self._cond.notify()

    def stop(self) -> None:
        """Stop refilling (interpreter exit): no instantiation races with finalisation."""
        with self._cond:
            self._target = 0
            self._ready.clear()
            self._cond.notify()

    def run_started(self) -> None:
        with self._cond:
            self._running += 1

    def run_finished(self) -> None:
        """A run ended: the thread may refill now (it is woken only when there is work)."""
        with self._cond:
            self._running -= 1
            if self._target > 0 and len(self._ready) < self._target:
                self._wake()

    def take(self) -> "Instance | None":
        """A ready instance, or None (the caller instantiates its own). Never waits."""
        if self._target <= 0 or not self._ready:
            return None
        with self._cond:
            return self._ready.popleft() if self._ready else None

    def discard(self, store: Store) -> None:
        """Close ``store`` off the caller's critical path."""
        if self._target <= 0:
            store.close()
            return
        with self._cond:
            self._garbage.append(store)
            self._wake()

    @property
    def target(self) -> int:
        """How many spares are kept ready (`SPARES`, or ``SANDBOX_WASI_SPARES``; 0 after `stop`)."""
        return max(0, self._target)

    @property
    def available(self) -> int:
        """How many fresh instances wait to be taken right now."""
        return len(self._ready)

    def settle(self, timeout: float | None = None) -> bool:
        """Wait until the spares are all ready and the thread is idle (no refill or Store close
        running or queued); starts a refill that is due. True once settled; False at ``timeout``
        (seconds, None: no limit), or as soon as a refill fails (runs then instantiate their own)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            failures = self._failures
            while True:
                if not self._busy and not self._garbage and len(self._ready) >= self.target:
                    return True
                if self._failures != failures:
                    return False
                if not self._busy and (self._thread is None or not self._thread.is_alive()):
                    self._wake()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)

    def _refill_allowed(self) -> bool:
        return len(self._ready) < self._target and self._running < self._cores

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._idle.notify_all()
                if self._target <= 0 and not self._garbage:
                    self._thread = None
                    return
                while not self._garbage and not self._refill_allowed():
                    if not self._cond.wait(timeout=60.0) and not self._garbage and not self._refill_allowed():
                        self._thread = None
                        return
                store = self._garbage.popleft() if self._garbage else None
                self._busy = True
            if store is not None:
                store.close()
                continue
            try:
                inst = self._rt.new_instance(_SPARE_LIMIT, warm=self.warm_options)
            except Exception:  # noqa: BLE001 - runs fall back to instantiating themselves
                with self._cond:
                    self._busy = False
                    self._failures += 1
                    self._idle.notify_all()
                return
            with self._cond:
                if self._target <= 0:
                    inst.store.close()
                else:
                    self._ready.append(inst)


class Runtime:
    """Engine + compiled guest + Linker, shared by every driver in the process."""

    def __init__(self) -> None:
        self.engine = build.make_engine()
        self.trap_handlers = TrapHandlers()
        self.trap_handlers.capture()  # the Engine has just installed them
        self.component: Component = build.load_component(self.engine)
        self.linker = Linker(self.engine)
        self.linker.add_wasip2()
        clocks = [name for name in self.component.type.imports(self.engine) if name.startswith(_clock.MONOTONIC_CLOCK)]
        self.linker.allow_shadowing = True  # replace WASI's monotonic clock (see `sandbox.wasi._clock`)
        with self.linker.root() as root:
            for name in clocks:
                _clock.define(root, name)
            with root.add_instance(INTERFACE) as host:
                host.add_resource("secret", ResourceType.host(SECRET_TYPE), drop_secret)
                _ffi.add_function(host, "call", host_call_function)
                _ffi.add_function(host, "call-with-handles", call_with_handles_trampoline)
                _ffi.add_function(host, "output", output_trampoline)
                host.add_func("sleep", host_sleep)
        self.linker.allow_shadowing = False
        index = self.component.get_export_index("run")
        if index is None:
            raise build.WasiBuildError("the cached wasi guest has no `run` export; rebuild it with `python -m sandbox.wasi.build --force`")
        self.run_index = index
        spares = os.environ.get("SANDBOX_WASI_SPARES", str(SPARES))
        if not spares.isdigit():
            raise ConfigurationError(f"SANDBOX_WASI_SPARES={spares!r}: set it to a whole number of spare instances "
                                     "(0 turns spares off) or unset it")
        self.ticker = Ticker(self.engine, TICK_SECONDS)
        self.spares = Spares(self, int(spares))

    def enter(self) -> None:
        """A run starts: the epoch ticks, and the spares thread counts it (back-pressure)."""
        self.ticker.enter()
        self.spares.run_started()

    def exit(self) -> None:
        """The run ended (after its Store was discarded or kept)."""
        self.ticker.exit()
        self.spares.run_finished()

    def new_instance(self, memory_limit: int, *, warm: _ffi.StaticString | None = None) -> "Instance":
        """A fresh Store and guest instance (start-up fuel allowance, no deadline pressure).

        With ``warm`` (options text), the guest's runner then runs the program ``None`` once with
        those options (our code, no user input, nothing kept: a fresh run builds new globals; the
        warm-up reseeds ``random``, so the run need not), so that the pages the runner writes on
        its expression path are already copied when the real run comes; that is most of a fresh
        run's cost (copy-on-write faults on the pre-initialised heap), now paid off the critical
        path. A run with the same options also finds them parsed and its capability functions
        made; a run with other options drops those first (the guest keeps one configuration).
        The fuel it burns is start-up fuel, not the user's.

        Raises `WasmtimeError` when the guest cannot start (e.g. the memory limit is too low).
        """
        self.trap_handlers.ensure()
        store = Store(self.engine)
        _ffi.on_epoch_deadline(store, on_epoch_deadline)
        store.set_limits(memory_size=memory_limit)
        store.set_wasi(WasiConfig())  # nothing inherited, nothing preopened, no network
        store.set_epoch_deadline(deadline_ticks(60.0))
        store.set_fuel(STARTUP_FUEL)
        try:
            instance = self.linker.instantiate(store, self.component)
        except BaseException:
            store.close()
            raise
        func = instance.get_func(store, self.run_index)
        if warm is not None:
            try:
                call_run(store, func, "None", warm, WARM_INPUTS, [])
            except BaseException:
                store.close()
                raise
        startup = STARTUP_FUEL - store.get_fuel()
        return Instance(store, instance, func, startup, memory_limit)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                _runtime = Runtime()
                atexit.register(_runtime.spares.stop)
    return _runtime
