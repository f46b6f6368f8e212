"""The public contract, pinned on every runtime (see DESIGN.md, "Public contract").

A feature is done when these pass on every entry of `tests.conftest.RUNTIMES`.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from sandbox import Limits, capability
from sandbox.runtime import CapabilityFault


@capability
def get_weather(city: str) -> dict:
    """Current weather for a city."""
    return {"city": city, "temp": 21 if city == "Paris" else 5}


@capability
def add(a: int, b: int = 1) -> int:
    """Add two integers."""
    return a + b


@capability(name="kv.get")
def kv_get(key: str) -> str | None:
    """Read a key."""
    return {"alpha": "A"}.get(key)


@capability
def explode(message: str) -> str:
    """Always fails on the host."""
    raise KeyError(message)


@capability
def guarded(target: str) -> str:
    """Refused by the host for any target but 'ok'."""
    if target != "ok":
        raise CapabilityFault("PolicyDenied", f"target {target!r} is not allowed")
    return "done"


@capability
def fatal_denial() -> str:
    """A denial that ends the run (escalation)."""
    raise CapabilityFault("PolicyDenied", "too many denials", terminate="policy_denied")


@capability
def nap(seconds: float) -> float:
    """Sleep on the host."""
    time.sleep(seconds)
    return seconds


CAPS = [get_weather, add, kv_get, explode, guarded, fatal_denial, nap]


def test_design_example(make_sandbox):
    sb = make_sandbox(limits=Limits(cpu_seconds=1, wall_seconds=5, memory_bytes=256 << 20), capabilities=[get_weather])
    result = sb.run("w = get_weather('Paris')\nprint(w)\nw['temp']")
    assert result.ok, result.error
    assert result.value == 21
    assert result.stdout == "{'city': 'Paris', 'temp': 21}\n"
    assert result.error is None
    assert result.usage.capability_calls == 1
    assert result.usage.wall_seconds > 0
    assert len(result.run_id) == 32
    assert result.runtime == sb.runtime


def test_value_is_last_expression_or_none(make_sandbox):
    sb = make_sandbox()
    assert sb.run("x = 2\nx * 21").value == 42
    assert sb.run("x = 2").value is None
    assert sb.run("").ok


def test_values_keep_their_types_and_serialise_to_json(make_sandbox):
    sb = make_sandbox()
    result = sb.run("(1, (2, 3))")
    assert result.value == (1, (2, 3)) and json.loads(result.model_dump_json())["value"] == [1, [2, 3]]
    result = sb.run("{3, 1, 2}")
    assert result.value == {1, 2, 3} and json.loads(result.model_dump_json())["value"] == [1, 2, 3]
    assert sb.run("{'a': [1.5, None, True]}").value == {"a": [1.5, None, True]}
    value = sb.run("class P:\n    def __repr__(self):\n        return 'P()'\nP()").value
    assert value == "P()"


def test_print_is_captured_from_every_scope(make_sandbox):
    sb = make_sandbox()
    code = (
        "def f(n):\n    print('in f', n)\n"
        "class C:\n    def m(self):\n        print('in m')\n"
        "print('top')\nf(1)\nC().m()\n[print(i) for i in range(2)]\n"
        "print('a', 'b', sep='-', end='!\\n')\n"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert result.stdout == "top\nin f 1\nin m\n0\n1\na-b!\n"


def test_each_run_starts_fresh(make_sandbox):
    sb = make_sandbox()
    assert sb.run("leak = 1").ok
    result = sb.run("leak")
    assert not result.ok
    assert result.error.kind == "guest_exception"
    assert result.error.type == "NameError"


def test_session_keeps_globals(make_sandbox):
    sb = make_sandbox()
    with sb.session() as session:
        assert session.run("import math\ncount = 1\ndef bump():\n    global count\n    count += 1\n    return count").ok
        assert session.run("bump()").value == 2
        assert session.run("bump() + math.floor(0.5)").value == 3
    other = sb.session()
    assert other.run("count").error.type == "NameError"
    other.close()


def test_inputs_become_globals(make_sandbox):
    sb = make_sandbox()
    result = sb.run("sum(rows) * factor", inputs={"rows": [1, 2, 3], "factor": 2})
    assert result.value == 12


def test_syntax_error_is_a_compile_error_with_line(make_sandbox):
    result = make_sandbox().run("x = 1\ny = (\n")
    assert not result.ok
    assert result.error.kind == "compile_error"
    assert result.error.lineno in (2, 3)


def test_guest_exception_has_type_message_line_and_no_host_frames(make_sandbox):
    result = make_sandbox().run("a = 1\nb = 0\na / b\n")
    assert not result.ok
    err = result.error
    assert (err.kind, err.type, err.lineno) == ("guest_exception", "ZeroDivisionError", 3)
    assert "division" in err.message
    for host_detail in ("site-packages", "/work", "Traceback", ".py\""):
        assert host_detail not in err.message


def test_guest_can_raise_and_catch(make_sandbox):
    sb = make_sandbox()
    result = sb.run("try:\n    raise ValueError('bad')\nexcept ValueError as e:\n    caught = str(e)\ncaught")
    assert result.value == "bad"
    result = sb.run("class MyError(Exception):\n    pass\nraise MyError('custom')")
    assert (result.error.type, result.error.message) == ("MyError", "custom")


def test_capability_call_positional_keyword_and_namespaced(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    result = sb.run("[add(1), add(2, b=3), add(a=4, b=5), kv.get('alpha'), kv.get('beta')]")
    assert result.ok, result.error
    assert result.value == [2, 5, 9, "A", None]
    assert result.usage.capability_calls == 5


def test_capability_validation_errors_are_catchable(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    code = (
        "out = []\n"
        "try:\n    add('not a number')\nexcept ValueError as e:\n    out.append('value')\n"
        "try:\n    add()\nexcept TypeError as e:\n    out.append('type')\n"
        "try:\n    add(1, c=2)\nexcept TypeError as e:\n    out.append('kw')\n"
        "out"
    )
    result = sb.run(code)
    assert result.ok, result.error
    assert result.value == ["value", "type", "kw"]


def test_non_json_arguments_are_refused(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    result = sb.run("class X:\n    pass\ntry:\n    get_weather(X())\nexcept TypeError:\n    r = 'refused'\nr")
    assert result.value == "refused"


def test_host_failure_becomes_capability_error(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    caught = sb.run("try:\n    explode('boom')\nexcept CapabilityError as e:\n    m = str(e)\nm")
    assert caught.ok, caught.error
    assert "explode" in caught.value and "boom" in caught.value
    uncaught = sb.run("explode('boom')")
    assert (uncaught.error.kind, uncaught.error.type) == ("guest_exception", "CapabilityError")


def test_denial_is_catchable_and_uncaught_is_policy_denied(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    result = sb.run(
        "try:\n    guarded('secret-target')\nexcept PermissionError as e:\n    r = ('denied', str(e))\nr"
    )
    assert result.ok, result.error
    assert result.value[0] == "denied" and "secret-target" in result.value[1]
    assert sb.run("guarded('ok')").value == "done"
    uncaught = sb.run("guarded('x')")
    assert uncaught.error.kind == "policy_denied"
    assert uncaught.error.type == "PolicyDenied"


def test_terminating_denial_cannot_be_swallowed(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    code = "for i in range(3):\n    try:\n        fatal_denial()\n    except BaseException:\n        pass\n'survived'"
    result = sb.run(code)
    assert not result.ok
    assert result.error.kind == "policy_denied"
    assert result.value is None


@capability(name="sorted")
def host_sorted(items: list) -> str:
    """A capability named like a builtin: granted, the name is the host's."""
    return f"host sorted {len(items)}"


def test_a_capability_named_like_a_builtin_is_the_hosts_when_granted_and_the_builtin_otherwise(make_sandbox):
    granted = make_sandbox(capabilities=[host_sorted, add])
    result = granted.run("[sorted([3, 1, 2]), add(1)]")
    assert result.ok, result.error
    assert result.value == ["host sorted 3", 2] and result.usage.capability_calls == 2
    fresh = make_sandbox(capabilities=[add]).run("[sorted([3, 1, 2]), add(1)]")
    assert fresh.ok, fresh.error
    assert fresh.value == [[1, 2, 3], 2]  # a later sandbox without it sees the builtin


def test_ungranted_capability_is_not_visible(make_sandbox):
    result = make_sandbox(capabilities=[add]).run("get_weather('Paris')")
    assert result.error.type == "NameError"


def test_allowed_imports_work(make_sandbox):
    code = (
        "import json, math, re, collections\nfrom datetime import date\n"
        "c = collections.Counter('abca')\n"
        "[json.dumps({'a': 1}), math.sqrt(16), re.findall(r'\\d', 'a1b2'), c['a'], date(2020, 1, 2).isoformat()]"
    )
    result = make_sandbox().run(code)
    assert result.ok, result.error
    assert result.value == ['{"a": 1}', 4.0, ["1", "2"], 2, "2020-01-02"]


def test_cpu_limit(make_sandbox):
    sb = make_sandbox(limits=Limits(cpu_seconds=0.3, wall_seconds=5))
    result = sb.run("while True:\n    pass")
    assert not result.ok
    assert result.error.kind == "limit_exceeded"
    assert result.error.limit == "cpu"
    assert result.usage.wall_seconds < 4


def test_cpu_limit_cannot_be_swallowed(make_sandbox):
    sb = make_sandbox(limits=Limits(cpu_seconds=0.3, wall_seconds=5))
    code = "n = 0\nwhile n < 50:\n    try:\n        while True:\n            pass\n    except BaseException:\n        n += 1\n'escaped'"
    result = sb.run(code)
    assert not result.ok
    assert result.error.kind == "limit_exceeded"


def test_wall_limit_counts_host_time(make_sandbox):
    sb = make_sandbox(limits=Limits(cpu_seconds=5, wall_seconds=0.5), capabilities=CAPS)
    result = sb.run("while True:\n    nap(0.1)")
    assert not result.ok
    assert (result.error.kind, result.error.limit) == ("limit_exceeded", "wall")
    assert result.usage.wall_seconds < 3


def test_memory_limit(make_sandbox):
    sb = make_sandbox(limits=Limits(memory_bytes=64 << 20))
    result = sb.run("x = bytearray(10**9)\nlen(x)")
    assert not result.ok
    assert (result.error.kind, result.error.type, result.error.limit) == ("limit_exceeded", "memory", "memory"), result.error


def test_a_buffer_grown_in_place_fits_in_about_half_the_memory_limit(make_sandbox):
    """Growing a buffer may copy it (old and new at once), and every runtime counts that: under
    256 MiB a bytearray grown to 100 MiB fits, one grown to 200 MiB is the memory limit."""
    sb = make_sandbox(limits=Limits(memory_bytes=256 << 20, wall_seconds=30))
    code = "b = bytearray()\nfor i in range({}):\n    b += b'x' * (1 << 20)\nlen(b) >> 20"
    fits = sb.run(code.format(100))
    assert fits.ok and fits.value == 100, fits.error
    over = sb.run(code.format(200))
    assert (over.error.kind, over.error.limit) == ("limit_exceeded", "memory"), over.error
    assert sb.run("sum(range(1000))").value == 499500  # the runtime runs on afterwards


def test_recursion_limit(make_sandbox):
    result = make_sandbox().run("def f(n):\n    return f(n + 1)\nf(0)")
    assert not result.ok
    assert (result.error.kind, result.error.type, result.error.limit) == ("limit_exceeded", "recursion", "recursion"), result.error
    # the host is still serving afterwards
    assert make_sandbox().run("1 + 1").value == 2


def test_output_is_truncated_and_flagged(make_sandbox):
    sb = make_sandbox(limits=Limits(max_output_bytes=1000))
    result = sb.run("for i in range(10000):\n    print('x' * 50)\n'done'")
    assert result.output_truncated
    assert len(result.stdout.encode()) == 1000
    assert result.ok and result.value == "done", result.error


def test_arun_with_async_capability(make_sandbox):
    @capability
    async def fetch(key: str) -> str:
        await asyncio.sleep(0.01)
        return key.upper()

    sb = make_sandbox(capabilities=[fetch])

    async def main():
        return await asyncio.gather(sb.arun("fetch('a')"), sb.arun("fetch('b')"))

    results = asyncio.run(main())
    assert [r.value for r in results] == ["A", "B"]


def test_concurrent_runs_from_threads(make_sandbox):
    sb = make_sandbox(capabilities=CAPS)
    results: dict[int, object] = {}

    def worker(n: int) -> None:
        results[n] = sb.run(f"total = 0\nfor i in range({n * 100}):\n    total += add(i, 0) if i % 50 == 0 else i\ntotal")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for n in range(1, 7):
        assert results[n].ok, results[n].error
        assert results[n].value == sum(range(n * 100))


def test_ordinary_python_runs(make_sandbox):
    code = '''
from dataclasses import dataclass
from collections import defaultdict

@dataclass
class Item:
    name: str
    qty: int

class Stack:
    def __init__(self):
        self.items = []
    def __len__(self):
        return len(self.items)
    def __iter__(self):
        return iter(self.items)
    def push(self, x):
        self.items.append(x)

class Loud(Stack):
    def push(self, x):
        super().push(x.upper())

s = Loud()
for w in ["a", "b"]:
    s.push(w)
counts = defaultdict(int)
for item in [Item("x", 2), Item("y", 3), Item("x", 1)]:
    counts[item.name] += item.qty
d = {"k": 1}
d["k"] += 1
gen = (i * i for i in range(5) if i % 2)
lam = sorted(["bb", "a", "ccc"], key=lambda s: -len(s))
f"{len(s)}:{list(s)}:{dict(counts)}:{d['k']}:{sum(gen)}:{lam}:{'%.2f' % 3.14159}"
'''
    result = make_sandbox().run(code)
    assert result.ok, result.error
    assert result.value == "2:['A', 'B']:{'x': 3, 'y': 3}:2:10:['ccc', 'bb', 'a']:3.14"


def test_host_is_unchanged_by_guest_globals(make_sandbox):
    sb = make_sandbox()
    sb.run("import json\njson.dumps = None\nmath = None")
    result = sb.run("import json\njson.dumps([1])")
    assert result.value == "[1]"
    import json

    assert json.dumps([1]) == "[1]"


def test_dates_and_clocks(make_sandbox):
    code = (
        "import time\nfrom datetime import date, datetime\n"
        "parsed = datetime.strptime('2024-02-29 13:05', '%Y-%m-%d %H:%M')\n"
        "[parsed.strftime('%d/%m/%Y'), date.today().year >= 2024, time.time() > 1.7e9,"
        " time.strptime('2020', '%Y').tm_year, datetime.now().year >= 2024]"
    )
    result = make_sandbox().run(code)
    assert result.ok, result.error
    assert result.value == ["29/02/2024", True, True, 2020, True]
