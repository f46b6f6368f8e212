"""`Redactor`: replaces secret values and their encodings (percent, escapes, hex, base64 at every
alignment) by ``[REDACTED:<name>]`` in texts and in data.
"""

from __future__ import annotations

import base64
import bisect
import functools
import itertools
import json
import logging
import operator
import re
from collections.abc import Iterator, Mapping
from decimal import Decimal
from typing import Any, NamedTuple
from uuid import UUID

from sandbox.runtime import CapabilityFault
from sandbox.tree import CONTAINERS, map_tree


log = logging.getLogger("sandbox.secrets")


_B64_STD = "A-Za-z0-9+/"
_B64_URL = "A-Za-z0-9_-"
_MIN_SHIFTED_CORE = 8
"""Shortest base64 core redacted at non-zero byte alignments (shorter ones match too much)."""


class _Form(NamedTuple):
    """One encoded form of a value: a regex, and literals one of which every match contains."""

    weight: int
    pattern: str
    needles: tuple[str, ...]
    lowered: bool = False
    """Look for the needles in the lowercased text (case-insensitive forms)."""
    bare: tuple[str, ...] | None = None
    """Literals one of which every match in a text without ``%`` or spaces contains (None: the
    needles); decides whether number texts can hold a match at all."""


def _hex_class(text: str) -> str:
    """Regex for hex text, case-insensitive in its letters only."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in text)


def _percent_or_literal(value: str) -> _Form:
    """``value`` with any subset of its characters percent-encoded (any hex case), spaces also
    as ``+``. Without ``%`` (or ``+``) in the text, only the literal value can match."""
    parts = []
    for char in value:
        encoded = "".join(f"%{_hex_class(f'{b:02X}')}" for b in char.encode("utf-8"))
        options = [encoded, re.escape(char)]  # encoded first: "%25" must win over the literal "%"
        if char == " ":
            options.append(r"\+")
        parts.append("(?:" + "|".join(options) + ")")
    needles = (value, "%", "+") if " " in value else (value, "%")
    return _Form(len(value), "".join(parts), needles, bare=(value.replace(" ", "+"),))


def _base64_forms(data: bytes) -> list[_Form]:
    """``data`` base64-encoded (standard and URL alphabets) at each byte alignment inside a
    longer stream.

    At alignment ``r`` (bytes before it mod 3) only the characters whose 6 bits all come from
    ``data`` are fixed (the *core*); the characters straddling the edges are matched as any one
    base64 character (plus trailing padding), so no bits of the value are left unredacted.
    """
    forms = []
    n = len(data)
    for r in range(3):
        encoded = base64.b64encode(b"\0" * r + data + b"\0\0").decode("ascii")
        start_bit, end_bit = 8 * r, 8 * (r + n)
        first = -(-start_bit // 6)  # first char fully inside the data
        last = end_bit // 6  # one past the last such char
        core = encoded[first:last]
        if not core or (r and len(core) < _MIN_SHIFTED_CORE):
            continue
        lead = start_bit % 6 != 0
        tail = last * 6 < end_bit
        for alphabet, text in ((_B64_STD, core), (_B64_URL, core.translate(str.maketrans("+/", "-_")))):
            pattern = (f"[{alphabet}]?" if lead else "") + re.escape(text) + (f"[{alphabet}]?" if tail else "") + "=*"
            forms.append(_Form(n * 4 // 3, pattern, (text,)))
    return forms


@functools.lru_cache(maxsize=64)
def _forms(value: str) -> tuple[_Form, ...]:
    """Every encoded form of ``value`` (cached: a sandbox re-reads the same values every run)."""
    data = value.encode("utf-8")
    forms = [_percent_or_literal(value)]
    for escaped in sorted({json.dumps(value)[1:-1], repr(value)[1:-1], repr(data)[2:-1]}):
        if escaped != value:
            forms.append(_Form(len(escaped), re.escape(escaped), (escaped,)))
    forms.append(_Form(2 * len(data), _hex_class(data.hex()), (data.hex(),), lowered=True))
    forms += _base64_forms(data)
    return tuple(forms)


_NUMBER_PIECE = re.compile(r"[-+]?[0-9]*\.?[0-9]*(?:e[-+]?[0-9]*)?", re.IGNORECASE)
"""Matches every substring of the finite text of an int, float or Decimal (and more)."""
_UUID_PIECE = re.compile(r"[0-9a-f-]*")
_STR = frozenset({str})
_NUMBERS = frozenset({int, float})
_FLOAT_TEXT_MAX = len("-2.2250738585072014e-308")
"""No ``str()`` of a float is longer."""
_SKIPPED = frozenset({bool, type(None)})


def _in_number(needle: str) -> bool:
    """Whether ``needle`` can be part of the text of an int, float or Decimal."""
    folded = needle.lower()
    return bool(_NUMBER_PIECE.fullmatch(needle)) or folded in "-sinfinity" or folded in "-snan"


def _separators() -> Iterator[str]:
    """Candidate separators: characters no form pattern matches unless the value contains them."""
    yield from "\x00\x01\x02\x03"
    yield from (chr(c) for c in range(0xFDD0, 0x110000))


@functools.lru_cache(maxsize=256)
def _compile(alternatives: tuple[tuple[str, str], ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?P<{group}>{pattern})" for group, pattern in alternatives))


class Redactor:
    """Replaces secret values and their encodings by ``[REDACTED:<name>]``.

    Built from ``{name: value}``. `text` redacts a string (apply it to a whole output, not to
    pieces, so values split across writes are caught); `value` redacts every string, bytes,
    dict key and number (as text) of JSON-like data. A redactor with no secrets returns its
    input unchanged.

    Covered forms of each value: the value itself with any of its characters percent-encoded
    (``+`` for spaces), JSON/``repr``/bytes-``repr`` escapes, hex (any case), and base64 and
    base64url at every byte alignment (so the value is caught inside a larger encoded blob,
    e.g. ``base64("user:" + value)``).

    Cost is linear in the size of the input: `text` runs a few substring searches per form and
    the regex only over texts that contain a form's literal core; `value` walks the data once
    without recursion (no depth limit), searches all its texts in one joined string, and
    rebuilds the data only when something matched.
    """

    def __init__(self, values: Mapping[str, str]) -> None:
        self._names: dict[str, str] = {}
        self._forms: list[tuple[str, _Form]] = []  # (group, form), heaviest first
        self._plain: list[tuple[str, list[str]]] = []
        for index, (name, value) in enumerate(values.items()):
            if not value:
                continue
            if len(value) < 6:
                log.warning("secret %r is shorter than 6 characters; redacting it may garble unrelated output", name)
            for k, form in enumerate(_forms(value)):
                group = f"s{index}_{k}"
                self._names[group] = name
                self._forms.append((group, form))
            data = value.encode("utf-8")
            self._plain.append(
                (name, [value, data.hex(), data.hex().upper(), base64.b64encode(data).decode(), base64.urlsafe_b64encode(data).decode()])
            )
        self._forms.sort(key=lambda item: -item[1].weight)
        # A scalar whose text cannot hold any form's needle cannot hold a match: skip its text.
        bare = [n.lower() if f.lowered else n for _, f in self._forms for n in (f.bare or f.needles)]
        shortest = min((len(n) for n in bare if _in_number(n)), default=None)
        self._numbers = shortest is not None
        # Shorter texts cannot hold a needle: ints below this magnitude (a sign is one more
        # character), and every float when no float text (24 characters at most) is long enough.
        self._int_floor = 10 ** max(shortest - 2, 0) if shortest is not None else 0
        self._floats = shortest is not None and shortest <= _FLOAT_TEXT_MAX
        self._uuids = any(_UUID_PIECE.fullmatch(n) for n in bare)
        used = set().union(*(set(value) for value in values.values())) if values else set()
        self._separator = next(c for c in _separators() if c not in used)
        """Joins texts in `value`: no form can match it, so no match spans two texts."""

    def __bool__(self) -> bool:
        return bool(self._forms)

    def _replace(self, match: re.Match[str]) -> str:
        return f"[REDACTED:{self._names[match.lastgroup or '']}]"

    def _pattern_for(self, text: str) -> re.Pattern[str] | None:
        """A regex of the forms that could match ``text`` (one of their needles is in it), or None."""
        lowered: str | None = None
        hits = []
        for group, form in self._forms:
            if form.lowered:
                lowered = text.lower() if lowered is None else lowered
                haystack = lowered
            else:
                haystack = text
            if any(needle in haystack for needle in form.needles):
                hits.append((group, form.pattern))
        return _compile(tuple(hits)) if hits else None

    def text(self, text: str, *, truncated: bool = False) -> str:
        """``text`` with every form of every value replaced.

        With ``truncated=True`` (the output was cut at a cap), a trailing prefix of a value or
        of its hex/base64 form (4 characters or more) is redacted too, so a cap cannot be used
        to cut a value in half.
        """
        if not self._forms or not isinstance(text, str):
            return text
        for _ in range(4):
            pattern = self._pattern_for(text)
            if pattern is None:
                break
            text, count = pattern.subn(self._replace, text)
            if not count:
                break
        else:
            pattern = self._pattern_for(text)
            match = pattern.search(text) if pattern is not None else None
            if match is not None:  # pathological overlap with the marker itself: drop everything
                return self._replace(match)
        if truncated:
            text = self._redact_tail(text)
        return text

    def _redact_tail(self, text: str) -> str:
        for name, forms in self._plain:
            for form in forms:
                for size in range(min(len(form) - 1, len(text)), 3, -1):
                    if text.endswith(form[:size]):
                        return text[:-size] + f"[REDACTED:{name}]"
        return text

    def value(self, data: Any) -> Any:
        """``data`` with every form of every value replaced in its strings, bytes (as UTF-8),
        dict keys, and numbers and UUIDs (a changed one becomes its redacted text).

        Lists, tuples, dicts, sets and frozensets are walked at any depth; anything else is
        kept as is. Returns ``data`` itself when nothing matched, else a rebuilt copy.
        """
        if not self._forms:
            return data
        texts = self._texts(data)
        joined = self._separator.join(texts)
        pattern = self._pattern_for(joined)
        if pattern is None:
            return data
        ends = list(itertools.accumulate(len(text) + 1 for text in texts))
        hits: set[str] = set()
        position = 0
        while (match := pattern.search(joined, position)) is not None:
            index = bisect.bisect_right(ends, match.start())
            hits.add(texts[index])
            position = ends[index]
        if not hits:
            return data

        def leaf(item: Any) -> Any:
            text = self._leaf_text(item)
            if text is None or text not in hits:
                return item
            redacted = self.text(text)
            return redacted.encode("utf-8", "surrogateescape") if isinstance(item, (bytes, bytearray)) else redacted

        return map_tree(data, leaf)

    def _leaf_text(self, item: Any) -> str | None:
        """The text `value` searches for a non-container, or None when it cannot hold a form."""
        if isinstance(item, str):
            return item
        if isinstance(item, (bytes, bytearray)):
            return bytes(item).decode("utf-8", "surrogateescape")
        if isinstance(item, bool) or item is None:
            return None
        if isinstance(item, (int, float, Decimal)):
            if not self._numbers or isinstance(item, int) and abs(item) < self._int_floor:
                return None
            if isinstance(item, float) and not self._floats:
                return None
            try:
                return str(item)
            except ValueError:  # an int past the interpreter's digit limit has no text form
                return None
        if isinstance(item, UUID):
            return str(item) if self._uuids else None
        return None

    def _texts(self, data: Any) -> list[str]:
        """The text of every non-container in ``data`` that could hold a form (any order),
        walking each distinct container once, without recursion.

        Each container's items are grouped by type with C-level steps, so the large cases
        (many strings, many numbers) cost no Python bytecode per item.
        """
        if not isinstance(data, CONTAINERS):
            text = self._leaf_text(data)
            return [] if text is None else [text]
        texts: list[str] = []
        skip = _SKIPPED if self._numbers else _SKIPPED | _NUMBERS
        seen = {id(data)}
        stack = [data]
        while stack:
            node = stack.pop()
            if len(node) < 32:  # small containers: one step per item is cheaper than grouping
                for item in itertools.chain.from_iterable(node.items()) if isinstance(node, dict) else node:
                    if type(item) is str:
                        texts.append(item)
                    elif isinstance(item, CONTAINERS):
                        if id(item) not in seen:
                            seen.add(id(item))
                            stack.append(item)
                    elif type(item) not in skip:
                        text = self._leaf_text(item)
                        if text is not None:
                            texts.append(text)
                continue
            for items in (node.keys(), node.values()) if isinstance(node, dict) else (node,):
                kinds = set(map(type, items))
                types = list(map(type, items)) if len(kinds) > 1 else None
                for kind in kinds - skip:
                    group = items if types is None else itertools.compress(items, map(operator.is_, types, itertools.repeat(kind)))
                    if kind is str:
                        texts.extend(group)
                    elif kind is int:
                        group = list(group)
                        if max(group) >= self._int_floor or min(group) <= -self._int_floor:
                            long_enough = itertools.compress(group, map(self._int_floor.__le__, map(abs, group)))
                            texts.extend(t for t in map(self._leaf_text, long_enough) if t is not None)
                    elif kind is float:
                        if self._floats:
                            texts.extend(map(str, group))
                    elif issubclass(kind, CONTAINERS):
                        for item in group:
                            if id(item) not in seen:
                                seen.add(id(item))
                                stack.append(item)
                    else:
                        texts.extend(t for t in map(self._leaf_text, group) if t is not None)
        return texts

    def fault(self, fault: CapabilityFault) -> CapabilityFault:
        """``fault`` with its message redacted (the same object when nothing changed)."""
        message = self.text(fault.message)
        if message == fault.message:
            return fault
        return CapabilityFault(fault.guest_type, message, terminate=fault.terminate)


NO_REDACTION = Redactor({})
