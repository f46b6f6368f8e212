"""`ProcessDriver` and `ProcessSession`: runs in confined children (see `sandbox.process`).

The driver takes a ready child from the zygote (`sandbox.process.zygote_client`), writes the
job with its rlimit plan and CPU timer, answers the child's capability calls and output
frames, and maps what ended the run (a ``done`` frame, a limit, a death by signal) to an
`Outcome`. A fresh run's child is always ended and reaped before the run returns.
"""

from __future__ import annotations

import base64
import functools
import marshal
import os
import resource
import signal
import sys
import threading
import time
import types
from typing import Any

from pydantic import ValidationError

from runtimes import wire
from runtimes.process.framing import ChannelClosed
from runtimes.restricted.modules import OPTIONAL_MODULES
from runtimes.restricted.transformer import compile_guest
from runtimes.wire import Fault
from sandbox.capabilities import check_capability_name
from sandbox.errors import ConfigurationError, IsolationUnavailable
from sandbox.limits import LimitName
from sandbox.process.child_handle import (EXIT_TIMEOUT, KILLED_EXIT_TIMEOUT, PIN_SECONDS, ChildHandle, FrameTooLarge,
                                          reported_seconds)
from sandbox.process.rlimits import rlimit_plan
from sandbox.process.phases import PhaseClock
from sandbox.process.session import ProcessSession, waited_too_long
from sandbox.process.zygote_client import START_TIMEOUT, ZygoteClient
from sandbox.results import ErrorInfo
from sandbox.runtime import KNOWN_LAYERS, Job, Outcome, StreamedOutput, internal_error, limit_error, record_refusal

DEFAULT_UID = 65534
"""Unprivileged uid/gid the children drop to on a root host (``nobody`` unless configured
with ``SANDBOX_PROCESS_UID``). RLIMIT_NPROC=0 only binds a non-root uid."""

_CHILD_DEADLINE_MARGIN = 0.02
"""The child's own wall check fires this much before the host's kill, so that a wall limit
usually ends as a report (with the line number) rather than a kill."""
_CPU_TIMER_MARGIN = 0.01
"""The child's CPU timer fires this much past ``cpu_seconds``, so that the language layer's own
CPU check (which reports the line) usually ends the run first; the timer ends what it misses."""
_HOST_CPU_MARGIN = 0.03
"""The host kills a child whose CPU clock reads this much past ``cpu_seconds`` (only reached
when the child's own timer was disarmed by a guest without its language layer)."""
_HOST_CPU_RECHECK = 0.005
_HOST_COMPILE_BYTES = 8 << 10
"""Programs up to this size are compiled on the host (cached) and shipped as bytecode: a parse
of this size is cheap and bounded, and the in-process runtime parses the same on the host."""


class ProcessDriver:
    """The restricted runtime in confined child processes (see the module docstring).

    ``workers`` bounds concurrent runs (and the spares kept warm); ``require`` names layers
    that must be in force (names from `sandbox.runtime.KNOWN_LAYERS`), else `IsolationUnavailable` is raised here.
    ``uid`` overrides the dedicated unprivileged uid (root hosts only). ``_allow_raw`` is a
    test-only switch enabling `_run_raw` (plain ``exec`` under the same confinement);
    ``_disable`` (tests and ``benchmarks/ablation.py`` only) skips layers (``"seccomp"``,
    ``"landlock"``, ``"netns"``, and ``"uid"``: no uid drop, ``"rlimits"``: no per-run rlimits) so a
    test can show that each remaining layer holds on its own and the ablation can time each one.
    ``modules`` (default none) adds optional heavy modules (`OPTIONAL_MODULES`: numpy, and
    pandas, which implies numpy) to the import allowlist of this driver's children only; the
    zygote imports them (every submodule) and builds their proxies before confinement. An
    unknown name raises `ConfigurationError`; one that does not import on the host makes the zygote
    fail to start (`IsolationUnavailable`). ``capabilities`` are the guest names this driver's
    jobs usually grant (a `Sandbox`'s; a str, or a name that is not a valid capability name, raises
    `ConfigurationError`): children run their warm-up job with them, so that a job granting the
    same names finds its capability globals already bound.
    """

    name = "restricted"
    isolation = "process"

    def __init__(self, workers: int = 1, require: frozenset[str] | set[str] | tuple[str, ...] = frozenset(), *,
                 uid: int | None = None, spares: int | None = None, modules: tuple[str, ...] = (),
                 capabilities: tuple[str, ...] = (), _allow_raw: bool = False,
                 _disable: frozenset[str] = frozenset()) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ConfigurationError(f"workers must be a positive int, got {workers!r}")
        require = frozenset(require)
        unknown = require - KNOWN_LAYERS
        if unknown:
            raise ConfigurationError(f"unknown isolation layer(s) {sorted(unknown)}: choose from {sorted(KNOWN_LAYERS)}")
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            raise IsolationUnavailable("isolation='process' needs Linux >= 5.3 (pidfd_open)")
        self.workers = workers
        self.require = require
        self.modules = tuple(dict.fromkeys(modules))
        unknown_modules = set(self.modules) - set(OPTIONAL_MODULES)
        if unknown_modules:
            raise ConfigurationError(f"unknown optional module(s) {sorted(unknown_modules)}: choose from {list(OPTIONAL_MODULES)}")
        if "pandas" in self.modules and "numpy" not in self.modules:
            self.modules = ("numpy", *self.modules)  # pandas hands out ndarrays and imports numpy from C
        if uid is None and os.geteuid() == 0:
            uid = int(os.environ.get("SANDBOX_PROCESS_UID", DEFAULT_UID))
        self._uid = uid if os.geteuid() == 0 and "uid" not in _disable else None
        self._spares = spares if spares is not None else workers + 1
        try:
            names = tuple(dict.fromkeys(capabilities)) if not isinstance(capabilities, str) else None
        except TypeError:  # not iterable, or an unhashable item
            names = None
        if names is None or not all(isinstance(name, str) for name in names):
            raise ConfigurationError(f"capabilities must be a tuple of capability names, e.g. ('sql.query',), "
                                     f"got {capabilities!r}")
        for name in names:
            check_capability_name(name)
        self._capabilities = names
        self._allow_raw = _allow_raw
        self._disable = frozenset(_disable)
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        # Runs talking to their child right now: a fresh run pins its child to its CPU only when it is
        # the only one (`ChildHandle.pin_here`), so runs side by side spread over the CPUs.
        self._exchanging = 0
        self._exchanging_lock = threading.Lock()
        self._closed = False
        self._zygote: ZygoteClient | None = None
        zygote = self._ensure_zygote()
        # Check the layers of a real child, not just the zygote's promise.
        child: ChildHandle | None = None
        try:
            child = zygote.take(START_TIMEOUT)
            ready = child.wait_ready(time.monotonic() + START_TIMEOUT)
        except (ChannelClosed, TimeoutError) as exc:
            if child is not None:
                child.kill()
                child.close()
            self.close()
            raise IsolationUnavailable(f"the first process worker failed to start: {exc}") from None
        zygote.put_back(child)
        self.layers: tuple[str, ...] = tuple(ready.get("layers") or ())
        self.unavailable: dict[str, str] = dict(zygote.hello.get("errors") or {})
        missing = require - set(self.layers)
        if missing:
            reasons = "; ".join(f"{layer}: {self.unavailable.get(layer, 'not applied on this host')}"
                                for layer in sorted(missing))
            self.close()
            raise IsolationUnavailable(f"required isolation layer(s) unavailable: {reasons}")

    # -- pool ----------------------------------------------------------------------------
    def _ensure_zygote(self) -> ZygoteClient:
        with self._lock:
            if self._closed:
                raise RuntimeError("this ProcessDriver is closed")
            if self._zygote is None or self._zygote.dead:
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = ZygoteClient(spares=self._spares, uid=self._uid, allow_raw=self._allow_raw,
                                            disable=self._disable, modules=self.modules, capabilities=self._capabilities)
            return self._zygote

    def _take(self, deadline: float) -> ChildHandle:
        for _attempt in range(3):
            zygote = self._ensure_zygote()
            try:
                child = zygote.take(max(0.01, deadline - time.monotonic()))
            except ChannelClosed:
                continue
            try:
                ready = child.wait_ready(deadline)
            except ChannelClosed:  # a spare that died while waiting: replace it, take the next
                child.kill()
                child.close()
                zygote.replenish()
                continue
            except TimeoutError:
                child.kill()
                child.close()
                zygote.replenish()
                raise
            if not child.alive():  # it was ready, then something outside killed it
                child.close()
                zygote.replenish()
                continue
            missing = self.require - set(ready.get("layers") or ())
            if missing:
                child.kill()
                child.close()
                zygote.replenish()
                raise IsolationUnavailable(f"a process worker came up without {sorted(missing)}")
            return child
        raise ChannelClosed("could not obtain a process worker")

    # -- running -------------------------------------------------------------------------
    def run(self, job: Job) -> Outcome:
        return self._run(job, raw=False)

    def _run_raw(self, code: str, limits: Any, inputs: dict | None = None) -> Outcome:
        """TEST-ONLY: run plain ``exec(code)`` in a confined child (no language layer)."""
        if not self._allow_raw:
            raise RuntimeError("raw runs are disabled; construct the driver with _allow_raw=True")
        job = Job(run_id="raw", code=code, limits=limits, bridge=_NoBridge(), inputs=inputs or {})
        return self._run(job, raw=True)

    def _run(self, job: Job, *, raw: bool) -> Outcome:
        deadline = job.control.deadline
        clock = PhaseClock(job.timings)
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return waited_too_long()
        try:
            child = self._take_child(deadline)
            if isinstance(child, Outcome):
                return child
            clock.taken()
            try:
                outcome, _alive = self._run_on(child, job, deadline, session=False, raw=raw)
            finally:
                clock.exchanged()
                child.end(max(KILLED_EXIT_TIMEOUT, deadline + KILLED_EXIT_TIMEOUT - time.monotonic()))
                child.zygote.replenish()
            return clock.apply(outcome)
        finally:
            self._slots.release()

    def _take_child(self, deadline: float) -> ChildHandle | Outcome:
        """`_take`, its failures as the run's outcome: the wall limit when no child came by
        ``deadline``, an internal error when the zygote failed."""
        try:
            return self._take(deadline)
        except TimeoutError:
            return waited_too_long()
        except (ChannelClosed, OSError) as exc:
            return internal_error(f"no process worker: {exc}")

    def _run_on(self, child: ChildHandle, job: Job, deadline: float, *, session: bool, raw: bool = False
                ) -> tuple[Outcome, bool]:
        """Run ``job`` on ``child``; returns the outcome and whether the child is still usable.

        The output the child streams while it runs is kept here, so that it survives the child
        being killed (a limit, a cancel); the outcome carries it whatever ended the run.
        """
        output = StreamedOutput(job)
        remove = job.control.on_cancel(lambda: child.kill("cancelled"))
        with self._exchanging_lock:
            self._exchanging += 1
        try:
            outcome, alive = self._exchange(child, job, deadline, output, session=session, raw=raw)
        finally:
            with self._exchanging_lock:
                self._exchanging -= 1
            remove()
        return output.attach(outcome), alive

    def _exchange(self, child: ChildHandle, job: Job, deadline: float, output: StreamedOutput, *, session: bool,
                  raw: bool) -> tuple[Outcome, bool]:
        limits = job.limits
        layers = tuple(child.ready.get("layers") or ()) if child.ready else ()
        if raw:
            layers = tuple(layer for layer in layers if layer not in ("restricted-python", "alloc-cap"))
        # The child's CPU clock before the job, read here rather than taken from its reports (a
        # session child's are its word); a child that already died fails the run whatever this reads.
        cpu_start = None if "rlimits" in self._disable else child.cpu_clock(check_alive=False)
        try:
            if "rlimits" in self._disable:
                plan = {}
            elif child.limits_plan is None:
                vm, data = child.zygote.child_size(child.pid)
                child.limits_plan = rlimit_plan(
                    vm_bytes=vm, data_bytes=data, cpu_used=child.cpu_total, memory_bytes=limits.memory_bytes,
                    cpu_seconds=limits.cpu_seconds, nproc=self._uid is not None, cpu_hard=not session)
                plan = child.limits_plan
            else:  # session: the memory ceiling stays, the CPU budget is cumulative
                plan = {resource.RLIMIT_CPU: rlimit_plan(
                    vm_bytes=0, data_bytes=0, cpu_used=child.cpu_total if cpu_start is None else cpu_start, memory_bytes=1,
                    cpu_seconds=limits.cpu_seconds, cpu_hard=False)[resource.RLIMIT_CPU]}
            child.send(deadline=deadline, message={"t": "job", "code": job.code, "limits": limits.model_dump(), "raw": raw, "session": session,
                        "bytecode": None if raw else _bytecode(job.code),
                        "rlimits": [[res, soft, hard] for res, (soft, hard) in plan.items()],
                        "capabilities": list(job.capabilities), "inputs": wire.encode(dict(job.inputs)),
                        "secrets": [[s.name, s.token, s.description] for s in job.secrets],
                        "cpu_timer": None if "rlimits" in self._disable else limits.cpu_seconds + _CPU_TIMER_MARGIN,
                        "deadline": deadline - _CHILD_DEADLINE_MARGIN, "timings": job.timings},
                       pin=self._exchanging == 1 and not session)
        except (OSError, ValueError, TypeError) as exc:
            child.kill()
            return self._death(child, job, f"could not start the run: {exc}"), False
        max_frame = wire.report_bytes(limits.max_value_bytes, limits.max_output_bytes)
        cpu_budget = limits.cpu_seconds + _HOST_CPU_MARGIN
        # A single-threaded child cannot use more CPU than wall time: no need to read its
        # clock before the budget has passed on the wall clock.
        cpu_check = None if "rlimits" in self._disable else time.monotonic() + cpu_budget
        if cpu_start is None:
            cpu_start = child.cpu_total
        unpin_at = time.monotonic() + PIN_SECONDS if child.pinned else None
        while True:
            wait_until = cpu_check if cpu_check is not None and cpu_check < deadline else deadline
            if unpin_at is not None and unpin_at < wait_until:
                wait_until = unpin_at
            try:
                msg = child.recv(wait_until, max_frame)
            except TimeoutError:
                if unpin_at is not None and time.monotonic() >= unpin_at:
                    child.unpin()
                    unpin_at = None
                    continue
                if wait_until < deadline:
                    used = child.cpu_clock()
                    if used is None:
                        cpu_check = None  # it exited: the next recv reports how
                    elif used - cpu_start >= cpu_budget:
                        child.kill("cpu")
                        child.wait_exit(KILLED_EXIT_TIMEOUT)
                        return self._with_usage(child, _limit("cpu", f"CPU limit of {limits.cpu_seconds:g} s exceeded"),
                                                layers), False
                    else:
                        cpu_check = time.monotonic() + max(_HOST_CPU_RECHECK, cpu_budget - (used - cpu_start))
                    continue
                child.kill("wall")
                child.wait_exit(KILLED_EXIT_TIMEOUT)
                return self._with_usage(child, _limit("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded"),
                                        layers), False
            except FrameTooLarge as exc:
                child.kill()
                child.wait_exit()
                return self._with_usage(child, _limit("value", str(exc)), layers), False
            except ChannelClosed as exc:
                if not child.exited.wait(1.0):  # closed its channel but lives on: end it
                    child.kill()
                return self._death(child, job, str(exc), layers), False
            kind = msg.get("t")
            if kind == "out":
                output.add(msg.get("s"), msg.get("text"))
            elif kind == "call":
                reply = self._call(job, msg)
                try:
                    child.send(reply, deadline)
                except OSError:
                    pass  # the child died; the next recv reports it
            elif kind == "done":
                child.cpu_total = reported_seconds(msg.get("cpu_total")) or child.cpu_total
                return self._outcome(msg, layers, timings=job.timings), True
            else:
                child.kill()
                return self._death(child, job, f"unexpected message {kind!r} from the child", layers), False

    @staticmethod
    def _call(job: Job, msg: dict) -> dict:
        name, args, kwargs = msg.get("name"), msg.get("args"), msg.get("kwargs")
        if not isinstance(name, str) or not isinstance(args, list) or not isinstance(kwargs, dict):
            fault = Fault("TypeError", "malformed capability call")
            record_refusal(job.bridge, name, fault)
            return {"t": "fault", "fault": fault.to_wire()}
        try:
            result = job.bridge.call(name, args, kwargs)
            try:
                return {"t": "ret", "value": wire.encode(result, max_bytes=job.limits.max_value_bytes)}
            except wire.WireError as exc:
                raise Fault("CapabilityError", f"{name}() returned data that cannot reach the guest: {exc}") from None
        except Fault as fault:
            return {"t": "fault", "fault": fault.to_wire()}
        except Exception as exc:  # noqa: BLE001 - a bridge bug must not kill the run loop
            return {"t": "fault", "fault": Fault("CapabilityError", f"capability {name!r} failed: "
                                                                    f"{type(exc).__name__}").to_wire()}

    @staticmethod
    def _outcome(msg: dict, layers: tuple[str, ...], *, timings: bool) -> Outcome:
        data = msg.get("outcome")
        if not isinstance(data, dict):
            return internal_error("the child sent no outcome")
        try:
            error = data.get("error")
            return Outcome(
                ok=bool(data.get("ok")) and not error, value=data.get("value") if not error else None,
                stdout=str(data.get("stdout") or ""), stderr=str(data.get("stderr") or ""),
                output_truncated=bool(data.get("output_truncated")),
                error=ErrorInfo.model_validate(error) if error else None,
                cpu_seconds=reported_seconds(msg.get("cpu")) or 0.0, peak_memory_bytes=int(msg.get("maxrss") or 0) or None,
                layers=layers, timings=_child_timings(msg.get("timings")) if timings else None)
        except (ValidationError, TypeError, ValueError, ArithmeticError) as exc:
            return internal_error(f"the child sent a malformed outcome: {exc}")

    def _with_usage(self, child: ChildHandle, outcome: Outcome, layers: tuple[str, ...]) -> Outcome:
        info = child.exit_info or {}
        cpu = float(info.get("utime", 0.0)) + float(info.get("stime", 0.0))
        return outcome.model_copy(update={
            "cpu_seconds": max(0.0, cpu - child.cpu_total) if info else None,
            "peak_memory_bytes": int(info.get("maxrss") or 0) or None, "layers": layers})

    def _death(self, child: ChildHandle, job: Job, why: str, layers: tuple[str, ...] = ()) -> Outcome:
        """Map a child that ended without an outcome to a limit or an internal error."""
        info = child.wait_exit(KILLED_EXIT_TIMEOUT if child.kill_reason in ("wall", "cancelled", "cpu")
                               else EXIT_TIMEOUT)
        if child.kill_reason == "wall":
            return self._with_usage(child, _limit("wall", "wall-clock limit exceeded"), layers)
        if child.kill_reason == "cpu":
            return self._with_usage(child, _limit("cpu", f"CPU limit of {job.limits.cpu_seconds:g} s exceeded"), layers)
        if child.kill_reason == "cancelled":
            return self._with_usage(child, Outcome(ok=False, error=ErrorInfo(
                kind="cancelled", type="Cancelled", message="the run was cancelled by the host")), layers)
        if not info or info.get("status", -1) < 0:
            return self._with_usage(child, internal_error(f"the process worker was lost ({why})"), layers)
        status = int(info["status"])
        cpu = float(info.get("utime", 0.0)) + float(info.get("stime", 0.0)) - child.cpu_total
        limits = job.limits
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            if sig in (signal.SIGXCPU, signal.SIGPROF) or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds * 0.99):
                result = _limit("cpu", f"CPU limit of {limits.cpu_seconds:g} s exceeded")
            elif sig == signal.SIGKILL and child.kill_reason == "protocol":
                result = internal_error(f"the process worker was stopped by the host ({why})")
            elif sig == signal.SIGKILL:
                result = _limit("memory", "the process worker was killed (out of memory)")
            elif sig in (signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT) and self._near_memory_limit(child, info):
                result = _limit("memory", f"memory limit exceeded (worker died with {signal.Signals(sig).name})")
            elif sig == signal.SIGXFSZ:
                result = internal_error("the guest tried to write a file (SIGXFSZ)")
            else:
                result = internal_error(f"the process worker died with {signal.Signals(sig).name}")
        else:
            result = internal_error(f"the process worker exited with status {os.WEXITSTATUS(status)} ({why})")
        return self._with_usage(child, result, layers)

    @staticmethod
    def _near_memory_limit(child: ChildHandle, info: dict) -> bool:
        plan = child.limits_plan or {}
        as_limit = plan.get(resource.RLIMIT_AS, (0, 0))[0]
        return bool(as_limit) and int(info.get("maxrss") or 0) >= 0.5 * as_limit

    # -- sessions ------------------------------------------------------------------------
    def open_session(self) -> ProcessSession:
        return ProcessSession(self)

    def warm(self, timeout: float | None = None) -> bool:
        """Wait until the zygote's pre-forked children are all up, confined and waiting, with
        no fork or warm-up running (`ZygoteClient.settle`); restarts a zygote that died."""
        return self._ensure_zygote().settle(timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            zygote, self._zygote = self._zygote, None
        if zygote is not None:
            zygote.close()

    def __enter__(self) -> "ProcessDriver":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


class _NoBridge:
    def call(self, name: str, args: list, kwargs: dict) -> Any:
        raise Fault("CapabilityError", "no capabilities in raw runs")


@functools.lru_cache(maxsize=128)
def _bytecode(source: str) -> str | None:
    """``source`` compiled by the language layer's compiler here, as base64 of `marshal`, for
    the child to run without compiling (a cold compiler in a fresh child costs a few hundred
    microseconds per run). None, and the child compiles, over `_HOST_COMPILE_BYTES` (this
    parse runs outside the child's limits) or when it does not compile (the child then reports
    the error exactly as it would have: a lone surrogate, which the frame carries, included)."""
    if (not isinstance(source, str) or len(source) > _HOST_COMPILE_BYTES
            or len(source.encode("utf-8", "surrogatepass")) > _HOST_COMPILE_BYTES):
        return None
    code = compile_guest(source).code
    if not isinstance(code, types.CodeType):
        return None
    return base64.b64encode(marshal.dumps(code)).decode("ascii")


_CHILD_PHASES = frozenset(f"child.{name}" for name in ("limits", "program", "compile", "setup", "execute", "finish", "report"))
"""The phases a child reports (`runtimes.process.child`)."""


def _child_timings(reported: object) -> dict[str, float] | None:
    """The phases a child reported in its ``done`` frame, as far as they are the known phase
    names with finite non-negative seconds (a child's report is its word: anything else is
    dropped, never trusted); None when it reported none."""
    if not isinstance(reported, dict):
        return None
    phases = {name: reported_seconds(seconds) for name, seconds in reported.items() if name in _CHILD_PHASES}
    return {name: seconds for name, seconds in phases.items() if seconds is not None}


def _limit(limit: LimitName, message: str) -> Outcome:
    return Outcome(ok=False, error=limit_error(limit, message))
