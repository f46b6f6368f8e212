"""The guest objects of a restricted run that do not depend on its code or its grants.

`Scaffold` builds them once per `GuestState` (a session's, or one that fresh runs pass on while
they leave nothing behind) around one `Budget` and one output: the guards, the builtins that
check sizes or print, the guest's ``eval``/``exec``, and the hooks the transformed code calls.
`Scaffold.dismantle` breaks their reference cycles when a state is discarded, so its objects are
freed by reference counting rather than a later collection.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable
from typing import Any

from runtimes.restricted.budget import Budget, LimitExceeded
from runtimes.restricted.guards import GUEST_MODULE, Guards, getitem
from runtimes.restricted.guest_builtins import plain_function, sized_builtins
from runtimes.restricted.modules import MODULES
from runtimes.restricted.transformer import STRING_FILENAME, compile_guest


class Scaffold:
    """The guest objects of a run that do not depend on its code or its grants, all bound to one
    `Budget` and one `Output`: the guards, the builtins that check sizes or print, the guest's
    ``eval``/``exec``, and the hooks the transformed code calls (``_tick_``, ``_getattr_`` ...).

    A session keeps one for all its runs (its budget and output are reset per run); so does a
    fresh-run state while it is reused, and it is `dismantle`d when the state is discarded.
    """

    __slots__ = ("budget", "output", "guards", "builtins", "hooks", "exposed")

    def __init__(self, budget: Budget, output: Any, guest_globals: dict[str, Any],
                 guest_builtins: dict[str, Any]) -> None:
        self.budget = budget
        self.output = output
        guards = self.guards = Guards(budget)
        functions = sized_builtins(budget)
        for name, method in (
            ("print", output.print),
            ("getattr", guards.getattr_dynamic),
            ("hasattr", guards.hasattr_),
            ("setattr", guards.setattr_),
            ("delattr", guards.delattr_),
            ("dir", guards.dir_),
            ("__import__", MODULES.import_),
        ):
            functions[name] = plain_function(method, name)
        functions["eval"], functions["exec"] = _evaluator(guest_globals, guest_builtins)
        self.builtins: dict[str, Any] = functions
        """Merged into the guest's builtins dict at the start of every run."""
        self.hooks: dict[str, Any] = {
            "__builtins__": guest_builtins,
            "__name__": GUEST_MODULE,
            "_getattr_": guards.getattr_static,
            "_getattr_dunder_": guards.getattr_dunder,
            "_getitem_": getitem,
            "_write_": guards.write,
            "_getiter_": budget.getiter,
            "_inplacevar_": budget.inplace,
            "_mul_": budget.mul,
            "_pow_": budget.pow,
            "_lshift_": budget.lshift,
            "_mod_": budget.mod,
            "_formatted_": budget.formatted,
            "_starred_": budget.starred,
            "_sized_": budget.sized,
            "_sized_bytes_": budget.sized_bytes,
            "_type_": type,
            "_int_": int,
            "_float_": float,
            "_range_": range,
        }
        """Merged into the guest's globals at the start of every run (with the budget's tick
        sources ``_tick_`` and ``_enter_``, which a reset renews once a check has raised)."""
        self.exposed: list[Any] = [guest_globals, guest_builtins, budget, output, guards, guards.formatter,
                                   guards.format_, guards.format_map, *functions.values(),
                                   *(hook for hook in self.hooks.values() if type(hook) is types.MethodType)]
        """Every object of the scaffold that guest code can obtain, or that holds the budget for
        it: whatever guest code keeps of a run holds a reference to one of them (a function or
        frame holds the builtins dict; a guard's or size check's closure holds the budget or
        guards; the hooks, which guest code cannot name, are counted too)."""

    def dismantle(self) -> None:
        """Break the reference cycles among these objects (the guards and their formatter, the
        budget and its tick sources, builtins and the evaluator) so that a fresh run's objects
        are freed by reference counting when it ends, not by a later garbage collection."""
        vars(self.guards).clear()  # its formatter refers back to it
        self.budget.ticks = ENDED
        self.budget.enter = ENDED.__next__
        self.builtins.clear()
        self.hooks.clear()
        self.exposed.clear()


class _Ended:
    """What a dismantled run's tick sources become: guest code resumed after its run ended stops."""

    __slots__ = ()

    def __iter__(self) -> _Ended:
        return self

    def __next__(self) -> None:
        raise LimitExceeded("cpu", "guest code ran after its run ended")


ENDED = _Ended()


def _evaluator(guest_globals: dict[str, Any], guest_builtins: dict[str, Any]) -> tuple[Callable[..., Any], Callable[..., None]]:
    """The guest's ``eval``/``exec`` (plain closures, so no host object is reachable from them).

    Strings compile through the same restrictions. Namespaces must be exact ``dict``s (a
    subclass's ``__missing__`` or any other mapping could answer lookups of the inserted guard
    hooks). Code given its own namespace runs in a scratch dict the guest never holds: the
    public names of ``globals``/``locals`` are copied in, the run's real hooks and builtins are
    put over them, and public names are copied back afterwards, so neither the dicts passed in
    nor anything the code does to them can supply a hook.
    """

    def run(source: Any, mode: str, globals_: Any, locals_: Any, caller: Any) -> Any:
        if not isinstance(source, str):
            raise TypeError(f"{mode}() takes a string of code here")
        for label, given in (("globals", globals_), ("locals", locals_)):
            if given is not None and type(given) is not dict:
                raise TypeError(f"{mode}(): {label} must be a dict (not {type(given).__name__})")
        if locals_ is not None and any(type(key) is not str or key[:1] == "_" for key in locals_):
            raise ValueError(f"{mode}(): names starting with '_' are not allowed in locals")
        compiled = compile_guest(source, mode, STRING_FILENAME)
        if compiled.code is None:
            exc = SyntaxError(compiled.error_message)
            exc.lineno = compiled.lineno
            raise exc
        if globals_ is None and locals_ is None:
            # The guest's own namespace: the real globals hold the real hooks and the guest has
            # no reference to them; a function's f_locals is a fresh snapshot of its variables.
            own_frame = caller is not None and caller.f_globals is guest_globals
            frame_locals = caller.f_locals if own_frame and caller.f_locals is not guest_globals else None
            return exec_or_eval(compiled.code, guest_globals, frame_locals, mode)
        target = locals_ if locals_ is not None else globals_
        scratch: dict[str, Any] = {}
        for given in (globals_, locals_):
            if given is not None:
                scratch.update((key, value) for key, value in list(given.items()) if type(key) is str and key[:1] != "_")
        scratch.update((key, value) for key, value in guest_globals.items() if key[:1] == "_")
        scratch["__builtins__"] = guest_builtins
        try:
            return exec_or_eval(compiled.code, scratch, None, mode)
        finally:
            target.update((key, value) for key, value in scratch.items() if key[:1] != "_")

    def eval_(source: Any, globals: Any = None, locals: Any = None, /) -> Any:
        return run(source, "eval", globals, locals, sys._getframe(1))

    def exec_(source: Any, globals: Any = None, locals: Any = None, /) -> None:
        run(source, "exec", globals, locals, sys._getframe(1))

    eval_.__name__ = eval_.__qualname__ = "eval"
    exec_.__name__ = exec_.__qualname__ = "exec"
    return eval_, exec_


def exec_or_eval(code: Any, namespace: dict[str, Any], locals_: Any, mode: str) -> Any:
    if mode == "eval":
        return eval(code, namespace, locals_)
    exec(code, namespace, locals_)
    return None
