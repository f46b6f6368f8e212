"""Size guards of a restricted run: refuse an operation whose result would exceed the memory limit.

The transformer routes ``*``, ``**``, ``<<``, ``%`` (and their augmented forms), f-string
format specs, ``*args`` and the first argument of ``list(...)``/``bytes(...)``-style calls
here (``_mul_``, ``_pow_`` ...); the guest's ``sorted``, ``format`` and the text methods that
widen their input call in too. Each estimates the size of the result from its operands
before it is built and refuses one larger than ``memory_bytes`` with `LimitExceeded` memory:
the early, cheap check in front of the allocator cap. Number arithmetic passes unchecked
except ``**`` and ``<<`` by more than 64 (the transformer skips the guards entirely for
expressions of ints and floats, see `runtimes.restricted.transformer`).
"""

from __future__ import annotations

import operator
import re
from itertools import count, cycle, repeat
from typing import Any

from runtimes.guest import MEMORY

_ITEM_BYTES = 8
"""Estimated bytes per element when a sequence is materialised (one pointer)."""
_INFINITE = (count, cycle, repeat)


class SizeGuards:
    """The size guards, mixed into `runtimes.restricted.budget.Budget`, which supplies
    ``size_cap`` (bytes), ``trip_limit`` (stop the run, return the exception to raise) and
    ``getiter`` (a ticking iterator)."""

    size_cap: int

    def trip_limit(self, limit: str, message: str) -> BaseException:  # pragma: no cover - Budget's
        raise NotImplementedError

    def getiter(self, iterable: Any) -> Any:  # pragma: no cover - Budget's
        raise NotImplementedError


    def refuse_size(self, what: str, size: float) -> BaseException:
        return self.trip_limit(
            MEMORY, f"{what} would need about {human_size(size)}, over the memory limit of {human_size(self.size_cap)}"
        )

    def check_count(self, what: str, items: float, item_bytes: float = _ITEM_BYTES) -> None:
        """Raise `LimitExceeded` size when ``items * item_bytes`` exceeds the memory limit."""
        if items * item_bytes > self.size_cap:
            raise self.refuse_size(what, items * item_bytes)

    def mul(self, a: Any, b: Any) -> Any:
        """``a * b`` after refusing a sequence repeat larger than the memory limit.

        A repeat count given by an object's ``__index__`` is read once, checked, and the
        checked int is what multiplies (so a second ``__index__`` call cannot differ).
        """
        ta = type(a)
        if (ta is int or ta is float) and type(b) in _NUMBERS:
            return a * b
        a, b = self._repeat_operands(a, b)
        return a * b

    def _repeat_operands(self, a: Any, b: Any) -> tuple[Any, Any]:
        """``(a, b)`` with a sequence repeat's count made an int once and its size checked."""
        if _is_sized_sequence(a) and _has_index(b):
            b = operator.index(b)
            self._check_repeat(a, b)
        elif _is_sized_sequence(b) and _has_index(a):
            a = operator.index(a)
            self._check_repeat(b, a)
        return a, b

    def _check_repeat(self, seq: Any, times: int) -> None:
        if times <= 1:
            return
        unit = _ITEM_BYTES if isinstance(seq, (list, tuple)) else 1
        size = len(seq) * times * unit
        if size > self.size_cap:
            raise self.refuse_size(f"repeating a {type(seq).__name__} {times} times", size)

    def pow(self, a: Any, b: Any, mod: Any = None) -> Any:
        """``a ** b`` (or ``pow(a, b, mod)``) after refusing an integer result larger than the limit."""
        if mod is not None:
            return pow(a, b, mod)
        if isinstance(b, int) and b > 64 and isinstance(a, int) and not isinstance(a, bool) and abs(a) > 1:
            bits = (abs(a).bit_length() - 1) * b
            if bits / 8 > self.size_cap:
                raise self.refuse_size(f"{_short(a)} ** {_short(b)}", bits / 8)
        elif isinstance(b, int) and b > 64 and type(a).__name__ == "Fraction":
            bits = (max(abs(a.numerator), abs(a.denominator)).bit_length() - 1) * b
            if bits / 8 > self.size_cap:
                raise self.refuse_size(f"Fraction ** {_short(b)}", bits / 8)
        return a**b

    def lshift(self, a: Any, b: Any) -> Any:
        """``a << b`` after refusing an integer result larger than the limit."""
        if isinstance(a, int) and isinstance(b, int) and b > 64 and a:
            size = (abs(a).bit_length() + b) / 8
            if size > self.size_cap:
                raise self.refuse_size(f"{_short(a)} << {_short(b)}", size)
        return a << b

    def mod(self, a: Any, b: Any) -> Any:
        """``a % b`` after refusing a %-format whose widths exceed the limit."""
        if type(a) is int or type(a) is float:
            return a % b
        if isinstance(a, (str, bytes, bytearray)):
            self.check_widths(a)
            args = b if isinstance(b, tuple) else (b,)
            if b"*" in a if not isinstance(a, str) else "*" in a:
                for item in args:
                    if isinstance(item, int) and abs(item) > self.size_cap:
                        raise self.refuse_size("a %-format width", abs(item))
        return a % b

    def inplace(self, op: str, target: Any, value: Any) -> Any:
        """``target op= value`` for the size-guarded operators ``*=``, ``**=``, ``<<=``, ``%=``."""
        if op == "*=":
            target, value = self._repeat_operands(target, value)
            target *= value
            return target
        if op == "**=":
            return self.pow(target, value)
        if op == "<<=":
            return self.lshift(target, value)
        if op == "%=":
            return self.mod(target, value)
        return _INPLACE[op](target, value)

    def check_widths(self, spec: str | bytes | bytearray) -> None:
        """Refuse a format spec or %-format with a width or precision above the limit."""
        digits = _DIGITS.findall(spec) if isinstance(spec, str) else _BDIGITS.findall(spec)
        for run in digits:
            if len(run) > 6 and int(run) > self.size_cap:
                raise self.refuse_size("a format width or precision", int(run))

    def format(self, value: Any, spec: Any = "") -> str:
        """``format(value, spec)`` with the width check."""
        if spec:
            self.check_widths(spec)
        return format(value, spec)

    def formatted(self, value: Any, conversion: int, spec: str) -> str:
        """An f-string replacement field with a computed format spec: ``f'{value!r:{spec}}'``."""
        if conversion == 114:
            value = repr(value)
        elif conversion == 115:
            value = str(value)
        elif conversion == 97:
            value = ascii(value)
        return self.format(value, spec)

    def starred(self, value: Any) -> Any:
        """The operand of ``*value`` in a call or display: refuse materialising a huge range."""
        self.check_materialise(value)
        return value

    def check_materialise(self, value: Any) -> None:
        """Refuse turning a huge range or an infinite iterator into a collection."""
        if type(value) is range:
            items: float
            try:
                items = len(value)
            except OverflowError:
                items = float("inf")
            self.check_count("materialising a range", items)
        elif isinstance(value, _INFINITE):
            hint = operator.length_hint(value, -1)
            if hint < 0:
                raise self.refuse_size(f"materialising an endless {type(value).__name__}", float("inf"))
            self.check_count(f"materialising a {type(value).__name__}", hint)

    def sized(self, value: Any) -> Any:
        """First argument of ``list(...)``, ``set(...)`` and the like (``_sized_``): refuse a
        huge range, an endless or too deeply nested iterator; an iterator comes back wrapped so
        the constructor's C loop ticks (``dict(...)`` of an iterator of pairs works the same)."""
        self.check_materialise(value)
        if hasattr(type(value), "__next__"):
            return self.getiter(value)
        return value

    def sized_bytes(self, value: Any) -> Any:
        """First argument of ``bytes(...)``/``bytearray(...)`` (``_sized_bytes_``): a count (an
        int or an object with ``__index__``, read once) is checked as that many bytes and
        returned as an int; anything else is checked like `sized`."""
        if _has_index(value) and not isinstance(value, (str, bytes, bytearray, memoryview)):
            value = operator.index(value)
            self.check_count("allocating that many bytes", value, 1)
            return value
        self.check_materialise(value)
        return value

    def check_text(self, what: str, size: float) -> None:
        """Refuse producing text or bytes of ``size`` bytes when it exceeds the limit."""
        if size > self.size_cap:
            raise self.refuse_size(what, size)


_NUMBERS = frozenset({int, float, bool, complex})
_DIGITS = re.compile(r"\d+")
_BDIGITS = re.compile(rb"\d+")
_INPLACE = {
    "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
    "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
    ">>=": operator.irshift, "&=": operator.iand, "|=": operator.ior, "^=": operator.ixor,
    "@=": operator.imatmul,
}


def _has_index(value: Any) -> bool:
    return isinstance(value, int) or hasattr(type(value), "__index__")


def _is_sized_sequence(value: Any) -> bool:
    return isinstance(value, (str, bytes, bytearray, list, tuple))


def _short(number: int) -> str:
    text = str(number) if abs(number) < 10**12 else f"<{abs(number).bit_length()}-bit int>"
    return text


def human_size(size: float) -> str:
    """``size`` bytes for messages (``64 MiB``; ``unbounded memory`` for infinity)."""
    if size == float("inf"):
        return "unbounded memory"
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.0f} PiB"


def sized_text_method(budget: Any, obj: Any, name: str, method: Any) -> Any:
    """``method`` (the bound ``obj.name`` of a str/bytes/bytearray ``obj``) wrapped so a result
    far larger than its inputs (``join``, ``replace``, ``expandtabs``, ``ljust``/``rjust``/
    ``center``/``zfill`` widths) is refused against ``budget`` before it is built."""
    if name == "join":
        def join(iterable: Any) -> Any:
            items = iterable if isinstance(iterable, (list, tuple)) else list(budget.iterate(iterable))
            if items:
                try:
                    size = sum(map(len, items)) + len(obj) * (len(items) - 1)
                except TypeError:  # not all sized: join itself raises the right error
                    size = 0
                budget.check_text(f"{type(obj).__name__}.join", size)
            return method(items)
        return join
    if name == "replace":
        def replace(old: Any, new: Any, count: int = -1) -> Any:
            if isinstance(old, (str, bytes)) and isinstance(new, (str, bytes)) and len(new) > len(old):
                hits = obj.count(old) if count < 0 else min(count, obj.count(old))
                budget.check_text(f"{type(obj).__name__}.replace", len(obj) + hits * (len(new) - len(old)))
            return method(old, new, count)
        return replace
    if name == "expandtabs":
        def expandtabs(tabsize: int = 8) -> Any:
            tabsize = operator.index(tabsize)
            budget.check_text(f"{type(obj).__name__}.expandtabs", len(obj) * max(tabsize, 1))
            return method(tabsize)
        return expandtabs

    def widen(width: Any, *args: Any) -> Any:
        width = operator.index(width)  # read a guest __index__ once; the checked int is used
        budget.check_text(f"{type(obj).__name__}.{name}", width)
        return method(width, *args)
    return widen
