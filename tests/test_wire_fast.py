"""The C fast path of `runtimes.wire.plain`/`encode` (``runtimes/_wirecopy.c``) gives exactly
what the Python walk gives: the same result (types, values, shared references), the same
exception type and message, the same time checks; and it stays memory-safe when a time check
mutates the value being copied."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtimes import wire

_fast = pytest.importorskip("runtimes._wirecopy", reason="the _wirecopy extension is not built")


class Key(str):
    pass


class Number(int):
    pass


class Items(list):
    pass


def _shape(value: Any, memo: dict[int, int] | None = None) -> Any:
    """``value`` described with exact types and shared containers numbered by first appearance."""
    memo = {} if memo is None else memo
    kind = type(value)
    if kind in (list, tuple, dict, set, frozenset):
        if id(value) in memo:
            return ("shared", memo[id(value)])
        memo[id(value)] = len(memo)
        if kind is dict:
            return (kind.__name__, [(_shape(k, memo), _shape(v, memo)) for k, v in value.items()])
        items = sorted(value, key=repr) if kind in (set, frozenset) else value
        return (kind.__name__, [_shape(item, memo) for item in items])
    if kind is float and value != value:
        return (kind.__name__, "nan")
    return (kind.__name__, value)


def _outcome(value: Any, fast: bool, as_json: bool, lenient: bool, max_bytes: int | None, token: bool,
             check: Callable[[], None] | None = None) -> Any:
    handle_token = (lambda obj: None) if token else None
    try:
        result = wire._convert(value, as_json, lenient=lenient, max_bytes=max_bytes, handle_token=handle_token,
                               default=None, check=check, fast=fast)
    except Exception as exc:  # noqa: BLE001 - the exception itself is compared
        return ("raised", type(exc).__name__, str(exc))
    return ("value", _shape(result))


scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(), st.integers(min_value=-(1 << 64), max_value=1 << 64),
    st.sampled_from([(1 << wire.MAX_INT_BITS) - 1, 1 << wire.MAX_INT_BITS, -(1 << 62), 1 << 62, 1 << 63]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(), st.text(st.characters(min_codepoint=0, max_codepoint=0x2FFFF, exclude_categories=())),
    st.sampled_from(["", '"\\\b\f\n\r\t\x00\x1f\x7f', "\ud800", "é\u2028\U0001F600", "x" * 5000, wire.TAG]),
    st.sampled_from([Key("k"), Number(3), b"by", dt.date(2024, 1, 2), Decimal("1.5"), float("inf")]),
)
keys = st.one_of(st.text(max_size=8), st.sampled_from([wire.TAG, wire.SECRET_MARKER, "v", Key("sub"), 1, None]))


def _containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
        st.dictionaries(keys, children, max_size=6),
        st.lists(children, max_size=3).map(Items),
        st.frozensets(st.integers(), max_size=3),
        # the same container twice: a shared reference
        children.map(lambda x: [x, x]),
    )


values = st.recursive(scalars, _containers, max_leaves=40)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=values, as_json=st.booleans(), lenient=st.booleans(), token=st.booleans(),
       max_bytes=st.one_of(st.none(), st.integers(min_value=0, max_value=20_000)))
def test_fast_path_agrees_with_python_walk(value: Any, as_json: bool, lenient: bool, token: bool,
                                           max_bytes: int | None) -> None:
    assert _outcome(value, True, as_json, lenient, max_bytes, token) == \
        _outcome(value, False, as_json, lenient, max_bytes, token)


def _has_key(value: Any, key: str) -> bool:
    if type(value) is dict:
        return key in value or any(_has_key(item, key) for item in value.values())
    return type(value) in (list, tuple) and any(_has_key(item, key) for item in value)


_EDGE_CHARS = [  # each alone among plain characters, at every offset of an 8-byte word
    '"', "\\", "\x00", "\x1f", " ", "~", "\x7f", "\x80", "\xff", "\u0100", "\U0001F600"]
edge_texts = st.builds(lambda before, char, after: "abcdefghijklmnop"[:before] + char + "qrstuvwxyz"[:after],
                       st.integers(0, 16), st.sampled_from(_EDGE_CHARS), st.integers(0, 10))
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.sampled_from([(1 << wire.MAX_INT_BITS) - 1, -(1 << wire.MAX_INT_BITS) + 1, 0, -1, 1 << 62, 1 << 63, -(1 << 63)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x2FFFF, exclude_categories=())),
    st.sampled_from(['"\\\b\f\n\r\t\x00\x1f\x7f~ ', "\ud800\udfff", "é\xff\u0100\u2028\U0001F600", "x" * 5000]),
    edge_texts,
)
json_values = st.recursive(json_scalars, lambda children: st.one_of(
    st.lists(children, max_size=6), st.lists(children, max_size=6).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=8), st.just(wire.TAG)), children, max_size=6),
    children.map(lambda x: [x, x, (x,)]),
), max_leaves=40)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values, as_json=st.booleans())
def test_fast_path_counts_exactly_the_bytes_and_nodes_of_the_python_walk(value: Any, as_json: bool) -> None:
    if as_json and _has_key(value, wire.TAG):
        return  # escaping a tag-like dict is the Python walk's
    walk = wire._Walk(as_json, False, None, None, None, None)
    walk.walk(value, 0)
    size, nodes = walk.size, walk.nodes
    assert _fast.copy(value, as_json, False, size, nodes, None) is not _fast.UNHANDLED
    assert _fast.copy(value, as_json, False, size - 1, nodes, None) is _fast.UNHANDLED
    assert _fast.copy(value, as_json, False, size, nodes - 1, None) is _fast.UNHANDLED


def _c_handles(value: Any, as_json: bool, max_bytes: int | None) -> bool:
    """Whether the C copy itself converts ``value`` (with the caps `wire._convert` passes it)."""
    cap = wire._NO_CAP if max_bytes is None else max_bytes
    nodes = wire._NO_CAP if max_bytes is None else wire.max_nodes(max_bytes)
    return _fast.copy(value, as_json, False, cap, nodes, None) is not _fast.UNHANDLED


def _nested(levels: int) -> Any:
    value: Any = 0
    for i in range(levels):
        value = [value] if i % 3 else ({"k": value} if i % 2 else (value,))
    return value


@pytest.mark.parametrize("levels", [wire.MAX_DEPTH - 1, wire.MAX_DEPTH, wire.MAX_DEPTH + 1])
@pytest.mark.parametrize("as_json", [False, True])
def test_depth_cap_agrees(levels: int, as_json: bool) -> None:
    value = _nested(levels)
    assert _outcome(value, True, as_json, False, None, False) == _outcome(value, False, as_json, False, None, False)
    assert _c_handles(value, as_json, None) == (levels <= wire.MAX_DEPTH)


def test_size_and_node_caps_agree_at_the_boundary() -> None:
    value = {"rows": [{"id": i, "name": f"n{i}", "tags": ["a", "b"], "score": i / 3} for i in range(200)]}
    size = len(wire.dumps(wire.encode(value)))
    wordy = {"rows": [{"id": i, "text": "w" * 40} for i in range(200)]}  # over the byte cap first
    handled = set()
    for item, limits in ((value, range(size - 40, size + 40 * wire.NODE_BYTES, 7)),
                         (value, _around(_walked(value)[1] * wire.NODE_BYTES)),
                         (wordy, _around(_walked(wordy)[0]))):
        for max_bytes in limits:
            for as_json in (False, True):
                outcome = _outcome(item, False, as_json, False, max_bytes, False)
                assert _outcome(item, True, as_json, False, max_bytes, False) == outcome, max_bytes
                assert _c_handles(item, as_json, max_bytes) == (outcome[0] == "value"), max_bytes
                handled.add(outcome[0] == "value")
    assert handled == {True, False}  # the sweeps cross the caps


def _walked(value: Any) -> tuple[int, int]:
    """The bytes and nodes the Python walk counts for ``value`` (the same as JSON and plain)."""
    walk = wire._Walk(False, False, None, None, None, None)
    walk.walk(value, 0)
    return walk.size, walk.nodes


def _around(cap: int) -> range:
    return range(cap - 20, cap + 20, 3)


def test_shared_references_count_each_time_and_stay_shared() -> None:
    row = {"a": [1, 2, 3]}
    value = [row] * 50
    fast = wire.plain(value)
    assert fast[0] is fast[49] and fast[0] is not row
    assert _outcome(value, True, False, False, 600, False) == _outcome(value, False, False, False, 600, False)


def test_time_checks_are_the_same() -> None:
    value = [{"i": i, "l": [i] * 30} for i in range(3000)]
    assert _c_handles(value, False, None)
    counts = []
    for fast in (True, False):
        calls: list[int] = []
        wire._convert(value, False, lenient=False, max_bytes=None, handle_token=None, default=None,
                      check=lambda: calls.append(1), fast=fast)
        counts.append(len(calls))
    assert counts[0] == counts[1] > 50


def test_a_raising_check_stops_the_copy() -> None:
    class Deadline(Exception):
        pass

    def check() -> None:
        raise Deadline("wall")

    value = [[i] * 10 for i in range(1000)]
    for fast in (True, False):
        with pytest.raises(Deadline):
            wire._convert(value, False, lenient=True, max_bytes=None, handle_token=None, default=None,
                          check=check, fast=fast)


@pytest.mark.parametrize("shrink", ["list", "dict"])
def test_mutation_during_a_check_is_memory_safe(shrink: str) -> None:
    inner = [[j] * 40 for j in range(2000)]
    table = {f"k{j}": [j] * 40 for j in range(2000)}
    value = [inner, table]

    def check() -> None:
        if shrink == "list":
            inner.clear()
        else:
            table.clear()

    result = wire._convert(value, False, lenient=False, max_bytes=None, handle_token=None, default=None,
                           check=check, fast=True)
    assert type(result) is list and result[0] is not inner and result[1] is not table


def test_plain_json_data_takes_the_fast_path() -> None:
    value = {"data": [{"id": i, "name": f"item-{i}", "tags": ["x"], "score": i * 0.5, "ok": None} for i in range(100)]}
    copied = _fast.copy(value, False, False, 1 << 20, wire.max_nodes(1 << 20), None)
    assert copied is not _fast.UNHANDLED and copied == value and copied["data"][0] is not value["data"][0]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=st.recursive(scalars, lambda children: st.one_of(
    st.lists(children, max_size=4), st.lists(children, max_size=4).map(tuple),
    st.dictionaries(st.text(max_size=3), children, max_size=4),
    st.frozensets(st.one_of(st.integers(), st.tuples(st.integers(), st.tuples(st.integers()))), max_size=3),
    st.sets(st.frozensets(st.integers(), max_size=2), max_size=3),
), max_leaves=30), limit=st.integers(min_value=0, max_value=8))
def test_depth_agrees_with_python(value: Any, limit: int) -> None:
    assert wire.depth(value, limit) == wire._depth(value, limit)


def test_depth_counts_up_to_the_limit() -> None:
    value = _nested(300)
    assert wire.depth(value, wire.JSON_DEPTH) == wire._depth(value, wire.JSON_DEPTH) == wire.JSON_DEPTH + 1
    assert wire.depth(value, 1000) == 300


@pytest.mark.parametrize("value", [object(), {"a": {1, 2}}, [float("nan")], {"k": [1.5, "é\u2028", None, True]}])
def test_dumps_gives_what_json_dumps_gives(value: Any) -> None:
    """`wire.dumps` (a reused C encoder) raises and returns what ``json.dumps`` does."""
    def outcome(dump: Callable[[Any], str]) -> Any:
        try:
            return ("value", dump(value))
        except (TypeError, ValueError) as exc:
            return ("raised", type(exc).__name__, str(exc))

    assert outcome(wire.dumps) == outcome(lambda v: json.dumps(v, separators=(",", ":"), allow_nan=False))


@pytest.mark.parametrize("value", [None, True, False, 0, -1, (1 << 62) - 1, -(1 << 62) + 1, 1 << 62, 0.5, -0.0,
                                   1e308, float("inf"), float("nan"), "s", 1.5j])
@pytest.mark.parametrize("cap", [wire.SMALL_SCALAR_ROOM - 1, wire.SMALL_SCALAR_ROOM])
def test_a_small_scalar_is_encoded_unchanged_and_its_json_is_what_the_host_sends(value: Any, cap: int) -> None:

    if wire.small_scalar(value, cap):
        assert cap >= wire.SMALL_SCALAR_ROOM and type(value) in (type(None), bool, int, float)
        assert wire.encode(value, max_bytes=cap) is value and wire.encode(value, lenient=True, max_bytes=cap) is value
        assert wire.value_json(value, cap) == wire.dumps(value) == json.dumps(value)
    else:
        assert cap < wire.SMALL_SCALAR_ROOM or value in (1 << 62, "s", 1.5j) or value != value or value == float("inf")
