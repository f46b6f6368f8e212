"""What guest code of the restricted runtime runs against, and the reuse of fresh runs' states.

`GuestState` holds a run's globals, builtins, `Scaffold` (budget, output, guards, run builtins,
hooks) and `CallLink` (capabilities). A session keeps one for all its runs. A fresh run takes a
spare (`take_spare`), which costs no construction when an earlier fresh run gave one back
(`give_back`). A fresh run's state is kept for a later one only when the run provably left
nothing behind (`GuestState.measure`, `GuestState.left_clean`): no object outside the state
holds any object of the state that guest code could obtain, so no code or data of the run can
be reached, called or resumed by a later run, and the globals are empty again.
"""

from __future__ import annotations

import decimal
import sys
from collections.abc import Callable
from typing import Any

from runtimes.guest import OutputCap, SecretHandle
from runtimes.restricted.budget import Budget
from runtimes.restricted.grants import CallLink
from runtimes.restricted.guest_builtins import base_builtins
from runtimes.restricted.scaffold import Scaffold
from runtimes.restricted.watchdog import WATCHDOG

BASE_BUILTINS = base_builtins()

_MAX_SPARES = 8
"""Most fresh-run states kept for reuse (one per concurrently running fresh run is enough)."""
_SPARES: list[GuestState] = []


class Output(OutputCap):
    """stdout of one run: kept up to ``cap`` bytes (UTF-8, `OutputCap`), the rest dropped and flagged.

    ``sink``, when given, also receives each kept piece as it is written (streaming).
    """

    __slots__ = ("parts", "sink")

    def __init__(self, cap: int, sink: Callable[[str], None] | None = None) -> None:
        super().__init__(cap)
        self.parts: list[str] = []
        self.sink = sink

    def reset(self, cap: int, sink: Callable[[str], None] | None) -> None:
        """Empty, for a new run that keeps ``cap`` bytes and streams to ``sink``."""
        OutputCap.__init__(self, cap)
        self.parts = []
        self.sink = sink

    def write(self, text: str) -> int:
        kept = self.keep(text)
        if kept:
            self.parts.append(kept)
            if self.sink is not None:
                self.sink(kept)
        return len(text)

    def print(self, *args: Any, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False) -> None:
        """The guest's ``print``; ``file`` may be an object of the guest's with a ``write`` method."""
        if sep is None:
            sep = " "
        if end is None:
            end = "\n"
        if type(sep) is not str or type(end) is not str:
            raise TypeError("print(): sep and end must be strings")
        if file is None and self.truncated:
            return
        text = sep.join([str(arg) for arg in args]) + end
        if file is None:
            self.write(text)
        else:
            file.write(text)

    def text(self) -> str:
        return "".join(self.parts)


class GuestState:
    """Guest globals that persist across runs of a session. Opaque to callers.

    Holds the guest's globals, one builtins dict that every run refreshes in place (functions
    defined in an earlier run keep the builtins they were created with, so they print into
    the current run's output), and one `Scaffold` (a `Budget` that every run resets, the guards,
    builtins and hooks bound to it, an `Output` every run empties): loops and generators
    suspended in an earlier run are checked against the current run's limits.
    """

    __slots__ = ("globals", "builtins", "kit", "stale_handles", "link", "reusable", "decimal_context", "_clean",
                 "_clean_of")

    def __init__(self) -> None:
        self.globals: dict[str, Any] = {}
        self.builtins: dict[str, Any] = dict(BASE_BUILTINS)
        self.kit: Scaffold | None = None
        # Handles issued by earlier runs, with their (revoked) tokens: a handle kept in the
        # session's globals is sent to the host as its old token, which the host refuses by name.
        self.stale_handles: dict[int, tuple[SecretHandle, str]] = {}
        # The capabilities, built once: one kept in a session's globals calls the host through
        # the run that is current when it is called.
        self.link = CallLink()
        self.reusable = False
        """Set by a fresh run that `left_clean`: `give_back` keeps the state for another fresh run."""
        self.decimal_context: decimal.Context | None = None
        """The guest's decimal context in a session's runs (made by the first), kept like the
        globals; a fresh run gets a new one."""
        self._clean: tuple[list[int], list[int]] | None = None
        self._clean_of: tuple[Any, Any] = (None, None)

    @property
    def budget(self) -> Budget | None:
        """The budget the session's runs share (None before the first run)."""
        return self.kit.budget if self.kit is not None else None

    def measure(self) -> tuple[list[int], list[int]]:
        """The reference counts of every object of this state that guest code can obtain or
        that can run on its behalf (`Scaffold.exposed`, `CallLink.exposed`): the globals and
        builtins dicts (held by every function and frame of the guest), the budget, output,
        guards and formatter, the run builtins and the capability callables and namespaces."""
        kit = self.kit
        assert kit is not None
        return list(map(sys.getrefcount, kit.exposed)), list(map(sys.getrefcount, self.link.exposed))

    def baseline(self) -> tuple[list[int], list[int]] | None:
        """`measure` as a fresh run starts, before anything of the run refers to the state's
        objects; None when a watchdog poll overlapped it. When the last run `left_clean` and the
        scaffold and capability namespace are still the ones it measured, that run's final
        measurement (the state has only waited as a spare since: nothing of ours changed)."""
        kit = self.kit
        of = self._clean_of
        if self._clean is not None and of[0] is kit and of[1] is self.link.exposed:
            return self._clean
        return WATCHDOG.measure_quietly(self.measure)

    def left_clean(self, before: tuple[list[int], list[int]] | None) -> bool:
        """True when a run that started with `measure` ``before`` left nothing behind: every
        exposed object is referenced exactly as before the guest ran (nothing the guest made
        still holds one, so no guest function, frame, generator or finaliser of the run is
        alive), the globals are empty and the run was not stopped (a stop may still be arriving
        from another thread). Called with the globals already cleared."""
        kit = self.kit
        clean = (before is not None and kit is not None and kit.budget.stop is None
                 and WATCHDOG.measure_quietly(self.measure) == before and not self.globals)
        self._clean, self._clean_of = (before, (kit, self.link.exposed)) if clean else (None, (None, None))
        return clean

    def dismantle(self) -> None:
        """Break the state's reference cycles (see `Scaffold.dismantle`) and empty its namespaces:
        guest code that outlives the run finds no hooks or builtins and fails. Never reused after."""
        self._clean = None
        self.globals.clear()
        self.builtins.clear()
        if self.kit is not None:
            self.kit.dismantle()
        self.link.dismantle()


def take_spare(memory_cap: bool) -> GuestState | None:
    """A state an earlier fresh run gave back, with a scaffold of the same ``memory_cap`` kind, or None."""
    try:
        state = _SPARES.pop()
    except IndexError:
        return None
    kit = state.kit
    if kit is None or (kit.budget.cap is not None) != memory_cap:
        state.dismantle()
        return None
    state.reusable = False
    return state


def give_back(state: GuestState) -> None:
    """Keep a fresh run's state for a later fresh run when it is `GuestState.reusable` (and
    fewer than `_MAX_SPARES` wait), else dismantle it."""
    kit = state.kit
    if state.reusable and kit is not None and len(_SPARES) < _MAX_SPARES:
        # What the run's host handed in is not kept alive while the state waits (its outcome is built).
        kit.output.reset(0, None)
        kit.budget.on_time_check = None
        _SPARES.append(state)
    else:
        state.dismantle()
