"""The confined child: forked from the zygote, pre-warmed, confined, then serves one job
(fresh run) or a series of jobs (session) over its channel to the host.

Lifecycle (all before any job arrives, so none of it is on a run's critical path):

1. parent-death signal SIGKILL; close every descriptor but the channel (stdio is /dev/null);
2. run the warm-up job along a real job's path (`warm_loop`: the job loop itself, over a local
   socket pair), paying the copy-on-write faults and warming caches;
3. drop to the sandbox uid (root hosts), load the seccomp allowlist;
4. write ``ready`` and block reading the job.

Per job: apply the rlimits the host planned (``job["rlimits"]``), arm the CPU timer with the
run's budget (``job["cpu_timer"]``: SIGPROF ends the child when it is spent), run the code with the executor, answer capability calls through the host,
stream every piece of output to the host as an ``out`` frame as it is written (so it survives
a kill), write ``done`` with the outcome (its output already sent), this process's own rusage
and, when the job asked (``job["timings"]``), the seconds of its phases, each prefixed ``child.``:
``limits`` (the rlimits and the CPU timer), ``program`` (`_program`: the host's bytecode
loaded), the executor's own (``compile``, ``setup``, ``execute``, ``finish``; a raw job has only
``execute``) and ``report`` (the output flushed, the value encoded for the wire). A fresh-run
child then exits; a session child keeps its `GuestState` and waits for the next job.
"""

from __future__ import annotations

import base64
import marshal
import os
import resource
import signal
import socket
import time
import types
from typing import Any

from runtimes import wire
from runtimes.guest import LIMIT_MESSAGES, MEMORY
from runtimes.process import confine
from runtimes.process.framing import ChannelClosed, decode, encode, read_message, write_message
from runtimes.restricted.transformer import Compiled, compile_guest

WARMUP_CODE = """\
total = 0
for i in range(50):
    total += i * i
words = {w: len(w) for w in "a warm child is a fast child".split()}
print(total, sorted(words))
[total, max(words.values())]
"""


WARMUP_LIMITS = {"cpu_seconds": 5.0, "wall_seconds": 10.0, "memory_bytes": 256 << 20,
                 "max_output_bytes": 1 << 20, "max_recursion_depth": 500}


_WARMUP_DEADLINE = 30 * 24 * 3600.0
"""The warm-up job's deadline is this far from the start of each warm-up (`warm_up`, `warm_loop`):
a full-precision float like a real job's, which the warm-up never reaches."""


def _referenced_names(code: types.CodeType) -> set[str]:
    """Every global or attribute name ``code`` and the code objects nested in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _referenced_names(const)
    return names


def warmup_frame(capabilities: tuple[str, ...] = ()) -> bytes:
    """The warm-up job framed as the host frames a job: `WARMUP_CODE` compiled as the host
    compiles it (shipped as bytecode), with an input, ``capabilities`` (the names the host's jobs
    grant: a job granting the same names then finds them bound in the guest state the warm-up
    left) and the fields a job carries. A capability's globals shadow the builtins, so a name
    whose global the warm-up's code refers to (``sorted``, ``len``, or ``sorted.x``'s ``sorted``)
    is left out: the warm-up never calls a capability. Built once in the zygote, which runs it
    with `warm_up`; every child runs it with `warm_loop`, which gives it a deadline of its own.
    Its rlimits (no core dumps) are ones every run's plan sets anyway, and its CPU timer is
    disarmed at its end."""
    code = compile_guest(WARMUP_CODE).code
    if not isinstance(code, types.CodeType):
        raise RuntimeError("the warm-up program does not compile")
    referenced = _referenced_names(code)
    names = [name for name in capabilities if name.split(".")[0] not in referenced]
    bytecode = base64.b64encode(marshal.dumps(code)).decode("ascii")
    return encode({"t": "job", "code": WARMUP_CODE, "bytecode": bytecode, "limits": WARMUP_LIMITS,
                   "inputs": wire.encode({"seed": [1, "a", 2.5, None]}), "capabilities": names,
                   "secrets": [], "session": False, "raw": False, "rlimits": [[resource.RLIMIT_CORE, 0, 0]],
                   "cpu_timer": WARMUP_LIMITS["cpu_seconds"], "deadline": time.monotonic() + _WARMUP_DEADLINE,
                   "timings": False})


def warm_up(executor: Any, frame: bytes) -> None:
    """Run the warm-up job along a real job's path (parse its frame, load its bytecode, run it,
    encode its ``done`` frame, which is not sent), so that the pages this path writes are
    copied-on-write here, before the child is handed out, rather than during its job."""
    job = decode(frame[4:])
    result = _execute(executor, job, call_host=_no_host, state=None, on_output=_discard, on_tick=None)
    encode(_done(job, result, cpu=0.0, cpu_total=0.0, maxrss=0))


def warm_loop(executor: Any, frame: bytes) -> dict:
    """Run the warm-up job through `_loop`, the path of a real job in a child (its frame read
    from a socket, its rlimits applied and CPU timer armed, its output streamed, its ``done``
    frame written; all into a local socket pair that is then closed), so that a run's first use
    of each page that path writes does not cost a copy-on-write fault during the run.

    The job's deadline is set here, from now (the frame was built when the zygote started).
    Returns the warm-up's outcome. Never waits on a host: the job's side of the pair is shut for
    writing once the frame is sent, so a call to the host (which the warm-up does not make)
    reads end-of-file and the warm-up ends with an internal error, its CPU timer disarmed."""
    job = decode(frame[4:])
    job["deadline"] = time.monotonic() + _WARMUP_DEADLINE
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        ours.sendall(encode(job))
        ours.shutdown(socket.SHUT_WR)
        try:
            _loop(theirs.fileno(), executor, allow_raw=False)
        except ChannelClosed as exc:
            confine.arm_cpu_timer(0)
            return wire.outcome(error=wire.error("internal", "ChannelClosed", f"the warm-up job did not finish: {exc}"))
        theirs.close()
        while True:
            message = read_message(ours.fileno())
            if message.get("t") == "done":
                return message.get("outcome") or {}
    finally:
        ours.close()
        theirs.close()


def _discard(text: str) -> None:
    pass


def _rusage() -> tuple[float, int]:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def _no_host(name: str, args: list, kwargs: dict) -> Any:
    raise wire.Fault("CapabilityError", "no capabilities during warm-up")


def _raw_execute(code: str, *, inputs: dict | None = None, limits: dict | None = None, **_: Any) -> dict:
    """TEST-ONLY: plain `exec` with no language layer, under the same process confinement.

    Only reachable when the zygote was started with ``--allow-raw`` (the driver's
    ``_allow_raw=True``). The value is the global ``result`` after the code ran.
    """
    import contextlib
    import io

    out = io.StringIO()
    g: dict[str, Any] = {"__name__": "__raw__", **(inputs or {})}
    try:
        with contextlib.redirect_stdout(out):
            exec(compile(code, "<raw>", "exec"), g)
    except MemoryError:
        return wire.outcome(stdout=out.getvalue(), error=_memory_error())
    except BaseException as exc:  # noqa: BLE001 - report everything, including SystemExit
        return wire.outcome(stdout=out.getvalue(), error=wire.error("guest_exception", type(exc).__name__, str(exc)))
    try:
        value = wire.plain(g.get("result"), lenient=True, max_bytes=_value_cap(limits))
    except wire.ValueTooLarge as exc:
        return wire.outcome(stdout=out.getvalue(), error=wire.value_error(exc))
    return wire.outcome(value=value, stdout=out.getvalue())


def _memory_error() -> dict:
    return wire.error("limit_exceeded", MEMORY, LIMIT_MESSAGES[MEMORY], limit=MEMORY)


def _program(job: dict) -> Any:
    """The job's program: the bytecode the host compiled (``bytecode``, base64 of `marshal`),
    else the source, which the executor compiles here."""
    bytecode = job.get("bytecode")
    if isinstance(bytecode, str):
        return Compiled(marshal.loads(base64.b64decode(bytecode)))
    return job.get("code", "")


def _value_cap(limits: dict | None) -> int:
    return int((limits or {}).get("max_value_bytes") or wire.DEFAULT_VALUE_BYTES)


def serve(chan: int, *, executor: Any, seccomp_filter: Any, uid: int | None, gid: int | None,
          zygote_pid: int, layers: list[str], allow_raw: bool, warmup: bytes) -> None:
    """Run in the forked child; never returns. ``warmup`` is `warmup_frame`'s job."""
    status = 0
    try:
        confine.set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != zygote_pid:
            os._exit(1)
        os.closerange(3, chan)
        os.closerange(chan + 1, 1 << 16)
        layers = list(layers)
        # Before any confinement of our own. Without compiling: the host ships jobs compiled, so
        # warming the compiler too (a copy-on-write fault for every page it touches, ~1 ms of CPU
        # per child) would only help sources over the host's cap.
        warm_loop(executor, warmup)
        if uid is not None:
            confine.drop_to_uid(uid, gid if gid is not None else uid)
            layers.append("uid")
        if seccomp_filter is not None:
            confine.load_bpf(seccomp_filter)
            layers.append("seccomp")
        cpu, _ = _rusage()
        write_message(chan, {"t": "ready", "layers": layers, "cpu": cpu})
        _loop(chan, executor, allow_raw)
    except ChannelClosed:
        pass
    except BaseException:  # noqa: BLE001 - a child must never unwind into the zygote's code
        status = 70
    os._exit(status)


class _OutputPipe:
    """Streams the guest's output to the host in ``out`` frames.

    A write goes out at once unless the previous frame left less than `FLUSH_SECONDS` ago;
    then it waits for the next write past that interval, the budget's next clock read (every
    few milliseconds of guest code), a capability call or the end of the run. So output is on
    the host within milliseconds of being written, and a tight printing loop sends one frame
    per interval, not one per line.
    """

    FLUSH_SECONDS = 0.002

    def __init__(self, chan: int) -> None:
        self._chan = chan
        self._parts: list[str] = []
        self._last = 0.0

    def write(self, text: str) -> None:
        self._parts.append(text)
        now = time.monotonic()
        if now - self._last >= self.FLUSH_SECONDS:
            self._last = now
            self.flush()

    def flush(self) -> None:
        if self._parts:
            text = "".join(self._parts)
            self._parts.clear()
            write_message(self._chan, {"t": "out", "s": "stdout", "text": text})


def _execute(executor: Any, job: dict, *, call_host: Any, state: Any, on_output: Any, on_tick: Any,
             timings: dict[str, float] | None = None) -> dict:
    """The outcome of running ``job``'s program with the executor (output goes to ``on_output``;
    with ``timings``, the seconds of ``program`` and of the executor's phases go there)."""
    try:
        loading = time.perf_counter() if timings is not None else 0.0
        program = _program(job)
        if timings is not None:
            timings["program"] = time.perf_counter() - loading
        result: dict = executor.execute(
            program, limits=job.get("limits") or {}, call_host=call_host, timings=timings,
            capabilities=tuple(job.get("capabilities") or ()),
            secrets=tuple(tuple(s) for s in job.get("secrets") or ()),
            inputs=job.get("inputs") or {}, inputs_are_private=True,  # decoded for this run alone
            state=state, deadline=job.get("deadline"), on_output=on_output, on_tick=on_tick)
        result["stdout"] = ""  # streamed already
    except MemoryError:
        result = wire.outcome(error=_memory_error())
    except ChannelClosed:
        raise
    except Exception as exc:  # noqa: BLE001 - the executor "never raises"; belt and braces
        result = wire.outcome(error=wire.error("internal", type(exc).__name__, str(exc)))
    return result


def _done(job: dict, result: dict, *, cpu: float, cpu_total: float, maxrss: int) -> dict:
    """The ``done`` message for ``result``, its value encoded for the wire within the job's value cap."""
    try:
        result["value"] = wire.encode(result.get("value"), lenient=True, max_bytes=_value_cap(job.get("limits")))
    except wire.ValueTooLarge as exc:
        result = wire.outcome(stdout=result.get("stdout", ""), output_truncated=bool(result.get("output_truncated")),
                              error=wire.value_error(exc))
    return {"t": "done", "outcome": result, "cpu": cpu, "cpu_total": cpu_total, "maxrss": maxrss}


def _loop(chan: int, executor: Any, allow_raw: bool) -> None:
    state = None

    def call_host(name: str, args: list, kwargs: dict) -> Any:
        pipe.flush()
        write_message(chan, {"t": "call", "name": name, "args": wire.encode(args), "kwargs": wire.encode(kwargs)})
        reply = read_message(chan)
        if reply.get("t") == "ret":
            return reply.get("value")
        if reply.get("t") == "fault":
            raise wire.Fault.from_wire(reply.get("fault") or {})
        raise ChannelClosed(f"unexpected reply {reply.get('t')!r}")

    pipe = _OutputPipe(chan)
    send_output = pipe.write

    while True:
        job = read_message(chan)
        received = time.perf_counter()
        if job.get("t") != "job":
            raise ChannelClosed(f"unexpected message {job.get('t')!r}")
        session = bool(job.get("session"))
        if session and state is None:
            state = executor.GuestState()
        try:
            confine.apply_rlimits(job.get("rlimits") or [])
            if job.get("cpu_timer"):
                confine.arm_cpu_timer(float(job["cpu_timer"]))
        except (OSError, ValueError, TypeError) as exc:
            write_message(chan, {"t": "done", "cpu": 0.0, "cpu_total": _rusage()[0], "maxrss": 0,
                                 "outcome": wire.outcome(error=wire.error(
                                     "internal", "InternalError", f"could not apply the run's limits: {exc}"))})
            raise ChannelClosed("rlimits failed") from None
        cpu0, _ = _rusage()
        phases: dict[str, float] | None = None
        if job.get("timings"):
            started = time.perf_counter()
            phases = {"limits": started - received}
        if job.get("raw"):
            if not allow_raw:
                result = wire.outcome(error=wire.error("internal", "InternalError", "raw jobs are disabled"))
            else:
                result = _raw_execute(job.get("code", ""), inputs=job.get("inputs"), limits=job.get("limits"))
                if phases is not None:
                    phases["execute"] = time.perf_counter() - started
                if result["stdout"]:
                    send_output(result["stdout"])
                result["stdout"] = ""
        else:
            result = _execute(executor, job, call_host=call_host, state=state, on_output=send_output,
                              on_tick=pipe.flush, timings=phases)
        ended = time.perf_counter() if phases is not None else 0.0
        pipe.flush()
        if job.get("cpu_timer"):
            confine.arm_cpu_timer(0)  # a session's next run arms its own budget
        cpu1, maxrss = _rusage()
        done = _done(job, result, cpu=cpu1 - cpu0, cpu_total=cpu1, maxrss=maxrss)
        if phases is not None:
            phases["report"] = time.perf_counter() - ended
            done["timings"] = {f"child.{name}": seconds for name, seconds in phases.items()}
        try:
            write_message(chan, done)
        except (TypeError, ValueError) as exc:  # not JSON-serialisable: report, do not die
            write_message(chan, {"t": "done", "cpu": cpu1 - cpu0, "cpu_total": cpu1, "maxrss": maxrss,
                                 "outcome": wire.outcome(error=wire.error("internal", "WireError", str(exc)))})
        if not session:
            return
