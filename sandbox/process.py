"""Process confinement for the restricted runtime: `ProcessDriver` (``isolation="process"``).

Each run executes in a child process forked from a warm zygote (`runtimes.process.zygote`,
a fresh interpreter started once per driver, never a fork of this multi-threaded host):

- the zygote sits in its own network namespace (only ``lo``, down) and, where the kernel
  has Landlock, may only read the Python stdlib, site-packages and the ``runtimes`` package;
- each child is pre-forked and pre-warmed (it already ran a dummy restricted job), dropped
  to a dedicated unprivileged uid (root hosts), and has loaded a seccomp allowlist (default
  EPERM; no sockets, exec, process or thread creation, ptrace, mounts, bpf, io_uring, ...)
  *before* it is handed a job;
- per run the host sends, with the job, the rlimits the child sets on itself before running
  the code: AS and DATA at the warm child's size (/proc/<pid>/statm, read once per zygote:
  all children are identical) + ``memory_bytes`` -- RLIMIT_AS counts the interpreter's own
  ~100 MiB of mappings, so an absolute ``memory_bytes`` would be meaningless -- CPU at
  ceil(used + ``cpu_seconds``) whole seconds (SIGXCPU; hard = soft + 1 s, SIGKILL), NOFILE
  64, FSIZE 0, CORE 0, NPROC 0 (soft == hard except CPU; the child is already unprivileged,
  so the guest can lower them but never raise them). The host cannot set them from outside
  with prlimit(2): that needs CAP_SYS_RESOURCE, which this VM's root lacks;
- per run the child also arms ``setitimer(ITIMER_PROF)`` with ``cpu_seconds`` (+10 ms, so the
  language layer's own check usually reports first): SIGPROF, whose default action the child
  cannot change (seccomp denies ``rt_sigaction``), ends it within a scheduler tick of its
  budget, where RLIMIT_CPU alone would step in whole seconds. A guest without its language
  layer could re-arm that timer, so the host also reads the child's CPU clock once the budget
  has passed on the wall clock, and kills it past ``cpu_seconds`` + 30 ms;
- usage: CPU time and peak RSS (``ru_maxrss``, which includes the ~16 MiB the child
  inherits) come from the child's own ``getrusage`` when it reports, and from the zygote's
  ``wait4`` when it dies; a compromised child could misreport its own usage, not its limits;
- capability calls come back over that channel; the host answers them through
  ``job.bridge`` (capabilities and secrets never enter the child);
- at the wall deadline the host SIGKILLs the child through its pidfd; a death by signal is
  mapped to ``limit_exceeded`` (cpu, wall, memory) or ``internal``; the pool replaces the
  child and keeps serving;
- at the end of every fresh run (and when a session closes or loses its child) the host
  SIGKILLs the child through its pidfd and waits until the zygote has reaped it, whatever the
  child reported: a ``done`` frame is the child's word, not proof that it stopped.

``Outcome.layers`` lists only the layers actually in force for that run; a layer in
``require`` that cannot be applied raises `IsolationUnavailable` at construction.
"""

from __future__ import annotations

import json
import math
import os
import queue
import resource
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from pydantic import ValidationError

from runtimes.process.framing import MAX_FRAME, ChannelClosed, decode, encode
from runtimes.restricted.modules import OPTIONAL_MODULES
from runtimes import wire
from runtimes.wire import Fault
from sandbox.limits import LimitName
from sandbox.errors import IsolationUnavailable
from sandbox.results import ErrorInfo
from sandbox.runtime import KNOWN_LAYERS, Job, Outcome, StreamedOutput, internal_error, limit_error, record_refusal

DEFAULT_UID = 65534
"""Unprivileged uid/gid the children drop to on a root host (``nobody`` unless configured
with ``SANDBOX_PROCESS_UID``). RLIMIT_NPROC=0 only binds a non-root uid."""

_PAGE = os.sysconf("SC_PAGE_SIZE")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_START_TIMEOUT = 60.0
_EXIT_TIMEOUT = 5.0
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
_KILLED_EXIT_TIMEOUT = 0.25
"""How long to wait for the usage of a child the host killed (the run's result does not wait for more)."""
_ONE_THREAD = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
"""numpy's BLAS must not start a thread pool in the zygote (it forks) or try to in a child (seccomp)."""


class _FrameTooLarge(ChannelClosed):
    """The child sent a message over the size, node or depth cap (it was not parsed)."""


class _Child:
    """One child of the zygote, as the host sees it: its channel and its pidfd."""

    def __init__(self, zygote: "_Zygote", pid: int, chan: socket.socket, pidfd: int) -> None:
        self.zygote = zygote
        self.pid = pid
        self.chan = chan
        self.pidfd = pidfd
        self.ready: dict | None = None
        self.exited = threading.Event()
        self.exit_info: dict | None = None
        self.kill_reason: str | None = None  # "wall", "cpu", "cancelled", "protocol" or "ended" once killed
        self.closed = False
        self.cpu_total = 0.0
        self.limits_plan: dict[int, tuple[int, int]] | None = None

    # -- channel -------------------------------------------------------------------------
    def _recv_exact(self, size: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.chan.settimeout(remaining)
            try:
                chunk = self.chan.recv(min(size - len(buf), 1 << 20))
            except socket.timeout:
                raise TimeoutError from None
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not chunk:
                raise ChannelClosed("child closed its channel")
            buf += chunk
        return bytes(buf)

    def recv(self, deadline: float, max_frame: int = MAX_FRAME) -> dict:
        """One message from the child, parsed within the wire caps (`_FrameTooLarge` over them)."""
        size = int.from_bytes(self._recv_exact(4, deadline), "big")
        if size > max_frame:
            raise _FrameTooLarge(f"the worker sent a {size}-byte message (cap {max_frame} bytes)")
        try:
            return decode(self._recv_exact(size, deadline), max_frame)
        except wire.ValueTooLarge as exc:
            raise _FrameTooLarge(f"the worker sent a message over the wire caps: {exc}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChannelClosed(f"child sent a malformed frame: {exc}") from None

    def readable(self, deadline: float) -> bool:
        """Wait until the channel has data (or was closed) or ``deadline``; True if it has."""
        poller = select.poll()
        poller.register(self.chan, select.POLLIN)
        return bool(poller.poll(max(0.0, deadline - time.monotonic()) * 1000))

    def cpu_clock(self) -> float | None:
        """The child's CPU time (user + system) from its process CPU clock, read from outside;
        None once it has exited (its pid may then name another process) or the clock is gone."""
        try:
            value = time.clock_gettime((~self.pid << 3) | 2)  # CPUCLOCK_SCHED of the process
        except OSError:
            return None
        return value if self.alive() else None

    def send(self, message: dict, deadline: float | None = None) -> None:
        """Write ``message``; raises `OSError` (``TimeoutError``) if the child has not taken it
        all by ``deadline``."""
        self.chan.settimeout(None if deadline is None else max(0.001, deadline - time.monotonic()))
        self.chan.sendall(encode(message))

    def wait_ready(self, deadline: float) -> dict:
        if self.ready is None:
            msg = self.recv(deadline)
            if msg.get("t") != "ready":
                raise ChannelClosed(f"expected ready, got {msg.get('t')!r}")
            self.ready = msg
            self.cpu_total = float(msg.get("cpu") or 0.0)
        return self.ready

    # -- lifecycle -----------------------------------------------------------------------
    def kill(self, reason: str = "protocol") -> None:
        if self.kill_reason is None:
            self.kill_reason = reason
        if not self.closed:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except OSError:
                pass

    def alive(self) -> bool:
        """False once the child has exited (its pidfd turns readable), even before it is reaped."""
        if self.closed or self.exited.is_set():
            return False
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return not poller.poll(0)

    def wait_exit(self, timeout: float = _EXIT_TIMEOUT) -> dict | None:
        self.exited.wait(timeout)
        return self.exit_info

    def end(self, timeout: float = _EXIT_TIMEOUT) -> None:
        """Kill the child, wait until the zygote has reaped it, and close it. After ``timeout``
        the wait goes on in the background (the child is already sent SIGKILL).

        Used at the end of every fresh run and session, whatever the child reported: a child
        whose language layer broke can write its own ``done`` frame and keep running, so its
        report is never taken as proof that it exited.
        """
        if self.closed:
            return
        if not self.exited.is_set():
            self.kill("ended")
            if not self.exited.wait(timeout):  # killed, not reaped yet: finish off the run's path
                threading.Thread(target=self._close_when_reaped, name="sandbox-reap", daemon=True).start()
                return
        self.close()

    def _close_when_reaped(self) -> None:
        self.exited.wait(_EXIT_TIMEOUT)
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.chan.close()
            os.close(self.pidfd)


class _Zygote:
    """The zygote process, its control socket and the reader thread that collects spares."""

    def __init__(self, *, spares: int, uid: int | None, allow_raw: bool, disable: frozenset[str],
                 modules: tuple[str, ...] = ()) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        boot = (f"import sys; sys.path.insert(0, {_ROOT!r}); "
                "from runtimes.process.zygote import main; main()")
        cmd = [sys.executable, "-I", "-B", "-c", boot, "--ctrl-fd", str(theirs.fileno()), "--spares", str(spares)]
        if uid is not None:
            cmd += ["--uid", str(uid), "--gid", str(uid)]
        if allow_raw:
            cmd.append("--allow-raw")
        cmd += [f"--no-{layer}" for layer in sorted(disable & {"seccomp", "landlock", "netns"})]
        for name in modules:
            cmd += ["--module", name]
        debug = os.environ.get("SANDBOX_PROCESS_DEBUG")
        self.proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=None if debug else subprocess.DEVNULL,
                                     env={"LC_ALL": "C.UTF-8", **_ONE_THREAD}, cwd="/", close_fds=True)
        theirs.close()
        self.sock = ours
        self.sock.settimeout(_START_TIMEOUT)
        try:
            hello = json.loads(self.sock.recv(1 << 16) or b"null")
        except (OSError, ValueError):
            hello = None
        finally:
            self.sock.settimeout(None)
        if not isinstance(hello, dict) or hello.get("t") != "hello":
            self.close()
            raise IsolationUnavailable("the process zygote failed to start (set SANDBOX_PROCESS_DEBUG=1 to see why)")
        self.hello = hello
        self.pid = int(hello["pid"])
        self.spares: queue.Queue[_Child | None] = queue.Queue()
        self.children: dict[int, _Child] = {}
        self.lock = threading.Lock()
        self.dead = False
        self.size: tuple[int, int] | None = None
        self.reader = threading.Thread(target=self._read_loop, name="sandbox-zygote-reader", daemon=True)
        self.reader.start()

    def _read_loop(self) -> None:
        try:
            while True:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 1 << 16, 2)
                if not data:
                    for fd in fds:
                        os.close(fd)
                    break
                msg = json.loads(data)
                if msg.get("t") == "spare" and len(fds) == 2:
                    child = _Child(self, int(msg["pid"]), socket.socket(fileno=fds[0]), fds[1])
                    with self.lock:
                        self.children[child.pid] = child
                    self.spares.put(child)
                elif msg.get("t") == "exit":
                    with self.lock:
                        child = self.children.pop(int(msg["pid"]), None)
                    if child is not None:
                        child.exit_info = msg
                        child.exited.set()
                else:
                    for fd in fds:
                        os.close(fd)
        except (OSError, ValueError):
            pass
        finally:
            self.dead = True
            with self.lock:
                orphans = list(self.children.values())
                self.children.clear()
            for child in orphans:
                child.exited.set()
            self.spares.put(None)

    def take(self, timeout: float) -> _Child:
        """The next pre-forked child. Call `replenish` once the run is over."""
        if self.dead:
            raise ChannelClosed("the zygote is gone")
        try:
            child = self.spares.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError("no process worker became available in time") from None
        if child is None:
            self.spares.put(None)
            raise ChannelClosed("the zygote is gone")
        return child

    def replenish(self) -> None:
        """Ask the zygote for one more spare (done after a run, so the fork and warm-up of the
        replacement do not compete with the run for CPU; spares = workers + 1 covers the next run)."""
        try:
            self.sock.send(b"F")
        except OSError:
            pass

    def child_size(self, pid: int) -> tuple[int, int]:
        """(VmSize, data) of a warm child, read from /proc once per zygote: every child is forked
        from the same frozen zygote and ran the same warm-up, so they have the same size."""
        if self.size is None:
            self.size = _statm(pid)
        return self.size

    def put_back(self, child: _Child) -> None:
        self.spares.put(child)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        try:
            self.proc.wait(timeout=_EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        reader = getattr(self, "reader", None)
        if reader is not None and reader is not threading.current_thread():
            reader.join(timeout=_EXIT_TIMEOUT)
        spares = getattr(self, "spares", None)
        while spares is not None:
            try:
                child = spares.get_nowait()
            except queue.Empty:
                break
            if child is not None:
                child.close()


def _statm(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/statm", "rb") as handle:
        fields = handle.read().split()
    return int(fields[0]) * _PAGE, int(fields[5]) * _PAGE


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
    unknown name raises `ValueError`; one that does not import on the host makes the zygote
    fail to start (`IsolationUnavailable`).
    """

    name = "restricted"
    isolation = "process"

    def __init__(self, workers: int = 1, require: frozenset[str] | set[str] | tuple[str, ...] = frozenset(), *,
                 uid: int | None = None, spares: int | None = None, modules: tuple[str, ...] = (),
                 _allow_raw: bool = False, _disable: frozenset[str] = frozenset()) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be a positive int, got {workers!r}")
        require = frozenset(require)
        unknown = require - KNOWN_LAYERS
        if unknown:
            raise ValueError(f"unknown isolation layer(s) {sorted(unknown)}: choose from {sorted(KNOWN_LAYERS)}")
        if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
            raise IsolationUnavailable("isolation='process' needs Linux >= 5.3 (pidfd_open)")
        self.workers = workers
        self.require = require
        self.modules = tuple(dict.fromkeys(modules))
        unknown_modules = set(self.modules) - set(OPTIONAL_MODULES)
        if unknown_modules:
            raise ValueError(f"unknown optional module(s) {sorted(unknown_modules)}: choose from {list(OPTIONAL_MODULES)}")
        if "pandas" in self.modules and "numpy" not in self.modules:
            self.modules = ("numpy", *self.modules)  # pandas hands out ndarrays and imports numpy from C
        if uid is None and os.geteuid() == 0:
            uid = int(os.environ.get("SANDBOX_PROCESS_UID", DEFAULT_UID))
        self._uid = uid if os.geteuid() == 0 and "uid" not in _disable else None
        self._spares = spares if spares is not None else workers + 1
        self._allow_raw = _allow_raw
        self._disable = frozenset(_disable)
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._closed = False
        self._zygote: _Zygote | None = None
        zygote = self._ensure_zygote()
        # Check the layers of a real child, not just the zygote's promise.
        child = zygote.take(_START_TIMEOUT)
        try:
            ready = child.wait_ready(time.monotonic() + _START_TIMEOUT)
        except (ChannelClosed, TimeoutError) as exc:
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
    def _ensure_zygote(self) -> _Zygote:
        with self._lock:
            if self._closed:
                raise RuntimeError("this ProcessDriver is closed")
            if self._zygote is None or self._zygote.dead:
                if self._zygote is not None:
                    self._zygote.close()
                self._zygote = _Zygote(spares=self._spares, uid=self._uid, allow_raw=self._allow_raw,
                                       disable=self._disable, modules=self.modules)
            return self._zygote

    def _take(self, deadline: float) -> _Child:
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
        if not self._slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return _limit("wall", "wall-clock limit exceeded while waiting for a process worker")
        try:
            try:
                child = self._take(deadline)
            except TimeoutError:
                return _limit("wall", "wall-clock limit exceeded while waiting for a process worker")
            except (ChannelClosed, OSError) as exc:
                return internal_error(f"no process worker: {exc}")
            try:
                outcome, _alive = self._run_on(child, job, deadline, session=False, raw=raw)
                return outcome
            finally:
                child.end(max(_KILLED_EXIT_TIMEOUT, deadline + _KILLED_EXIT_TIMEOUT - time.monotonic()))
                child.zygote.replenish()
        finally:
            self._slots.release()

    def _run_on(self, child: _Child, job: Job, deadline: float, *, session: bool, raw: bool = False
                ) -> tuple[Outcome, bool]:
        """Run ``job`` on ``child``; returns the outcome and whether the child is still usable.

        The output the child streams while it runs is kept here, so that it survives the child
        being killed (a limit, a cancel); the outcome carries it whatever ended the run.
        """
        output = StreamedOutput(job)
        remove = job.control.on_cancel(lambda: child.kill("cancelled"))
        try:
            outcome, alive = self._exchange(child, job, deadline, output, session=session, raw=raw)
        finally:
            remove()
        return output.attach(outcome), alive

    def _exchange(self, child: _Child, job: Job, deadline: float, output: StreamedOutput, *, session: bool,
                  raw: bool) -> tuple[Outcome, bool]:
        limits = job.limits
        layers = tuple(child.ready.get("layers") or ()) if child.ready else ()
        if raw:
            layers = tuple(layer for layer in layers if layer not in ("restricted-python", "alloc-cap"))
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
                    vm_bytes=0, data_bytes=0, cpu_used=child.cpu_total, memory_bytes=1,
                    cpu_seconds=limits.cpu_seconds, cpu_hard=False)[resource.RLIMIT_CPU]}
            child.send(deadline=deadline, message={"t": "job", "code": job.code, "limits": limits.model_dump(), "raw": raw, "session": session,
                        "rlimits": [[res, soft, hard] for res, (soft, hard) in plan.items()],
                        "capabilities": list(job.capabilities), "inputs": wire.encode(dict(job.inputs)),
                        "secrets": [[s.name, s.token, s.description] for s in job.secrets],
                        "cpu_timer": None if "rlimits" in self._disable else limits.cpu_seconds + _CPU_TIMER_MARGIN,
                        "deadline": deadline - _CHILD_DEADLINE_MARGIN})
        except (OSError, ValueError, TypeError) as exc:
            child.kill()
            return self._death(child, job, f"could not start the run: {exc}"), False
        max_frame = wire.report_bytes(limits.max_value_bytes, limits.max_output_bytes)
        cpu_budget = limits.cpu_seconds + _HOST_CPU_MARGIN
        # A single-threaded child cannot use more CPU than wall time: no need to read its
        # clock before the budget has passed on the wall clock.
        cpu_check = None if "rlimits" in self._disable else time.monotonic() + cpu_budget
        cpu_start = child.cpu_clock() if cpu_check is not None else None  # not a session child's word
        if cpu_start is None:
            cpu_start = child.cpu_total
        while True:
            if cpu_check is not None and cpu_check < deadline and not child.readable(cpu_check):
                used = child.cpu_clock()
                if used is None:
                    cpu_check = None  # it exited: the next recv reports how
                elif used - cpu_start >= cpu_budget:
                    child.kill("cpu")
                    child.wait_exit(_KILLED_EXIT_TIMEOUT)
                    return self._with_usage(child, _limit("cpu", f"CPU limit of {limits.cpu_seconds:g} s exceeded"),
                                            layers), False
                else:
                    cpu_check = time.monotonic() + max(_HOST_CPU_RECHECK, cpu_budget - (used - cpu_start))
                continue
            try:
                msg = child.recv(deadline, max_frame)
            except TimeoutError:
                child.kill("wall")
                child.wait_exit(_KILLED_EXIT_TIMEOUT)
                return self._with_usage(child, _limit("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded"),
                                        layers), False
            except _FrameTooLarge as exc:
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
                child.cpu_total = float(msg.get("cpu_total") or child.cpu_total)
                return self._outcome(msg, layers), True
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
    def _outcome(msg: dict, layers: tuple[str, ...]) -> Outcome:
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
                cpu_seconds=float(msg.get("cpu") or 0.0), peak_memory_bytes=int(msg.get("maxrss") or 0) or None,
                layers=layers)
        except (ValidationError, TypeError, ValueError) as exc:
            return internal_error(f"the child sent a malformed outcome: {exc}")

    def _with_usage(self, child: _Child, outcome: Outcome, layers: tuple[str, ...]) -> Outcome:
        info = child.exit_info or {}
        cpu = float(info.get("utime", 0.0)) + float(info.get("stime", 0.0))
        return outcome.model_copy(update={
            "cpu_seconds": max(0.0, cpu - child.cpu_total) if info else None,
            "peak_memory_bytes": int(info.get("maxrss") or 0) or None, "layers": layers})

    def _death(self, child: _Child, job: Job, why: str, layers: tuple[str, ...] = ()) -> Outcome:
        """Map a child that ended without an outcome to a limit or an internal error."""
        info = child.wait_exit(_KILLED_EXIT_TIMEOUT if child.kill_reason in ("wall", "cancelled", "cpu")
                               else _EXIT_TIMEOUT)
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
    def _near_memory_limit(child: _Child, info: dict) -> bool:
        plan = child.limits_plan or {}
        as_limit = plan.get(resource.RLIMIT_AS, (0, 0))[0]
        return bool(as_limit) and int(info.get("maxrss") or 0) >= 0.5 * as_limit

    # -- sessions ------------------------------------------------------------------------
    def open_session(self) -> "ProcessSession":
        return ProcessSession(self)

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


class ProcessSession:
    """A pinned child that keeps its guest globals across runs.

    If a run kills the child (a limit), the outcome says so and the next run starts on a
    fresh child with empty globals.
    """

    def __init__(self, driver: ProcessDriver) -> None:
        self._driver = driver
        self._child: _Child | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._lost = False

    def run(self, job: Job) -> Outcome:
        deadline = job.control.deadline
        slots = self._driver._slots
        with self._lock:
            if self._closed:
                return internal_error("the session is closed")
            if not slots.acquire(timeout=max(0.0, deadline - time.monotonic())):
                return _limit("wall", "wall-clock limit exceeded while waiting for a process worker")
            try:
                reset, self._lost = self._lost, False
                outcome = self._run_child(job, deadline)
            finally:
                slots.release()
        return outcome.model_copy(update={"session_reset": True}) if reset else outcome

    def _run_child(self, job: Job, deadline: float) -> Outcome:
        if self._child is None:
            try:
                self._child = self._driver._take(deadline)
                self._child.zygote.replenish()
            except TimeoutError:
                return _limit("wall", "wall-clock limit exceeded while waiting for a process worker")
            except (ChannelClosed, OSError) as exc:
                return internal_error(f"no process worker: {exc}")
        outcome, alive = self._driver._run_on(self._child, job, deadline, session=True)
        if not alive:
            self._child.end(max(_KILLED_EXIT_TIMEOUT, deadline + _KILLED_EXIT_TIMEOUT - time.monotonic()))
            self._child = None
            self._lost = True
            if outcome.error is not None:
                outcome = outcome.model_copy(update={"error": outcome.error.model_copy(update={
                    "message": outcome.error.message + " (the session's worker ended; its globals are lost)"})})
        return outcome

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._child is not None:
                self._child.end()
                self._child = None


class _NoBridge:
    def call(self, name: str, args: list, kwargs: dict) -> Any:
        raise Fault("CapabilityError", "no capabilities in raw runs")


def rlimit_plan(*, vm_bytes: int, data_bytes: int, cpu_used: float, memory_bytes: int, cpu_seconds: float,
                nofile: int = 64, nproc: bool = True, cpu_hard: bool = True) -> dict[int, tuple[int, int]]:
    """The rlimits a child sets on itself before a run, as ``{resource: (soft, hard)}``.

    RLIMIT_AS counts the whole virtual size of the process, and the child is a forked CPython
    that already maps ~100+ MiB of interpreter, libraries and arenas. So the ceiling is
    *relative*: ``current VmSize + memory_bytes``; RLIMIT_DATA likewise from the current data
    segment size. The guest can therefore allocate about ``memory_bytes`` more than the warm
    child already holds. RLIMIT_CPU counts seconds since the child was forked, in whole
    seconds: soft = ceil(cpu already used + cpu_seconds) gives SIGXCPU, hard = soft + 1
    gives SIGKILL if SIGXCPU is somehow survived. Sessions pass ``cpu_hard=False``: the CPU
    budget is cumulative and an unprivileged child could never raise a hard limit again, so
    a session relies on the soft limit plus the host's wall-clock kill.
    """
    cpu_soft = max(1, math.ceil(cpu_used + cpu_seconds))
    plan = {
        resource.RLIMIT_AS: (vm_bytes + memory_bytes, vm_bytes + memory_bytes),
        resource.RLIMIT_DATA: (data_bytes + memory_bytes, data_bytes + memory_bytes),
        resource.RLIMIT_CPU: (cpu_soft, cpu_soft + 1 if cpu_hard else resource.RLIM_INFINITY),
        resource.RLIMIT_NOFILE: (nofile, nofile),
        resource.RLIMIT_FSIZE: (0, 0),
        resource.RLIMIT_CORE: (0, 0),
    }
    if nproc:
        plan[resource.RLIMIT_NPROC] = (0, 0)
    return plan


def _limit(limit: LimitName, message: str) -> Outcome:
    return Outcome(ok=False, error=limit_error(limit, message))


