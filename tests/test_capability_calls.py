"""The cheap paths of a capability call give what the full paths give.

`Capability.bind` / `dump_result` skip pydantic for values of exactly the declared primitive
type; the restricted guest skips the `plain` walk for small primitive arguments and results;
`sandbox.call_threads` hands calls to a partner thread through flags and pipes (the
`sandbox._handoff` extension, or its Python stand-in). Each is checked against the full path,
and the hand-off, with either kind of flag, against its timeout and wake-up guarantees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any

import collections
import datetime
import decimal
import enum
import functools
import inspect
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.restricted.grants import primitive_within, primitives_within
from runtimes.wire import MAX_INT_BITS, ValueTooLarge, WireError, plain
from sandbox import Sandbox, call_threads
from sandbox.capabilities import Capability, capability, record_detail, warn
from sandbox.runtime import CapabilityFault


def typed(a: int, b: str, c: bool = False, d: float = 1.5, e: int = None) -> int:  # type: ignore[assignment]
    return a


def floats(x: float) -> float:
    return x


def keyword_only(a: int, *, b: int = 0) -> int:
    return a + b


def _full_path(func: Any) -> Capability:
    cap = Capability(func)
    cap._fast_params = None  # what every call did before the exact-type path existed
    cap._fast_result = None
    cap._positional = None
    return cap


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", call()
    except CapabilityFault as fault:
        return fault.guest_type, fault.message


CALLS: list[tuple[list[Any], dict[str, Any]]] = [
    ([1, "x"], {}),
    ([1, "x", True, 2.5], {}),
    ([1], {"b": "x"}),
    ([], {"a": 1, "b": "x", "e": 3}),
    ([1, "x"], {"d": 2.0, "c": True}),
    ([True, "x"], {}),  # a bool for an int: pydantic decides
    ([1.0, "x"], {}),  # a float for an int
    (["1", "x"], {}),  # a str for an int
    ([1, 2], {}),  # an int for a str
    ([1, "x", 1], {}),  # an int for a bool
    ([1, "x", False, 3], {}),  # an int for a float
    ([1, "x", False, float("inf")], {}),
    ([1, "x", False, float("nan")], {}),
    ([2 ** (MAX_INT_BITS + 1), "x"], {}),
    ([1], {}),  # missing
    ([1, "x"], {"a": 2}),  # twice
    ([1, "x"], {"zzz": 1}),  # unknown
    ([1, "x", True, 1.0, None, 9], {}),  # too many
]


@pytest.mark.parametrize(("args", "kwargs"), CALLS)
def test_bind_matches_the_full_path(args: list[Any], kwargs: dict[str, Any]) -> None:
    fast, full = Capability(typed), _full_path(typed)
    assert fast._fast_params is not None
    got, want = _outcome(lambda: fast.bind(list(args), dict(kwargs))), _outcome(lambda: full.bind(list(args), dict(kwargs)))
    assert got == want
    if got[0] == "ok":
        assert list(got[1]) == list(want[1])  # same order
        assert all(type(got[1][k]) is type(want[1][k]) for k in got[1])


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")  # the full path, given a mismatched value
@pytest.mark.parametrize("value", [0, -3, 2 ** 70, 2 ** (MAX_INT_BITS + 1), True, "s", 1.25, float("inf"), float("nan"), None])
def test_results_match_the_full_path(value: Any) -> None:
    for func in (typed, floats):
        got, want = _outcome(lambda: Capability(func).dump_result(value)), _outcome(lambda: _full_path(func).dump_result(value))
        if got[0] == "ok" and isinstance(got[1], float) and got[1] != got[1]:
            assert want[0] == "ok" and want[1] != want[1]
        else:
            assert got == want
            assert type(got[1]) is type(want[1])


class _Str(str):
    pass


@pytest.mark.parametrize("values", [
    (1, "a", True, None, 2.5),
    (2 ** 64 - 1,),
    (2 ** 64,),
    ("x" * 1000,),
    ("\U0001f600" * 100,),
    (float("inf"),),
    (_Str("sub"),),
    ([1],),
    (True, False),
])
@pytest.mark.parametrize("cap", [64, 200, 1 << 20])
def test_small_primitives_skip_plain_only_when_plain_keeps_them(values: tuple[Any, ...], cap: int) -> None:
    if primitives_within(values, {"k": values[0]}, cap):
        copied = plain([list(values), {"k": values[0]}], max_bytes=cap)
        assert copied == [list(values), {"k": values[0]}]
        assert all(a is b for a, b in zip(copied[0], values))
    else:  # the walk decides: it may copy, convert or refuse
        try:
            plain([list(values), {"k": values[0]}], max_bytes=cap)
        except (WireError, ValueTooLarge):
            pass


@pytest.mark.parametrize(("values", "expected"), [
    ((1, "a", True, None, 2.5), True),
    ((2 ** 64 - 1, "x" * 1000), True),
    ((2 ** 64,), False),
    ((float("inf"),), False),
    ((float("nan"),), False),
    ((_Str("sub"),), False),
    (([1],), False),
])
def test_which_values_skip_the_walk(values: tuple[Any, ...], expected: bool) -> None:
    assert primitives_within(values, {}, 1 << 20) is expected
    assert not primitives_within(values, {}, 8)  # never past the cap


_VALUES = st.one_of(
    st.integers(), st.integers(min_value=2 ** (MAX_INT_BITS - 2), max_value=2 ** (MAX_INT_BITS + 2)), st.booleans(),
    st.floats(), st.text(max_size=5), st.none(), st.sampled_from([_Str("s"), float("nan"), float("inf")]),
    st.lists(st.integers(), max_size=2),
)


_SCALARS = st.one_of(
    st.integers(), st.integers(min_value=2 ** 63, max_value=2 ** 66), st.booleans(), st.floats(), st.text(max_size=40),
    st.none(), st.sampled_from([_Str("s"), float("nan"), float("inf"), -float("inf")]),
)
"""Mostly what the walk may be skipped for, and the values next to the line (65-bit ints, inf, nan, a str subclass)."""


def _invoke_outcome(cap: Capability, args: list[Any], kwargs: dict[str, Any]) -> tuple[str, Any]:
    try:
        value = cap.invoke(list(args), dict(kwargs))
    except CapabilityFault as fault:
        return fault.guest_type, fault.message
    except Exception as exc:  # the function's own exception propagates from both paths
        return type(exc).__name__, str(exc)
    return "ok", (type(value), value if value == value else "nan")


def mixed(a: int, b: str, c: bool, d: float) -> float:
    return d if c else float(a % 7) + len(b)


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
@settings(max_examples=300, deadline=None)
@given(args=st.lists(_VALUES, max_size=5),
       kwargs=st.dictionaries(st.sampled_from(["a", "b", "c", "d", "zzz"]), _VALUES, max_size=3),
       func=st.sampled_from([typed, floats, mixed]))
def test_invoke_matches_bind_then_call_bound_on_the_full_path(args: list[Any], kwargs: dict[str, Any], func: Any) -> None:
    class Reference(Capability):
        def invoke(self, args: list[Any], kwargs: dict[str, Any]) -> Any:
            return self.call_bound(self.bind(args, kwargs))

    reference = Reference(func)
    reference._fast_params, reference._fast_result, reference._positional = None, None, None
    assert _invoke_outcome(Capability(func), args, kwargs) == _invoke_outcome(reference, args, kwargs)


def shaped(items: list[int], label: str, extra: dict | None = None) -> dict:
    return {"items": items, "label": label, "extra": extra}


@settings(max_examples=300, deadline=None)
@given(args=st.lists(st.one_of(_VALUES, st.dictionaries(st.text(max_size=2), _VALUES, max_size=2)), max_size=4),
       kwargs=st.dictionaries(st.sampled_from(["a", "b", "items", "label", "extra"]), _VALUES, max_size=2),
       func=st.sampled_from([typed, mixed, shaped, keyword_only]))
def test_bind_by_position_matches_the_signatures_binding(args: list[Any], kwargs: dict[str, Any], func: Any) -> None:
    reference = _full_path(func)
    reference._all_positional = False  # every call through `inspect.Signature.bind`
    got = _outcome(lambda: _full_path(func).bind(list(args), dict(kwargs)))
    want = _outcome(lambda: reference.bind(list(args), dict(kwargs)))
    assert got == want
    if got[0] == "ok":
        assert list(got[1]) == list(want[1])


class _Small(enum.IntEnum):
    A = 1


class _Word(str, enum.Enum):
    A = "a"


class _Plain(enum.Enum):
    A = 1


_LEAVES = st.one_of(
    _VALUES, st.binary(max_size=3), st.sampled_from([_Small.A, _Word.A, _Plain.A, _Str("k"), (1, "x"), {1, 2},
                                                     frozenset({3}), datetime.date(2020, 1, 2), decimal.Decimal("1.5"),
                                                     uuid.UUID(int=7), collections.OrderedDict(a=1), float("nan")]),
)
_RESULTS = st.recursive(_LEAVES, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.text(max_size=2), st.just(_Str("s")), st.integers()),
                                                 inner, max_size=3)), max_leaves=8)


@pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")
@settings(max_examples=400, deadline=None)
@given(value=_RESULTS, declared=st.sampled_from(
    ["Any", "None", "dict", "list", "dict[str, Any]", "list[Any]", "list[dict]", "list[dict[str, Any]]",
     "dict[str, int]", "list[int]"]))
def test_results_of_a_plain_shape_match_the_declared_types_conversion(value: Any, declared: str) -> None:
    namespace: dict[str, Any] = {"Any": Any}
    exec(f"def produce() -> {declared}:\n    return None", namespace)  # noqa: S102 - a return annotation under test
    fast, full = Capability(namespace["produce"]), Capability(namespace["produce"])
    full._plain_shape = None
    got, want = _outcome(lambda: fast.dump_result(value)), _outcome(lambda: full.dump_result(value))
    assert repr(got) == repr(want)
    assert _typed(got) == _typed(want)  # repr hides a str subclass or an int enum left in the result


def _typed(value: Any) -> Any:
    """``value`` with the exact type of every part beside it, for comparisons repr cannot make."""
    if type(value) is dict:
        return dict, [(_typed(key), _typed(item)) for key, item in value.items()]
    if type(value) in (list, tuple):
        return type(value), [_typed(item) for item in value]
    return type(value), repr(value)


def by_position(a: int, b: int) -> int:
    return a * 10 + b


def swapped(b: int, a: int) -> int:
    return a * 10 + b


swapped.__signature__ = inspect.signature(by_position)  # type: ignore[attr-defined]  # says (a, b)


@functools.wraps(by_position)
def keywords_only(**kwargs: int) -> int:  # `inspect.signature` reports the wrapped function's (a, b)
    return kwargs["a"] * 10 + kwargs["b"]


def test_invoke_passes_by_name_when_the_signature_is_not_the_functions_own() -> None:
    for func in (swapped, keywords_only):
        cap = Capability(func)
        assert cap._positional is None
        assert cap.invoke([1, 2], {}) == 12 == cap.call_bound(cap.bind([1, 2], {}))
    assert Capability(by_position)._positional == (int, int)


def test_a_copy_given_another_function_binds_by_name() -> None:
    template = Capability(by_position)
    copy = object.__new__(Capability)  # as the overlay makes a run's copies of its capabilities
    copy.__dict__.update(template.__dict__)
    copy.func = lambda b, a: a * 10 + b  # the same names, in another order
    assert copy.invoke([1, 2], {}) == 12 == copy.call_bound(copy.bind([1, 2], {}))


def test_a_subclass_that_overrides_bind_or_call_bound_is_called_through_them() -> None:
    class Clamped(Capability):
        def bind(self, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
            return {name: min(value, 5) for name, value in super().bind(args, kwargs).items()}

    class Doubled(Capability):
        def call_bound(self, arguments: dict[str, Any]) -> Any:
            return 2 * super().call_bound(arguments)

    assert Clamped(by_position).invoke([1, 9], {}) == 15
    assert Doubled(by_position).invoke([1, 2], {}) == 24


def test_a_subclass_that_overrides_dump_result_converts_every_result() -> None:
    class Tagged(Capability):
        def dump_result(self, result: Any) -> Any:
            return {"tagged": super().dump_result(result)}

    tagged = Tagged(by_position)
    assert tagged.invoke([1, 2], {}) == {"tagged": 12} == tagged.call_bound(tagged.bind([1, 2], {}))


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, cap=st.sampled_from([0, 64, 68, 69, 70, 87, 88, 89, 100, 1 << 20]))
def test_one_value_skips_the_walk_exactly_when_a_tuple_of_it_would(value: Any, cap: int) -> None:
    assert primitive_within(value, cap) == primitives_within((value,), {}, cap)


@pytest.mark.parametrize(("args", "kwargs"), [([1, 2], {}), ([1], {"b": 2}), ([1], {}), ([1, 2, 3], {})])
def test_keyword_only_parameters_bind_as_the_full_path_does(args: list[Any], kwargs: dict[str, Any]) -> None:
    got = _outcome(lambda: Capability(keyword_only).bind(list(args), dict(kwargs)))
    want = _outcome(lambda: _full_path(keyword_only).bind(list(args), dict(kwargs)))
    assert got == want


@settings(max_examples=400, deadline=None)
@given(args=st.lists(_SCALARS, max_size=18), kwargs=st.dictionaries(st.one_of(st.text(max_size=3), st.just(_Str("k"))),
                                                                _SCALARS, max_size=4),
       cap=st.sampled_from([64, 100, 200, 1 << 20]))
def test_arguments_skip_the_walk_only_when_plain_would_return_them_unchanged(
        args: list[Any], kwargs: dict[str, Any], cap: int) -> None:
    if primitives_within(tuple(args), kwargs, cap):
        copied = plain([list(args), kwargs], max_bytes=cap)
        assert all(a is b for a, b in zip(copied[0], args)) and len(copied[0]) == len(args)
        assert all(type(k) is str and copied[1][k] is v for k, v in kwargs.items())


def test_a_str_subclass_key_takes_the_walk() -> None:
    assert not primitives_within((), {_Str("k"): 1}, 1 << 20)


@pytest.fixture(params=["extension", "python"])
def flags(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Hand-offs through the C flags or their Python stand-in, on workers made for the test."""
    if request.param == "extension":
        handoff = pytest.importorskip("sandbox._handoff", reason="not built: make setup (pip install -e .) builds it")
        monkeypatch.setattr(call_threads, "_new_flag", handoff.Flag)
        monkeypatch.setattr(call_threads, "_post_and_wait", handoff.post_and_wait)
    else:
        monkeypatch.setattr(call_threads, "_new_flag", call_threads._PipeFlag)
        monkeypatch.setattr(call_threads, "_post_and_wait", call_threads._pipe_post_and_wait)
    monkeypatch.setattr(call_threads, "_local", threading.local())
    monkeypatch.setattr(call_threads, "_idle", [])
    return str(request.param)


def test_a_flag_posted_before_the_wait_is_taken_without_sleeping_and_once(flags: str) -> None:
    read_fd, write_fd = os.pipe()
    try:
        flag = call_threads._new_flag(write_fd)
        flag.post()
        flag.post()  # posts do not add up: one wait takes them
        started = time.monotonic()
        assert call_threads._post_and_wait(None, flag, read_fd, 5000)
        assert time.monotonic() - started < 1.0
        assert not call_threads._post_and_wait(None, flag, read_fd, 50)  # nothing posted: the time runs out
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_waiter_that_yields_takes_a_post_without_sleeping() -> None:
    """With ``yield_us`` the waiter gives its CPU away and checks again before it sleeps: a post
    made within that window, by a thread that runs on the waiter's CPU, is taken at once. The
    flag writes to no pipe, so a waiter that slept would only see the post at its timeout. The
    poster works with the GIL released (hashing), so the waiter is already waiting when it posts."""
    handoff = pytest.importorskip("sandbox._handoff", reason="not built: make setup (pip install -e .) builds it")
    cpu = min(os.sched_getaffinity(0))
    data = bytes(64 << 10)  # hashlib releases the GIL for data this large: about 100-200 us of work
    read_fd, write_fd = os.pipe()
    own = os.sched_getaffinity(0)
    during = 0
    try:
        os.sched_setaffinity(0, {cpu})
        for _ in range(20):
            flag = handoff.Flag(-1, yield_us=1000)
            times: dict[str, float] = {}

            def poster(flag: Any = flag, times: dict[str, float] = times) -> None:
                os.sched_setaffinity(0, {cpu})
                hashlib.sha256(data).digest()
                times["posted"] = time.perf_counter()
                flag.post()

            thread = threading.Thread(target=poster)
            thread.start()
            times["waiting"] = time.perf_counter()
            got = handoff.post_and_wait(None, flag, read_fd, 1000)
            elapsed = time.perf_counter() - times["waiting"]
            thread.join()
            assert got
            if times["posted"] > times["waiting"]:  # posted while the waiter waited
                during += 1
                assert elapsed < 0.5, elapsed
        assert during > 0  # some post came while the waiter yielded (else this tested nothing)
    finally:
        os.sched_setaffinity(0, own)
        os.close(read_fd)
        os.close(write_fd)


def test_a_waiter_with_nothing_to_yield_to_sleeps_until_its_time() -> None:
    """A yield that runs nothing else on the waiter's CPU ends the yielding: a wait that nobody
    posts costs almost no CPU and ends at its timeout, and ``yield_us`` is bounded."""
    handoff = pytest.importorskip("sandbox._handoff", reason="not built: make setup (pip install -e .) builds it")
    read_fd, write_fd = os.pipe()
    try:
        flag = handoff.Flag(write_fd, yield_us=1000)
        cpu_before, started = time.thread_time(), time.monotonic()
        for _ in range(40):
            assert not handoff.post_and_wait(None, flag, read_fd, 5)
        elapsed, cpu = time.monotonic() - started, time.thread_time() - cpu_before
        assert 0.15 < elapsed < 4.0, elapsed
        assert cpu < 0.02, cpu  # 40 waits: about 40 ms if each spun through its 1 ms window
        for bad in (-1, 1001):
            with pytest.raises(ValueError, match="yield_us"):
                handoff.Flag(write_fd, yield_us=bad)
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_a_post_wakes_a_sleeping_waiter(flags: str) -> None:
    read_fd, write_fd = os.pipe()
    try:
        flag = call_threads._new_flag(write_fd)
        threading.Timer(0.1, flag.post).start()
        started = time.monotonic()
        assert call_threads._post_and_wait(None, flag, read_fd, 10_000)
        assert time.monotonic() - started < 5.0
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_hand_off_returns_values_and_exceptions(flags: str) -> None:
    call = call_threads.start(lambda a, b: a + b, 2, 3)
    assert call.wait(5.0) and call.result() == 5
    failing = call_threads.start(lambda: 1 / 0)
    assert failing.wait(5.0)
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_a_hanging_call_is_left_at_the_timeout_and_the_next_call_gets_another_thread(flags: str) -> None:
    release = threading.Event()
    hung_thread: list[int] = []
    hung = call_threads.start(lambda: hung_thread.append(threading.get_ident()) or release.wait(30.0))
    started = time.monotonic()
    assert not hung.wait(0.2)
    assert time.monotonic() - started < 2.0
    threads: list[int] = []
    nxt = call_threads.start(lambda: threads.append(threading.get_ident()) or 7)
    assert nxt.wait(5.0) and nxt.result() == 7
    assert hung_thread and threads and threads[0] != hung_thread[0]
    release.set()
    assert hung.wait(5.0)
    assert hung.result() is True


def test_wait_until_an_instant_returns_at_it_or_hands_over_when_it_passed(flags: str) -> None:
    release = threading.Event()
    hung = call_threads.start(release.wait, 30.0)
    started = time.monotonic()
    assert not hung.wait_until(started + 0.2)
    assert 0.15 < time.monotonic() - started < 2.0
    release.set()
    ran = threading.Event()
    late = call_threads.start(ran.set)
    started = time.monotonic()
    late.wait_until(started - 1.0)  # handed over, not waited for (True only if it was done already)
    assert time.monotonic() - started < 1.0
    assert ran.wait(5.0)


def test_wake_ends_the_wait_without_the_result(flags: str) -> None:
    release = threading.Event()
    call = call_threads.start(release.wait, 30.0)
    threading.Timer(0.1, call.wake).start()
    started = time.monotonic()
    assert not call.wait(10.0)
    assert time.monotonic() - started < 5.0
    release.set()
    again = call_threads.start(lambda: "fresh")
    assert again.wait(5.0) and again.result() == "fresh"


def test_a_call_handed_over_without_a_wait_runs_and_frees_its_thread(flags: str) -> None:
    ran = threading.Event()
    call = call_threads.start(ran.set)
    started = time.monotonic()
    done = call.wait(0.0)  # no time left: hands the call over and returns at once (True only if it was done already)
    assert time.monotonic() - started < 1.0
    assert not done or ran.is_set()
    assert ran.wait(5.0)
    threads: list[int] = []
    again = call_threads.start(lambda: threads.append(threading.get_ident()) or "next")
    assert again.wait(5.0) and again.result() == "next"


def test_a_call_and_the_threads_and_processes_it_starts_keep_the_hosts_cpus(flags: str) -> None:
    """The call thread is woken on its caller's CPU, but the capability's code never runs pinned:
    not in the call, not in a thread or child process it starts, and the host thread stays as it was."""
    own = os.sched_getaffinity(0)
    if len(own) < 2:
        pytest.skip("pinning is only visible on a host with two CPUs or more")
    seen: list[set[int]] = []

    def capability_code() -> None:
        seen.append(os.sched_getaffinity(0))
        started = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        started.start()
        started.join()

    for _ in range(20):  # the first hand-offs may come before the thread has waited once
        call = call_threads.start(capability_code)
        assert call.wait(5.0)
        call.result()
    probe = "import os; print(sorted(os.sched_getaffinity(0)))"
    child = call_threads.start(lambda: subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                                      check=True).stdout)
    assert child.wait(60.0)
    assert json.loads(child.result()) == sorted(own)
    assert seen and all(cpus == own for cpus in seen)
    assert os.sched_getaffinity(0) == own


def test_a_call_left_at_its_timeout_runs_on_with_the_threads_own_cpus(flags: str) -> None:
    release = threading.Event()
    own = os.sched_getaffinity(0)
    if len(own) < 2:
        pytest.skip("pinning is only visible on a host with two CPUs or more")
    warm = call_threads.start(lambda: None)
    assert warm.wait(5.0)
    after: list[set[int]] = []

    def hang() -> None:
        release.wait(30.0)
        after.append(os.sched_getaffinity(0))

    hung = call_threads.start(hang)
    assert not hung.wait(0.2)
    release.set()
    assert hung.wait(5.0)
    assert after == [own]


@capability
def add_ints(a: int, b: int) -> int:
    """Add."""
    return a + b


@capability
def echo_any(value: dict, label: str = "x") -> dict:
    """Echo."""
    return {"label": label, **value}


@capability
def noting(a: int) -> int:
    """Record odd detail, or warn."""
    if a:
        warn(f"cut at {a}")
    else:
        record_detail(warnings=None, rows=3)
    return a


def test_detail_and_warnings_of_lean_calls() -> None:
    result = Sandbox(capabilities=[noting]).run("[noting(0), noting(2)]")
    assert result.ok, result.error
    assert result.value == [0, 2]
    assert result.warnings == ["cut at 2"]


def test_many_calls_in_one_run_keep_their_results() -> None:
    box = Sandbox(capabilities=[add_ints, echo_any])
    result = box.run(
        "acc = 0\nfor i in range(300):\n    acc = add_ints(acc, i)\n"
        "[acc, add_ints(a=True, b=2), echo_any({'k': [1, 2]}, label='y')]"
    )
    assert result.ok, result.error
    assert result.value == [sum(range(300)), 3, {"label": "y", "k": [1, 2]}]
    assert result.usage.capability_calls == 302


def test_a_capability_kept_in_session_globals_calls_through_the_current_run() -> None:
    from sandbox.audit import MemorySink

    sink = MemorySink()
    box = Sandbox(capabilities=[add_ints], records=sink)
    with box.session() as session:
        first = session.run("keep = [add_ints]\n"
                            "def later():\n    yield add_ints(10, 1)\n    yield add_ints(20, 2)\n"
                            "steps = later()\nnext(steps)")
        assert first.ok and first.value == 11, first.error
        second = session.run("[keep[0](2, 3), next(steps)]")
    assert second.ok, second.error
    assert second.value == [5, 22]
    assert second.usage.capability_calls == 2
    assert [len(record.calls) for record in sink.records] == [1, 2]
    assert sink.records[1].run_id == second.run_id


def test_a_capability_called_outside_a_run_of_its_link_is_refused() -> None:
    from runtimes.restricted.grants import CallLink, capability_function
    from runtimes.guest import PolicyDenied

    link = CallLink()
    add = capability_function("add_ints", link)
    with pytest.raises(PolicyDenied, match="has ended"):
        add(1, 2)


def test_idle_call_threads_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(call_threads, "IDLE_SECONDS", 0.2)
    gate = threading.Barrier(3)
    results: list[Any] = []

    def caller() -> None:
        call = call_threads.start(lambda: gate.wait(5.0) is not None)
        results.append(call.wait(10.0) and call.result())

    callers = [threading.Thread(target=caller) for _ in range(3)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join()
    assert results == [True, True, True]
    deadline = time.monotonic() + call_threads.IDLE_SECONDS + 2.5  # workers started earlier wait 2 s
    while time.monotonic() < deadline and any(t.name == "sandbox-host-call" for t in threading.enumerate()):
        time.sleep(0.05)
    assert not any(t.name == "sandbox-host-call" for t in threading.enumerate())
