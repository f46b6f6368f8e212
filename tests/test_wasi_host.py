"""The wasi host's shortcuts for decoding what a guest sends (`sandbox.wasi._host.decode_wire`):
the same value or the same error as `runtimes.wire.loads_bounded`, whatever the text."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes import wire
from sandbox.wasi._host import decode_wire

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4),
    max_leaves=12,
)


def _outcome(text: str, max_bytes: int) -> tuple[str, object]:
    try:
        return "value", decode_wire(text, max_bytes)
    except wire.WireError as exc:
        return type(exc).__name__, None


def _reference(text: str, max_bytes: int) -> tuple[str, object]:
    try:
        return "value", wire.loads_bounded(text, max_bytes=max_bytes)
    except wire.WireError as exc:
        return type(exc).__name__, None


@settings(max_examples=300, deadline=None)
@given(value=_json, compact=st.booleans(), pad=st.sampled_from(["", " ", "\n", "x", "]", ",1", " 1"]),
       front=st.sampled_from(["", " ", "\t"]))
def test_decode_wire_is_loads_bounded(value, compact, pad, front):
    text = front + json.dumps(value, separators=(",", ":") if compact else None) + pad
    assert _outcome(text, 1 << 20) == _reference(text, 1 << 20), text


@pytest.mark.parametrize("text", ["", "[", "[1,", "{\"a\":}", "01", "[1]]", "nul", "NaN", "-Infinity", "1e999",
                                  "\"\\ud800\"", "[[1,2],{}]", "[[\"x\"],{\"k\":[1,{}]}]",
                                  json.dumps(wire.encode((1, 2))), "[" * 300 + "]" * 300])
def test_decode_wire_is_loads_bounded_on_edge_texts(text):
    assert _outcome(text, 1 << 20) == _reference(text, 1 << 20)
    assert _outcome(text, 4) == _reference(text, 4)
