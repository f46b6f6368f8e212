"""The guest's ``re``: the `regex` package behind the ``re`` API, every match bounded by the run.

Every matching call (module functions, `Pattern` methods, `Match` objects handed to a ``sub``
callback) passes ``timeout=`` set to what is left of the running budget: the smaller of the
wall-clock and CPU time remaining (`regex` counts its timeout in CPU time, so on a loaded host
the wall-clock overshoot is bounded by the load). A timeout stops the run as ``limit_exceeded``
(``cpu`` or ``wall``, whichever deadline was nearer). Outside a run (no active budget) the
timeout is `OUTSIDE_RUN_TIMEOUT`.

Host state stays untouched: patterns, replacement templates and subject strings of a ``str`` or
``bytes`` subclass are copied to the exact type before `regex` sees them (its pattern cache is
keyed by value, so a guest subclass with its own ``__eq__``/``__hash__`` could otherwise answer
for a host pattern); ``DEBUG`` (prints to the real stdout), ``purge`` and ``template`` are not
offered. `Pattern` and `Match` wrap the `regex` objects and hand out only wrapped objects, so no
unbounded matching method is reachable.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import regex as _regex

from runtimes.guest import CPU, WALL
from runtimes.restricted.budget import active_budget

OUTSIDE_RUN_TIMEOUT = 1.0
"""Seconds a match may take when no run is active on the calling thread."""

error = _regex.error
RegexFlag = _regex.RegexFlag
A = ASCII = _regex.A
I = IGNORECASE = _regex.I  # noqa: E741 - the re API
L = LOCALE = _regex.L
M = MULTILINE = _regex.M
S = DOTALL = _regex.S
U = UNICODE = _regex.U
X = VERBOSE = _regex.X
NOFLAG = _regex.RegexFlag(0)
_DEBUG = int(_regex.DEBUG)
_MAXSIZE = sys.maxsize


def _exact(value: Any) -> Any:
    """``value`` as an exact str/bytes when it is a subclass of one; other values unchanged."""
    kind = type(value)
    if kind is str or kind is bytes:
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes.__getitem__(value, slice(None))
    return value


def _remaining() -> tuple[float, str]:
    """(seconds left, the limit they belong to) for the run active on this thread."""
    budget = active_budget()
    if budget is None:
        return OUTSIDE_RUN_TIMEOUT, ""
    wall = budget.wall_deadline - time.monotonic()
    cpu = budget.cpu_limit - budget.cpu_used()
    return (max(cpu, 0.001), CPU) if cpu < wall else (max(wall, 0.001), WALL)


def _timed_out(limit: str) -> BaseException:
    """The exception for a timeout on ``limit``: the run's stop, or TimeoutError outside a run."""
    budget = active_budget()
    if budget is None or not limit:
        return TimeoutError("regular expression timed out")
    seconds = budget.cpu_limit if limit == CPU else budget.wall_limit
    return budget.trip_limit(limit, f"{limit} time limit of {seconds:g} s exceeded in a regular expression")


def _bounded(call: Callable[..., Any], *args: Any) -> Any:
    """``call(*args, timeout=...)`` with the run's remaining time; a timeout stops the run."""
    seconds, limit = _remaining()
    try:
        return call(*args, timeout=seconds)
    except TimeoutError:
        raise _timed_out(limit) from None


def _flags(flags: Any) -> int:
    value = int(flags)
    if value & _DEBUG:
        raise ValueError("re.DEBUG is not available in the sandbox")
    return value


def _pattern_source(pattern: Any) -> Any:
    return pattern._compiled if type(pattern) is Pattern else _exact(pattern)


def _repl(repl: Any) -> Any:
    if callable(repl):
        return lambda match: repl(Match(match))
    return _exact(repl)


class Pattern:
    """A compiled regular expression (``re.Pattern``); its matching methods are bounded."""

    __slots__ = ("_compiled",)
    _compiled: Any

    def __init__(self, compiled: Any) -> None:
        object.__setattr__(self, "_compiled", compiled)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("re.Pattern objects are read-only")

    @property
    def pattern(self) -> Any:
        return self._compiled.pattern

    @property
    def flags(self) -> int:
        return self._compiled.flags

    @property
    def groups(self) -> int:
        return self._compiled.groups

    @property
    def groupindex(self) -> Any:
        return dict(self._compiled.groupindex)

    def search(self, string: Any, pos: int = 0, endpos: int = _MAXSIZE) -> Match | None:
        return _match(_bounded(self._compiled.search, _exact(string), pos, endpos))

    def match(self, string: Any, pos: int = 0, endpos: int = _MAXSIZE) -> Match | None:
        return _match(_bounded(self._compiled.match, _exact(string), pos, endpos))

    def fullmatch(self, string: Any, pos: int = 0, endpos: int = _MAXSIZE) -> Match | None:
        return _match(_bounded(self._compiled.fullmatch, _exact(string), pos, endpos))

    def split(self, string: Any, maxsplit: int = 0) -> list[Any]:
        return _bounded(self._compiled.split, _exact(string), maxsplit)

    def findall(self, string: Any, pos: int = 0, endpos: int = _MAXSIZE) -> list[Any]:
        return _bounded(self._compiled.findall, _exact(string), pos, endpos)

    def finditer(self, string: Any, pos: int = 0, endpos: int = _MAXSIZE) -> Iterator[Match]:
        seconds, limit = _remaining()
        return _Matches(self._compiled.finditer(_exact(string), pos, endpos, timeout=seconds), limit)

    def sub(self, repl: Any, string: Any, count: int = 0) -> Any:
        return _bounded(self._compiled.sub, _repl(repl), _exact(string), count)

    def subn(self, repl: Any, string: Any, count: int = 0) -> tuple[Any, int]:
        return _bounded(self._compiled.subn, _repl(repl), _exact(string), count)

    def __eq__(self, other: object) -> bool:
        return type(other) is Pattern and self._compiled == other._compiled

    def __hash__(self) -> int:
        return hash(self._compiled)

    def __repr__(self) -> str:
        return repr(self._compiled).replace("regex.Regex(", "re.compile(", 1)

    def __copy__(self) -> Pattern:
        return self

    def __deepcopy__(self, memo: Any) -> Pattern:
        return self


class _Matches:
    """The iterator `Pattern.finditer` returns: wrapped matches; the scanner carries the timeout
    computed when it was made, and a timeout stops the run on that limit."""

    __slots__ = ("_scanner", "_limit")
    _scanner: Any
    _limit: str

    def __init__(self, scanner: Any, limit: str) -> None:
        object.__setattr__(self, "_scanner", scanner)
        object.__setattr__(self, "_limit", limit)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("re match iterators are read-only")

    def __iter__(self) -> _Matches:
        return self

    def __next__(self) -> Match:
        try:
            return Match(next(self._scanner))
        except TimeoutError:
            raise _timed_out(self._limit) from None


class Match:
    """A match (``re.Match``); ``re`` gives back the wrapped `Pattern`."""

    __slots__ = ("_found",)
    _found: Any

    def __init__(self, found: Any) -> None:
        object.__setattr__(self, "_found", found)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("re.Match objects are read-only")

    def group(self, *groups: Any) -> Any:
        return self._found.group(*groups)

    def __getitem__(self, group: Any) -> Any:
        return self._found[group]

    def groups(self, default: Any = None) -> tuple[Any, ...]:
        return self._found.groups(default)

    def groupdict(self, default: Any = None) -> dict[str, Any]:
        return self._found.groupdict(default)

    def start(self, group: Any = 0) -> int:
        return self._found.start(group)

    def end(self, group: Any = 0) -> int:
        return self._found.end(group)

    def span(self, group: Any = 0) -> tuple[int, int]:
        return self._found.span(group)

    def expand(self, template: Any) -> Any:
        return self._found.expand(_exact(template))

    @property
    def string(self) -> Any:
        return self._found.string

    @property
    def re(self) -> Pattern:
        return Pattern(self._found.re)

    @property
    def pos(self) -> int:
        return self._found.pos

    @property
    def endpos(self) -> int:
        return self._found.endpos

    @property
    def lastindex(self) -> int | None:
        return self._found.lastindex

    @property
    def lastgroup(self) -> str | None:
        return self._found.lastgroup

    @property
    def regs(self) -> tuple[tuple[int, int], ...]:
        return self._found.regs

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return repr(self._found).replace("<regex.Match", "<re.Match", 1)

    def __copy__(self) -> Match:
        return self

    def __deepcopy__(self, memo: Any) -> Match:
        return self


def _match(found: Any) -> Match | None:
    return None if found is None else Match(found)


def compile(pattern: Any, flags: Any = 0) -> Pattern:  # noqa: A001 - the re API
    if type(pattern) is Pattern:
        if flags:
            raise ValueError("cannot process flags argument with a compiled pattern")
        return pattern
    return Pattern(_regex.compile(_exact(pattern), _flags(flags)))


def search(pattern: Any, string: Any, flags: Any = 0) -> Match | None:
    return compile(pattern, flags).search(string)


def match(pattern: Any, string: Any, flags: Any = 0) -> Match | None:
    return compile(pattern, flags).match(string)


def fullmatch(pattern: Any, string: Any, flags: Any = 0) -> Match | None:
    return compile(pattern, flags).fullmatch(string)


def split(pattern: Any, string: Any, maxsplit: int = 0, flags: Any = 0) -> list[Any]:
    return compile(pattern, flags).split(string, maxsplit)


def findall(pattern: Any, string: Any, flags: Any = 0) -> list[Any]:
    return compile(pattern, flags).findall(string)


def finditer(pattern: Any, string: Any, flags: Any = 0) -> Iterator[Match]:
    return compile(pattern, flags).finditer(string)


def sub(pattern: Any, repl: Any, string: Any, count: int = 0, flags: Any = 0) -> Any:
    return compile(pattern, flags).sub(repl, string, count)


def subn(pattern: Any, repl: Any, string: Any, count: int = 0, flags: Any = 0) -> tuple[Any, int]:
    return compile(pattern, flags).subn(repl, string, count)


def escape(pattern: Any) -> Any:
    return _regex.escape(_exact(pattern), special_only=True, literal_spaces=False)
