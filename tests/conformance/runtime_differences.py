"""Where the runtimes still differ: one table, asserted by `test_runtime_differences`.

Every runtime gives guest code the same builtins, the same importable modules (each with the
same reviewed names), the same errors, limit names and output cap, and the same capability
and secret objects (`runtimes.guest`); tests/conformance/test_same_program.py holds 40
programs that give the same result everywhere. What remains is below: each row is a program
and what it gives on each runtime (README, "Where the runtimes differ", lists the same rows).
The rows come from what each runtime *is*: the restricted runtime compiles guest code through
RestrictedPython and guards every attribute read, so it refuses some programs before they
run; the wasi guest is plain CPython inside a WebAssembly sandbox, whose boundary is the
sandbox, not the language.
"""

from __future__ import annotations

from dataclasses import dataclass

WASI_UNGATED = "__builtins__.update(len.__self__.__dict__)\n"
"""Guest code that gives a wasi guest Python's own builtins and import back. On wasi the
builtins and import allowlist make every runtime's programs behave alike; they are not the
boundary (guest code can rewrite its own builtins: see `DIFFERENCES`), so tests of the
WebAssembly boundary itself start with this line."""

RESTRICTED = ("restricted", "restricted+process")
ALL = (*RESTRICTED, "wasi")


@dataclass(frozen=True)
class Difference:
    """A program whose outcome depends on the runtime.

    ``outcomes`` maps a runtime id (`ALL`) to the expected outcome: ``("value", v)`` for a
    run that returns ``v``, or ``(kind, type)`` of the error it ends with.
    """

    id: str
    title: str
    code: str
    outcomes: dict[str, tuple[str, object]]


def _split(restricted: tuple[str, object], wasi: tuple[str, object]) -> dict[str, tuple[str, object]]:
    return {**dict.fromkeys(RESTRICTED, restricted), "wasi": wasi}


SYNTAX = ("compile_error", "SyntaxError")

DIFFERENCES: tuple[Difference, ...] = (
    Difference("underscore-names", "names starting with an underscore do not compile on restricted",
               "_x = 1\n_x", _split(SYNTAX, ("value", 1))),
    Difference("private-attributes", "attributes starting with an underscore (dunders but a few) do not compile on restricted",
               "(1).__class__.__mro__[-1].__name__", _split(SYNTAX, ("value", "object"))),
    Difference("frame-attributes", "frame, code and traceback links (gi_frame, f_globals ...) do not compile on restricted",
               "def f():\n    yield 1\nf().gi_frame is not None", _split(SYNTAX, ("value", True))),
    Difference("builtins-rewritable", "wasi guest code can rewrite its own builtins, and so reach past the import allowlist",
               WASI_UNGATED + "import os\n'imported'", _split(SYNTAX, ("value", "imported"))),
    Difference("type-three-arguments", "type(name, bases, dict) builds a class on wasi only (restricted: class statements)",
               "type('X', (), {}).__name__", _split(("guest_exception", "TypeError"), ("value", "X"))),
    Difference("dir-without-argument", "dir() without an argument lists the namespace on wasi only",
               "len(dir()) > 0", _split(("guest_exception", "TypeError"), ("value", True))),
    Difference("independent-random-imports", "each import of random has its own generator on restricted; one per run on wasi",
               "import random\nrandom.seed(1)\nimport random as again\nagain.random() == 0.13436424411240122",
               _split(("value", False), ("value", True))),
    Difference("host-type-messages", "writing to a host type is a TypeError everywhere; the message is the runtime's",
               "try:\n    setattr(int, 'x', 1)\nexcept TypeError as e:\n    m = str(e)\nm.startswith('cannot modify')",
               _split(("value", True), ("value", False))),
)
"""Every remaining difference between the runtimes."""
