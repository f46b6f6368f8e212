"""The ``wasi`` runtime driver: CPython compiled to WebAssembly, run inside Wasmtime.

One process-wide `_Runtime` holds the Engine, the compiled guest component (see
`sandbox.wasi.build`) and a Linker with WASI p2 and the capability interface. Every run gets a
fresh Store and a fresh instance of the pre-initialised guest; a session keeps one instance.

Limits, all enforced by Wasmtime outside the guest:

- **CPU** — fuel. Instantiating the guest (interpreter start-up) gets its own allowance,
  `STARTUP_FUEL`; the user's budget, ``cpu_seconds * fuel_per_cpu_second``, is set only after
  that. Running out traps; the result is ``limit_exceeded`` / ``cpu``.
- **Wall** and **cancel** — epoch interruption. A ticker thread advances the engine epoch
  every `TICK_SECONDS` while any run is active; every Store has an epoch deadline of one
  tick and a deadline callback (`_on_epoch_deadline`) that, on the thread running the guest,
  traps the run once the job's deadline has passed or the host cancelled it, and otherwise
  lets it go on for one more tick. So a run stops within a tick or two of either. Capability
  calls and ``host.sleep`` are bounded by the same deadline on the host side.
  → ``limit_exceeded`` / ``wall``, or ``cancelled``.
- **Memory** — ``Store.set_limits(memory_size=memory_bytes)``: ``memory.grow`` fails past the
  limit and CPython raises ``MemoryError`` → ``limit_exceeded`` / ``memory``.
- **Recursion** — ``sys.setrecursionlimit`` in the guest; a Wasm stack overflow traps →
  ``limit_exceeded`` / ``recursion``.
- **Output** — the guest streams stdout/stderr through ``host.output`` as it writes them
  (coalesced to one call per couple of milliseconds), so output written before a trap is
  kept; the host trims to ``max_output_bytes`` (the guest's own cap is never trusted).
- **Data** — the guest's report and each capability call's arguments are size-checked on
  the raw string, before it is decoded or parsed (`runtimes.wire.report_bytes`,
  ``max_value_bytes``), then parsed with `runtimes.wire.loads_bounded` (node and depth caps):
  a guest that rewrote its own serialiser still cannot make the host parse more. Over a cap:
  ``limit_exceeded`` / ``value``.

Nothing ambient: the WasiConfig grants no preopened directories, an empty environment, no
arguments, empty stdin, stdout/stderr discarded (guest ``print`` is captured in the guest),
and no network (Wasmtime's WASI context allows no socket addresses unless
``inherit_network`` is called, which we never do). What WASI still gives by default: the
wall clock (real host time, full resolution) and random bytes from a cryptographically secure
host RNG (``os.urandom``, ``random``'s seed). The monotonic clock is the driver's own (host
time since this process started, 1 ns resolution): its clock *waits* would block inside
Wasmtime where no limit can stop them, so they are refused (see `sandbox.wasi._clock`). The guest's ``hash()``
salt is fixed at build time (pre-initialisation), identical in every instance.

Secret handles are WIT resources (``sandbox:guest/host.secret``) owned by the guest's
resource table: the guest cannot mint one, only pass the ones it was given. The host maps a
handle's representation back to the token for the current run only.
"""

from __future__ import annotations

import threading
import time

from wasmtime import WasmtimeError
from wasmtime.component import ResourceHost

from runtimes import wire
from sandbox.limits import DEFAULT_LIMITS, Limits
from sandbox.results import ErrorInfo
from sandbox.runtime import Job, Outcome, StreamedOutput, internal_error, limit_error
from sandbox.wasi._abi import ReportTooLarge, call_run, run_inputs, run_options
from sandbox.wasi._engine import SPARE_MIN_MEMORY, Instance, Runtime, get_runtime
from sandbox.wasi._host import SECRET_TYPE, RunState, decode_wire, reps, retire, tls
from sandbox.wasi._trap import classify, terminate_error

FUEL_PER_CPU_SECOND = 5_000_000_000
"""Fuel (≈ Wasm instructions) per CPU second of the guest interpreter.

Measured on the dev machine: CPython-in-Wasm burns 2.6 G fuel/s (sorting, memory-bound) to
8 G fuel/s (tight loops); typical code 6 G/s. So ``cpu_seconds`` is enforced to within about
a factor of two either way, deterministically (the same code always stops at the same point);
the wall-clock limit is the hard backstop.
"""
_MAX_FUEL = (1 << 63) - 1
"""The most fuel a run gets (Wasmtime's fuel is a signed 64-bit count); a larger ``cpu_seconds``
is capped here, and the wall-clock limit still ends the run."""

LAYERS = ("wasm", "wasi-no-ambient", "fuel", "epoch-deadline", "store-memory-limit")


class WasiDriver:
    """The ``wasi`` runtime. One instance serves many runs, from several threads at once."""

    name = "wasi"
    isolation = "wasm"
    layers = LAYERS

    def __init__(self, *, fuel_per_cpu_second: int = FUEL_PER_CPU_SECOND) -> None:
        self.fuel_per_cpu_second = fuel_per_cpu_second
        get_runtime()  # build or load the guest now: a missing toolchain fails here, clearly

    # -- instances -------------------------------------------------------------------------

    def _instantiate(self, rt: Runtime, limits: Limits, *, spare: bool = True) -> Instance | ErrorInfo:
        inst = rt.spares.take() if spare and limits.memory_bytes >= SPARE_MIN_MEMORY else None
        if inst is not None:
            if inst.memory_limit != limits.memory_bytes:
                inst.store.set_limits(memory_size=limits.memory_bytes)
                inst.memory_limit = limits.memory_bytes
            return inst
        try:
            return rt.new_instance(limits.memory_bytes)
        except WasmtimeError as exc:
            text = str(exc)
            if "memory" in text and ("limit" in text or "minimum" in text):
                return limit_error("memory", f"memory limit {limits.memory_bytes} bytes is below what the interpreter needs to start")
            if "fuel" in text:
                return ErrorInfo(kind="internal", type="InternalError", message="guest start-up exceeded its fuel allowance")
            raise

    def _call(self, rt: Runtime, inst: Instance, job: Job, *, session: bool, take: float = 0.0) -> Outcome:
        """Run ``job`` in ``inst``. With `Job.timings`, the outcome's phases are ``take`` (the
        seconds the caller spent getting ``inst``), ``call`` (the guest's run, host calls
        included) and ``decode`` (the guest's report read into the outcome), all measured here."""
        try:  # the component boundary carries only valid Unicode: a lone surrogate cannot reach the guest
            job.code.encode("utf-8")
        except UnicodeEncodeError as exc:  # what the other runtimes' compiler reports for it
            return Outcome(ok=False, error=ErrorInfo(kind="compile_error", type="SyntaxError", message=str(exc)),
                           layers=LAYERS)
        rt.trap_handlers.ensure()
        limits = job.limits
        budget = min(max(1, int(limits.cpu_seconds * self.fuel_per_cpu_second)), _MAX_FUEL)
        store = inst.store
        tokens: dict[int, str] = {}
        handles = []
        for spec in job.secrets:
            rep = next(reps)
            tokens[rep] = spec.token
            handles.append(ResourceHost.own(rep, SECRET_TYPE))
        output = StreamedOutput(job)
        state = RunState(job, tokens, job.control.deadline, output)
        options = run_options(job, session=session)
        if not session:
            rt.spares.warm_options = options  # the next spares are warmed up for runs like this one
        inputs = run_inputs(job)
        max_report = wire.report_bytes(limits.max_value_bytes, limits.max_output_bytes)
        previous = getattr(tls, "state", None)
        tls.state = state
        started_wall = time.monotonic()
        started_cpu = time.thread_time()
        trap: WasmtimeError | None = None
        text = None
        oversized: ReportTooLarge | None = None
        try:
            # the budget, and an epoch deadline of one tick: then every tick,
            # `sandbox.wasi._engine.on_epoch_deadline` decides
            text = call_run(store, inst.func, job.code, options, inputs, handles, max_report, budget)
        except WasmtimeError as exc:
            trap = exc
        except ReportTooLarge as exc:
            oversized = exc
        finally:
            tls.state = previous
            if tokens:
                retire(tokens)
            cpu = time.thread_time() - started_cpu
            wall = time.monotonic() - started_wall
        phases = {"take": take, "call": wall} if job.timings else None
        if trap is not None:
            inst.poisoned = True
            try:
                remaining = store.get_fuel()
            except WasmtimeError:
                remaining = 0
            error = classify(trap, state, limits, remaining, wall)
            return output.attach(Outcome(ok=False, error=error, cpu_seconds=cpu, layers=LAYERS, timings=phases))
        if oversized is not None:
            inst.poisoned = True  # the guest broke the report protocol: do not reuse its state
            return output.attach(Outcome(ok=False, error=limit_error("value", str(oversized)), cpu_seconds=cpu,
                                         layers=LAYERS, timings=phases))
        if phases is None:
            return self._outcome(text, state, output, max_report, cpu, None)
        decoding = time.perf_counter()
        outcome = self._outcome(text, state, output, max_report, cpu, phases)
        phases["decode"] = time.perf_counter() - decoding
        return outcome

    def _outcome(self, text: str | None, state: RunState, output: StreamedOutput, max_report: int,
                 cpu: float, timings: dict[str, float] | None) -> Outcome:
        """The run's outcome from the guest's report ``text`` (untrusted: size-capped, parsed
        within the wire caps, its error validated), carrying the output the host kept and
        ``timings`` (the outcome's own: the caller may still add to it)."""
        try:
            data = decode_wire(text, max_report) if isinstance(text, str) else None
            if not isinstance(data, dict):
                raise ValueError("not an object")
            error = data.get("error")
            error_info = ErrorInfo.model_validate(error) if error is not None else None
        except wire.ValueTooLarge as exc:
            return output.attach(Outcome(ok=False, error=limit_error("value", f"the guest's report: {exc}"),
                                         cpu_seconds=cpu, layers=LAYERS, timings=timings))
        except (ValueError, TypeError) as exc:
            malformed = internal_error(f"the wasi guest returned a malformed outcome: {exc}")
            return output.attach(malformed.model_copy(update={"timings": timings}))
        if state.terminate is not None:
            error_info = terminate_error(state.terminate)
        return output.outcome({
            "ok": error_info is None,
            "value": data.get("value") if error_info is None else None,
            "output_truncated": bool(data.get("output_truncated")),
            "error": error_info,
            "cpu_seconds": cpu,
            "peak_memory_bytes": None,
            "layers": LAYERS,
            "session_reset": False,
            "timings": timings,
        })

    # -- Driver protocol ---------------------------------------------------------------------

    def run(self, job: Job) -> Outcome:
        """Run ``job`` in a fresh Store and a fresh instance of the guest."""
        rt = get_runtime()
        rt.enter()
        try:
            taking = time.perf_counter() if job.timings else 0.0
            inst = self._instantiate(rt, job.limits)
            if isinstance(inst, ErrorInfo):
                return Outcome(ok=False, error=inst)
            try:
                return self._call(rt, inst, job, session=False,
                                  take=time.perf_counter() - taking if job.timings else 0.0)
            finally:
                rt.spares.discard(inst.store)
        except WasmtimeError as exc:
            return internal_error(f"wasmtime failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}")
        finally:
            rt.exit()

    def open_session(self) -> "WasiSession":
        return WasiSession(self)

    def warm(self, timeout: float | None = None) -> bool:
        """Wait until the process-wide spare instances are ready and nothing is being
        instantiated or closed in the background (`sandbox.wasi._engine.Spares.settle`)."""
        return get_runtime().spares.settle(timeout)

    def close(self) -> None:
        """Nothing to release per driver: the engine, compiled component and spare instances are
        shared by every driver in the process."""

    # -- diagnostics ---------------------------------------------------------------------------

    def startup_fuel(self, limits: Limits | None = None) -> int:
        """Fuel the guest's start-up (instantiation) consumed, for benchmarks and tests."""
        rt = get_runtime()
        inst = self._instantiate(rt, limits or DEFAULT_LIMITS, spare=False)
        assert not isinstance(inst, ErrorInfo)
        try:
            return inst.startup_fuel
        finally:
            inst.store.close()


class WasiSession:
    """One guest instance reused across runs, so globals persist. Runs are serialised.

    When a run traps (a CPU, wall or memory limit), the instance cannot be trusted any more:
    the next run starts a fresh one, and its globals are gone.
    """

    def __init__(self, driver: WasiDriver) -> None:
        self._driver = driver
        self._lock = threading.Lock()
        self._inst: Instance | None = None
        self._closed = False

    def run(self, job: Job) -> Outcome:
        with self._lock:
            if self._closed:
                return internal_error("the session is closed")
            rt = get_runtime()
            rt.enter()
            try:
                taking = time.perf_counter() if job.timings else 0.0
                reset = False
                if self._inst is not None and self._inst.poisoned:
                    self._inst.store.close()
                    self._inst = None
                    reset = True
                if self._inst is None:
                    inst = self._driver._instantiate(rt, job.limits)
                    if isinstance(inst, ErrorInfo):
                        return Outcome(ok=False, error=inst)
                    self._inst = inst
                if job.limits.memory_bytes != self._inst.memory_limit:
                    self._inst.store.set_limits(memory_size=job.limits.memory_bytes)
                    self._inst.memory_limit = job.limits.memory_bytes
                outcome = self._driver._call(rt, self._inst, job, session=True,
                                             take=time.perf_counter() - taking if job.timings else 0.0)
                return outcome.model_copy(update={"session_reset": True}) if reset else outcome
            except WasmtimeError as exc:
                if self._inst is not None:
                    self._inst.poisoned = True
                return internal_error(f"wasmtime failed: {exc}")
            finally:
                rt.exit()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._inst is not None:
                self._inst.store.close()
                self._inst = None
