"""Run control on every runtime: handles and cancel, streaming, per-run limits and principal,
session reset and lifecycle, host misuse raised on the host."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings

import pytest

from sandbox import Limits, capability
from sandbox.audit import MemorySink
from sandbox.errors import SandboxError

_ticks: dict[str, int] = {}
_lock = threading.Lock()


@capability
def tick(key: str) -> int:
    """Counts calls per key (the guest's heartbeat)."""
    with _lock:
        _ticks[key] = _ticks.get(key, 0) + 1
        return _ticks[key]


@capability
async def fetch(x: int) -> int:
    await asyncio.sleep(0)
    return x


def _wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# --- handles and cancel ---------------------------------------------------------------------


def test_cancel_stops_the_guest_and_keeps_output(make_sandbox, runtime):
    key = f"cancel-{runtime}"
    sink = MemorySink()
    sb = make_sandbox(limits=Limits(wall_seconds=60, cpu_seconds=60), capabilities=[tick], records=sink)
    handle = sb.start(f"print('started')\nwhile True:\n    tick({key!r})")
    _wait_for(lambda: _ticks.get(key, 0) >= 3)
    assert not handle.done()
    assert handle.cancel()
    result = handle.result(timeout=10)
    assert result.error.kind == "cancelled", result.error
    assert result.ok is False and result.value is None
    assert result.stdout == "started\n"
    time.sleep(0.1)  # a call in flight at the cancel may still land
    stopped_at = _ticks[key]
    time.sleep(0.3)
    assert _ticks[key] == stopped_at  # the guest no longer runs
    assert handle.done() and not handle.cancel()
    (record,) = sink.records
    assert record.outcome.kind == "cancelled"
    assert sb.run("1 + 1").value == 2


def test_cancel_a_busy_guest(make_sandbox, runtime):
    sb = make_sandbox(limits=Limits(wall_seconds=60, cpu_seconds=60))
    handle = sb.start("x = 0\nwhile True:\n    x += 1")
    time.sleep(0.3)
    handle.cancel()
    result = handle.result(timeout=10)
    assert result.error.kind == "cancelled"
    if runtime == ("restricted", None):
        assert result.error.lineno == 3


def test_cancelling_the_arun_task_stops_the_guest(make_sandbox, runtime):
    key = f"arun-{runtime}"
    sb = make_sandbox(limits=Limits(wall_seconds=60, cpu_seconds=60), capabilities=[tick])

    async def main() -> None:
        task = asyncio.ensure_future(sb.arun(f"while True:\n    tick({key!r})"))
        while _ticks.get(key, 0) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - started < 20
    time.sleep(0.1)  # a call in flight at the cancel may still land
    stopped_at = _ticks[key]
    time.sleep(0.3)
    assert _ticks[key] == stopped_at


def test_handle_is_awaitable_and_result_times_out(make_sandbox):
    sb = make_sandbox(limits=Limits(wall_seconds=60, cpu_seconds=60))
    handle = sb.start("while True:\n    pass")
    with pytest.raises(TimeoutError):
        handle.result(timeout=0.05)
    handle.cancel()

    async def main():
        return await sb.start("6 * 7")

    assert asyncio.run(main()).value == 42
    assert handle.result(timeout=10).error.kind == "cancelled"


def test_start_raises_host_errors_at_once(make_sandbox):
    sb = make_sandbox()
    with pytest.raises(TypeError):
        sb.start(b"1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wall_seconds"):
        sb.start("1", limits=Limits(wall_seconds=sb.limits.wall_seconds + 1))


# --- streaming ------------------------------------------------------------------------------


def test_on_output_streams_in_order(make_sandbox, runtime):
    sb = make_sandbox(capabilities=[tick])
    chunks: list[tuple[str, str]] = []
    code = "for i in range(5):\n    print('line', i)\n    tick('stream')\n'done'"
    result = sb.run(code, on_output=lambda stream, text: chunks.append((stream, text)))
    assert result.ok, result.error
    assert "".join(text for _stream, text in chunks) == result.stdout
    assert result.stdout == "".join(f"line {i}\n" for i in range(5))
    assert {stream for stream, _ in chunks} == {"stdout"}
    assert len(chunks) >= 5  # each line left before the capability call that followed it


def test_output_arrives_while_the_run_goes_on(make_sandbox):
    sb = make_sandbox(limits=Limits(wall_seconds=60, cpu_seconds=60))
    handle = sb.start("print('first')\nwhile True:\n    pass")
    first = next(iter(handle))
    assert first.stream == "stdout" and first.text == "first\n"
    assert not handle.done()
    handle.cancel()
    assert list(handle) == []
    assert handle.result(timeout=10).stdout == "first\n"


def test_streaming_is_bounded_by_the_output_limit(make_sandbox):
    sb = make_sandbox(limits=Limits(max_output_bytes=1000, wall_seconds=5))
    seen: list[str] = []
    result = sb.run("for i in range(2000):\n    print('x' * 50)", on_output=lambda s, t: seen.append(t))
    assert result.output_truncated
    assert len("".join(seen).encode()) <= 1000
    assert "".join(seen) == result.stdout


def test_async_stream(make_sandbox):
    sb = make_sandbox()

    async def main():
        handle = sb.stream("for i in range(3):\n    print(i)\n'end'")
        texts = [chunk.text async for chunk in handle]
        return texts, await handle

    texts, result = asyncio.run(main())
    assert "".join(texts) == "0\n1\n2\n" == result.stdout
    assert result.value == "end"


@pytest.mark.parametrize("limit", ["cpu", "wall"])
def test_output_before_a_limit_is_kept(make_sandbox, runtime, limit):
    limits = Limits(cpu_seconds=0.5, wall_seconds=30) if limit == "cpu" else Limits(cpu_seconds=30, wall_seconds=0.5)
    sb = make_sandbox(limits=limits)
    result = sb.run("for i in range(3):\n    print('before', i)\nx = 0\nwhile True:\n    x += 1")
    assert result.error.kind == "limit_exceeded"
    assert result.stdout == "before 0\nbefore 1\nbefore 2\n"
    if runtime == ("restricted", None):  # the in-process budget knows the line it stopped on
        assert result.error.lineno in (4, 5)


# --- per-run limits and principal -------------------------------------------------------------


def test_per_run_limits_tighten_only(make_sandbox):
    sb = make_sandbox(limits=Limits(wall_seconds=10, cpu_seconds=10))
    for field in ("cpu_seconds", "wall_seconds", "memory_bytes", "max_output_bytes", "max_recursion_depth"):
        bigger = Limits(**{field: getattr(sb.limits, field) * 2})
        with pytest.raises(ValueError, match=field):
            sb.run("1", limits=bigger)
    started = time.monotonic()
    result = sb.run("while True:\n    pass", limits=Limits(wall_seconds=0.5, cpu_seconds=10))
    assert result.error.limit == "wall"
    assert time.monotonic() - started < 5
    result = sb.run("print('x' * 100)", limits=Limits(max_output_bytes=10, wall_seconds=10, cpu_seconds=10))
    assert result.output_truncated and len(result.stdout) <= 10


def test_principal_per_run_reaches_the_record(make_sandbox):
    sink = MemorySink()
    sb = make_sandbox(records=sink, principal="agent:default")
    sb.run("1", principal="agent:alpha")
    sb.run("1", principal={"id": "agent:beta", "task": "t-1"})
    sb.run("1")
    assert [r.principal.id for r in sink.records] == ["agent:alpha", "agent:beta", "agent:default"]
    assert sink.records[1].principal.task == "t-1"


# --- sessions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["limit", "cancel"])
def test_session_reset_flag(make_sandbox, runtime, stop):
    sb = make_sandbox(limits=Limits(wall_seconds=1, cpu_seconds=1))
    with sb.session() as session:
        assert session.run("x = 41").ok
        first = session.run("x + 1")
        assert first.value == 42 and not first.session_reset
        if stop == "limit":
            hit = session.run("while True:\n    pass")
            assert hit.error.kind == "limit_exceeded"
        else:
            handle = session.start("while True:\n    pass")
            time.sleep(0.2)
            handle.cancel()
            hit = handle.result(timeout=10)
            assert hit.error.kind == "cancelled"
        assert not hit.session_reset
        after = session.run("x")
        # Stopping a guest ends its wasi instance, and a cancel kills a process worker; a process
        # worker stops a Python loop itself, and in-process state survives any stop.
        lost = runtime == ("wasi", None) or (runtime[1] == "process" and stop == "cancel")
        if lost:
            assert after.session_reset
            assert after.stderr.startswith("[sandbox] this session's guest state was reset")
            assert after.error.type == "NameError"
        else:
            assert not after.session_reset and after.value == 41
        again = session.run("y = 1\ny")
        assert again.ok and not again.session_reset


def test_max_sessions_releases_the_least_recently_used(make_sandbox):
    sb = make_sandbox(max_sessions=2)
    a, b = sb.session(), sb.session()
    a.run("v = 'a'")
    b.run("v = 'b'")
    c = sb.session()  # releases a (least recently used)
    assert c.run("1").ok
    result = a.run("v")
    assert result.session_reset and result.error.type == "NameError"
    assert b.run("v").value == "b"
    for s in (a, b, c):
        s.close()
    assert sb.sessions() == []


def test_session_ttl_releases_idle_state(make_sandbox):
    sb = make_sandbox(session_ttl=0.2)
    session = sb.session()
    session.run("v = 1")
    time.sleep(0.3)
    assert session in sb.sessions()  # the session stays open; only its state went
    result = session.run("v")
    assert result.session_reset
    session.close()


def test_sessions_lists_open_sessions(make_sandbox):
    sb = make_sandbox()
    a, b = sb.session(), sb.session()
    assert set(map(id, sb.sessions())) == {id(a), id(b)}
    a.close()
    assert sb.sessions() == [b]
    b.close()


def test_unclosed_session_warns_and_releases(make_sandbox):
    sb = make_sandbox()
    session = sb.session()
    session.run("v = 1")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del session
        gc.collect()
    assert any(issubclass(w.category, ResourceWarning) for w in caught)
    assert sb.sessions() == []


def test_no_orphan_processes_after_unclosed_sessions(runtime):
    if runtime[1] != "process":
        pytest.skip("process isolation only")
    import os

    from sandbox import Sandbox

    def children(pid: int) -> set[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                return {int(p) for p in handle.read().split()}
        except OSError:
            return set()

    sb = Sandbox(isolation="process")
    try:
        zygote = sb._driver._ensure_zygote().pid
        baseline = len(children(zygote))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            for i in range(100):
                session = sb.session()
                assert session.run(f"x = {i}\nx").value == i
                del session
            gc.collect()
        _wait_for(lambda: len(children(zygote)) <= baseline, timeout=30)
        assert sb.sessions() == []
        assert os.getpid() not in children(zygote)
    finally:
        sb.close()


# --- host misuse ------------------------------------------------------------------------------


def test_sync_run_in_a_running_loop_with_async_capability_raises(make_sandbox):
    sb = make_sandbox(capabilities=[fetch])

    async def main():
        with pytest.raises(RuntimeError, match="arun"):
            sb.run("fetch(1)")
        with pytest.raises(RuntimeError, match="arun"):
            sb.session().run("fetch(1)")
        return await sb.arun("fetch(2)")

    assert asyncio.run(main()).value == 2
    assert sb.run("fetch(3)").value == 3  # no loop running here: fine


def test_max_sessions_all_running_raises(make_sandbox):
    sb = make_sandbox(max_sessions=1, limits=Limits(wall_seconds=30, cpu_seconds=30))
    busy = sb.session()
    handle = busy.start("while True:\n    pass")
    time.sleep(0.2)
    try:
        with pytest.raises(SandboxError, match="max_sessions"):
            sb.session()
    finally:
        handle.cancel()
        handle.result(timeout=10)
        busy.close()
