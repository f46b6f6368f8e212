"""Escape attempts from public sources against the restricted executor; every one must fail.

Sources:
* smolagents ``tests/test_local_python_executor.py`` (huggingface/smolagents): dunder walks,
  ``__builtins__``, reaching ``os`` through allowed modules, ``getattr(obj, '__class__')``.
* RestrictedPython advisories and fixes: format-string attribute traversal
  (``'{0.__class__}'.format``, lucumr "careful with str.format"), ``string.Formatter``,
  generator ``gi_frame.f_back.f_globals`` / inspect attributes (PR #285), positional-only
  parameters shadowing guard hooks (GHSA-ffg3-p8fm-mjx2), ``except*``, non-str names in
  ``getattr`` (PR #282), ``AttributeError.obj``.
* asteval issue #86 (``print.__reduce__``), crewAI #4643 (``type.__dict__`` + ``chr``),
  dimagi/open-chat-studio #4238/#4563 (shared-module poisoning through ``_write_``).

Each test asserts the attack failed *and* that no host state was reached: a canary file's
content never appears in the outcome, a host global is unchanged, and a shared module proxy
still works afterwards.
"""

from __future__ import annotations

import builtins
import collections
import decimal
import json
import math
from pathlib import Path

import psutil
import pytest

from runtimes.restricted import GuestState, execute
from runtimes.wire import SECRET_MARKER

LIMITS = {
    "cpu_seconds": 2.0,
    "wall_seconds": 5.0,
    "memory_bytes": 64 << 20,
    "max_output_bytes": 1 << 16,
    "max_recursion_depth": 200,
}
CANARY = "canary-7f3a9c-do-not-leak"
TOKEN = "ghp_TOPSECRETTOKEN_1234567890"


def _host_state() -> dict:
    """What a guest running in this process could try to change: shared module attributes and
    the behaviour of host stdlib functions that keep process-wide state (textwrap's class
    tables, typing's overload registry and alias cache, the strptime cache, ABC registries, the
    decimal context and its flags), builtins, and this process's children."""
    import datetime
    import textwrap
    import typing
    from collections.abc import Mapping

    def overloaded(x: int) -> int:
        return x

    return {
        "json.dumps": (json.dumps, json.dumps({"a": [1, 2]}), json.JSONEncoder.encode),
        "OrderedDict.popitem": collections.OrderedDict.popitem,
        "math.sqrt": math.sqrt,
        "builtins.len": (builtins.len, len("abc")),
        "decimal": (decimal.getcontext().prec, tuple(sorted(k.__name__ for k, v in decimal.getcontext().flags.items() if v))),
        "textwrap": (textwrap.fill("a b  c", width=3), dict(textwrap.TextWrapper.unicode_whitespace_trans)),
        "typing": (repr(typing.List[int]), typing.get_overloads(overloaded), typing.Literal[1] == typing.Literal[1]),
        "strptime": datetime.datetime.strptime("2020-01-02", "%Y-%m-%d"),
        "abc": (isinstance([], Mapping), issubclass(list, Mapping), isinstance({}, Mapping)),
        "children": sorted(p.pid for p in psutil.Process().children(recursive=True)),
    }


HOST_STATE = _host_state()


@pytest.fixture(scope="module")
def canary_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("escape") / "canary.txt"
    path.write_text(CANARY)
    return path


def _host(name: str, args: list, kwargs: dict) -> dict:
    return {"echo": args}


def run(code: str, **kwargs: object) -> dict:
    return execute(code, limits=LIMITS, call_host=_host, secrets=[("github", TOKEN, "repo:read")], **kwargs)


def assert_contained(result: dict) -> None:
    """No canary, no token, no host state change, shared modules intact."""
    text = json.dumps(result)
    assert CANARY not in text
    assert TOKEN not in text
    assert _host_state() == HOST_STATE
    check = run("import json\njson.dumps({'a': 1})")
    assert check["ok"] and check["value"] == '{"a": 1}'


ATTACKS = {
    # --- dunder walks (smolagents security tests) -----------------------------------------
    "subclasses_walk": "().__class__.__bases__[0].__subclasses__()",
    "object_subclasses": "object.__subclasses__()",
    "type_subclasses": "type.__subclasses__(object)",
    "mro_walk": "''.__class__.__mro__[-1].__subclasses__()",
    "builtins_name": "__builtins__['open']('{path}').read()",
    "builtins_via_func_globals": "def f(): pass\nf.__globals__['__builtins__']",
    "import_dunder": "__import__('os').system('true')",
    "getattr_class": "getattr(getattr((), '__class__'), '__bases__')",
    "getattr_non_str_name": "class S(str):\n    pass\ngetattr(1, S('__class__'))",
    "getattr_default_probe": "getattr((), '__class__', None)",
    "import_os": "import os\nos.listdir('/')",
    "import_subprocess": "import subprocess",
    "import_sys": "import sys\nsys.modules",
    "relative_import": "from . import x",
    "os_via_json": "import json\njson.codecs.open('{path}').read()",
    "os_via_re": "import re\nre.enum",
    "os_via_textwrap": "import textwrap\ntextwrap.re",
    "os_via_random": "import random\nrandom._os",
    "sys_via_typing": "import typing\ntyping.sys.modules['os']",
    "open_builtin": "open('{path}').read()",
    "compile_builtin": "compile('1', 'x', 'eval')",
    "globals_builtin": "globals()",
    "vars_builtin": "vars()",
    "breakpoint_builtin": "breakpoint()",
    "reduce_print": "print.__reduce__()",
    "reduce_ex_getattr": "getattr(print, '__reduce_ex__')(2)",
    "type_dict_chr": "type.__dict__[chr(95)*2 + 'subclasses' + chr(95)*2](object)",
    "type_three_args": "type('X', (), {'__getattr__': lambda s, n: n})",
    "metaclass_kw": "class M(type):\n    pass\nclass X(metaclass=M):\n    pass",
    # --- format strings (RestrictedPython / lucumr) ---------------------------------------
    "format_class": "'{0.__class__.__mro__}'.format(1)",
    "format_globals": "def f(): pass\n'{0.__globals__}'.format(f)",
    "format_map_walk": "'{x.__class__}'.format_map({'x': 1})",
    "format_unbound": "str.format('{0.__class__}', 1)",
    "format_via_getattr": "getattr('{0.__class__}', 'format')(1)",
    "format_via_super": "class S(str):\n    pass\nsuper(S, S('{0.__class__}')).format(1)",
    "string_formatter": "import string\nstring.Formatter().get_field('0.__class__', [1], {})",
    "format_inspect_attr": "def g():\n    yield 1\n'{0.gi_frame}'.format(g())",
    # --- frames and generators (RestrictedPython inspect attributes) -----------------------
    "gi_frame": "def g():\n    yield 1\nx = g()\nx.gi_frame.f_back.f_globals",
    "gi_frame_getattr": "def g():\n    yield 1\ngetattr(g(), 'gi_frame')",
    "gi_code": "def g():\n    yield 1\ngetattr(g(), 'gi_code')",
    "tb_frame": "try:\n    1/0\nexcept Exception as e:\n    e.__traceback__.tb_frame.f_globals",
    "tb_frame_getattr": "try:\n    1/0\nexcept Exception as e:\n    tb = getattr(e, '__traceback__')",
    "f_globals_getattr": "getattr(1, 'f_globals')",
    # --- guard shadowing (GHSA-ffg3-p8fm-mjx2, positional-only parameters) ----------------
    "posonly_shadow_getattr": "def f(_getattr_, /):\n    return ().__class__\nf(lambda o, n: getattr(o, n))",
    "posonly_shadow_write": "import json\ndef f(_write_=lambda o: o, /):\n    json.dumps = None\nf()",
    "kwonly_shadow": "def f(*, _getiter_=iter):\n    pass",
    "lambda_shadow": "(lambda _getattr_: 1)(None)",
    "assign_guard": "_getattr_ = getattr",
    "global_guard": "def f():\n    global _write_\n    _write_ = 1",
    "import_as_guard": "import math as _getattr_",
    "except_name_guard": "try:\n    1/0\nexcept Exception as _getattr_:\n    pass",
    # --- except* (RestrictedPython refuses TryStar) ---------------------------------------
    "except_star": "try:\n    raise ExceptionGroup('g', [ValueError()])\nexcept* ValueError as eg:\n    eg.exceptions[0].__traceback__",
    # --- AttributeError.obj (Python 3.10+) --------------------------------------------------
    "attributeerror_obj_module": "import json\ntry:\n    json.nope\nexcept AttributeError as e:\n    e.obj.codecs",
    "attributeerror_obj_secrets": "try:\n    secrets.nope\nexcept AttributeError as e:\n    o = e.obj\n    o._label",
    "attributeerror_obj_refused": "try:\n    getattr(print, '__self__')\nexcept AttributeError as e:\n    o = e.obj\n    o.parts",
    # --- shared module poisoning (open-chat-studio #4238) -----------------------------------
    "poison_json": "import json\njson.dumps = lambda *a, **k: 'poisoned'",
    "poison_json_setattr": "import json\nsetattr(json, 'dumps', None)",
    "poison_class_attr": "import collections\ncollections.OrderedDict.popitem = None",
    "poison_decimal_context": "import decimal\ndecimal.getcontext().prec = 1",
    "poison_builtins_via_exec_globals": "g = {}\nexec('x = 1', g)\ng['__builtins__']['len'] = None",
    "exec_globals_builtins_injection": "exec(\"__import__('os')\", {'__builtins__': None})",
    "exec_guard_in_locals": "exec('x = ().__class__', {}, {'_getattr_': getattr})",
    "eval_dunder": "eval('().__class__.__bases__[0].__subclasses__()')",
    "exec_import_os": "exec('import os')",
    # --- annotations evaluated by host code ---------------------------------------------
    "typing_get_type_hints": "import typing\nclass A:\n    x: \"__import__('os').getcwd()\"\ntyping.get_type_hints(A)",
    "singledispatch_annotations": "import functools\nfunctools.singledispatch",
    # --- secrets -----------------------------------------------------------------------------
    "secret_token_attr": "secrets.github.token",
    "secret_slots": "secrets.github.__slots__",
    "secret_reduce": "secrets.github.__reduce_ex__(2)",
    "secret_copy": "import copy\ncopy.deepcopy(secrets.github)",
    "secret_vars": "vars(secrets.github)",
    "secret_overwrite": "secrets.github = 'x'",
    "secret_set_name": "setattr(secrets.github, 'name', 'x')",
    # --- module writes and confused deputies (an attack review of this runtime) -----------------
    "enum_global_enum": "import enum\nclass E(enum.IntEnum):\n    dumps = 1\nE.__module__\nenum.global_enum(E)",
    "enum_functional_module": "import enum\nE = enum.Enum('E', 'dumps', module='json')\nE",
    "enum_functional_dunder": "import enum\nenum.Enum('E', [('__reduce_ex__', 1)])",
    "enum_subclass_functional": "import enum\nclass E(enum.Enum):\n    a = 1\nE('F', 'x y')",
    "enum_metaclass": "import enum\nenum.EnumMeta('E', (enum.Enum,), {})",
    "enum_type_of_member": "import enum\nclass E(enum.Enum):\n    a = 1\ntype(E)('F', (E,), {})",
    "deepcopy_memo_getattr": "import copy\nm = {}\ncopy.deepcopy(getattr, m)\n[v for v in m.values()]",
    "deepcopy_memo_kw": "import copy\nm = {}\ncopy.deepcopy(print, memo=m)\nm",
    "deepcopy_builtin_owner": "import copy\nc = copy.deepcopy(print)\nc.__self__",
    "deepcopy_module_proxy": "import copy, json\nj = copy.deepcopy(json)\nj.dumps = None",
    "copy_module_proxy": "import copy, json\nj = copy.copy(json)\nsetattr(j, 'dumps', None)",
    "function_type_call": "F = type(lambda: 0)\nF(None, {})",
    "function_type_dataclasses": "import dataclasses\ndataclasses.FunctionType",
    "method_type_call": "import random\nM = type(random.random)\nM(print, 1)",
    "class_of_builtin": "(print).__class__('x')",
    "type_three_args_via_class": "type(int)('X', (), {'__del__': print})",
    "abcmeta_typing": "import typing\ntyping.ABCMeta('X', (), {'__reduce_ex__': print})",
    "abcmeta_register_unbound": "import collections.abc as c\ntype(c.Mapping).register(c.Mapping, list)",
    "abc_register_host": "import collections.abc as c\nc.Mapping.register(list)",
    "namedtuple_module": "import collections\ncollections.namedtuple('P', 'x', module='json')",
    "typing_namedtuple_functional": "import typing\ntyping.NamedTuple('P', [('x', int)])",
    "typing_typeddict_functional": "import typing\ntyping.TypedDict('D', {'a': int})",
    "typing_newtype": "import typing\ntyping.NewType('X', int)",
    "make_dataclass": "import dataclasses\ndataclasses.make_dataclass('X', [('__reduce_ex__', int)])",
    # --- hooks from a namespace the guest controls ------------------------------------------
    "exec_locals_missing_tick": "class D(dict):\n    def __missing__(self, k):\n        return lambda *a: None\nexec('while True:\\n    pass', {}, D())",
    "exec_globals_subclass": "class D(dict):\n    def __missing__(self, k):\n        return lambda o: o\nexec('import json\\njson.dumps = 1', D())",
    "exec_late_hook_in_locals": "d = {}\nexec('d[\"_write_\"] = lambda o: o\\nimport json\\njson.JSONEncoder.encode = 1', {'d': d}, d)",
    "eval_mapping_locals": "import collections\neval('x', {}, collections.UserDict({'x': 1}))",
    # --- process-wide state of allowed modules ------------------------------------------------
    "typing_overload_registry": "import typing\ntyping.get_overloads",
    "typing_clear_overloads": "import typing\ntyping.clear_overloads()",
    "typing_reveal_type": "import typing\ntyping.reveal_type('x' * 100)",
    "typing_literal_guest_eq": "import typing\nclass K:\n    def __eq__(self, o):\n        return True\n    def __hash__(self):\n        return hash(1)\ntyping.Literal[K()]",
    "typing_generic_guest_key": "import typing\nclass K:\n    def __call__(self):\n        pass\n    def __hash__(self):\n        return hash(int)\n    def __eq__(self, o):\n        return True\ntyping.List[K()]",
    "typing_final_host_class": "import typing, json\ntyping.final(json.JSONEncoder)",
    "typing_runtime_checkable": "import typing\ntyping.runtime_checkable(typing.SupportsInt)",
    "re_purge": "import re\nre.purge()",
    "re_debug": "import re\nre.compile('a+', re.DEBUG)",
    "textwrap_class_table": "import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans[32] = 'X'",
    "textwrap_class_table_update": "import textwrap\ntextwrap.TextWrapper.unicode_whitespace_trans.update({32: 'X'})",
    "textwrap_subclass_table": "import textwrap\nclass W(textwrap.TextWrapper):\n    pass\nW.unicode_whitespace_trans.clear()",
    "textwrap_getattr_table": "import textwrap\nt = getattr(textwrap.TextWrapper(), 'unicode_whitespace_trans')\nt.pop(32)",
    "strptime_cache_poison": (
        "import datetime\nclass S(str):\n    def __eq__(self, o):\n        return True\n    def __hash__(self):\n"
        "        return hash('%Y-%m-%d')\ndatetime.datetime.strptime(S('2020'), S('%Y'))\nraise ValueError('done')"
    ),
    "time_strptime_poison": (
        "import time\nclass S(str):\n    def __eq__(self, o):\n        return True\n    def __hash__(self):\n"
        "        return hash('%Y-%m-%d')\ntime.strptime(S('2020'), S('%Y'))\nraise ValueError('done')"
    ),
    "decimal_flags": "import decimal\ndecimal.Decimal(1) / decimal.Decimal(3)\nraise ValueError('done')",
    "decimal_context_template": "import decimal\ndecimal.DefaultContext.prec = 3",
    "copyreg_reach": "import copy\ncopy.dispatch_table",
    "abstractmethod_host": "import typing, json\ntyping.abstractmethod(json.dumps)",
    # --- capability internals -------------------------------------------------------------
    "capability_closure": "echo.__closure__",
    "capability_globals": "getattr(echo, '__globals__')",
    "capability_self": "getattr(print, '__self__')",
}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_fails(name: str, canary_file: Path) -> None:
    code = ATTACKS[name].replace("{path}", str(canary_file))
    result = execute(
        code, limits=LIMITS, call_host=_host, capabilities=["echo"], secrets=[("github", TOKEN, "repo:read")]
    )
    assert not result["ok"], f"{name} succeeded: {result['value']!r}"
    assert result["error"]["kind"] in ("compile_error", "guest_exception"), result["error"]
    assert_contained(result)


def test_posonly_shadow_is_refused_at_compile_time() -> None:
    result = run("def f(_getattr_, /):\n    pass")
    assert result["error"]["kind"] == "compile_error"
    assert "_getattr_" in result["error"]["message"]


def test_attributeerror_obj_is_never_a_hidden_object() -> None:
    """A refused read raises an AttributeError whose ``obj`` is unset (not the guarded target)."""
    result = run("try:\n    getattr(print, '__self__')\nexcept AttributeError as e:\n    r = e.obj\nr")
    assert result["ok"] and result["value"] is None


def test_secret_handle_reaches_host_only_as_marker() -> None:
    seen: list = []

    def host(name: str, args: list, kwargs: dict) -> str:
        seen.append(args)
        return "ok"

    result = execute(
        "use(secrets.github)\nrepr(secrets.github)",
        limits=LIMITS, call_host=host, capabilities=["use"], secrets=[("github", TOKEN, "repo:read")],
    )
    assert result["ok"], result
    assert seen == [[{SECRET_MARKER: TOKEN}]]
    assert TOKEN not in json.dumps(result)
    assert result["value"] == "repo:read"  # the host-built description, shown as is


def test_every_public_attribute_of_a_handle_is_token_free() -> None:
    result = run("sorted(str(getattr(secrets.github, n)) for n in dir(secrets.github))")
    assert result["ok"], result
    assert result["value"] == ["github", "repo:read"]
    assert_contained(result)


def test_forged_handle_does_not_resolve() -> None:
    seen: list = []

    def host(name: str, args: list, kwargs: dict) -> str:
        seen.append(args)
        return "ok"

    code = "h = secrets.github\nfake = type(h)('github', 'repo:read')\nuse(fake)"
    result = execute(code, limits=LIMITS, call_host=host, capabilities=["use"], secrets=[("github", TOKEN, "r")])
    assert not result["ok"]
    assert result["error"]["type"] == "TypeError"
    assert seen == []


def test_session_cannot_poison_the_next_fresh_run() -> None:
    state = GuestState()
    attempt = execute(
        "import math\ntry:\n    math.sqrt = None\nexcept TypeError:\n    pass\nlen = None",
        limits=LIMITS, call_host=_host, state=state,
    )
    assert attempt["ok"], attempt
    fresh = run("import math\n[math.sqrt(16), len('ab')]")
    assert fresh["value"] == [4.0, 2]
    same_session = execute("import math\nmath.sqrt(16)", limits=LIMITS, call_host=_host, state=state)
    assert same_session["value"] == 4.0
    assert math.sqrt(16) == 4.0 and _host_state() == HOST_STATE


def test_random_seed_does_not_touch_host_generator() -> None:
    import random

    random.seed(12345)
    expected = random.random()
    random.seed(12345)
    result = run("import random\nrandom.seed(1)\nrandom.random()")
    assert result["ok"]
    assert random.random() == expected


def test_host_global_not_reachable_through_generator_frames() -> None:
    code = (
        "def g():\n    yield 1\nx = g()\nnext(x)\n"
        "try:\n    f = getattr(x, 'gi_frame')\nexcept AttributeError:\n    f = None\nf"
    )
    result = run(code)
    assert result["ok"] and result["value"] is None
    assert _host_state() == HOST_STATE
