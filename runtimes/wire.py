"""The wire format shared by every runtime and the host.

**Values.** What crosses the boundary (inputs, capability arguments and results, a run's
value) is *plain data*: None, bool, int, float, str, list, dict with str keys, and the typed
values ``tuple``, ``set``, ``frozenset``, ``bytes``, ``datetime.date``, ``datetime.datetime``
(naive or aware), ``datetime.time``, ``datetime.timedelta``, ``decimal.Decimal`` and
``uuid.UUID``. `plain` copies a value into plain data (in-process runtimes); `encode` turns it
into JSON-compatible data where each typed value is a tag, ``{"$type": "date", "v":
"2024-01-02"}``, and `decode_hook`/`loads` turn tags back into typed values. A dict that has a
``"$type"`` key of its own is escaped as ``{"$type": "dict", "v": [[key, value], ...]}``, so
data that looks like a tag never becomes a typed value. numpy scalars become their Python
values; pandas ``Timestamp``/``Timedelta`` become ``datetime``/``timedelta``.

**Caps.** Every conversion of guest data is metered: its size as compact ASCII JSON (the
`encode` form; shared references count each time they appear, as JSON repeats them), its node
count (`max_nodes`: one node per 16 bytes of the size cap) and its depth (`MAX_DEPTH`). Over a
cap it raises `ValueTooLarge`, which runtimes report as ``limit_exceeded`` with limit
``"value"``. Hosts parse what a guest sent with `loads_bounded`, which checks size and node
count on the raw text before parsing and depth right after. Error messages and exception type
names are clipped by `error` (`clip`, flagged with `TRUNCATED`).

An *outcome* is a plain dict, JSON-serialisable once its value is encoded, built by `outcome()`::

    {"ok": bool, "value": <plain data>, "stdout": str, "stderr": str, "output_truncated": bool,
     "error": None | {"kind", "type", "message", "lineno", "limit"},
     "cpu_seconds": float | None, "peak_memory_bytes": int | None}

A *capability fault* is what the host answers instead of a value when a call fails:
``{"type": GuestErrorType, "message": str, "terminate": None | ErrorKind}``. The runtime
raises the named guest exception; when ``terminate`` is set the run must end with that error
kind whatever the guest catches (escalation after repeated denials).

A *secret handle* crosses the boundary as ``{SECRET_MARKER: token}``; the token is opaque and
only means something to the host that issued it, for the run it was issued to.

This module is pure Python with no third-party imports: the wasi guest and the confined
worker import it too. It stays one module (over the usual length) because the wasi guest is
built from a fixed list of files (`sandbox.wasi.build`), and the converting walk, the tag
decoders and the bounded parser are each the counterpart of the other on the two sides.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import decimal
import gc
import json
import math
import re
import sys
import uuid
from itertools import islice
from typing import Any, Callable

SECRET_MARKER = "__sandbox_secret_handle__"
TAG = "$type"

MAX_INT_BITS = 14_000
"""Larger ints cannot be turned into decimal text (Python's 4300-digit limit), so neither JSON
nor redaction could handle them: strict conversion refuses them, lenient describes them."""

MAX_DECIMAL_EXPONENT = 4_300
"""A `Decimal` whose adjusted exponent is larger in magnitude is not plain data (turning it
into an int would allocate that many digits)."""

MAX_DEPTH = 100
"""Deepest nesting of containers in a value."""

DEFAULT_VALUE_BYTES = 16 << 20
"""The size cap of a value when the limits name none (`sandbox.Limits.max_value_bytes`)."""

JSON_DEPTH = 2 * MAX_DEPTH + 8
"""Deepest nesting of JSON a host accepts from a guest: a tagged tuple is two levels, and a
message wraps the value in a few more."""

NODE_BYTES = 16
"""A value may have one node (container or scalar) per this many bytes of its size cap."""

MAX_MESSAGE_CHARS = 16_384
"""Longest error message kept; longer ones are cut and end with `TRUNCATED`."""

MAX_TYPE_CHARS = 256
"""Longest exception type name kept."""

TRUNCATED = "… [truncated]"

GUEST_ERROR_TYPES = ("TypeError", "ValueError", "PolicyDenied", "CapabilityError")
"""Exception types a capability fault may name. `PolicyDenied` subclasses `PermissionError`,
`CapabilityError` subclasses `Exception`; runtimes define both for the guest."""


class Fault(Exception):
    """A capability call failed: the guest sees ``guest_type`` raised with ``message``.

    ``guest_type`` is one of `GUEST_ERROR_TYPES`. When ``terminate`` is an error kind the run
    must end with that kind whatever the guest catches.
    """

    def __init__(self, guest_type: str, message: str, *, terminate: str | None = None) -> None:
        super().__init__(message)
        self.guest_type = guest_type if guest_type in GUEST_ERROR_TYPES else "CapabilityError"
        self.message = message
        self.terminate = terminate

    def to_wire(self) -> dict:
        return {"type": self.guest_type, "message": clip(self.message), "terminate": self.terminate}

    @classmethod
    def from_wire(cls, data: dict) -> "Fault":
        return cls(str(data.get("type")), clip(str(data.get("message"))), terminate=data.get("terminate"))


class WireError(TypeError):
    """A value cannot cross the boundary (not plain data), or a wire text is malformed."""


class ValueTooLarge(WireError):
    """A value is over the size, node or depth cap; runtimes report limit ``"value"``."""

    limit = "value"


def max_nodes(max_bytes: int) -> int:
    """The node cap that goes with a size cap of ``max_bytes``."""
    return max(1024, max_bytes // NODE_BYTES)


def report_bytes(max_value_bytes: int, max_output_bytes: int) -> int:
    """The most bytes an honest guest's JSON outcome can take: the value, the output (JSON
    escaping makes a character up to 6 bytes), an error entry and the envelope."""
    return max_value_bytes + 6 * max_output_bytes + 6 * (MAX_MESSAGE_CHARS + MAX_TYPE_CHARS) + (64 << 10)


def clip(text: str, cap: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` cut to at most ``cap`` characters, ending with `TRUNCATED` when it was cut."""
    if len(text) <= cap:
        return text
    return text[: max(0, cap - len(TRUNCATED))] + TRUNCATED


# --- converting -----------------------------------------------------------------------------

_enc_str = json.encoder.encode_basestring_ascii
_TAG_BYTES = len('{"$type":"","v":}')
_CHECK_EVERY = 1024
_INLINE_CHARS = 4096
"""Strings up to this long are measured inline by the containers' loops (longer ones are first
checked against the size cap by their length, before their JSON form is built)."""
_INLINE_INT = 1 << 62
_CONTAINER_TYPES = frozenset({list, dict, tuple, set, frozenset})
_TIMEDELTA_FIELDS = (_dt.timedelta.days, _dt.timedelta.seconds, _dt.timedelta.microseconds)
_UUID_INT: Any = uuid.UUID.__dict__["int"]
"""The slot holding a UUID's number, read past any property a subclass defines."""


class _Walk:
    """One conversion: output form, strictness, caps and counters."""

    __slots__ = ("as_json", "lenient", "handle_token", "default", "check", "max_bytes", "max_nodes",
                 "nodes", "size", "next_check", "seen")

    def __init__(self, as_json: bool, lenient: bool, max_bytes: int | None, handle_token: Any, default: Any,
                 check: Any) -> None:
        self.as_json = as_json
        self.lenient = lenient
        self.handle_token = handle_token
        self.default = default
        self.check = check
        self.max_bytes = max_bytes if max_bytes is not None else math.inf
        self.max_nodes = max_nodes(max_bytes) if max_bytes is not None else math.inf
        self.nodes = 0
        self.size = 0
        self.next_check = _CHECK_EVERY
        self.seen: dict[int, tuple[Any, int, int, Any]] = {}
        """Containers already converted (id -> object, nodes, bytes, result): a shared reference
        counts its nodes and bytes again, without walking it again."""

    def checkpoint(self) -> None:
        self.next_check = self.nodes + _CHECK_EVERY
        self.over()
        if self.check is not None:
            self.check()

    def over(self) -> None:
        if self.nodes > self.max_nodes:
            raise ValueTooLarge(f"the value has more than {self.max_nodes} nodes (shared references count each time)")
        if self.size > self.max_bytes:
            raise ValueTooLarge(f"the value is larger than {self.max_bytes} bytes as JSON")

    def reserve(self, items: int) -> None:
        """Refuse a container whose items alone would be over the node cap, before visiting them."""
        if self.nodes + items > self.max_nodes:
            raise ValueTooLarge(f"the value has more than {self.max_nodes} nodes (shared references count each time)")

    def refuse(self, value: Any, why: str = "", text: str | None = None) -> Any:
        if self.lenient:
            text = _safe_repr(value) if text is None else text
            self.size += len(_enc_str(text))
            if self.size > self.max_bytes:
                self.over()
            return text
        raise WireError(why or f"values of type {type(value).__name__} cannot cross the boundary: pass plain data "
                        "(JSON types, tuple, set, bytes, date, datetime, time, timedelta, Decimal, UUID)")

    def tag(self, name: str, payload: Any, payload_bytes: int, plain: Any) -> Any:
        self.size += _TAG_BYTES + len(name) + payload_bytes
        return {TAG: name, "v": payload} if self.as_json else plain

    def walk(self, value: Any, depth: int) -> Any:
        """Count ``value`` as one node and convert it (at nesting ``depth``)."""
        self.nodes += 1
        if self.nodes > self.next_check:
            self.checkpoint()
        return self.node(value, depth)

    def node(self, value: Any, depth: int) -> Any:
        """Convert ``value``, already counted as a node."""
        kind = type(value)
        if kind is str:
            if self.size + len(value) > self.max_bytes:
                self.size += len(value)
                self.over()
            self.size += len(_enc_str(value))
            if self.size > self.max_bytes:
                self.over()
            return value
        if kind is int:
            bits = value.bit_length()
            if bits > MAX_INT_BITS:
                return self.refuse(value, f"an int of {bits} bits is too large to cross the boundary", f"<int of {bits} bits>")
            self.size += bits // 3 + 2
            return value
        if kind is float:
            if value - value != 0.0:  # inf or nan
                return self.refuse(value, f"{value!r} is not plain data")
            self.size += 24
            return value
        if value is None or kind is bool:
            self.size += 5
            return value
        if depth >= MAX_DEPTH:
            if kind in (list, dict, tuple, set, frozenset) or isinstance(value, (list, dict, tuple, set, frozenset)):
                raise ValueTooLarge(f"the value is nested deeper than {MAX_DEPTH} levels")
        if kind is list or kind is tuple or kind is dict:
            seen = self.seen.get(id(value))
            if seen is not None and seen[0] is value:
                self.nodes += seen[1] - 1
                self.size += seen[2]
                self.over()
                return seen[3]
            nodes, size = self.nodes - 1, self.size
            result: Any
            if kind is dict:
                result = self.walk_dict(value, depth)
            else:
                items = self.walk_items(value, depth)
                result = items if kind is list else self.tag("tuple", items, 0, tuple(items))
            self.seen[id(value)] = (value, self.nodes - nodes, self.size - size, result)
            return result
        return self.walk_other(value, kind, depth)

    def count_items(self, items: int) -> None:
        """Count a container's ``items`` as nodes before visiting them (refused over the cap)."""
        if self.nodes + items > self.max_nodes:
            raise ValueTooLarge(f"the value has more than {self.max_nodes} nodes (shared references count each time)")
        self.nodes += items
        if self.nodes > self.next_check:
            self.checkpoint()

    def walk_items(self, value: list | tuple, depth: int) -> list:
        """The converted items of a list or tuple: short strings, ints, finite floats, None and
        bools inline, anything else through `node`. Exactly the counted items are visited,
        even if guest code that runs during the walk (a ``__repr__``) grows the list."""
        count = len(value)
        self.count_items(count)
        node = self.node
        child = depth + 1
        size = 1 + count
        result: list = []
        append = result.append
        for item in islice(value, count) if type(value) is list else value:
            kind = type(item)
            if kind is str and len(item) <= _INLINE_CHARS:
                size += len(_enc_str(item))
            elif kind is int and -_INLINE_INT < item < _INLINE_INT:
                size += item.bit_length() // 3 + 2
            elif kind is float and item - item == 0.0:
                size += 24
            elif item is None or kind is bool:
                size += 5
            else:
                self.size += size
                size = 0
                item = node(item, child)
            append(item)
        self.size += size
        if self.size > self.max_bytes:
            self.over()
        return result

    def walk_dict(self, value: dict, depth: int) -> dict:
        """The converted copy of a dict; values like `walk_items`, keys must be str (a str
        subclass becomes a str; lenient: any other key becomes its repr)."""
        self.count_items(len(value))
        node = self.node
        child = depth + 1
        size = 1 + len(value)
        result = {}
        escape = False
        for key, item in dict.items(value):
            if type(key) is not str:
                if isinstance(key, str):
                    key = str.__str__(key)
                elif self.lenient:
                    key = _safe_repr(key)
                else:
                    raise WireError(f"dict keys must be str to cross the boundary, not {type(key).__name__}")
            if len(key) > _INLINE_CHARS and self.size + size + len(key) > self.max_bytes:
                self.size += size + len(key)
                self.over()
            size += len(_enc_str(key)) + 1
            if key == TAG:
                escape = True
            elif key == SECRET_MARKER and self.handle_token is not None:
                raise WireError("not a secret handle: pass secrets.<name> itself")
            kind = type(item)
            if kind is str and len(item) <= _INLINE_CHARS:
                size += len(_enc_str(item))
            elif kind is int and -_INLINE_INT < item < _INLINE_INT:
                size += item.bit_length() // 3 + 2
            elif kind is float and item - item == 0.0:
                size += 24
            elif item is None or kind is bool:
                size += 5
            else:
                self.size += size
                size = 0
                item = node(item, child)
            result[key] = item
        self.size += size
        if self.size > self.max_bytes:
            self.over()
        if escape and self.as_json:
            self.size += _TAG_BYTES + 4 + 5 * len(result)
            return {TAG: "dict", "v": [[key, item] for key, item in result.items()]}
        return result

    def walk_other(self, value: Any, kind: type, depth: int) -> Any:
        """Subclasses of the JSON types, the typed values, numpy scalars, handles, the rest."""
        try:
            if isinstance(value, bool):
                self.size += 5
                return bool(value)
            if isinstance(value, int):
                return self.walk(int.__int__(value), depth)
            if isinstance(value, float):
                return self.walk(float.__float__(value), depth)
            if isinstance(value, str):
                return self.walk(str.__str__(value), depth)
            if isinstance(value, (list, tuple)):
                items = list(list.__iter__(value)) if isinstance(value, list) else list(tuple.__iter__(value))
                return self.walk(items if isinstance(value, list) else tuple(items), depth)
            if isinstance(value, dict):
                return self.walk_dict(dict(dict.items(value)), depth)
            if isinstance(value, (set, frozenset)):
                return self.walk_set(value, depth)
            if isinstance(value, (bytes, bytearray)):
                view = memoryview(value)
                self.size += 4 * ((view.nbytes + 2) // 3) + 2
                if self.size > self.max_bytes:
                    self.over()
                data = bytes(view)
                text = binascii.b2a_base64(data, newline=False).decode("ascii") if self.as_json else None
                return self.tag("bytes", text, 0, data)
            if isinstance(value, _dt.datetime):
                text = _dt.datetime.isoformat(value)
                return self.tag("datetime", text, len(text) + 2, _dt.datetime.fromisoformat(text))
            if isinstance(value, _dt.date):
                text = _dt.date.isoformat(value)
                return self.tag("date", text, len(text) + 2, _dt.date.fromisoformat(text))
            if isinstance(value, _dt.time):
                text = _dt.time.isoformat(value)
                return self.tag("time", text, len(text) + 2, _dt.time.fromisoformat(text))
            if isinstance(value, _dt.timedelta):
                fields = [int(field.__get__(value)) for field in _TIMEDELTA_FIELDS]
                return self.tag("timedelta", fields, 36, _dt.timedelta(*fields))
            if isinstance(value, decimal.Decimal):
                text = decimal.Decimal.__str__(value)
                number = decimal.Decimal(text)
                if not number.is_finite() or abs(number.adjusted()) > MAX_DECIMAL_EXPONENT or len(text) > 2 * MAX_DECIMAL_EXPONENT:
                    return self.refuse(value, f"{text} is not a plain Decimal (finite, exponent within ±{MAX_DECIMAL_EXPONENT})")
                return self.tag("decimal", text, len(text) + 2, number)
            if isinstance(value, uuid.UUID):
                exact = uuid.UUID(int=_UUID_INT.__get__(value))
                return self.tag("uuid", str(exact), 38, exact)
        except WireError:
            raise
        except (LookupError, ValueError, TypeError, OverflowError, AttributeError) as exc:
            return self.refuse(value, f"a {kind.__name__} could not be converted: {type(exc).__name__}")
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.generic):
            try:
                item = value.item()
            except Exception:  # noqa: BLE001 - a numpy scalar that has no Python value
                return self.refuse(value)
            if type(item) is not kind:
                return self.walk(item, depth)
        if self.handle_token is not None:
            token = self.handle_token(value)
            if token is not None:
                self.size += len(SECRET_MARKER) + 40
                return {SECRET_MARKER: token}
        if self.default is not None:
            default, self.default = self.default, None
            try:
                return self.walk(default(value), depth)
            finally:
                self.default = default
        return self.refuse(value)

    def walk_set(self, value: Any, depth: int) -> Any:
        self.reserve(len(value))
        items = list(value)
        try:
            items.sort()
        except Exception:  # noqa: BLE001 - items that do not sort keep their order
            pass
        self.size += 1 + len(items)
        converted = [self.walk(item, depth + 1) for item in items]
        name = "frozenset" if isinstance(value, frozenset) else "set"
        if self.as_json:
            return self.tag(name, converted, 0, None)
        try:
            result = frozenset(converted) if name == "frozenset" else set(converted)
        except TypeError:  # lenient: an item became an unhashable list
            return self.refuse(value, "a set item could not be converted to a hashable value")
        return self.tag(name, None, 0, result)


try:  # the C fast path (`_wirecopy.c`); absent in the wasi guest and wherever it is not built
    from runtimes import _wirecopy as _fast
except ImportError:
    _fast = None  # type: ignore[assignment]
else:
    _fast.configure(TAG, SECRET_MARKER, "tuple", "v", MAX_DEPTH, MAX_INT_BITS, _CHECK_EVERY, _TAG_BYTES)

_NO_CAP = sys.maxsize
_C_DEPTH_LIMIT = 10_000
"""Deepest limit the C `depth` recurses to (its C stack frames are small)."""


def _convert(value: Any, as_json: bool, *, lenient: bool, max_bytes: int | None, handle_token: Any,
             default: Any, check: Any, fast: bool = True) -> Any:
    """The conversion `plain` and `encode` describe. A value made only of exact JSON types and
    tuples is copied by the C fast path when it is built (``fast``), with the same result, caps,
    accounting and checks; anything it does not handle (another type, an error, a refusal) is
    converted again from the start by the Python walk, which alone raises and repairs.

    Cost of giving up: the C copy stops where it meets what it does not handle, which for a
    value over a cap (bytes, nodes or depth) is where the cap is passed, so such a value is
    walked up to twice (C then Python: up to 2x the CPU of one walk) and ``check`` is called
    again for every checkpoint the C copy had passed (up to 2x the calls). C does not raise the
    cap error itself: the Python walk adds a list's bytes after its items and so may meet a
    refused object, a lenient repr or another cap first, and its error is the one reported."""
    # The copy builds only fresh containers that hold no cycle: collecting while it runs finds
    # no garbage, and a large copy would trigger collections of every generation for nothing.
    paused = type(value) in _CONTAINER_TYPES and gc.isenabled()
    if paused:
        gc.disable()
    try:
        if fast and _fast is not None:
            result = _fast.copy(value, as_json, handle_token is not None, _NO_CAP if max_bytes is None else max_bytes,
                                _NO_CAP if max_bytes is None else max_nodes(max_bytes), check)
            if result is not _fast.UNHANDLED:
                return result
        walk = _Walk(as_json, lenient, max_bytes, handle_token, default, check)
        result = walk.walk(value, 0)
    except RecursionError:
        raise ValueTooLarge(f"the value is nested deeper than {MAX_DEPTH} levels") from None
    finally:
        if paused:
            gc.enable()
    walk.over()
    return result


def plain(value: Any, *, lenient: bool = False, max_bytes: int | None = None, handle_token: Any = None,
          default: Callable[[Any], Any] | None = None, check: Callable[[], None] | None = None) -> Any:
    """A copy of ``value`` made of plain data only (see the module docstring).

    Strict (default): anything else raises `WireError` naming its type, so a guest cannot hand
    the host an object with behaviour; subclasses become their base type. ``handle_token(obj)``
    returns the token of a secret handle (``{SECRET_MARKER: token}``), or None; with it, a dict
    of the caller's own that carries the marker key is refused, so only real handles become markers. ``default(obj)``
    (host use) may turn an unsupported object into data, once. Lenient: an unsupported object,
    a non-finite float or a huge int becomes its ``repr`` string; never raises for those.

    Both raise `ValueTooLarge` over ``max_bytes`` (and the node cap that goes with it) or over
    `MAX_DEPTH`; ``check`` is called each time the node count passes another 1024 (a run's time
    check, which may raise; a container's items are counted before they are visited; a value the
    C fast path gives up on is walked again, and checked again, from the start). Garbage
    collection is paused while a container is copied (the copy holds no cycles).
    """
    return _convert(value, False, lenient=lenient, max_bytes=max_bytes, handle_token=handle_token,
                    default=default, check=check)


def encode(value: Any, *, lenient: bool = False, max_bytes: int | None = None, handle_token: Any = None,
           check: Callable[[], None] | None = None) -> Any:
    """Like `plain`, but JSON-compatible: typed values become tags (see the module docstring)."""
    return _convert(value, True, lenient=lenient, max_bytes=max_bytes, handle_token=handle_token,
                    default=None, check=check)


SMALL_SCALAR_ROOM = 64
"""A cap at least this large holds any `small_scalar` as JSON (a float's is at most 24 bytes)."""


def small_scalar(value: Any, max_bytes: int) -> bool:
    """True when ``max_bytes`` is at least `SMALL_SCALAR_ROOM` and ``value`` is None, a bool, an
    int under 2**62 in magnitude or a finite float (exact types): `encode` and `plain` return such
    a value unchanged, strict or lenient, and its JSON text is its ``repr`` (``null``, ``true``,
    ``false`` for None and the bools), so a caller may skip their walk."""
    kind = type(value)
    return max_bytes >= SMALL_SCALAR_ROOM and (
        value is None or kind is bool or (kind is int and -_INLINE_INT < value < _INLINE_INT)
        or (kind is float and value - value == 0.0))


def value_json(value: Any, max_bytes: int, *, lenient: bool = False) -> str:
    """``dumps(encode(value, lenient=lenient, max_bytes=max_bytes))`` (the same text, the same
    errors), without the walk for a value `encode` returns unchanged: a `small_scalar` (its JSON
    text is its ``repr``, or ``null``, ``true``, ``false``), or a str whose JSON form fits
    ``max_bytes`` even if every character took 12 bytes (a surrogate pair), so that no text
    larger than the cap is built."""
    kind = type(value)
    if kind is str:
        if 12 * len(value) + 2 <= max_bytes:
            return _enc_str(value)
    elif small_scalar(value, max_bytes):
        if value is None:
            return "null"
        if kind is bool:
            return "true" if value else "false"
        return repr(value)
    return dumps(encode(value, lenient=lenient, max_bytes=max_bytes))


def _not_serializable(obj: Any) -> Any:
    """The encoder's ``default``: the TypeError ``json.dumps`` raises for an object it cannot encode."""
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


try:
    _encoder = json.encoder.c_make_encoder(  # type: ignore[attr-defined]  # the C accelerator
        None, _not_serializable, _enc_str, None, ":", ",", False, False, False)
except (AttributeError, TypeError):  # no C accelerator, or another signature
    _encoder = None
"""``json.dumps(value, separators=(",", ":"), allow_nan=False)``'s C encoder, made once (json.dumps
makes a new one per call) and without the cycle check: `encode` never returns a cycle."""


def dumps(value: Any) -> str:
    """Compact JSON text of `encode`-d data, as ``json.dumps(value, separators=(",", ":"),
    allow_nan=False)`` gives it: a non-finite float raises `ValueError`, an object JSON has no
    form for raises json.dumps' `TypeError`. Contract: ``value`` is `encode` output (or other
    acyclic JSON data); the cycle check is left out, so a cycle is not reported as json.dumps
    reports it (``ValueError: Circular reference detected``) but recurses until `RecursionError`."""
    if _encoder is None:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    return "".join(_encoder(value, 0))


def _pairs(v: Any) -> dict:
    if not isinstance(v, list) or not all(type(p) is list and len(p) == 2 and type(p[0]) is str for p in v):
        raise ValueError("pairs of [str, value]")
    return dict(v)


def _iso(parse: Callable[[str], Any]) -> Callable[[Any], Any]:
    def decode(v: Any) -> Any:
        if type(v) is not str or len(v) > 64:
            raise ValueError("an ISO 8601 string")
        return parse(v)
    return decode


def _decimal(v: Any) -> decimal.Decimal:
    if type(v) is not str or len(v) > 2 * MAX_DECIMAL_EXPONENT:
        raise ValueError("a decimal string")
    number = decimal.Decimal(v)
    if not number.is_finite() or abs(number.adjusted()) > MAX_DECIMAL_EXPONENT:
        raise ValueError("a finite decimal within range")
    return number


def _timedelta(v: Any) -> _dt.timedelta:
    if type(v) is not list or len(v) != 3 or any(type(x) is not int for x in v):
        raise ValueError("[days, seconds, microseconds]")
    return _dt.timedelta(*v)


def _bytes(v: Any) -> bytes:
    if type(v) is not str:
        raise ValueError("base64 text")
    return binascii.a2b_base64(v.encode("ascii"), strict_mode=True)


def _items(kind: Callable[[list], Any]) -> Callable[[Any], Any]:
    def decode(v: Any) -> Any:
        if type(v) is not list:
            raise ValueError("a list of items")
        return kind(v)
    return decode


def _uuid(v: Any) -> uuid.UUID:
    if type(v) is not str or len(v) > 64:
        raise ValueError("a UUID string")
    return uuid.UUID(v)


_DECODERS: dict[str, Callable[[Any], Any]] = {
    "date": _iso(_dt.date.fromisoformat),
    "datetime": _iso(_dt.datetime.fromisoformat),
    "time": _iso(_dt.time.fromisoformat),
    "timedelta": _timedelta,
    "decimal": _decimal,
    "uuid": _uuid,
    "bytes": _bytes,
    "tuple": _items(tuple),
    "set": _items(set),
    "frozenset": _items(frozenset),
    "dict": _pairs,
}


def decode_hook(data: dict) -> Any:
    """``json.loads`` object hook: a tag becomes its typed value; raises `WireError` for a
    malformed tag (any dict with a ``"$type"`` key must be a well-formed tag)."""
    if TAG not in data:
        return data
    name = data[TAG]
    decoder = _DECODERS.get(name) if type(name) is str else None
    if decoder is None or len(data) != 2 or "v" not in data:
        raise WireError(f"malformed typed value {str(name)[:40]!r}")
    try:
        return decoder(data["v"])
    except (ValueError, TypeError, OverflowError, binascii.Error, decimal.InvalidOperation, ArithmeticError) as exc:
        raise WireError(f"malformed {name} value: {str(exc)[:200]}") from None


def loads(text: str | bytes) -> Any:
    """Parse trusted wire JSON (written by the host, or by our own side) into plain data."""
    return json.loads(text, object_hook=decode_hook)


_STRING_BYTES = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_STRING_TEXT = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _structure(data: str | bytes) -> int:
    if isinstance(data, bytes):
        return data.count(b",") + data.count(b"[") + data.count(b"{")
    return data.count(",") + data.count("[") + data.count("{")


def loads_bounded(data: str | bytes, *, max_bytes: int, nodes: int | None = None) -> Any:
    """Parse wire JSON an untrusted side wrote, within caps, into plain data.

    Checked before parsing: the length of ``data`` (bytes, or characters of a str) against
    ``max_bytes``, and its node count (commas and openings outside strings) against ``nodes``
    (default `max_nodes` of ``max_bytes``). Checked while and right after parsing: JSON depth
    at most `JSON_DEPTH`. Raises `ValueTooLarge` over a cap and `WireError` for text that is
    not wire JSON. Cost is linear in ``len(data)``.
    """
    if len(data) > max_bytes:
        raise ValueTooLarge(f"{len(data)} bytes is over the {max_bytes}-byte cap")
    cap = max_nodes(max_bytes) if nodes is None else nodes
    if _structure(data) > cap:
        stripped = _STRING_BYTES.sub(b"", data) if isinstance(data, bytes) else _STRING_TEXT.sub("", data)
        if _structure(stripped) > cap:
            raise ValueTooLarge(f"the value has more than {cap} nodes")
    try:
        value = json.loads(data, object_hook=decode_hook)
    except RecursionError:
        raise ValueTooLarge(f"the value is nested deeper than {JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise WireError(f"not wire JSON: {str(exc)[:200]}") from None
    if depth(value, JSON_DEPTH) > JSON_DEPTH:
        raise ValueTooLarge(f"the value is nested deeper than {JSON_DEPTH} levels")
    return value


_CONTAINERS = (list, dict, tuple, set, frozenset)


def depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of plain data (a scalar is 0, ``[1]`` is 1), counted up to ``limit + 1``;
    one pass over the containers (in C where the fast path is built, for limits it can recurse to)."""
    if _fast is not None and limit <= _C_DEPTH_LIMIT:
        return _fast.depth(value, limit)
    return _depth(value, limit)


def _depth(value: Any, limit: int) -> int:
    level = 0
    current = [value] if type(value) in _CONTAINERS else []
    while current:
        level += 1
        if level > limit:
            break
        nested: list = []
        for item in current:
            children = item.values() if type(item) is dict else item
            nested.extend(x for x in children if type(x) in _CONTAINERS)
        current = nested
    return level


def _safe_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # a guest __repr__ may raise anything
        return f"<unrepresentable {type(value).__name__}>"
    return text if type(text) is str else f"<unrepresentable {type(value).__name__}>"


def error(kind: str, type_: str, message: str, *, lineno: int | None = None, limit: str | None = None) -> dict:
    """An error entry for an outcome; the message and type name are clipped (`clip`)."""
    return {"kind": kind, "type": clip(type_, MAX_TYPE_CHARS), "message": clip(message), "lineno": lineno,
            "limit": limit}


def value_error(exc: ValueTooLarge, lineno: int | None = None) -> dict:
    """The error entry of a run whose value (or a capability call's data) is over a cap."""
    return error("limit_exceeded", "value", str(exc), lineno=lineno, limit="value")


def outcome(
    *,
    value: Any = None,
    stdout: str = "",
    stderr: str = "",
    output_truncated: bool = False,
    error: dict | None = None,
    cpu_seconds: float | None = None,
    peak_memory_bytes: int | None = None,
) -> dict:
    """An outcome dict; ``ok`` is True exactly when ``error`` is None."""
    return {
        "ok": error is None,
        "value": value if error is None else None,
        "stdout": stdout,
        "stderr": stderr,
        "output_truncated": output_truncated,
        "error": error,
        "cpu_seconds": cpu_seconds,
        "peak_memory_bytes": peak_memory_bytes,
    }
