"""Behaviour of the restricted executor called directly: transformer extensions, import proxies,
guards, limits, output cap, capability faults, sessions and the compile cache."""

from __future__ import annotations

import ast
import marshal
import time

import pytest

from runtimes.restricted import GuestState, execute
from runtimes.restricted.transformer import GuestTransformer, compile_guest
from runtimes.wire import Fault

LIMITS = {
    "cpu_seconds": 2.0,
    "wall_seconds": 5.0,
    "memory_bytes": 64 << 20,
    "max_output_bytes": 1 << 16,
    "max_recursion_depth": 200,
}


def _no_host(name: str, args: list, kwargs: dict) -> None:
    raise AssertionError("unexpected capability call")


def run(code: str, *, call_host=_no_host, limits: dict | None = None, **kwargs) -> dict:
    return execute(code, limits={**LIMITS, **(limits or {})}, call_host=call_host, **kwargs)


def value(code: str, **kwargs) -> object:
    result = run(code, **kwargs)
    assert result["ok"], result["error"]
    return result["value"]


def error(code: str, **kwargs) -> dict:
    result = run(code, **kwargs)
    assert not result["ok"], f"expected a failure, got {result['value']!r}"
    return result["error"]


# --- values, output, errors -------------------------------------------------------------------


def test_value_is_last_expression_statement() -> None:
    assert value("x = 2\nx * 21") == 42
    assert value("x = 2") is None
    assert value("(1, {2})") == (1, {2})
    assert value("for i in range(3):\n    pass\ni") == 2


def test_outcome_shape() -> None:
    result = run("1")
    assert isinstance(result["peak_memory_bytes"], int) and result["peak_memory_bytes"] >= 0  # the allocator cap's peak
    assert run("block = bytearray(1 << 20)")["peak_memory_bytes"] >= 1 << 20  # what the run allocated, at least
    assert isinstance(result["cpu_seconds"], float) and result["cpu_seconds"] >= 0
    assert result["stderr"] == "" and result["output_truncated"] is False


def test_print_is_collected_from_every_scope() -> None:
    code = (
        "print('module')\n"
        "def f():\n    print('function')\n    def g():\n        print('nested')\n    g()\n"
        "class C:\n    print('class body')\n    def m(self):\n        print('method', end='!\\n')\n"
        "f()\nC().m()\nlist(map(print, ['via map']))\n"
        "print(1, 2, sep='-')"
    )
    result = run(code)
    assert result["stdout"] == "module\nclass body\nfunction\nnested\nmethod!\nvia map\n1-2\n"


def test_print_to_a_guest_file_object() -> None:
    assert value("import io\nb = io.StringIO()\nprint('x', file=b)\nb.getvalue()") == "x\n"


def test_output_cap_truncates_flags_and_continues() -> None:
    result = run("for i in range(10000):\n    print('0123456789')\n'finished'", limits={"max_output_bytes": 1000})
    assert result["ok"] and result["value"] == "finished"
    assert result["output_truncated"] is True
    assert len(result["stdout"].encode()) == 1000


def test_output_cap_counts_utf8_bytes() -> None:
    result = run("print('é' * 100)", limits={"max_output_bytes": 11})
    assert result["output_truncated"] and len(result["stdout"].encode()) <= 11


def test_syntax_error_is_compile_error_with_line() -> None:
    err = error("x = 1\ny = (\n")
    assert err["kind"] == "compile_error" and err["type"] == "SyntaxError" and err["lineno"] in (2, 3)


def test_refused_name_is_named_in_compile_error() -> None:
    err = error("x = 1\nx.__dict__")
    assert err["kind"] == "compile_error" and err["lineno"] == 2 and "__dict__" in err["message"]


def test_guest_exception_has_type_message_line_and_no_host_paths() -> None:
    err = error("x = 1\n\ndef f():\n    return {}['missing']\nf()")
    assert err == {"kind": "guest_exception", "type": "KeyError", "message": "'missing'", "lineno": 4, "limit": None}
    err = error("import json\njson.loads('{')")
    assert err["type"] == "JSONDecodeError" and err["lineno"] == 2
    assert "/" not in err["message"]


def test_guest_cannot_rebind_print() -> None:
    assert error("print = 1")["kind"] == "compile_error"


# --- transformer extensions -----------------------------------------------------------------


def test_augmented_assignment_on_items_and_attributes() -> None:
    code = (
        "d = {'a': 1}\nd['a'] += 1\nd['b'] = d.get('b', 0) + 5\n"
        "class C:\n    pass\nc = C()\nc.x = 1\nc.x += 2\nc.s = 'ab'\nc.s *= 2\n"
        "l = [1, 2]\nl[0] *= 10\nl[1] **= 3\nn = 1\nn <<= 4\nt = '%d'\nt %= 7\n"
        "[d, c.x, c.s, l, n, t]"
    )
    assert value(code) == [{"a": 2, "b": 5}, 3, "abab", [10, 8], 16, "7"]


def test_augmented_assignment_evaluates_target_once() -> None:
    code = "calls = []\nd = {'k': 2}\ndef key():\n    calls.append(1)\n    return 'k'\nd[key()] *= 3\n[d, len(calls)]"
    assert value(code) == [{"k": 6}, 1]


def test_augmented_assignment_refuses_foreign_objects() -> None:
    err = error("import math\nmath.pi += 1")
    assert err["type"] == "TypeError" and "cannot modify" in err["message"]


def test_classes_with_dunder_methods_and_super() -> None:
    code = (
        "class V:\n"
        "    def __init__(self, *xs):\n        self.xs = list(xs)\n"
        "    def __repr__(self):\n        return f'V{tuple(self.xs)}'\n"
        "    def __len__(self):\n        return len(self.xs)\n"
        "    def __iter__(self):\n        return iter(self.xs)\n"
        "    def __getitem__(self, i):\n        return self.xs[i]\n"
        "    def __contains__(self, x):\n        return x in self.xs\n"
        "    def __add__(self, other):\n        return V(*[a + b for a, b in zip(self, other)])\n"
        "    def __eq__(self, other):\n        return list(self) == list(other)\n"
        "    def __lt__(self, other):\n        return len(self) < len(other)\n"
        "    def __hash__(self):\n        return hash(tuple(self.xs))\n"
        "class W(V):\n"
        "    def __init__(self, *xs):\n        super().__init__(*xs)\n        self.kind = 'w'\n"
        "    def __str__(self):\n        return 'W!'\n"
        "class Ctx:\n"
        "    def __enter__(self):\n        return 'in'\n"
        "    def __exit__(self, *exc):\n        return False\n"
        "with Ctx() as c:\n    entered = c\n"
        "w = W(1, 2)\n"
        "[repr(w + V(10, 20)), len(w), w[1], 2 in w, w == V(1, 2), sorted([V(1, 2, 3), w])[0].kind,"
        " str(w), f'{w}', entered, type(w).__name__, w.__class__.__name__]"
    )
    assert value(code) == ["V(11, 22)", 2, 2, True, True, "w", "W!", "W!", "in", "W", "W"]


def test_dunder_reads_are_refused_on_foreign_objects() -> None:
    assert "__add__" in error("(1).__add__(2)")["message"]
    assert error("class C:\n    pass\nC.__init__.__globals__")["kind"] == "compile_error"


def test_undefined_dunder_definitions_are_refused() -> None:
    err = error("class C:\n    def __getattribute__(self, name):\n        return 1")
    assert err["kind"] == "compile_error" and "__getattribute__" in err["message"]
    assert error("def __init__():\n    pass")["kind"] == "compile_error"


def test_eval_and_exec_are_restricted_and_work() -> None:
    assert value("x = 4\neval('x * 2')") == 8
    assert value("exec('y = 5')\ny") == 5
    assert value("def f():\n    a = 3\n    return eval('a + 1')\nf()") == 4
    assert value("g = {'a': 1}\nexec('b = a + 1', g)\ng['b']") == 2
    assert "__bases__" in error("eval('().__class__.__bases__')")["message"]
    assert error("exec('import os')")["type"] == "ImportError"


def test_exec_shares_the_run_limits() -> None:
    err = error("exec('while True:\\n    pass')", limits={"cpu_seconds": 0.2})
    assert err["kind"] == "limit_exceeded" and err["limit"] == "cpu"


def test_ordinary_python_runs() -> None:
    code = (
        "def counter():\n    n = 0\n    def inc():\n        nonlocal n\n        n += 1\n        return n\n    return inc\n"
        "inc = counter()\ninc()\n"
        "def gen(k):\n    for i in range(k):\n        yield i * i\n"
        "a, (b, *c) = 1, (2, 3, 4)\n"
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    caught = type(e).__name__\nfinally:\n    done = True\n"
        "total = 0\nwhile total < 10:\n    total += 3\n"
        "sq = {k: v for k, v in zip('ab', gen(2))}\n"
        "[inc(), list(gen(4)), a, b, c, caught, done, total, sq, f'{3.14159:.2f}', '{:>5}'.format('x'),"
        " sum(x for x in range(5)), (lambda *a, **k: (a, k))(1, z=2), isinstance(int, type), type(type) is type]"
    )
    assert value(code) == [
        2, [0, 1, 4, 9], 1, 2, [3, 4], "ZeroDivisionError", True, 12, {"a": 0, "b": 1}, "3.14", "    x",
        10, ((1,), {"z": 2}), True, True,
    ]


def test_type_is_one_argument_only() -> None:
    assert value("[type(1) is int, type(int) is type, isinstance(3, int)]") == [True, True, True]
    assert error("type('X', (), {})")["type"] == "TypeError"


def test_try_star_is_refused() -> None:
    assert error("try:\n    pass\nexcept* ValueError:\n    pass")["kind"] == "compile_error"


# --- guards -----------------------------------------------------------------------------------


def test_getattr_guard() -> None:
    assert value("getattr([], 'missing', 'dflt')") == "dflt"
    assert error("getattr([], 'missing')")["type"] == "AttributeError"
    assert error("getattr([], '__class__', None)")["type"] == "AttributeError"
    assert value("[hasattr([], 'append'), hasattr([], '__len__'), hasattr([], 'nope')]") == [True, False, False]
    assert value("dir([])[:2]") == ["append", "clear"]


def test_write_guard_allows_own_containers_and_objects_only() -> None:
    assert value("d = {}\nd['a'] = 1\ns = set()\ns.add(2)\nl = [0]\nl[0] = 3\ndel d['a']\n[d, s, l]") == [{}, {2}, [3]]
    assert value("class C:\n    pass\nC.shared = 1\nc = C()\nsetattr(c, 'x', 2)\n[C.shared, c.x]") == [1, 2]
    assert value("def f():\n    pass\nf.tag = 1\nf.tag") == 1
    assert "cannot modify" in error("import json\njson.x = 1")["message"]
    assert "cannot modify" in error("(1, 2).count.x = 1")["message"]
    assert error("class C:\n    pass\nsetattr(C(), '_x', 1)")["type"] == "AttributeError"


def test_str_format_is_guarded_but_works() -> None:
    assert value("'{0} {x} {y[0]}'.format(1, x=2, y=[3])") == "1 2 3"
    assert value("'{a}'.format_map({'a': 9})") == "9"
    assert value("class P:\n    def __init__(self):\n        self.name = 'n'\n'{0.name}'.format(P())") == "n"
    assert error("'{0.__class__}'.format(1)")["type"] == "AttributeError"


# --- imports ----------------------------------------------------------------------------------


def test_allowed_imports_work_through_proxies() -> None:
    code = (
        "import math, json, re, collections.abc\nfrom collections import Counter, deque\n"
        "from collections.abc import Iterable\nfrom itertools import accumulate\nimport io, hashlib, heapq\n"
        "h = []\nheapq.heappush(h, 3)\n"
        "[math.floor(2.5), json.dumps([1]), re.sub('a', 'b', 'aa'), Counter('aab')['a'], isinstance([], Iterable),"
        " list(accumulate([1, 2])), io.StringIO('q').read(), hashlib.md5(b'').hexdigest()[:4], h,"
        " isinstance(collections.abc.Sized, type)]"
    )
    assert value(code) == [2, "[1]", "bb", 2, True, [1, 3], "q", "d41d", [3], True]


def test_proxies_hide_modules_and_excluded_names() -> None:
    for code, missing in [
        ("import json\njson.codecs", "codecs"),
        ("import io\nio.open", "open"),
        ("import io\nio.FileIO", "FileIO"),
        ("import string\nstring.Formatter", "Formatter"),
        ("import typing\ntyping.get_type_hints", "get_type_hints"),
        ("import uuid\nuuid.uuid1", "uuid1"),
        ("import decimal\ndecimal.setcontext", "setcontext"),
    ]:
        err = error(code)
        assert err["type"] == "AttributeError" and missing in err["message"], (code, err)


def test_disallowed_import_names_module() -> None:
    err = error("import socket")
    assert err["type"] == "ImportError" and "'socket'" in err["message"] and err["lineno"] == 1
    assert error("from os import path")["type"] == "ImportError"
    assert error("import os.path")["type"] == "ImportError"


def test_random_is_private_per_import() -> None:
    code = "import random\nrandom.seed(7)\na = random.random()\nrandom.seed(7)\na == random.random()"
    assert value(code) is True


# --- limits -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    ["while True:\n    pass", "for i in iter(int, 1):\n    pass", "def f():\n    while True:\n        x = [1]\nf()",
     "[x for x in iter(int, 1) if x]"],
)
def test_cpu_limit(code: str) -> None:
    start = time.monotonic()
    err = error(code, limits={"cpu_seconds": 0.3})
    assert err["kind"] == "limit_exceeded" and err["limit"] == "cpu" and err["type"] == "cpu"
    assert time.monotonic() - start < 2.0


@pytest.mark.parametrize(
    "code",
    ["while True:\n    x = sum(range(300000))", "for i in range(10**9):\n    x = sum(range(300000))",
     "for i in range(60):\n    x = sum(range(3000000))"],
)
def test_cpu_limit_with_slow_iterations(code: str) -> None:
    """Each iteration is a long C call: the watchdog and adaptive loop chunks still stop it soon."""
    start = time.monotonic()
    err = error(code, limits={"cpu_seconds": 0.3, "wall_seconds": 10.0})
    assert err["limit"] in ("cpu", "wall")
    assert time.monotonic() - start < 3.0


def test_concurrent_runs_keep_their_own_output_and_limits() -> None:
    import threading

    results: dict[int, dict] = {}

    def worker(n: int) -> None:
        code = "while True:\n    pass" if n == 0 else f"for i in range(2000):\n    x = i\nprint('run', {n})\n{n}"
        results[n] = run(code, limits={"cpu_seconds": 0.5})

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results[0]["error"]["limit"] == "cpu"
    for n in (1, 2, 3):
        assert results[n]["ok"] and results[n]["value"] == n and results[n]["stdout"] == f"run {n}\n"


def test_cpu_limit_inside_c_loops_calling_lambdas() -> None:
    err = error("import functools\nfunctools.reduce(lambda a, b: a, range(10**15))", limits={"cpu_seconds": 0.3})
    assert err["limit"] == "cpu"


def test_wall_limit_counts_capability_time() -> None:
    def slow(name: str, args: list, kwargs: dict) -> int:
        time.sleep(0.05)
        return 1

    err = error("while True:\n    wait()", call_host=slow, capabilities=["wait"], limits={"wall_seconds": 0.3})
    assert err["limit"] == "wall"


def test_limits_are_sticky_even_when_caught() -> None:
    code = "for _ in range(3):\n    try:\n        while True:\n            pass\n    except BaseException:\n        pass\n'escaped'"
    assert error(code, limits={"cpu_seconds": 0.2})["limit"] == "cpu"
    code = "try:\n    while True:\n        pass\nexcept:\n    pass\n'escaped'"
    assert error(code, limits={"cpu_seconds": 0.2})["limit"] == "cpu"


def test_recursion_limit() -> None:
    err = error("def f(n):\n    return f(n + 1)\nf(0)", limits={"max_recursion_depth": 50})
    assert err["kind"] == "limit_exceeded" and err["limit"] == "recursion"
    assert value("def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nf(40)", limits={"max_recursion_depth": 50}) == 40


def test_recursion_limit_is_sticky() -> None:
    code = "def f(n):\n    return f(n + 1)\ntry:\n    f(0)\nexcept BaseException:\n    pass\n'escaped'"
    assert error(code, limits={"max_recursion_depth": 50})["limit"] == "recursion"


@pytest.mark.parametrize(
    "code",
    [
        "'x' * 10**9", "[0] * 10**9", "n = 10**9\nb'x' * n", "s = 'ab'\ns *= 10**9",
        "2 ** (10**10)", "x = 7\nx ** 10**10", "pow(3, 10**10)", "1 << 10**10",
        "bytes(10**10)", "bytearray(10**10)", "list(range(10**10))", "tuple(range(10**12))", "set(range(10**10))",
        "[*range(10**10)]", "sorted(range(10**10))", "import itertools\nlist(itertools.count())",
        "f'{1:>{10**10}}'", "w = 10**10\nf'{1:{w}}'", "'{:>10000000000}'.format(1)", "format(1, '>10000000000')",
        "'%10000000000d' % 1", "'%*d' % (10**10, 1)", "'a'.ljust(10**10)", "'x'.center(10**10)", "'1'.zfill(10**10)",
        "'-'.join(['x' * 1000] * 10**6)", "('x' * 10**6).replace('x', 'yy' * 1000)", "'\\t'.expandtabs(10**10)",
        "import fractions\nfractions.Fraction(3, 2) ** 10**10",
        "str.ljust('a', 10**10)", "(1).to_bytes(10**10, 'big')", "int.to_bytes(1, length=10**10)",
        "class N:\n    def __index__(self):\n        return 10**10\n'x' * N()",
        "class N:\n    def __index__(self):\n        return 10**10\nbytes(N())",
        "class N:\n    def __index__(self):\n        return 10**10\n'a'.ljust(N())",
        "class N:\n    def __index__(self):\n        return 10**10\nl = [0]\nl *= N()", "list(map(str.center, ['a'], [10**10]))", "bytes.join(b'', [b'x' * 10**6] * 1000)",
        # Whole-expression arithmetic: a non-number operand sends the whole expression through the guards.
        "s = 'x'\nn = 10**9\ns * n + 1", "s = '%10000000000d'\nv = 1\n-(s % v * 2)", "s = 'ab'\nk = 10**8\ns *= k * 10",
        "x = 7\nx ** 2 ** 40 + 1", "x = 3\nx <<= 10**10", "x = 3\ny = 10**10\n(x << y) + 1",
        "def f(a, b):\n    return a * b % 7 + 1\nf([1], 10**9)",
    ],
)
def test_size_guards(code: str) -> None:
    start = time.monotonic()
    err = error(code)
    assert err["kind"] == "limit_exceeded" and err["limit"] == "memory", err
    assert time.monotonic() - start < 2.0


def test_index_is_read_once_so_it_cannot_change_after_the_check() -> None:
    code = (
        "class Sneaky:\n    calls = 0\n    def __index__(self):\n        Sneaky.calls += 1\n"
        "        return 3 if Sneaky.calls == 1 else 10**10\n"
        "['x' * Sneaky(), Sneaky.calls]"
    )
    assert value(code) == ["xxx", 1]


def test_abc_register_is_refused_for_shared_abcs_only() -> None:
    assert "register" in error("import collections.abc\nclass C:\n    pass\ncollections.abc.Sequence.register(C)")["message"]
    code = "from collections.abc import Sized\nclass Mine(Sized):\n    def __len__(self):\n        return 0\nclass C:\n    pass\nMine.register(C)\nisinstance(C(), Mine)"
    assert value(code) is True


class _LyingStr(str):
    """A str whose ``__class__`` claims int: what a guest object with a ``__class__`` property
    would look like, made on the host because guest code cannot define one."""

    @property  # type: ignore[misc]
    def __class__(self):  # noqa: ANN204
        return int


@pytest.mark.parametrize(
    "code",
    ["x * n", "y = x * n % 7 + 1", "def f(a, b):\n    return a * b\nf(x, n)", "x *= n", "n * x", "n * 1 * x"],
)
def test_a_lying_class_does_not_reach_the_unchecked_arithmetic(code: str) -> None:
    """The fast path tests an operand's real class (``type``), not ``__class__``: a str claiming
    to be an int goes through the size guard (the allocator cap is off: the guard must refuse)."""
    state = GuestState()
    assert value("n = 10**9\nn", state=state, memory_cap=False) == 10**9
    lying = _LyingStr("ab")
    assert lying.__class__ is int and type(lying) is _LyingStr
    state.globals["x"] = lying
    err = error(code, state=state, memory_cap=False)
    assert err["kind"] == "limit_exceeded" and err["limit"] == "memory", err


def test_a_guest_cannot_define_a_class_property() -> None:
    for code in (
        "class S(str):\n    __class__ = property(lambda s: int)",
        "class S(str):\n    @property\n    def __class__(self):\n        return int",
        "class S(str):\n    pass\nsetattr(S, '__class__', property(lambda s: int))",
        "import dataclasses\ndataclasses.make_dataclass('S', [], bases=(str,), namespace={'__class__': 1})",
        "import enum\nenum.Enum('E', {'A': 'ab', '__class__': property(lambda s: int)}, type=str)",
        "type('S', (str,), {'__class__': property(lambda s: int)})",
    ):
        assert not run(code)["ok"], code


@pytest.mark.parametrize(
    "code",
    [
        # ``range`` is not the real one: its elements are tested as usual.
        "def f():\n    for i in range(1):\n        y = i * 10**9\nrange = lambda n: ['ab']\nf()",
        "def f(range):\n    for i in range(1):\n        y = i * 10**9\nf(lambda n: ['ab'])",
        "def f():\n    range = lambda n: ['ab']\n    for i in range(1):\n        y = i * 10**9\nf()",
        # the loop variable is bound elsewhere in the function: no shortcut.
        "def f():\n    for i in range(1):\n        i = 'ab'\n        y = i * 10**9\nf()",
        "def f():\n    for i in range(1):\n        i += 'ab' if False else 0\n        i = 'ab' if True else i\n        y = i * 10**9\nf()",
        "def f():\n    def g():\n        nonlocal i\n        i = 'ab'\n    for i in range(1):\n        g()\n        y = i * 10**9\nf()",
        "def f():\n    for i in range(1):\n        [(i := 'ab') for k in range(1)]\n        y = i * 10**9\nf()",
        "def f():\n    def g():\n        def h():\n            class C:\n                def m(self):\n                    nonlocal i\n                    i = 'ab'\n            C().m()\n        return h\n    for i in range(1):\n        g()()\n        y = i * 10**9\nf()",
        "def f():\n    for i in range(1):\n        def g(x=(i := 'ab')):\n            pass\n        y = i * 10**9\nf()",
        "def f():\n    for i in range(1):\n        g = lambda x=(i := 'ab'): x\n        y = i * 10**9\nf()",
        "def f():\n    for i in range(2):\n        y = i * 10**9\n    for i in ['ab']:\n        pass\nf()\ndef g():\n    for i in ['ab']:\n        for j in range(1):\n            y = i * 10**9\ng()",
        "i = 0\ndef g():\n    global i\n    i = 'ab'\ndef f():\n    global i\n    for i in range(1):\n        g()\n        y = i * 10**9\nf()",
        "def f():\n    try:\n        for i in range(1):\n            raise ValueError('ab')\n    except ValueError as i:\n        pass\n    for i in range(1):\n        y = str(i) * 10**9\nf()",
        # at module level (session globals, exec, finalisers can rebind names): no shortcut.
        "def g():\n    global i\n    i = 'ab'\nfor i in range(1):\n    g()\n    y = i * 10**9",
        # comprehensions: range rebound, the variable rebound by a later for, the first iterable
        # (evaluated outside the comprehension, where the name is another variable), nesting.
        "range = lambda n: ['ab']\n[i * 10**9 for i in range(1)]",
        "range = lambda n: ['ab']\n{i: i * 10**9 for i in range(1)}",
        "range = lambda n: ['ab']\nsum(len(i * 10**9) for i in range(1))",
        "[i * 10**9 for i in range(1) for i in ['ab']]",
        "i = 'ab'\n[i for i in range(len(i * 10**9))]",
        "[[i * 10**9 for k in range(1)] for i in ['ab']]",
        "def f(range):\n    return {i * 10**9 for i in range(1)}\nf(lambda n: ['ab'])",
    ],
)
def test_range_loop_shortcut_keeps_the_size_guards(code: str) -> None:
    """A function's ``for i in range(...)`` skips the type test of ``i`` only when ``range`` is
    the real one and nothing but the loop binds ``i``; every other case still reaches the guard."""
    err = error(code, memory_cap=False)
    assert err["kind"] == "limit_exceeded" and err["limit"] == "memory", err


class _CountingTransformer(GuestTransformer):
    visits = 0

    def visit(self, node):  # noqa: ANN001, ANN201
        type(self).visits += 1
        return super().visit(node)


@pytest.mark.parametrize("template", ["[{inner} * x{depth} for x{depth} in range(2)]",
                                      "[x{depth} for x{depth} in range(len({inner}))]"])
def test_comprehension_copies_do_not_multiply_when_nested(template: str) -> None:
    """Only a comprehension without nested scopes (in its first iterable too) gets a fast copy:
    nested comprehensions over ranges take visits and compile to code linear in the nesting
    (12 levels: a few hundred visits, where copies at every level would take over 4096)."""
    source = "[1]"
    for depth in range(20):
        source = template.format(inner=source, depth=depth)
        if depth == 11:
            _CountingTransformer.visits = 0
            _CountingTransformer(top_level=True).visit(ast.parse(source))
            assert _CountingTransformer.visits < 4096
    code = compile_guest(source).code
    assert code is not None
    assert len(marshal.dumps(code)) < 100_000


def test_range_loop_analysis_reads_nested_functions_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nested functions that each hold a range loop: the scope analysis reads each node a bounded
    number of times, so compiling is linear in the source, not in its size times its nesting."""
    import runtimes.restricted.name_scopes as name_scopes

    real = ast.iter_child_nodes

    def reads(depth: int) -> int:
        lines = []
        for level in range(depth):
            pad = " " * level
            lines += [f"{pad}def f{level}():", f"{pad} for i in range(1): pass"]
        lines.append(" " * depth + "a = [" + ", ".join(["b"] * 2000) + "]")
        tree = ast.parse("\n".join(lines))
        count = 0

        def counting(node: ast.AST):  # noqa: ANN202
            nonlocal count
            count += 1
            return real(node)

        monkeypatch.setattr(name_scopes.ast, "iter_child_nodes", counting)
        try:
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef):
                    name_scopes.range_loops(node)
        finally:
            monkeypatch.setattr(name_scopes.ast, "iter_child_nodes", real)
        return count

    assert reads(40) < 1.5 * reads(10)


def test_range_loop_shortcut_matches_python() -> None:
    code = (
        "def f(n, a):\n"
        "    total = 0\n"
        "    for i in range(n):\n"
        "        if i == 3:\n            continue\n"
        "        total += i * i % 7 + a * i\n"
        "        for j in range(i, 0, -2):\n"
        "            total += i * j % (j + 1) - (i << 2) ** 2 // 3\n"
        "        total += sum(i * k for k in range(3))\n"
        "        exec('i = 100')\n"
        "        total *= i % 5 + 1\n"
        "        if total > 10 ** 12:\n            break\n"
        "    else:\n        total -= i * 2\n"
        "    return total\n"
        "def gen(n):\n"
        "    for i in range(n):\n"
        "        yield i * i % 3\n"
        "class Box:\n"
        "    def scale(self, n, f):\n"
        "        return [f * i % 7 for i in range(n)] + [f * i for i in range(n)]\n"
        "squares = [i * i % 5 for i in range(7) if i % 3 for k in range(i % 2 + 1)]\n"
        "table = {str(i): [i * 3 % 4, i] for i in range(4)}\n"
        "total = sum(i ** 2 - 3 * i for i in range(-3, 9, 2)) + sum({i << 3 for i in range(5)})\n"
        "result = [f(10, 3), f(10, 2.5), f(1, 1), list(gen(6)), Box().scale(4, 1.5), squares, table, total]\n"
    )
    namespace: dict = {}
    exec(code, namespace)
    assert value(code + "result") == namespace["result"]


def test_number_arithmetic_fast_path_matches_python() -> None:
    code = (
        "a, b, f, t, s = 7, -3, 2.5, True, 'ab'\n"
        "x = a * b % 5 - (a // b) ** 2 + ~a * 3 << 2\n"
        "x *= a + 1\n"
        "y = f * a % 4 + f ** 0.5 + a ** -1\n"
        "z = [t * a % 3, s * a % 5 if False else s * 2, a * s, 3 % a * t]\n"
        "d = {'k': 3}\nd['k'] *= a\n"
        "[x, y, z, d['k']]"
    )
    a, b, f, t, s = 7, -3, 2.5, True, "ab"
    x = a * b % 5 - (a // b) ** 2 + ~a * 3 << 2
    x *= a + 1
    y = f * a % 4 + f ** 0.5 + a ** -1
    assert value(code) == [x, y, [t * a % 3, s * 2, a * s, 3 % a * t], 21]


def test_module_level_names_behave_as_in_python() -> None:
    """A top-level program declares its module-level names global (faster reads): functions
    with ``global``, class bodies, ``exec``/``eval``, ``del``, annotations and sessions see one
    namespace, exactly as Python runs the same program."""
    code = (
        '"""doc"""\n'
        "x = 1\n"
        "def bump():\n    global x\n    x += 1\n"
        "bump()\n"
        "class C:\n    x = x + 10\n    y = x\n    def get(self):\n        return x\n"
        "exec('x = x * 100')\n"
        "y: int = 3\n"
        "def outer():\n    x = 'local'\n    class K:\n        z = x\n    return K.z\n"
        "del bump\n"
        "try:\n    bump\nexcept NameError as e:\n    missing = str(e)\n"
        "import math as m\n"
        "squares = [x * k for k in range(3)]\n"
        "[x, C.x, C.y, C().get(), y, outer(), missing, eval('x + y'), m.floor(2.5), squares]"
    )
    namespace: dict = {}
    exec(code.replace("[x, C.x", "result = [x, C.x"), namespace)
    assert value(code) == namespace["result"] == [200, 12, 12, 200, 3, "local", "name 'bump' is not defined", 203, 2, [0, 200, 400]]
    state = GuestState()
    assert value("n = 5\ndef inc():\n    global n\n    n += 1", state=state) is None
    assert value("inc()\nn *= 2\nn", state=state) == 12


def test_size_guards_allow_ordinary_sizes() -> None:
    assert value("len('x' * 1000 + '-'.join(['a'] * 10) + f'{1:>20}' + '%5d' % 3 + 'a'.ljust(30))") == 1000 + 19 + 20 + 5 + 30
    assert value("[len(bytes(10)), len(list(range(1000))), 2 ** 100 > 0, (1 << 100) > 0, 7 % 3]") == [10, 1000, True, True, 1]
    assert value("[(258).to_bytes(2, 'big'), int.to_bytes(1, length=2, byteorder='little'), bytes('ab', 'ascii'), bytes([1])]") == [
        b"\x01\x02", b"\x01\x00", b"ab", b"\x01"]


# --- capabilities and secrets -----------------------------------------------------------------


def test_capability_call_converts_arguments() -> None:
    calls = []

    def host(name: str, args: list, kwargs: dict) -> dict:
        calls.append((name, args, kwargs))
        return {"temp": 21}

    assert value("w = get_weather('Paris', days=(1, 2))\nw['temp']", call_host=host, capabilities=["get_weather"]) == 21
    assert calls == [("get_weather", ["Paris"], {"days": (1, 2)})]


def test_dotted_capability_is_a_namespace() -> None:
    def host(name: str, args: list, kwargs: dict) -> str:
        return name

    assert value("sql.query('select 1')", call_host=host, capabilities=["sql.query", "sql.tables"]) == "sql.query"
    assert error("sql.query = 1", call_host=host, capabilities=["sql.query"])["type"] == "TypeError"


def test_non_json_argument_is_a_guest_type_error() -> None:
    err = error("f(object())", call_host=lambda n, a, k: None, capabilities=["f"])
    assert err["type"] == "TypeError" and "object" in err["message"]
    assert value("try:\n    f({1: 2})\nexcept TypeError:\n    r = 'caught'\nr", call_host=lambda n, a, k: None, capabilities=["f"]) == "caught"


@pytest.mark.parametrize("kind", ["TypeError", "ValueError", "PolicyDenied", "CapabilityError"])
def test_faults_become_catchable_guest_exceptions(kind: str) -> None:
    def host(name: str, args: list, kwargs: dict) -> None:
        raise Fault(kind, "nope")

    code = f"try:\n    f()\nexcept {kind} as e:\n    r = str(e)\nr"
    assert value(code, call_host=host, capabilities=["f"]) == "nope"


def test_policy_denied_is_a_permission_error_and_uncaught_is_policy_denied() -> None:
    def host(name: str, args: list, kwargs: dict) -> None:
        raise Fault("PolicyDenied", "denied by policy")

    assert value("try:\n    f()\nexcept PermissionError:\n    r = 1\nr", call_host=host, capabilities=["f"]) == 1
    err = error("f()", call_host=host, capabilities=["f"])
    assert err == {"kind": "policy_denied", "type": "PolicyDenied", "message": "denied by policy", "lineno": 1, "limit": None}


def test_terminating_fault_ends_the_run_even_if_caught() -> None:
    def host(name: str, args: list, kwargs: dict) -> None:
        raise Fault("PolicyDenied", "too many denials", terminate="policy_denied")

    code = "for i in range(3):\n    try:\n        f()\n    except Exception:\n        pass\n'escaped'"
    err = error(code, call_host=host, capabilities=["f"])
    assert err["kind"] == "policy_denied" and err["message"] == "too many denials"
    err = error("try:\n    f()\nexcept BaseException:\n    pass\n'escaped'", call_host=host, capabilities=["f"])
    assert err["kind"] == "policy_denied"


def test_host_bridge_failure_propagates_to_the_host_not_the_guest() -> None:
    class Broken(Exception):
        pass

    def host(name: str, args: list, kwargs: dict) -> None:
        raise Broken("channel closed")

    code = "try:\n    f()\nexcept BaseException:\n    pass\nwhile True:\n    pass"
    with pytest.raises(Broken):
        run(code, call_host=host, capabilities=["f"])


# --- inputs, sessions, cache --------------------------------------------------------------------


def test_inputs_become_globals_and_are_copied() -> None:
    data = {"xs": [1, 2]}
    assert value("data['xs'].append(3)\ndata['xs']", inputs={"data": data}) == [1, 2, 3]
    assert data == {"xs": [1, 2]}
    with pytest.raises(ValueError):
        run("1", inputs={"_getattr_": 1})
    with pytest.raises(TypeError):
        run("1", inputs={"x": object()})


def test_session_state_persists_and_old_functions_print_into_the_new_run() -> None:
    state = GuestState()
    first = run("count = 1\ndef hello():\n    print('hi', count)", state=state)
    assert first["ok"] and first["stdout"] == ""
    second = run("count += 1\nhello()\ncount", state=state)
    assert second["ok"] and second["value"] == 2 and second["stdout"] == "hi 2\n"
    assert run("count", state=GuestState())["error"]["type"] == "NameError"


def test_session_generators_outlive_an_earlier_runs_deadline_and_limit() -> None:
    state = GuestState()
    first = run("def gen():\n    for i in range(10**6):\n        yield i\ng = gen()\nnext(g)\nwhile True:\n    pass",
                state=state, limits={"cpu_seconds": 0.2, "wall_seconds": 0.3})
    assert first["error"]["limit"] in ("cpu", "wall")
    time.sleep(0.35)
    second = run("[next(g) for _ in range(3000)][-1]", state=state)
    assert second["ok"], second["error"]
    assert second["value"] == 3000


def test_session_loops_and_calls_tick_again_after_an_earlier_runs_limit() -> None:
    state = GuestState()
    first = run("def f(n):\n    return f(n + 1)\ntry:\n    f(0)\nfinally:\n    while True:\n        pass",
                state=state, limits={"cpu_seconds": 0.2, "wall_seconds": 0.5})
    assert first["error"]["limit"] == "recursion"
    code = "i = 0\nwhile i < 2000:\n    i += 1\nelse:\n    i = -i\ndef g(n):\n    return n if n < 1 else g(n - 1)\n[i, g(100)]"
    assert value(code, state=state) == [-2000, 0]
    assert error("while True:\n    pass", state=state, limits={"cpu_seconds": 0.2})["limit"] == "cpu"


def test_fresh_runs_do_not_share_globals() -> None:
    assert value("leak = 1") is None
    assert error("leak")["type"] == "NameError"


def test_compiled_code_is_cached_by_source() -> None:
    source = "cache_probe = 12345\ncache_probe"
    first = compile_guest(source)
    hits = compile_guest.cache_info().hits
    assert value(source) == 12345
    assert compile_guest.cache_info().hits == hits + 1
    assert compile_guest(source) is first


@pytest.mark.parametrize(
    "code",
    [
        "m = range(3)\nfor i in range(300000):\n    m = map(abs, m)\nnext(m)",
        "m = range(3)\nfor i in range(300000):\n    m = filter(None, m)\nlist(m)",
        "m = range(3)\nfor i in range(300000):\n    m = zip(m)\nfor x in m:\n    pass",
        "import itertools\nm = range(3)\nfor i in range(300000):\n    m = itertools.chain(m, ())\nsum(m)",
        "import itertools\nm = iter('abc')\nfor i in range(300000):\n    m = itertools.islice(m, 5)\n''.join(m)",
    ],
)
def test_deeply_nested_c_iterators_are_refused_not_crashing(code: str) -> None:
    # Enough memory that the allocator cap does not stop the nesting before the depth bound does.
    err = error(code, limits={"cpu_seconds": 5.0, "wall_seconds": 20.0, "memory_bytes": 256 << 20})
    assert err["kind"] == "limit_exceeded" and "nested" in err["message"], err


@pytest.mark.parametrize(
    "code",
    ["sum(map(abs, range(10**13)))", "import itertools\nany(itertools.repeat(0))", "max(filter(None, range(10**13)))",
     "''.join(map(str, range(10**9)))", "list(enumerate(range(10**9)))", "dict(zip(range(10**9), range(10**9)))",
     "any(iter(int, 1))", "min(x for x in iter(int, 1))",
     "import itertools\ns = set()\ns.update(itertools.repeat(1))", "import itertools\n-1 in itertools.count()",
     "import collections\ncollections.deque(range(10**13), maxlen=0)", "s = set()\ns.update(iter(int, 1))",
     "import collections\nd = collections.deque(maxlen=1)\nd.extend(range(10**13))",
     "import itertools\nL = list\nL(itertools.cycle([1]))"],
)
def test_iterator_consuming_builtins_tick(code: str) -> None:
    err = error(code, limits={"cpu_seconds": 0.3})
    # The ones that build a collection may reach the allocator cap (memory) before the CPU limit.
    builds = code.startswith(("''.join", "list(", "dict(")) or "L(" in code
    stops = ("cpu", "wall", "memory") if builds else ("cpu", "wall")
    assert err["kind"] == "limit_exceeded" and err["limit"] in stops, err


def test_iterator_consuming_builtins_still_work() -> None:
    code = (
        "[sum([1, 2]), sum(x for x in range(5)), min(3, 1), max([4, 2], key=lambda v: -v), any([]), all(iter([1])),"
        " sorted({3: 1, 1: 2}), next(iter([7])), next(iter([]), 'd'), ''.join(map(str, range(3))),"
        " dict(zip('ab', range(2))), list(map(abs, range(-2, 1))), sum(range(100)), max(range(10**6)), sum([0.5], 1)]"
    )
    assert value(code) == [3, 10, 1, 2, False, True, [1, 3], 7, "d", "012", {"a": 0, "b": 1}, [2, 1, 0], 4950, 999999, 1.5]


def test_guest_deque_and_endless_itertools_behave() -> None:
    code = (
        "import itertools, collections\nd = collections.deque([1, 2, 3], maxlen=2)\nd.append(4)\nd[0] = 9\n"
        "[list(d), list(itertools.islice(itertools.count(5), 3)), list(itertools.repeat(1, 3)),"
        " list(zip(range(3), itertools.cycle('ab'))), list(iter([3])), isinstance(d, collections.deque), repr(d),"
        " type(d) is collections.deque]"
    )
    assert value(code) == [[9, 4], [5, 6, 7], [1, 1, 1], [(0, "a"), (1, "b"), (2, "a")], [3], True, "deque([9, 4], maxlen=2)", True]
    assert error("import itertools\nlist(itertools.count())")["limit"] == "memory"
