"""Per-phase timings (`Sandbox(timings=True)`) on every runtime, and the run scaffolding that
must cost nothing per run: results built without re-validation, run ids, no cyclic garbage."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable

import pytest
from pydantic import BaseModel, ValidationError

from sandbox import Sandbox
from sandbox.errors import ConfigurationError
from sandbox.results import ErrorInfo, RunResult, Usage, trusted

HOST_PHASES = {"prepare", "driver", "finish"}
WASI_PHASES = ("driver.take", "driver.call", "driver.decode")
PROCESS_PHASES = ("driver.take", "driver.channel", "driver.child.setup", "driver.child.execute", "driver.child.finish",
                  "driver.child.limits", "driver.child.program", "driver.child.report")


def test_timings_are_none_by_default(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    assert sb.run("1 + 1").timings is None
    with sb.session() as session:
        assert session.run("x = 1").timings is None


def test_timings_have_the_phases_when_asked(make_sandbox: Callable[..., Sandbox], runtime: tuple) -> None:
    sb = make_sandbox(timings=True)
    for result in (sb.run("1 + 1"), sb.run("1 / 0")):
        timings = result.timings
        assert timings is not None and HOST_PHASES <= set(timings), timings
        assert all(isinstance(v, float) and v >= 0 for v in timings.values()), timings
        driver_phases = {k: v for k, v in timings.items() if k.startswith("driver.")}
        assert sum(driver_phases.values()) <= timings["driver"] + 1e-6
        if runtime == ("restricted", None):
            assert {"driver.compile", "driver.setup", "driver.execute", "driver.finish"} <= set(timings)
        if runtime == ("restricted", "process"):
            assert set(PROCESS_PHASES) | {"driver.reap"} <= set(timings), timings
        if runtime == ("wasi", None):
            assert set(WASI_PHASES) <= set(timings), timings
    with sb.session() as session:
        timings = session.run("x = 1").timings or {}
        assert HOST_PHASES <= set(timings)
        if runtime == ("restricted", "process"):
            assert set(PROCESS_PHASES) <= set(timings), timings
        if runtime == ("wasi", None):
            assert set(WASI_PHASES) <= set(timings), timings
    assert '"timings":{' in sb.run("1").model_dump_json()


def test_timings_flag_must_be_a_bool() -> None:
    with pytest.raises(ConfigurationError, match="timings"):
        Sandbox(timings="yes")  # type: ignore[arg-type]


def test_trusted_builds_what_model_construct_builds() -> None:
    values = dict(ok=False, value=(1, "a"), stdout="o", stderr="e", output_truncated=True,
                  error=ErrorInfo(kind="internal", type="X", message="m"),
                  usage=Usage(wall_seconds=1.0, cpu_seconds=0.5, peak_memory_bytes=3, capability_calls=2),
                  run_id="r", runtime="restricted", isolation="none", layers=("a",), warnings=["w"], changes=None,
                  session_reset=True, timings={"prepare": 1.0})
    built, constructed = trusted(RunResult, dict(values)), RunResult.model_construct(**values)
    assert built == constructed and built.model_fields_set == constructed.model_fields_set
    assert built.model_dump_json() == constructed.model_dump_json()
    partial = trusted(RunResult, {"ok": True, "run_id": "r", "runtime": "restricted", "isolation": "none"})
    assert partial == RunResult.model_construct(ok=True, run_id="r", runtime="restricted", isolation="none")
    with pytest.raises(TypeError, match="run_id"):
        trusted(RunResult, {"ok": True})


def test_run_ids_are_unique_and_differ_across_processes() -> None:
    with Sandbox() as sb:
        ids = {sb.run("1").run_id for _ in range(50)}
        assert len(ids) == 50 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child reports the first run id it makes, and never returns into pytest
            try:
                os.write(write, sb.run("1").run_id.encode())
            finally:
                os._exit(0)
        os.close(write)  # the read ends at the child's exit even if it wrote nothing
        os.waitpid(pid, 0)
        child = os.read(read, 64).decode()
        os.close(read)
        assert len(child) == 32 and child[:16] not in {i[:16] for i in ids}


@pytest.mark.parametrize("code", ["1 + 1", "def f(n):\n    return f(n - 1) if n else 0\nf(20)", "print('x')\n1 / 0",
                                  "'{} {x}'.format(1, x=2)"])
def test_fresh_runs_leave_no_cyclic_garbage_of_their_own(code: str) -> None:
    with Sandbox() as sb:
        sb.run(code)
        gc.collect()
        gc.disable()
        try:
            sb.run(code)
            found = gc.collect()
        finally:
            gc.enable()
        assert found == 0


def test_a_session_keeps_ticking_after_a_run_that_hit_a_limit() -> None:
    from sandbox import Limits

    with Sandbox() as sb, sb.session() as session:
        stopped = session.run("while True:\n    pass", limits=Limits(cpu_seconds=0.2, wall_seconds=0.5))
        assert stopped.error is not None and stopped.error.limit in ("cpu", "wall")
        looped = session.run("i = 0\nwhile i < 5000:\n    i += 1\ndef f(n):\n    return f(n - 1) if n else i\nf(50)")
        assert looped.ok and looped.value == 5000, looped.error
        again = session.run("while True:\n    pass", limits=Limits(cpu_seconds=0.2, wall_seconds=0.5))
        assert again.error is not None and again.error.limit in ("cpu", "wall")


def test_trusted_models_share_a_fields_set_that_a_copy_does_not_change() -> None:
    first = trusted(Usage, {"wall_seconds": 1.0, "cpu_seconds": 0.5, "peak_memory_bytes": None, "capability_calls": 0})
    second = trusted(Usage, {"wall_seconds": 2.0, "cpu_seconds": 0.5, "peak_memory_bytes": None, "capability_calls": 0})
    fields = set(Usage.model_fields)
    copied = first.model_copy(update={"capability_calls": 3})
    assert copied.capability_calls == 3 and copied.model_fields_set == fields
    assert first.model_fields_set == second.model_fields_set == fields
    with pytest.raises(ValidationError):
        first.capability_calls = 4  # type: ignore[misc]  # frozen: the shared set is never added to

    class Loose(BaseModel):
        x: int = 0

    with pytest.raises(TypeError, match="frozen"):
        trusted(Loose, {"x": 1})
