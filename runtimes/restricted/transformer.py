"""Our RestrictedPython transformer and the compile cache.

On top of RestrictedPython 9's `RestrictingNodeTransformer` (names and attributes starting
with ``_`` refused, attribute reads through ``_getattr_``, item reads through ``_getitem_``,
item/attribute stores through ``_write_``, no ``except*``, no ``match``, no async), this:

* inserts ticks: ``_getiter_`` around every ``for``/comprehension iterable, ``_enter_()`` at
  the top of every function and lambda, and turns ``while test:`` into
  ``for _tmpN in _tick_:`` whose body starts with ``if not test: break`` (``_tick_`` is the
  run's endless ticking iterator, so an iteration costs no Python call; see `_tick_while`);
* routes ``*``, ``**``, ``<<`` and ``%`` (and their augmented forms), f-string format specs,
  ``*args`` and the first argument of ``list(...)``/``bytes(...)``-style calls through size
  guards; number arithmetic skips them after one inline type test per expression (below);
* allows ``d[k] += 1`` and ``obj.x += 1`` (the container goes through ``_write_``);
* allows ``eval``/``exec`` calls (the guest's ``eval``/``exec`` compile through this module);
* allows guest classes to *define* the dunder methods in `guards.DUNDER_METHODS`, and compiles
  reads of those (and of `guards.DUNDER_ANY`) to ``_getattr_dunder_``, which grants them on
  the guest's own objects only;
* allows ``nonlocal`` and annotated assignments; unpacks tuple targets natively (see `visit_Assign`);
* in ``exec`` mode, stores the value of a final expression statement in ``_result_``;
* in a top-level program, declares its module-level names ``global`` (see `name_scopes.declare_globals`).

Print is not rewritten: ``print`` is an ordinary name bound to the run's bounded output.

**Arithmetic fast path.** An expression made only of names, number constants, unary ``+ - ~``
and binary operators (``**`` and ``<<`` only by a constant small enough that `Budget.pow` and
`Budget.lshift` would not check it) compiles to::

    (<expression> if (_type_(a) is _int_ or _type_(a) is _float_) and ... else <guarded>)

with one test per distinct name (``_type_``, ``_int_`` and ``_float_`` are the real ``type``,
``int`` and ``float``; ``type()`` reads the class a guest cannot fake, where ``x.__class__``
may be a property, and ``is`` compares without calling any hash or ``__eq__``). The tests are
chained with ``and``, never gathered into a set: building one allocates and may run a
collection, hence guest finalisers, between the test and the use. When every name holds an
int or a float, every intermediate value is a number, and number arithmetic is exactly what
the guards let through unchecked (they refuse sequence repeats and ``%``-formats, and ints
from ``**``/``<<`` by large amounts, which the fast path never contains); otherwise the
``else`` branch runs the expression with every sized operator through its guard. Sound
because no guest code runs between the test and the arithmetic: the fast branch evaluates
only name loads (plain dict or fast-local reads; names starting with ``_`` cannot be bound by
guest code) and operators on ints and floats, which allocate no object a collection tracks;
the test itself calls only ``type``.
``x op= <such an expression>`` for a name ``x`` and a guarded operator compiles the same way to
``x = (x op <expression>) if ... else _inplacevar_(...)``.

**Range loops.** In the body of a function's ``for i in range(...)`` whose ``i``
nothing else binds (`name_scopes.range_loops`), ``i`` is tested by a flag set just before the
loop, ``_tmpN = range is _range_``, instead of its type test: the real ``range``
under ``_getiter_`` yields exact ints, and only the loop assigns a fast local that no
``global``/``nonlocal`` names (the guest's ``exec`` writes only to the dict of a function's
locals, which CPython does not copy back into them). Not at module level, where other code can rebind any name.
A comprehension over ``range`` (module level too: its variable is its own scope's) gets a
copy whose arithmetic does not test the variable, chosen by ``range is _range_`` (see
`GuestTransformer._comprehension`).

The module stays whole (about 570 lines): every rewrite it makes is part of one policy
of what guest code may say, reviewed together.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from RestrictedPython.transformer import RestrictingNodeTransformer, copy_locations

from runtimes.guest import GUEST_FILENAME, STRING_FILENAME
from runtimes.restricted.guards import DUNDER_ANY, DUNDER_METHODS
from runtimes.restricted.name_scopes import declare_globals, docstring_length, range_comprehension, range_loops

RESULT_NAME = "_result_"

_SIZED_OPS = {ast.Mult: "_mul_", ast.Pow: "_pow_", ast.LShift: "_lshift_", ast.Mod: "_mod_"}
_SIZED_AUG = {ast.Mult: "*=", ast.Pow: "**=", ast.LShift: "<<=", ast.Mod: "%="}
_SIZED_CALLS = frozenset({"list", "tuple", "set", "frozenset", "bytes", "bytearray", "dict"})
_SAFE_SPEC_DIGITS = 4
"""A constant format spec whose numbers have at most this many digits needs no runtime check."""


def _name(id_: str) -> ast.Name:
    return ast.Name(id_, ast.Load())


def _call(func: str, *args: ast.expr) -> ast.Call:
    return ast.Call(func=_name(func), args=list(args), keywords=[])


def _is_name_or_number(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) or (isinstance(node, ast.Constant) and type(node.value) in (int, float))


def _clone(node: ast.expr) -> ast.expr:
    if isinstance(node, ast.Name):
        return ast.Name(node.id, ast.Load())
    assert isinstance(node, ast.Constant)
    return ast.Constant(node.value)


_NUMBER_CONSTANTS = (int, float, complex)
_PLAIN_OPS = (ast.Add, ast.Sub, ast.Div, ast.FloorDiv, ast.RShift, ast.BitAnd, ast.BitOr, ast.BitXor)
"""Binary operators the transformer never guards."""
_UNCHECKED_SHIFT = 64
"""Largest constant exponent or shift `Budget.pow`/`Budget.lshift` pass without a size check."""


def _arithmetic_names(node: ast.expr, names: list[str]) -> bool:
    """True when ``node`` is number arithmetic (see the module docstring) over names and number
    constants; appends the names it reads, in evaluation order, to ``names``."""
    if isinstance(node, ast.Name):
        names.append(node.id)
        return isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.Constant):
        return type(node.value) in _NUMBER_CONSTANTS
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, (ast.UAdd, ast.USub, ast.Invert)) and _arithmetic_names(node.operand, names)
    if not isinstance(node, ast.BinOp):
        return False
    op = node.op
    if isinstance(op, (ast.Pow, ast.LShift)):
        right = node.right
        if not isinstance(right, ast.Constant):
            return False
        small = type(right.value) is int and abs(right.value) <= _UNCHECKED_SHIFT
        if not (small or (isinstance(op, ast.Pow) and type(right.value) is float)):
            return False
    elif not isinstance(op, (ast.Mult, ast.Mod, *_PLAIN_OPS)):
        return False
    return _arithmetic_names(node.left, names) and _arithmetic_names(node.right, names)


def _has_sized_op(node: ast.expr) -> bool:
    return any(isinstance(sub, ast.BinOp) and type(sub.op) in _SIZED_OPS for sub in ast.walk(node))


def _is_number(operand: ast.Name) -> ast.expr:
    """``_type_(operand) is _int_ or _type_(operand) is _float_``: its real class is int or float."""
    return ast.BoolOp(ast.Or(), [ast.Compare(_call("_type_", _clone(operand)), [ast.Is()], [_name(kind)])
                                 for kind in ("_int_", "_float_")])


def _when_numbers(names: list[str], known: dict[str, str], fast: ast.expr, guarded: ast.expr) -> ast.expr:
    """``fast if <test> else guarded``, the test being `_is_number` of each of the distinct
    ``names`` chained with ``and``. A name in ``known`` is a range loop's variable: tested by its
    loop's flag (`GuestTransformer.visit_For`), or not at all when its flag is empty (a
    comprehension's, `GuestTransformer._comprehension`); ``fast`` alone when no test is left."""
    tests = [_name(known[name]) if name in known else _is_number(_name(name)) for name in dict.fromkeys(names)
             if known.get(name, True)]
    if not tests:
        return fast
    return ast.IfExp(tests[0] if len(tests) == 1 else ast.BoolOp(ast.And(), tests), fast, guarded)


def _is_small_number(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) in (int, float) and abs(node.value) <= 2**32  # type: ignore[arg-type]


class GuestTransformer(RestrictingNodeTransformer):
    """RestrictedPython's transformer with our extensions (see the module docstring)."""

    def __init__(self, *, top_level: bool) -> None:
        """``top_level``: the program the executor runs (its globals are its locals): its last
        expression's value is captured and its module-level names are declared global."""
        super().__init__()
        self.top_level = top_level
        self._scopes: list[str] = []
        self._known: list[dict[str, str]] = [{}]
        """Per scope: names known to hold an int, each with the flag that says so (`visit_For`)."""
        self._loops: list[frozenset[int]] = [frozenset()]
        """Per scope: the range loops whose variable can be known (`name_scopes.range_loops`)."""

    @contextlib.contextmanager
    def _scope(self, kind: str, loops: frozenset[int] = frozenset()) -> Iterator[None]:
        """A nested scope: nothing known of the enclosing scope's names carries into it."""
        self._scopes.append(kind)
        self._known.append({})
        self._loops.append(loops)
        try:
            yield
        finally:
            self._scopes.pop()
            self._known.pop()
            self._loops.pop()

    # names -------------------------------------------------------------------------------

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if isinstance(node.ctx, ast.Load) and node.id == "print":
            return node
        self.check_name(node, node.id)
        return node

    # module ------------------------------------------------------------------------------

    def visit_Module(self, node: ast.Module) -> ast.AST:
        node = self.node_contents_visit(node)
        if self.top_level and node.body and isinstance(node.body[-1], ast.Expr):
            last = node.body[-1]
            store = ast.Assign(targets=[ast.Name(RESULT_NAME, ast.Store())], value=last.value)
            copy_locations(store, last)
            node.body[-1] = store
        if self.top_level:
            declare_globals(node)
        return node

    # functions and classes -----------------------------------------------------------------

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        in_class = bool(self._scopes) and self._scopes[-1] == "class"
        if in_class and node.name in DUNDER_METHODS:
            pass
        else:
            self.check_name(node, node.name)
        self.check_function_argument_names(node)
        with self._scope("function", range_loops(node)):
            node = self.node_contents_visit(node)
        self._prepend(node, node.body, "_enter_")
        return node

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        self.check_name(node, node.name)
        if any(keyword.arg == "metaclass" for keyword in node.keywords):
            self.error(node, 'The keyword argument "metaclass" is not allowed.')
        with self._scope("class"):
            return self.node_contents_visit(node)

    def visit_Lambda(self, node: ast.Lambda) -> ast.AST:
        """Lambdas tick on entry too (``_enter_() or body``): C loops such as ``reduce`` or
        ``sorted(key=...)`` may call them endlessly without any guest loop in between."""
        self.check_function_argument_names(node)
        with self._scope("function"):
            node = self.node_contents_visit(node)
        body = ast.BoolOp(ast.Or(), [_call("_enter_"), node.body])
        copy_locations(body, node.body)
        node.body = body
        return node

    def visit_Nonlocal(self, node: ast.Nonlocal) -> ast.AST:
        for name in node.names:
            self.check_name(node, name)
        return node

    @staticmethod
    def _prepend(owner: ast.stmt | ast.expr, body: list[ast.stmt], tick: str) -> None:
        stmt = ast.Expr(_call(tick))
        copy_locations(stmt, body[0] if body else owner)
        body.insert(docstring_length(body), stmt)

    # loops -------------------------------------------------------------------------------

    def guard_iter(self, node: ast.For | ast.comprehension) -> ast.AST:
        node = self.node_contents_visit(node)
        wrapped = _call("_getiter_", node.iter)
        copy_locations(wrapped, node.iter)
        node.iter = wrapped
        return node

    def visit_For(self, node: ast.For) -> ast.AST | list[ast.AST]:
        """A loop of `name_scopes.range_loops` becomes ``_tmpF = range is _range_`` and the loop;
        in its body (not its iterable or ``else``) the arithmetic fast path tests the variable by
        ``_tmpF``, a hidden fast local, in place of a type test: when ``range`` is the real one,
        ``_getiter_`` of the range it built yields exact ints, and nothing but the loop assigns
        the variable. ``range`` is read just before the loop reads it, with nothing in between
        that could run guest code, so both reads see the same object."""
        if id(node) not in self._loops[-1]:
            return self.guard_iter(node)
        flag = self.gen_tmp_name()
        variable = cast(ast.Name, node.target).id
        node.target = self.visit(node.target)
        iterable = self.visit(node.iter)
        node.iter = _call("_getiter_", iterable)
        copy_locations(node.iter, iterable)
        outer = self._known[-1]
        self._known[-1] = {**outer, variable: flag}
        try:
            node.body = self._visit_statements(node.body)
        finally:
            self._known[-1] = outer
        node.orelse = self._visit_statements(node.orelse)
        check = ast.Assign(targets=[ast.Name(flag, ast.Store())],
                           value=ast.Compare(_name("range"), [ast.Is()], [_name("_range_")]))
        copy_locations(check, node)
        return [check, node]

    def _visit_statements(self, statements: list[ast.stmt]) -> list[ast.stmt]:
        result: list[ast.stmt] = []
        for statement in statements:
            new = self.visit(statement)
            if isinstance(new, list):
                result.extend(new)
            elif new is not None:
                result.append(new)
        return result

    def _comprehension(self, node: ast.ListComp | ast.SetComp | ast.DictComp | ast.GeneratorExp,
                       visit: Callable[[Any], Any]) -> ast.AST:
        """A comprehension whose first ``for`` is ``name in range(...)``, whose later ones do not
        bind ``name`` and which holds no nested scope becomes ``(<fast> if range is _range_ else
        <comprehension>)``. In the fast copy's own scope (not its first iterable, which the
        enclosing scope evaluates) the arithmetic fast path does not test ``name``: only that
        ``for`` assigns it (an assignment expression cannot rebind it), from the real ``range``
        under ``_getiter_``. ``range`` is read just before the comprehension reads it, with
        nothing in between that could run guest code. No nested scope, so the copies do not
        multiply."""
        variable = range_comprehension(node)
        copied = copy.deepcopy(node) if variable else None
        errors = len(self.errors)
        with self._scope("comprehension"):
            guarded = cast(ast.expr, visit(node))
        if copied is None or len(self.errors) > errors:
            return guarded
        with self._scope("comprehension"):
            self._known[-1] = {cast(str, variable): ""}
            fast = cast(ast.expr, visit(copied))
        cast(Any, fast).generators[0].iter = copy.deepcopy(cast(Any, guarded).generators[0].iter)
        new = ast.IfExp(ast.Compare(_name("range"), [ast.Is()], [_name("_range_")]), fast, guarded)
        copy_locations(new, node)
        return new

    def visit_ListComp(self, node: ast.ListComp) -> ast.AST:
        return self._comprehension(node, super().visit_ListComp)

    def visit_SetComp(self, node: ast.SetComp) -> ast.AST:
        return self._comprehension(node, super().visit_SetComp)

    def visit_DictComp(self, node: ast.DictComp) -> ast.AST:
        return self._comprehension(node, super().visit_DictComp)

    def visit_GeneratorExp(self, node: ast.GeneratorExp) -> ast.AST:
        return self._comprehension(node, super().visit_GeneratorExp)

    def visit_While(self, node: ast.While) -> ast.AST | list[ast.AST]:
        node = self.node_contents_visit(node)
        return self._tick_while(node)

    def _tick_while(self, node: ast.While) -> ast.AST | list[ast.AST]:
        """``while test: body`` as ``for _tmpA in _tick_:`` with ``if not test: break`` first.

        ``continue`` re-tests, ``break`` leaves, as before. An ``else`` clause runs after the
        loop when the test ended it (a flag set just before that ``break``), so a ``break``
        or ``continue`` inside it still refers to the enclosing loop.
        """
        exit_: list[ast.stmt] = [ast.Break()]
        before: list[ast.stmt] = []
        after: list[ast.stmt] = []
        if node.orelse:
            flag = self.gen_tmp_name()
            before = [ast.Assign(targets=[ast.Name(flag, ast.Store())], value=ast.Constant(False))]
            exit_ = [ast.Assign(targets=[ast.Name(flag, ast.Store())], value=ast.Constant(True)), ast.Break()]
            after = [ast.If(_name(flag), node.orelse, [])]
        body = list(node.body)
        if not (isinstance(node.test, ast.Constant) and node.test.value):
            body.insert(0, ast.If(ast.UnaryOp(ast.Not(), node.test), exit_, []))
        loop = ast.For(target=ast.Name(self.gen_tmp_name(), ast.Store()), iter=_name("_tick_"), body=body, orelse=[])
        for stmt in (*before, *after):
            copy_locations(stmt, node)
        copy_locations(loop, node.body[0])  # a stop raised by the tick points into the body, as before
        for stmt in body[:1] + exit_:
            copy_locations(stmt, node.test)
        return [*before, loop, *after] if before else loop

    # unpacking ---------------------------------------------------------------------------

    def visit_Assign(self, node: ast.Assign) -> ast.AST:
        """Tuple targets unpack natively (RestrictedPython routes them through
        ``_unpack_sequence_`` so Zope security proxies see the iteration; unpacking binds only
        elements of a value the guest already holds, so there is nothing to guard here)."""
        return self.node_contents_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AST:
        """``x: int = 1`` (needed by dataclasses). The target is checked like any assignment and
        the annotation is compiled with the same guards; annotation *strings* stay strings
        (the host functions that would evaluate them, like ``typing.get_type_hints``, are not
        offered to the guest)."""
        return self.node_contents_visit(node)

    def visit_With(self, node: ast.With) -> ast.AST:
        """``with a as (x, y)`` unpacks natively, like `visit_Assign`."""
        return self.node_contents_visit(node)

    # operators ---------------------------------------------------------------------------

    def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
        names: list[str] = []
        if _arithmetic_names(node, names) and names and _has_sized_op(node):
            fast = _when_numbers(names, self._known[-1], copy.deepcopy(node), self._guarded(node))
            copy_locations(fast, node)
            return fast
        node = self.node_contents_visit(node)
        guard = _SIZED_OPS.get(type(node.op))
        if guard is None:
            return node
        left, right = node.left, node.right
        if _is_small_number(left) and _is_small_number(right) and not isinstance(node.op, (ast.Pow, ast.LShift)):
            return node
        if isinstance(node.op, ast.Mod) and _is_small_number(left):
            return node
        new: ast.expr = _call(guard, left, right)
        # Fast path for plain numbers, tested inline (no call): ``a * b`` when both are numbers,
        # ``a % b`` when ``a`` is one. Only for names and constants, which are safe to evaluate twice.
        checked = [left, right] if isinstance(node.op, ast.Mult) else [left] if isinstance(node.op, ast.Mod) else []
        if checked and all(_is_name_or_number(x) for x in (left, right)):
            names = [x.id for x in checked if isinstance(x, ast.Name)]
            if names:
                new = _when_numbers(names, self._known[-1], ast.BinOp(_clone(left), node.op, _clone(right)), new)
        copy_locations(new, node)
        return new

    def _guarded(self, node: ast.expr) -> ast.expr:
        """A copy of the number-arithmetic expression ``node`` (`_arithmetic_names`) with every
        sized operator through its guard, no inline tests; names are checked as usual."""
        if isinstance(node, ast.Name):
            self.visit_Name(node)
            return _clone(node)
        if isinstance(node, ast.Constant):
            return _clone(node)
        if isinstance(node, ast.UnaryOp):
            new: ast.expr = ast.UnaryOp(node.op, self._guarded(node.operand))
        else:
            assert isinstance(node, ast.BinOp)
            left, right = self._guarded(node.left), self._guarded(node.right)
            guard = _SIZED_OPS.get(type(node.op))
            native = guard is None or (
                _is_small_number(left) and (isinstance(node.op, ast.Mod)
                                            or (_is_small_number(right) and isinstance(node.op, ast.Mult)))
            )
            new = ast.BinOp(left, node.op, right) if native else _call(guard, left, right)  # type: ignore[arg-type]
        copy_locations(new, node)
        return new

    def visit_AugAssign(self, node: ast.AugAssign) -> ast.AST | list[ast.AST]:
        op = _SIZED_AUG.get(type(node.op))
        name = node.target.id if isinstance(node.target, ast.Name) else None
        names = [name] if name is not None else []
        if op is not None and name is not None and _arithmetic_names(ast.BinOp(_name(name), node.op, node.value), names):
            self.check_name(node.target, name)
            fast = _when_numbers(
                names,
                self._known[-1],
                ast.BinOp(_name(name), node.op, copy.deepcopy(node.value)),
                _call("_inplacevar_", ast.Constant(op), _name(name), self._guarded(node.value)),
            )
            assign = ast.Assign(targets=[ast.Name(name, ast.Store())], value=fast)
            copy_locations(assign, node)
            return assign
        node = self.node_contents_visit(node)  # an Attribute/Subscript target now reads _write_(obj)
        if op is None:
            return node
        target = node.target
        if isinstance(target, ast.Name):
            new = ast.Assign(
                targets=[ast.Name(target.id, ast.Store())],
                value=_call("_inplacevar_", ast.Constant(op), ast.Name(target.id, ast.Load()), node.value),
            )
            copy_locations(new, node)
            return new
        # obj.attr op= v / obj[key] op= v: evaluate obj (and key) once, as Python does.
        holder = self.gen_tmp_name()
        stmts: list[ast.stmt] = [ast.Assign(targets=[ast.Name(holder, ast.Store())], value=target.value)]
        read: ast.expr
        write: ast.expr
        if isinstance(target, ast.Subscript):
            key = self.gen_tmp_name()
            stmts.append(ast.Assign(targets=[ast.Name(key, ast.Store())], value=target.slice))
            read = ast.Subscript(_name(holder), _name(key), ast.Load())
            write = ast.Subscript(_name(holder), _name(key), ast.Store())
        else:
            read = ast.Attribute(_name(holder), target.attr, ast.Load())
            write = ast.Attribute(_name(holder), target.attr, ast.Store())
        stmts.append(ast.Assign(targets=[write], value=_call("_inplacevar_", ast.Constant(op), read, node.value)))
        for stmt in stmts:
            copy_locations(stmt, node)
        return list(stmts)

    # calls -------------------------------------------------------------------------------

    def visit_Call(self, node: ast.Call) -> ast.AST:
        node = self.node_contents_visit(node)
        if isinstance(node.func, ast.Name) and node.func.id in _SIZED_CALLS and node.args:
            first = node.args[0]
            if not isinstance(first, ast.Starred):
                guard = "_sized_bytes_" if node.func.id in ("bytes", "bytearray") else "_sized_"
                node.args[0] = _call(guard, first)
                copy_locations(node.args[0], first)
        return node

    def visit_Starred(self, node: ast.Starred) -> ast.AST:
        node = self.node_contents_visit(node)
        if isinstance(node.ctx, ast.Load):
            node.value = _call("_starred_", node.value)
            copy_locations(node.value, node)
        return node

    # f-strings ---------------------------------------------------------------------------

    def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
        node = self.node_contents_visit(node)
        spec = node.format_spec
        if spec is None or _constant_spec_is_small(spec):
            return node
        new = ast.FormattedValue(
            value=_call("_formatted_", node.value, ast.Constant(node.conversion), spec),
            conversion=-1,
            format_spec=None,
        )
        copy_locations(new, node)
        return new

    # attributes --------------------------------------------------------------------------

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        attr = node.attr
        if isinstance(node.ctx, ast.Load) and (attr in DUNDER_METHODS or attr in DUNDER_ANY):
            node = self.node_contents_visit(node)
            new = _call("_getattr_dunder_", node.value, ast.Constant(attr))
            copy_locations(new, node)
            return new
        return cast(ast.AST, super().visit_Attribute(node))


def _constant_spec_is_small(spec: ast.expr) -> bool:
    if not isinstance(spec, ast.JoinedStr):
        return False
    for part in spec.values:
        if not (isinstance(part, ast.Constant) and isinstance(part.value, str)):
            return False
        digits = "".join(ch if ch.isdigit() else " " for ch in part.value).split()
        if any(len(run) > _SAFE_SPEC_DIGITS for run in digits):
            return False
    return True


@dataclass(frozen=True)
class Compiled:
    """A guest program ready to run. ``code`` is None when it did not compile."""

    code: object | None
    error_type: str = ""
    error_message: str = ""
    lineno: int | None = None


@functools.lru_cache(maxsize=512)
def compile_guest(source: str, mode: str = "exec", filename: str = GUEST_FILENAME) -> Compiled:
    """Parse, check and compile ``source``; cached by source text (an LRU of 512 programs).

    Never raises for bad source: a syntax error or a refused construct comes back as a
    `Compiled` with ``code=None``, the error type (``SyntaxError``), a message listing every
    refusal, and the first offending line.
    """
    try:
        tree = ast.parse(source, filename, mode)
    except SyntaxError as exc:
        return Compiled(None, type(exc).__name__, exc.msg or str(exc), exc.lineno)
    except (ValueError, MemoryError, RecursionError) as exc:  # NUL bytes, absurd nesting
        return Compiled(None, "SyntaxError", str(exc), None)
    top_level = mode == "exec" and filename == GUEST_FILENAME
    transformer = GuestTransformer(top_level=top_level)
    try:
        tree = transformer.visit(tree)
    except RecursionError:
        return Compiled(None, "SyntaxError", "program nested too deeply", None)
    if transformer.errors:
        first = transformer.errors[0]
        lineno = None
        if first.startswith("Line "):
            head = first[5:].split(":", 1)[0]
            lineno = int(head) if head.isdigit() else None
        return Compiled(None, "SyntaxError", "; ".join(transformer.errors), lineno)
    ast.fix_missing_locations(tree)
    try:
        code = compile(tree, filename, mode, dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        return Compiled(None, "SyntaxError", str(exc), getattr(exc, "lineno", None))
    return Compiled(code)

