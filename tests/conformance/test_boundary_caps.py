"""Caps on everything that crosses the boundary, on every runtime: the value (size, nodes with
shared references counted each time, depth), error text, capability arguments and results.
Each hostile run returns promptly with a bounded `RunResult` that serialises to JSON."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import pytest

from runtimes import wire
from sandbox import Limits
from sandbox.capabilities import capability

from .runtime_differences import WASI_UNGATED

LIMITS = Limits(wall_seconds=10, max_value_bytes=1 << 20, max_output_bytes=64 << 10)
PROMPT = LIMITS.wall_seconds + 0.5


@capability
def echo(value: Any) -> Any:
    """Return ``value``."""
    return value


@capability
def blob(size: int) -> str:
    """A host string of ``size`` characters."""
    return "x" * size


def _bounded(result, started: float) -> dict:
    assert time.monotonic() - started < PROMPT
    text = result.model_dump_json()
    assert len(text) < 2 * LIMITS.max_value_bytes + (1 << 20)
    return json.loads(text)


def _value_limit(result) -> None:
    assert not result.ok
    assert result.error.kind == "limit_exceeded" and result.error.limit == "value", result.error


def _run(sb, code: str):
    started = time.monotonic()
    result = sb.run(code)
    _bounded(result, started)
    return result


HOSTILE_VALUES = {
    "huge_string": "'x' * 50_000_000",
    "huge_list": "list(range(3_000_000))",
    "huge_bytes": "b'x' * 5_000_000",
    "shared_reference_bomb": "a = [1]\nfor _ in range(40):\n    a = [a, a]\na",
    "shared_dict_bomb": "d = {'k': 'v' * 100}\nfor _ in range(40):\n    d = {'a': d, 'b': d}\nd",
    "deep_nesting": "a = []\nfor _ in range(150):\n    a = [a]\na",
    "deep_tuple": "a = ()\nfor _ in range(150):\n    a = (a,)\na",
    "huge_set": "set(range(2_000_000))",
}


@pytest.mark.parametrize("code", HOSTILE_VALUES.values(), ids=HOSTILE_VALUES.keys())
def test_hostile_values_end_on_the_value_limit(make_sandbox, code):
    sb = make_sandbox(limits=LIMITS)
    _value_limit(_run(sb, code))
    assert sb.run("1 + 1").value == 2  # the sandbox is intact


def test_a_value_under_the_cap_is_returned_whole(make_sandbox):
    sb = make_sandbox(limits=LIMITS)
    result = _run(sb, "['x' * 1000 for _ in range(500)]")
    assert result.ok and len(result.value) == 500


def test_the_default_value_limit_is_the_same_everywhere(make_sandbox):
    sb = make_sandbox()
    _value_limit(_run(sb, "'x' * 50_000_000"))
    assert _run(sb, "'x' * 1_000_000").ok


def test_huge_error_message_and_type_name_are_truncated_and_flagged(make_sandbox):
    sb = make_sandbox(limits=LIMITS)
    result = _run(sb, "raise ValueError('m' * 20_000_000)")
    assert result.error.kind == "guest_exception" and result.error.type == "ValueError"
    assert len(result.error.message) <= wire.MAX_MESSAGE_CHARS and result.error.message.endswith(wire.TRUNCATED)
    result = _run(sb, "exec('class ' + 'E' * 500_000 + '(Exception):\\n    pass\\nraise ' + 'E' * 500_000 + '(\\'boom\\')')")
    assert result.error.kind == "guest_exception" and result.error.message == "boom"
    assert len(result.error.type) <= wire.MAX_TYPE_CHARS and result.error.type.endswith(wire.TRUNCATED)


def test_oversized_capability_arguments_end_the_run(make_sandbox):
    sb = make_sandbox(limits=LIMITS, capabilities=[echo])
    for code in ("echo('x' * 5_000_000)",
                 "a = [1]\nfor _ in range(40):\n    a = [a, a]\necho(a)",
                 "try:\n    echo(['y' * 1000] * 5000)\nexcept BaseException:\n    pass\n'caught'"):
        result = _run(sb, code)
        _value_limit(result)
        assert result.usage.capability_calls == 0
    result = _run(sb, "a = []\nfor _ in range(150):\n    a = [a]\necho(a)")
    _value_limit(result)
    assert _run(sb, "echo('x' * 1000)").value == "x" * 1000


def test_oversized_capability_result_is_a_capability_error(make_sandbox):
    sb = make_sandbox(limits=LIMITS, capabilities=[blob])
    result = _run(sb, "try:\n    blob(5_000_000)\nexcept CapabilityError as e:\n    r = str(e)\nr")
    assert result.ok and "blob()" in result.value and "larger than" in result.value
    assert _run(sb, "len(blob(1000))").value == 1000


# -- wasi: guest code runs in the same interpreter as the guest runner and can rewrite it -------

REWRITTEN_REPORTS = {
    "900_deep": "'{\"ok\":true,\"value\":' + '[' * 900 + ']' * 900 + ',\"stdout\":\"\",\"stderr\":\"\",\"error\":null}'",
    "oversized": "'{\"ok\":true,\"value\":\"' + 'x' * 30_000_000 + '\"}'",
    "node_bomb": "'{\"ok\":true,\"value\":[' + '{},' * 7_000_000 + '{}]}'",
}


def _peak_rss() -> int:
    """The process's peak resident set (VmHWM) in bytes, 0 where /proc does not report it."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def _fresh_peak_rss() -> int:
    """Reset the peak resident set to the current one (Linux: "5" to /proc/self/clear_refs) and
    return it, so a later `_peak_rss()` measures only what came after. Skips the test where the
    peak cannot be reset: an all-time peak raised by an earlier test would hide any growth."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError as exc:
        pytest.skip(f"the peak resident set cannot be reset here: {exc}")
    return _peak_rss()


def test_the_peak_resident_set_can_be_reset():
    spike = b"x" * (64 << 20)
    del spike
    before = _peak_rss()
    assert _fresh_peak_rss() < before - (32 << 20)


@pytest.mark.parametrize("report", REWRITTEN_REPORTS.values(), ids=REWRITTEN_REPORTS.keys())
def test_wasi_report_from_a_rewritten_serialiser_is_capped_before_parsing(report):
    from sandbox import Sandbox

    limits = Limits(memory_bytes=256 << 20)
    with Sandbox("wasi", limits=limits) as sb:
        assert sb.run("1").ok  # warm: the engine and guest are loaded before measuring
        before = _fresh_peak_rss()
        started = time.monotonic()
        result = sb.run(WASI_UNGATED + f"import sys\nreport = {report}\nsys.modules['app']._report = lambda *outcome: report\n1")
        _bounded(result, started)
        assert _peak_rss() - before < limits.memory_bytes + (64 << 20)
        _value_limit(result)
        assert sb.run("1 + 1").value == 2


RAW_CALLS = {
    "900_deep_arguments": "'[' * 900 + ']' * 900",
    "oversized_arguments": "'[[\"' + 'x' * 5_000_000 + '\"], {}]'",
    "node_bomb_arguments": "'[[' + '[],' * 2_000_000 + '[]], {}]'",
}

RAW_HOST_CALL = pytest.mark.parametrize(
    "call", ["host.call({name}, {arguments})", "host.call_with_handles({name}, {arguments}, [])"],
    ids=["call", "call_with_handles"])
"""Both raw capability imports, as a template over the capability name and the arguments' JSON."""


def _raw_host_run(sb, body: str):
    """Run ``body`` on the wasi sandbox ``sb`` with the raw ``host`` imports in reach, checking
    the run returns promptly with a bounded result."""
    started = time.monotonic()
    result = sb.run(WASI_UNGATED + "from wit_world.imports import host\n" + body)
    _bounded(result, started)
    return result


@RAW_HOST_CALL
@pytest.mark.parametrize("payload", RAW_CALLS.values(), ids=RAW_CALLS.keys())
def test_wasi_raw_capability_arguments_are_capped_before_parsing(payload, call):
    from sandbox import Sandbox

    with Sandbox("wasi", limits=LIMITS, capabilities=[echo]) as sb:
        raw = call.format(name="'echo'", arguments=payload)
        result = _raw_host_run(sb, f"try:\n    {raw}\nexcept BaseException:\n    pass\n'survived'")
        _value_limit(result)
        assert result.usage.capability_calls == 0
        assert sb.run("1 + 1").value == 2


@RAW_HOST_CALL
def test_wasi_raw_call_with_a_huge_name_is_refused_promptly_and_briefly(call):
    from sandbox import Sandbox

    with Sandbox("wasi", limits=LIMITS, capabilities=[echo]) as sb:
        raw = call.format(name="name", arguments="'[[], {}]'")
        result = _raw_host_run(sb, f"name = 'echo' + 'x' * 5_000_000\nreply = str({raw})\n"
                                   "['no capability named' in reply, len(reply) < 2000]")
        assert result.ok and result.value == [True, True], result
        assert result.usage.capability_calls == 0
        assert sb.run("1 + 1").value == 2


def test_wasi_raw_output_is_read_only_as_far_as_the_output_cap():
    from sandbox import Sandbox

    # Host-side Python allocations only: the guest's linear memory and wasmtime's copy of the
    # string live in the same process, so its resident set grows by tens of MB either way.
    with Sandbox("wasi", limits=LIMITS.model_copy(update={"max_output_bytes": 100})) as sb:
        assert sb.run("1").ok  # warm: the engine and guest are loaded before measuring
        tracemalloc.start()
        try:
            result = _raw_host_run(sb, "host.output(False, 'é' * 3_000_000)\n1")
            host_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result.ok and result.output_truncated
        assert result.stdout == "é" * 50
        assert host_peak < 1 << 20  # the 6 MB written, decoded whole, would take 18 MB here
        assert sb.run("1 + 1").value == 2
