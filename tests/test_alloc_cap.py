"""The hard in-process memory cap (`runtimes.restricted.alloc_cap`, layer ``alloc-cap``).

Memory cases run in one fresh interpreter that measures the host's peak RSS (VmHWM, reset
between cases through /proc/self/clear_refs) around each run of ``Sandbox("restricted")``
with ``memory_bytes=256 MiB``: every case must stop with ``limit_exceeded`` (memory) and grow
the host's RSS by less than ``memory_bytes + 16 MiB``. They run once with the C allocator as it
is, and once with glibc tuned to keep what is freed: blocks of up to 32 MiB served from its heap
and a heap never trimmed on free, so freed memory stays resident and a realloc() copies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from runtimes.restricted import alloc_cap
from sandbox import Sandbox
from sandbox.errors import IsolationUnavailable
from sandbox.limits import Limits

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY = 256 << 20
SLACK = 16 << 20

CASES = {
    "bytearray_loop": "b = bytearray()\nwhile True:\n    b += b'x' * (1 << 20)",
    "bytes_concat_loop": "b = b''\nwhile True:\n    b += b'x' * (1 << 20)",
    "bytearray_list": "x = []\nwhile True:\n    x.append(bytearray(1 << 20))",
    "string_doubling": "s = 'a'\nwhile True:\n    s = s + s",
    "list_comprehension": "x = [i for i in range(10 ** 8)]",
    "dict_comprehension": "d = {i: str(i) for i in range(10 ** 8)}",
    "str_subclass_dunder": "class S(str):\n    def __mul__(self, n):\n        return super().__mul__(n)\nS('ab') * (10 ** 9)",
    "str_subclass_ljust": "class S(str):\n    def grow(self, n):\n        return super().ljust(n)\nS('a').grow(10 ** 9)",
    "bytes_subclass_dunder": "class B(bytes):\n    def __add__(self, o):\n        return bytes(self) * 2\nb = B(b'x' * (1 << 20))\nparts = []\nwhile True:\n    parts.append(b + b)",
    "index_dunder": "class N:\n    def __index__(self):\n        return 10 ** 9\n'ab' * N()",
    "range_subclass_len": "class R:\n    def __iter__(self):\n        return iter(range(10 ** 8))\nlist(R())",
    "alias_bytearray": "make = bytearray\nmake(10 ** 9)",
    "deque_repeat": "import collections\ncollections.deque(range(10)) * (10 ** 8)",
    "userstring_repeat": "import collections\ncollections.UserString('ab') * (10 ** 9)",
    "bytearray_percent_width": "bytearray(b'%*d') % (10 ** 9, 1)",
    "wide_format_fields": "'{:{w}}{:{w}}{:{w}}{:{w}}'.format(1, 2, 3, 4, w=10 ** 8)",
    "print_huge_sep": "print(*range(100), sep='x' * (10 ** 7))",
    "starred_range": "first, *rest = range(10 ** 9)",
    "list_enumerate_range": "list(enumerate(range(10 ** 8)))",
    "fraction_exponent": "import fractions\nfractions.Fraction(3, 2) ** (10 ** 10)",
    "decimal_precision": "import decimal\ndecimal.Context(prec=999999999).divide(decimal.Decimal(1), decimal.Decimal(7))",
    "b85encode": "import base64\nbase64.b85encode(b'x' * (100 << 20))",
    "random_choices": "import random\nrandom.choices([1, 2], k=10 ** 9)",
    "dict_fromkeys": "dict.fromkeys(range(10 ** 8))",
    "str_translate": "('a' * 1000).translate({97: 'b' * (10 ** 6)})",
    "re_sub_empty_pattern": "import re\nre.sub('', 'x' * (10 ** 5), 'a' * (10 ** 4))",
    "small_tuple_chain": "x = None\nwhile True:\n    x = (x, 1)",
    "small_objects_in_a_list": "x = [(i,) for i in range(10 ** 8)]",
    "caught_memory_error": "x = []\ntry:\n    while True:\n        x.append(bytearray(1 << 20))\nexcept MemoryError:\n    x = None\n'survived'",
}

ALLOCATORS = {
    "as-is": None,
    "keeps-freed": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=4294967296",
}

MEASURE = r"""
import gc, json, sys
from sandbox import Limits, Sandbox

def status(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

sandbox = Sandbox("restricted", require={"alloc-cap"},
                  limits=Limits(memory_bytes=%(memory)d, cpu_seconds=20, wall_seconds=40))
sandbox.run("1")
for name, code in json.loads(sys.argv[1]).items():
    gc.collect()
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = status("VmRSS")
    result = sandbox.run(code)
    growth = status("VmHWM") - before
    after = sandbox.run("sum(range(1000))")
    print(json.dumps({"name": name, "growth": growth, "ok": result.ok, "layers": list(result.layers),
                      "error": result.error.model_dump() if result.error else None,
                      "after": after.value}), flush=True)
"""


@pytest.fixture(scope="module", params=sorted(ALLOCATORS))
def measured(request: pytest.FixtureRequest) -> dict[str, dict]:
    env = dict(os.environ)
    if ALLOCATORS[request.param] is not None:
        env["GLIBC_TUNABLES"] = ALLOCATORS[request.param]
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE % {"memory": MEMORY}, json.dumps(CASES)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {row["name"]: row for row in rows}


@pytest.mark.parametrize("name", sorted(CASES))
def test_memory_case_stops_within_the_limit(measured, name):
    row = measured[name]
    assert not row["ok"], row
    assert row["error"]["kind"] == "limit_exceeded" and row["error"]["limit"] == "memory", row["error"]
    assert row["growth"] < MEMORY + SLACK, f"{name}: host RSS grew by {row['growth'] >> 20} MiB"
    assert "alloc-cap" in row["layers"]
    assert row["after"] == 499500  # the host still runs guests afterwards


def test_consecutive_hostile_runs_do_not_accumulate_host_memory():
    """Each fresh run's memory is released when it ends (globals cleared, cycles collected), so
    three runs that each fill the cap leave the host's peak RSS near one run's worth."""
    codes = [
        "def f():\n    pass\nx = []\nwhile True:\n    x.append(bytearray(1 << 20))",
        "a = []\na.append(a)\nwhile True:\n    a.append(bytearray(1 << 20))",
        "y = []\nwhile True:\n    y.append(bytearray(1 << 20))",
    ]
    script = CONSECUTIVE % {"memory": MEMORY}
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(codes)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(proc.stdout.splitlines()[-1])
    assert row["limits"] == ["memory"] * 3
    assert row["growth"] < MEMORY + SLACK, f"host RSS grew by {row['growth'] >> 20} MiB over three runs"


CONSECUTIVE = """
import json, sys
from sandbox import Limits, Sandbox

def status(key):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

sandbox = Sandbox("restricted", limits=Limits(memory_bytes=%(memory)d, wall_seconds=30))
sandbox.run("1")
before = status("VmRSS")
limits = [sandbox.run(code).error.limit for code in json.loads(sys.argv[1])]
print(json.dumps({"growth": status("VmHWM") - before, "limits": limits}))
"""


def test_freed_blocks_are_held_until_the_allocator_gives_them_back():
    """A freed large block stays counted (held) until a refused allocation trims the C
    allocator; then the held charges are given back and the allocation is decided again. So a
    guest that churns through many times its limit in large blocks is never refused, and the
    live count (`used`) and the peak are what it holds at once."""
    cap = alloc_cap.new_cap()
    cap.arm(32 << 20)
    try:
        base = cap.used
        for _ in range(64):
            block = bytes(4 << 20)  # 256 MiB in all, 4 MiB at a time
            del block
        held, used, tripped = cap.held, cap.used, cap.tripped
        peak = cap.peak
    finally:
        cap.disarm()
    assert not tripped
    assert 0 < held <= 32 << 20, held
    assert used - base < 1 << 20, used - base
    assert 4 << 20 <= peak < 6 << 20, peak


def test_a_growing_buffer_is_charged_its_old_and_new_size_at_once():
    """realloc() may copy into a new block before freeing the old one, so growing a buffer
    must fit both: a bytearray grown in place stops at about half the limit, never past it."""
    cap = alloc_cap.new_cap()
    limit = 64 << 20
    grown = bytearray()
    cap.arm(limit)
    try:
        try:
            while True:
                grown += b"x" * (1 << 20)
        except MemoryError:
            pass
        size, tripped, peak = len(grown), cap.tripped, cap.peak
        grown = bytearray()
    finally:
        cap.disarm()
    assert tripped
    assert limit // 4 < size < limit * 3 // 4, size >> 20
    assert peak <= limit + (4 << 20), peak


def test_a_buffer_shrinking_at_the_limit_is_not_refused():
    """Shrinking needs no room: a buffer cut back while the cap is full succeeds and gives
    back what it no longer holds."""
    cap = alloc_cap.new_cap()
    limit = 64 << 20
    cap.arm(limit)
    try:
        big = bytearray(40 << 20)
        filler = []
        try:
            while True:
                filler.append(bytearray(1 << 20))
        except MemoryError:
            pass
        before = cap.used + cap.held
        del big[19 << 20:]
        after = cap.used + cap.held
        filler.clear()
        del big
    finally:
        cap.disarm()
    assert after <= before  # the cut was not refused and charged nothing more


def test_the_charge_never_passes_the_limit_while_blocks_come_and_go():
    """Live and held charges together stay within the limit (plus the reserve after a trip)
    through churn, growth and a trip: the invariant that bounds the host's resident growth."""
    cap = alloc_cap.new_cap()
    limit = 48 << 20
    seen = 0
    cap.arm(limit)
    try:
        grown = bytearray()
        try:
            for i in range(400):
                block = bytes((i % 7 + 1) << 20)
                grown += block[: 1 << 19]
                seen = max(seen, cap.used + cap.held)
                del block
        except MemoryError:
            pass
        seen = max(seen, cap.used + cap.held)
        grown = bytearray()
    finally:
        cap.disarm()
    assert 0 < seen <= limit + (4 << 20), seen >> 20


def test_restricted_runs_report_the_layer_and_the_peak():
    with Sandbox("restricted") as sandbox:
        result = sandbox.run("x = bytearray(50 << 20)\nlen(x)")
    assert result.ok and result.value == 50 << 20
    assert "alloc-cap" in result.layers
    assert 50 << 20 <= result.usage.peak_memory_bytes < 60 << 20


def test_a_guest_that_catches_memory_error_is_still_stopped():
    code = ("x = []\nfor attempt in range(3):\n    try:\n        while True:\n            x.append(bytearray(1 << 20))\n"
            "    except MemoryError:\n        x = []\n'finished'")
    with Sandbox("restricted", limits=Limits(memory_bytes=64 << 20)) as sandbox:
        result = sandbox.run(code)
    assert not result.ok and result.error.limit == "memory", result.error


def test_host_threads_are_not_counted_while_a_guest_is_capped():
    """A host thread allocating concurrently is neither limited nor charged to the guest."""
    held: list[bytearray] = []
    started, stop = threading.Event(), threading.Event()

    def host() -> None:
        started.set()
        while not stop.is_set() and len(held) < 200:
            held.append(bytearray(1 << 20))

    thread = threading.Thread(target=host)
    thread.start()
    started.wait()
    with Sandbox("restricted", limits=Limits(memory_bytes=32 << 20, wall_seconds=20)) as sandbox:
        small = sandbox.run("x = [bytearray(1 << 20) for i in range(20)]\nlen(x)")
        big = sandbox.run("x = [bytearray(1 << 20) for i in range(100)]\nlen(x)")
    thread.join()
    assert len(held) == 200  # every host allocation succeeded
    assert small.ok and small.value == 20, small.error
    assert not big.ok and big.error.limit == "memory", big.error
    del held


def test_capability_calls_are_not_charged_to_the_guest():
    def make(size: int) -> int:
        blob = bytearray(size)  # host memory, allocated on the guest's thread
        return len(blob)

    with Sandbox("restricted", capabilities=[make], limits=Limits(memory_bytes=16 << 20)) as sandbox:
        result = sandbox.run("make(64 << 20)")
    assert result.ok and result.value == 64 << 20, result.error


def test_sessions_are_capped_per_run():
    with Sandbox("restricted", limits=Limits(memory_bytes=64 << 20)) as sandbox:
        with sandbox.session() as session:
            assert session.run("x = bytearray(8 << 20)\nlen(x)").ok
            over = session.run("y = [bytearray(1 << 20) for i in range(100)]")
            assert not over.ok and over.error.limit == "memory", over.error
            assert session.run("len(x)").value == 8 << 20


def test_disabled_cap_is_absent_and_can_be_required(monkeypatch):
    monkeypatch.setenv("SANDBOX_DISABLE_ALLOC_CAP", "1")
    with Sandbox("restricted") as sandbox:
        assert "alloc-cap" not in sandbox.run("1").layers
    with pytest.raises(IsolationUnavailable, match="SANDBOX_DISABLE_ALLOC_CAP"):
        Sandbox("restricted", require={"alloc-cap"})
    monkeypatch.delenv("SANDBOX_DISABLE_ALLOC_CAP")
    with Sandbox("restricted", require={"alloc-cap"}) as sandbox:
        assert "alloc-cap" in sandbox.run("1").layers


def test_the_extension_is_built():
    """`make setup` builds it (pip install -e . runs build_ext); a missing build is a failure here."""
    assert alloc_cap.available(), alloc_cap.unavailable_reason()


def test_cap_accounting_balances():
    """Blocks allocated while armed and freed (on any thread) give their charge back; blocks
    from before arming are not charged when freed; realloc moves the charge."""
    cap = alloc_cap.new_cap()
    old = [str(i) * 3 for i in range(100000)]
    cap.arm(1 << 30)
    try:
        base, blocks = cap.used, cap.blocks
        fresh = [str(i) * 3 for i in range(400000)]  # more than pymalloc may have free before arm()
        grown = bytearray(10)
        grown.extend(b"x" * (4 << 20))
        charged = cap.used - base
        assert charged > (4 << 20) + 100000 * 32
        old.clear()
        freed_elsewhere = threading.Thread(target=fresh.clear)
        cap.pause()
        freed_elsewhere.start()
        freed_elsewhere.join()
        cap.resume()
        del grown
        assert cap.blocks - blocks < 100, cap.blocks - blocks
        assert cap.used - base < charged // 4, (charged, cap.used - base)  # the side table keeps its size
    finally:
        cap.disarm()
    assert not cap.tripped and cap.peak > (4 << 20)


def test_small_blocks_are_charged_through_their_arenas():
    """Small objects (pymalloc blocks) are charged through the arenas mapped while the cap is
    armed, and the cap still stops a guest that allocates nothing but small objects: pymalloc's
    fallback to malloc when an arena is refused is refused too."""
    cap = alloc_cap.new_cap()
    limit = 64 << 20
    chain: Any = None
    cap.arm(limit)
    try:
        assert cap.small_by_arena  # this interpreter runs pymalloc
        base = cap.used
        small = [(i,) for i in range(400000)]  # about 32 MB of tuples and ints, and a large list buffer
        assert cap.used - base > 16 << 20, cap.used - base  # less what pymalloc had free before arm()
        del small
        try:
            while True:
                chain = (chain, None)  # small blocks only
        except MemoryError:
            pass
        tripped, used = cap.tripped, cap.used
        chain = None
    finally:
        cap.disarm()
    assert tripped and limit - (1 << 20) < used <= limit + (4 << 20), used  # an arena is 1 MiB or less


def test_a_host_thread_mapping_arenas_while_the_guest_is_armed_is_not_charged():
    """Arenas a host thread makes pymalloc map while the guest's cap is armed on another thread
    are neither charged to the cap nor limited by it."""
    cap = alloc_cap.new_cap()
    made: list = []

    def host() -> None:
        made.append([(i, i) for i in range(300000)])  # about 27 MB of small objects

    cap.arm(4 << 20)
    try:
        assert cap.small_by_arena  # this interpreter runs pymalloc: arenas, not blocks, are charged
        thread = threading.Thread(target=host)
        thread.start()
        thread.join()
        used, tripped = cap.used, cap.tripped
    finally:
        cap.disarm()
    assert len(made[0]) == 300000
    assert not tripped and used < 2 << 20, used


def test_a_recorded_block_reallocated_small_stays_charged():
    """pymalloc reallocates a malloc block in place of malloc even to a small size: the block
    stays recorded (charged) until it is freed, so shrinking buffers cannot make uncharged
    memory."""
    cap = alloc_cap.new_cap()
    cap.arm(1 << 30)
    try:
        blocks = cap.blocks
        buffers = [bytearray(4096) for _ in range(64)]
        for buffer in buffers:
            del buffer[100:]
        assert cap.blocks - blocks >= 64
        del buffers, buffer
        assert cap.blocks - blocks < 8
    finally:
        cap.disarm()


PER_BLOCK = """
from runtimes.restricted import alloc_cap
cap = alloc_cap.new_cap()
cap.arm(32 << 20)
chain = None
try:
    base = cap.used
    small = [(i,) for i in range(1000)]
    charged = cap.used - base
    del small
    while True:
        chain = (chain, None)
except MemoryError:
    chain = None
cap.disarm()
print(cap.small_by_arena, charged >= 1000 * 48, cap.tripped)
"""


@pytest.mark.parametrize("allocator", ["malloc", "pymalloc_debug"])
def test_small_blocks_are_charged_one_by_one_without_plain_pymalloc(allocator):
    """Charging small blocks through arenas is only sound when they come from pymalloc: with
    another allocator (or pymalloc's debug hooks) each small block is charged and recorded, and
    a guest of small objects still stops at the limit."""
    env = dict(os.environ, PYTHONMALLOC=allocator)
    proc = subprocess.run([sys.executable, "-c", PER_BLOCK], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["False", "True", "True"]


WRAPPED = """
import tracemalloc
from runtimes.restricted import alloc_cap
def charged():
    cap = alloc_cap.new_cap()
    cap.arm(1 << 30)
    try:
        probed = cap.used > 0  # only a probe's side table is charged before the first allocation
        block = bytearray(1 << 20)
        return f"{cap.used >= 1 << 20}/{'probed' if probed else 'unprobed'}"
    finally:
        cap.disarm()
print(charged())
tracemalloc.start()  # its hooks wrap ours (and forward to them): arm() must probe, not assume
print(charged())
tracemalloc.stop()  # ours are outermost again
print(charged())
"""


def test_the_cap_charges_whether_or_not_its_hooks_are_the_outermost_allocator():
    proc = subprocess.run([sys.executable, "-c", WRAPPED], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["True/unprobed", "True/probed", "True/unprobed"]
