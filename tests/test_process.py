"""Process confinement (`sandbox.process.ProcessDriver`, `runtimes.process`).

The hostile-payload tests run *raw* jobs: plain ``exec`` in a confined child, with no
language layer at all (the test-only ``_allow_raw`` hook). They show what the process
layers alone hold: no socket, no spawn, no read outside the allowed set, memory, CPU and
wall-clock capped, crashes contained.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time

import psutil
import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("process isolation is Linux-only", allow_module_level=True)

from runtimes.process import confine  # noqa: E402
from runtimes.wire import Fault  # noqa: E402
from sandbox.errors import IsolationUnavailable  # noqa: E402
from sandbox.limits import Limits  # noqa: E402
from sandbox.process import ProcessDriver  # noqa: E402
from sandbox.runtime import Job, Outcome  # noqa: E402

ROOT = os.geteuid() == 0
HAS_LANDLOCK = confine.landlock_abi() > 0
LIMITS = Limits(cpu_seconds=2, wall_seconds=5, memory_bytes=64 << 20)


class Bridge:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list, dict]] = []

    def call(self, name: str, args: list, kwargs: dict):
        self.calls.append((name, args, kwargs))
        if name == "deny":
            raise Fault("PolicyDenied", "no")
        return {"name": name, "args": args, "kwargs": kwargs}


def job(code: str, limits: Limits = LIMITS, capabilities: tuple[str, ...] = (), bridge: Bridge | None = None) -> Job:
    return Job(run_id="t", code=code, limits=limits, bridge=bridge or Bridge(), capabilities=capabilities)


@pytest.fixture(scope="module")
def driver():
    d = ProcessDriver(workers=2, _allow_raw=True)
    yield d
    d.close()


def zygote_children(d: ProcessDriver) -> list[psutil.Process]:
    return psutil.Process(d._zygote.pid).children(recursive=True)


# ---------------------------------------------------------------------------------------------
# Ordinary runs


def test_run_value_stdout_layers(driver):
    out = driver.run(job("print('hi')\n1 + 1"))
    assert out.ok, out.error
    assert out.value == 2 and out.stdout == "hi\n"
    for layer in ("rlimits", "seccomp", "netns"):
        assert layer in out.layers
    if HAS_LANDLOCK:
        assert "landlock" in out.layers
    if ROOT:
        assert "uid" in out.layers
    assert out.cpu_seconds is not None and out.cpu_seconds >= 0
    assert out.peak_memory_bytes and out.peak_memory_bytes > 1 << 20


def test_programs_compiled_on_the_host_or_in_the_child_agree(driver):
    """Small programs reach the child as bytecode the host compiled; larger ones (and ones that
    do not compile) as source the child compiles. Both paths give the same outcomes."""
    big = "\n".join(f"v{i} = {i}" for i in range(2000)) + "\nv1999 + 1"
    assert len(big) > 8 << 10
    for code, value in (("21 * 2", 42), (big, 2000)):
        out = driver.run(job(code))
        assert out.ok and out.value == value, out.error
    for code in ("1 +", "_secret = 1", "\n".join(f"w{i} = {i}" for i in range(2000)) + "\n1 +"):
        out = driver.run(job(code))
        assert not out.ok and out.error.kind == "compile_error", out.error


def test_fresh_state_per_run(driver):
    assert driver.run(job("x = 41")).ok
    out = driver.run(job("x"))
    assert not out.ok and out.error.kind == "guest_exception" and out.error.type == "NameError"


def test_capability_call_goes_through_the_host(driver):
    bridge = Bridge()
    out = driver.run(job("r = f(1, a=[2])\nr['args'] + [r['kwargs']['a']]", capabilities=("f",), bridge=bridge))
    assert out.ok, out.error
    assert out.value == [1, [2]]
    assert bridge.calls == [("f", [1], {"a": [2]})]


def test_capability_fault_reaches_the_guest(driver):
    code = "try:\n    deny()\nexcept PolicyDenied as e:\n    r = 'caught ' + str(e)\nr"
    out = driver.run(job(code, capabilities=("deny",)))
    assert out.ok, out.error
    assert out.value == "caught no"


def test_guest_exception_is_an_outcome(driver):
    out = driver.run(job("1/0"))
    assert not out.ok and out.error.kind == "guest_exception" and out.error.type == "ZeroDivisionError"


def test_session_keeps_globals(driver):
    session = driver.open_session()
    try:
        assert session.run(job("counter = 1")).ok
        assert session.run(job("counter += 1")).ok
        out = session.run(job("counter"))
        assert out.ok and out.value == 2
    finally:
        session.close()


def test_session_survives_a_killed_worker(driver):
    session = driver.open_session()
    try:
        assert session.run(job("a = 1")).ok
        pid = session._child.pid
        os.kill(pid, 9)
        out = session.run(job("a"))
        assert not out.ok
        assert "globals are lost" in out.error.message
        out = session.run(job("b = 2\nb"))
        assert out.ok and out.value == 2
    finally:
        session.close()


def test_concurrent_runs_with_two_workers(driver):
    results = []

    def worker(i: int) -> None:
        results.append(driver.run(job(f"{i} * 2")))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.value for r in results) == [i * 2 for i in range(8)]


# ---------------------------------------------------------------------------------------------
# Hard limits (raw: no language layer, so only the process layer can stop these)


def test_wall_clock_kill(driver):
    t = time.monotonic()
    out = driver._run_raw("import time\ntime.sleep(30)", Limits(cpu_seconds=5, wall_seconds=0.5))
    assert time.monotonic() - t < 3
    assert not out.ok and out.error.kind == "limit_exceeded" and out.error.limit == "wall"
    assert driver.run(job("1")).ok  # the pool replaced the child


def test_cpu_limit(driver):
    out = driver._run_raw("while True:\n    pass", Limits(cpu_seconds=1, wall_seconds=10))
    assert not out.ok and out.error.kind == "limit_exceeded" and out.error.limit == "cpu", out.error
    assert out.cpu_seconds is not None and out.cpu_seconds >= 0.9


def test_memory_capped(driver):
    out = driver._run_raw("x = bytearray(512 << 20)\nresult = len(x)", Limits(memory_bytes=64 << 20))
    assert not out.ok and out.error.kind == "limit_exceeded" and out.error.limit == "memory", out.error


def test_memory_capped_piecewise(driver):
    code = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 20))"
    out = driver._run_raw(code, Limits(memory_bytes=64 << 20, wall_seconds=10))
    assert not out.ok and out.error.limit == "memory", out.error
    assert out.peak_memory_bytes is not None and out.peak_memory_bytes < (64 << 20) + (200 << 20)


def test_memory_within_limit_is_fine(driver):
    out = driver._run_raw("x = bytearray(32 << 20)\nresult = len(x)", Limits(memory_bytes=64 << 20))
    assert out.ok, out.error
    assert out.value == 32 << 20


def test_segfault_is_internal_and_pool_recovers(driver):
    out = driver._run_raw("import ctypes\nctypes.string_at(0)", LIMITS)
    assert not out.ok and out.error.kind in ("internal", "limit_exceeded")
    assert "SIGSEGV" in out.error.message
    assert driver.run(job("'still serving'")).value == "still serving"


def test_abort_is_internal(driver):
    out = driver._run_raw("import os\nos.abort()", LIMITS)
    assert not out.ok and out.error.kind == "internal"
    assert driver.run(job("1")).ok


# ---------------------------------------------------------------------------------------------
# Escapes that reached `os`/`ctypes` still cannot touch the network, processes or files


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.5)
    yield srv
    srv.close()


def _no_connection(srv: socket.socket) -> bool:
    try:
        conn, _ = srv.accept()
    except socket.timeout:
        return True
    conn.close()
    return False


NET_PAYLOAD = """
import socket, errno
attempts = []
for family, kind in ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_INET6, socket.SOCK_STREAM),
                     (socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_INET, socket.SOCK_DGRAM)):
    try:
        s = socket.socket(family, kind)
        attempts.append("socket ok")
        if family == socket.AF_INET and kind == socket.SOCK_STREAM:
            s.settimeout(1)
            s.connect(("127.0.0.1", PORT))
            attempts.append("CONNECTED")
    except OSError as e:
        attempts.append(errno.errorcode.get(e.errno, str(e.errno)))
result = attempts
"""


def test_no_socket(driver, listener):
    port = listener.getsockname()[1]
    out = driver._run_raw(NET_PAYLOAD.replace("PORT", str(port)), LIMITS)
    assert out.ok, out.error
    assert out.value == ["EPERM"] * 4
    assert _no_connection(listener)


def test_netns_alone_blocks_loopback(listener):
    """Without seccomp the socket opens, but the child's namespace has no route to the host."""
    port = listener.getsockname()[1]
    with ProcessDriver(workers=1, _allow_raw=True, _disable=frozenset({"seccomp", "landlock"})) as d:
        assert "seccomp" not in d.layers and "netns" in d.layers
        out = d._run_raw(NET_PAYLOAD.replace("PORT", str(port)), LIMITS)
    assert out.ok, out.error
    assert "CONNECTED" not in out.value
    assert out.value[1] in ("ENETUNREACH", "ECONNREFUSED", "EADDRNOTAVAIL")
    assert _no_connection(listener)


SPAWN_PAYLOAD = """
import os, errno, subprocess
attempts = []
def attempt(name, fn):
    try:
        r = fn()
        attempts.append(name + " SUCCEEDED")
        if r == 0:
            os._exit(0)
    except OSError as e:
        attempts.append(errno.errorcode.get(e.errno, str(e.errno)))
attempt("fork", os.fork)
attempt("posix_spawn", lambda: os.posix_spawn("/bin/sleep", ["sleep", "30"], {}))
attempt("execv", lambda: os.execv("/bin/sleep", ["sleep", "30"]))
attempt("popen", lambda: subprocess.Popen(["/bin/sleep", "30"]).pid)
rc = os.system("sleep 30")  # -1, or 127 << 8 (glibc: the shell could not be spawned)
attempts.append("system SUCCEEDED" if rc not in (-1, 127 << 8) else "system failed")
result = attempts
"""


def test_no_spawn(driver):
    marker = f"{secrets.randbelow(10**6) + 10**6}.5"  # a unique sleep argument, to find any escapee
    out = driver._run_raw(SPAWN_PAYLOAD.replace("30", marker), LIMITS)
    assert out.ok, out.error
    assert len(out.value) == 5 and all("SUCCEEDED" not in a for a in out.value), out.value
    # the zygote's only children are its spares: nothing the run started survives or lingers
    # (the child that ran the job exits after reporting and is reaped asynchronously)
    deadline = time.monotonic() + 2
    while len(zygote_children(driver)) > driver._spares and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(zygote_children(driver)) <= driver._spares
    assert not [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or ())]


def test_denied_syscalls_fail_with_eperm(driver):
    names = [n for n in confine.DENIED_FOR_THE_RECORD if n not in ("reboot", "seccomp", "exit")]
    code = f"""
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
import pyseccomp
result = {{}}
for name in {names!r}:
    try:
        nr = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    except Exception:
        continue
    if nr < 0:
        continue
    ctypes.set_errno(0)
    rc = libc.syscall(nr, 0, 0, 0, 0, 0, 0)
    result[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if rc == -1 else rc
"""
    out = driver._run_raw(code, LIMITS)
    assert out.ok, out.error
    refused = {name: r for name, r in out.value.items() if r != "EPERM"}
    assert not refused, refused
    assert "clone" in out.value and "execve" in out.value and "socket" in out.value


def test_threads_are_denied(driver):
    out = driver._run_raw("import threading\nt = threading.Thread(target=print)\nt.start()", LIMITS)
    assert not out.ok and out.error.type == "RuntimeError"  # "can't start new thread"


@pytest.mark.skipif(not HAS_LANDLOCK, reason="Landlock unavailable")
def test_no_read_outside_the_allowed_set(driver, tmp_path):
    canary = secrets.token_hex(16)
    path = tmp_path / "canary.txt"
    path.write_text(canary)
    os.chmod(tmp_path, 0o755)
    os.chmod(path, 0o644)  # world-readable: only Landlock stands in the way
    code = f"""
import os
seen = []
for p in ({str(path)!r}, "/etc/passwd", "/etc/hostname", {str(tmp_path)!r}):
    try:
        if os.path.isdir(p):
            seen.append(os.listdir(p))
        else:
            with open(p) as f:
                seen.append(f.read())
    except OSError as e:
        seen.append(type(e).__name__)
print(seen)
result = seen
"""
    out = driver._run_raw(code, LIMITS)
    assert out.ok, out.error
    assert canary not in repr(out.value) and canary not in out.stdout
    assert out.value == ["PermissionError"] * 4


def test_no_write_anywhere(driver, tmp_path):
    os.chmod(tmp_path, 0o777)
    target = tmp_path / "written"
    out = driver._run_raw(f"open({str(target)!r}, 'w').write('x')", LIMITS)
    assert not out.ok and out.error.type == "PermissionError"
    assert not target.exists()


# ---------------------------------------------------------------------------------------------
# Required layers, hygiene


def test_required_layer_unavailable_raises():
    with pytest.raises(IsolationUnavailable, match="landlock"):
        ProcessDriver(workers=1, require=frozenset({"landlock"}), _disable=frozenset({"landlock"}))


def test_unknown_layer_is_a_value_error():
    with pytest.raises(ValueError, match="unknown isolation layer"):
        ProcessDriver(require=frozenset({"moon-shield"}))


def test_raw_runs_are_off_by_default():
    with ProcessDriver(workers=1) as d:
        with pytest.raises(RuntimeError):
            d._run_raw("result = 1", LIMITS)


def test_no_zombies_no_leaked_fds_after_1000_runs():
    with ProcessDriver(workers=2) as d:
        for _ in range(20):
            assert d.run(job("1")).ok
        time.sleep(0.2)
        fds_before = len(os.listdir("/proc/self/fd"))
        for i in range(1000):
            out = d.run(job(f"{i} + 1"))
            assert out.ok and out.value == i + 1
        time.sleep(0.5)
        fds_after = len(os.listdir("/proc/self/fd"))
        children = zygote_children(d)
        assert fds_after <= fds_before + 2, (fds_before, fds_after)
        assert len(children) <= d._spares, [(c.pid, c.status()) for c in children]
        assert not [c for c in children if c.status() == psutil.STATUS_ZOMBIE]
        zygote_fds = len(os.listdir(f"/proc/{d._zygote.pid}/fd"))
        assert zygote_fds < 20, zygote_fds
        zygote_pid = d._zygote.pid
    assert not psutil.pid_exists(zygote_pid) or psutil.Process(zygote_pid).status() == psutil.STATUS_ZOMBIE


def test_pool_recovers_from_a_dead_zygote():
    with ProcessDriver(workers=1) as d:
        assert d.run(job("1")).ok
        old = d._zygote.pid
        os.kill(old, 9)
        time.sleep(0.2)
        out = d.run(job("'back'"))
        assert out.ok and out.value == "back", out.error
        assert d._zygote.pid != old


def test_zygote_network_namespace_has_only_lo_down(driver):
    """Read from outside: the zygote's namespace differs from ours and its only link is down."""
    zygote = driver._zygote.pid
    assert os.readlink(f"/proc/{zygote}/ns/net") != os.readlink("/proc/self/ns/net")
    with open(f"/proc/{zygote}/net/dev") as handle:
        links = [line.split(":")[0].strip() for line in handle.readlines()[2:]]
    assert links == ["lo"]


def test_guest_that_closes_its_channel_is_ended(driver):
    code = "import os\nfor fd in range(3, 64):\n    try:\n        os.close(fd)\n    except OSError:\n        pass\nwhile True:\n    pass"
    t = time.monotonic()
    out = driver._run_raw(code, Limits(cpu_seconds=5, wall_seconds=10))
    assert time.monotonic() - t < 4
    assert not out.ok and out.error.kind == "internal", out.error
    assert driver.run(job("1")).ok


def test_malformed_frames_from_the_child_are_internal(driver):
    code = ("import os, struct\nfor fd in range(3, 64):\n    try:\n        os.fstat(fd)\n        break\n"
            "    except OSError:\n        pass\nos.write(fd, struct.pack('>I', 5) + b'nope!')\nwhile True:\n    pass")
    out = driver._run_raw(code, Limits(cpu_seconds=5, wall_seconds=10))
    assert not out.ok and out.error.kind == "internal", out.error
    assert "malformed" in out.error.message


def test_a_dead_spare_is_replaced():
    with ProcessDriver(workers=1) as d:
        assert d.run(job("1")).ok
        time.sleep(0.3)
        for child in zygote_children(d):
            child.kill()  # every waiting spare
        time.sleep(0.3)
        for i in range(5):
            out = d.run(job(f"{i}"))
            assert out.ok and out.value == i, out.error
        time.sleep(0.3)
        assert len(zygote_children(d)) == d._spares


FORGED_DONE = """\
import json, os, struct, time
for fd in range(3, 64):
    try:
        os.fstat(fd)
        break
    except OSError:
        pass
body = json.dumps({"t": "done", "cpu": 0, "cpu_total": 0, "maxrss": 0,
                   "outcome": {"ok": True, "value": os.getpid(), "stdout": "", "stderr": "",
                               "output_truncated": False, "error": None}}).encode()
os.write(fd, struct.pack(">I", len(body)) + body)
time.sleep(120)
"""


def test_a_child_that_forges_its_done_frame_does_not_outlive_the_run(driver):
    """A child without its language layer (a raw job stands for a broken one) writes its own
    ``done`` frame and sleeps on: the host takes the report, then kills and reaps the child
    before `run` returns, so nothing it started keeps running."""
    before = {c.pid for c in zygote_children(driver)}
    out = driver._run_raw(FORGED_DONE, Limits(cpu_seconds=5, wall_seconds=60))
    assert out.ok, out.error
    pid = out.value
    assert pid in before  # the forged report came from one of the zygote's children
    assert not psutil.pid_exists(pid), psutil.Process(pid).status()
    assert pid not in {c.pid for c in zygote_children(driver)}
    assert driver.run(job("2 + 2")).value == 4


def test_no_child_outlives_its_run_or_session(driver):
    """Every child the host took for a run or a session is gone (reaped) when the run returns
    or the session closes; only the waiting spares remain."""
    taken = []
    for code in ("1", "while True:\n    pass", "x = 'a' * (1 << 30)"):
        spares = {c.pid for c in zygote_children(driver)}
        driver.run(job(code, Limits(cpu_seconds=1, wall_seconds=2, memory_bytes=64 << 20)))
        taken += [pid for pid in spares if not psutil.pid_exists(pid)]
    session = driver.open_session()
    spares = {c.pid for c in zygote_children(driver)}
    assert session.run(job("k = 1")).ok
    session.close()
    taken += [pid for pid in spares if not psutil.pid_exists(pid)]
    assert len(taken) == 4, taken
    remaining = zygote_children(driver)
    assert len(remaining) <= driver._spares
    assert not [c for c in remaining if c.status() == psutil.STATUS_ZOMBIE]


# -- a compromised child: frames over the wire caps are refused unparsed ------------------------

_FORGE = (
    "import os, struct\n"
    "body = {body}\n"
    "for fd in range(3, 256):\n"
    "    try:\n"
    "        os.write(fd, struct.pack('>I', {size}) + body)\n"
    "        break\n"
    "    except OSError:\n"
    "        pass\n"
    "import time\n"
    "time.sleep(5)\n"
)


@pytest.mark.parametrize("body, size", [
    ("b'x'", "1 << 30"),  # a header announcing a 1 GiB frame
    ("b'{\"t\":\"done\",\"outcome\":{\"ok\":true,\"value\":' + b'[' * 900 + b']' * 900 + b'}}'", "len(body)"),
    ("b'{\"t\":\"done\",\"outcome\":{\"ok\":true,\"value\":[' + b'[],' * 3_000_000 + b'[]]}}'", "len(body)"),
], ids=["huge_header", "900_deep", "node_bomb"])
def test_child_frames_over_the_wire_caps_end_on_the_value_limit(driver, body, size):
    started = time.monotonic()
    out = driver._run_raw(_FORGE.format(body=body, size=size), Limits(wall_seconds=10, max_value_bytes=1 << 20))
    assert time.monotonic() - started < 10.5
    assert out.error is not None and out.error.kind == "limit_exceeded" and out.error.limit == "value", out.error


def test_child_timings_are_its_word_and_never_exceed_the_exchange():
    """A child's reported phases are kept only as known names with finite non-negative seconds,
    and scaled down when they claim more than the exchange took."""
    from sandbox.process.driver import _child_timings
    from sandbox.process.phases import with_phases

    assert _child_timings(None) is None
    assert _child_timings({"child.execute": 0.5, "child.setup": -1, "child.finish": float("nan"),
                           "child.other": 1.0, "child.rest": True}) == {"child.execute": 0.5}
    outcome = with_phases(Outcome(ok=True, timings={"child.execute": 9.0, "child.setup": 1.0}), 2.0, take=0.1)
    timings = outcome.timings or {}
    assert timings["child.execute"] == pytest.approx(1.8) and timings["child.setup"] == pytest.approx(0.2)
    assert timings["channel"] == 0.0 and timings["take"] == 0.1


def test_a_done_frame_with_numbers_no_float_holds_is_an_outcome():
    """A compromised child's ``done`` frame may carry ints no float holds (the wire accepts
    10**400): its CPU time and phases are dropped, the run still ends in an outcome, and its
    phases are read only when the job asked for timings."""
    from runtimes.process.framing import decode, encode
    from sandbox.process.child_handle import reported_seconds

    huge = 10**400
    msg = decode(encode({"t": "done", "cpu": huge, "cpu_total": huge, "maxrss": 0,
                         "outcome": {"ok": True, "value": 1, "stdout": "", "stderr": ""},
                         "timings": {"child.setup": huge, "child.execute": 0.5}})[4:], max_bytes=1 << 20)
    assert msg["cpu"] == huge and reported_seconds(msg["cpu"]) is None
    outcome = ProcessDriver._outcome(msg, (), timings=True)
    assert outcome.ok and outcome.value == 1 and outcome.cpu_seconds == 0.0
    assert outcome.timings == {"child.execute": 0.5}
    assert ProcessDriver._outcome(msg, (), timings=False).timings is None
    assert [reported_seconds(v) for v in (0, 1, 0.5, True, "1", None, -1.0, float("inf"))] == [
        0.0, 1.0, 0.5, None, None, None, None, None]



def test_only_a_reaped_process_reads_as_hung_up():
    """`ChildHandle.end` takes a hung-up pidfd as proof that the zygote reaped the child: a live
    process and an exited one that was not reaped yet (a zombie) never read as hung up; a reaped
    one does, where the kernel has pidfs."""
    import subprocess

    from sandbox.process.child_handle import _hung_up

    proc = subprocess.Popen(["sleep", "30"])
    pidfd = os.pidfd_open(proc.pid)
    try:
        assert not _hung_up(pidfd, 0)
        proc.kill()
        deadline = time.monotonic() + 5
        while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
            time.sleep(0.005)
        assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
        assert not _hung_up(pidfd, 50)
        proc.wait()
        assert not psutil.pid_exists(proc.pid)
        # What `ChildHandle._wait_reaped` relies on where the kernel has it (pidfs, Linux 6.9+).
        if tuple(int(part) for part in os.uname().release.split("-")[0].split(".")[:2]) < (6, 9):
            pytest.skip("this kernel does not report a reaped process's pidfd as hung up")
        assert _hung_up(pidfd, 0)
    finally:
        os.close(pidfd)


AFFINITY_PAYLOAD = """\
import os, time
first = sorted(os.sched_getaffinity(0))
time.sleep(0.1)
result = [first, sorted(os.sched_getaffinity(0))]
"""


def test_a_run_is_pinned_to_one_cpu_only_at_its_start(driver):
    """The host pins a run's child to its own CPU when it hands over the job (`ChildHandle.pin_here`)
    and gives it back all the zygote's CPUs after `PIN_SECONDS`, so long runs, and runs side by
    side, are not kept on one CPU."""
    from sandbox.process.child_handle import PIN_SECONDS

    cpus = sorted(os.sched_getaffinity(driver._zygote.pid))
    if len(cpus) < 2:
        pytest.skip("one CPU: nothing to pin to")
    assert PIN_SECONDS < 0.05
    out = driver._run_raw(AFFINITY_PAYLOAD, LIMITS)
    assert out.ok, out.error
    first, later = out.value
    assert len(first) == 1 and first[0] in cpus, first
    assert later == cpus, later


def test_every_fresh_run_child_is_replaced(driver):
    """A fresh run's child is replaced whether the run was short, outlived its CPU pin, failed or
    was killed: afterwards the pool settles with every spare back and waiting."""
    codes = ["1 + 1", "t = 0\nfor i in range(300000):\n    t += i\nt", "1 / 0", "while True:\n    pass"]
    for code in codes:
        driver.run(job(code, Limits(cpu_seconds=0.2, wall_seconds=2)))
    assert driver.warm(60) is True
    zygote = driver._zygote
    with zygote.spares.mutex:
        waiting = list(zygote.spares.queue)
    assert len(waiting) == driver._spares
    assert all(c is not None and c.alive() for c in waiting)


def test_children_warmed_with_the_capabilities_still_serve_every_job():
    """Children warm up with the capability names the driver was given (a `Sandbox`'s), so a job
    granting them reuses the warm-up's bindings: its calls still reach this job's bridge, and jobs
    granting other names or none see exactly their own."""
    with ProcessDriver(workers=1, capabilities=("f", "tools.g")) as d:
        for _ in range(2):
            bridge = Bridge()
            out = d.run(job("[f(1)['name'], tools.g(x=2)['kwargs']]", capabilities=("f", "tools.g"), bridge=bridge))
            assert out.ok and out.value == ["f", {"x": 2}], out.error
            assert [name for name, _, _ in bridge.calls] == ["f", "tools.g"]
        out = d.run(job("f(1)", capabilities=()))
        assert not out.ok and out.error.type == "NameError", out.error
        bridge = Bridge()
        out = d.run(job("h(3)['args']", capabilities=("h",), bridge=bridge))
        assert out.ok and out.value == [3] and bridge.calls == [("h", [3], {})], out.error
