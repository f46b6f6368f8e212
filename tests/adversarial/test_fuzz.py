"""Hypothesis fuzzing of the restricted runtime and property tests of secret redaction.

Snippets are built from the building blocks of known escapes (dunder names, attribute chains,
format specs, generators and frames, exceptions, guard-hook names, eval/exec) and run through
the restricted runtime. The invariant for every snippet: a compile error, or a run that
finishes within its limits, raises nothing on the host, leaks no canary, creates no file,
opens no connection, leaves host state untouched, and, when it succeeds, returns nothing that
only an escape could produce (a real module, a frame, a code object, a cell, a function's
globals). Example counts are kept small for CI; raise them with ``SANDBOX_FUZZ_EXAMPLES``.

Redaction: for any secret value, any of the encodings `sandbox.secrets` promises to catch
(plain with any characters percent-encoded, JSON/repr escapes, hex in any case, base64 and
base64url at any alignment inside a larger blob), embedded in arbitrary text and put in any
output position (stdout, printed in pieces, the value, a dict key, an exception message), the
value cannot be recovered from the `RunResult` by an independent decoder.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import time
import urllib.parse
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sandbox import Limits, Sandbox, capability
from sandbox.secrets import Redactor, Secret

from .corpus import WALL_SLACK, load
from .detectors import CANARY_SECRET, SECRET_NAME, Environment, find_leaks, host_state, state_violations
from .conftest import echo, use_secret

EXAMPLES = int(os.environ.get("SANDBOX_FUZZ_EXAMPLES", "150"))
FUZZ_LIMITS = Limits(cpu_seconds=0.3, wall_seconds=1.0, memory_bytes=64 << 20, max_output_bytes=16 << 10, max_recursion_depth=100)
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
    derandomize=os.environ.get("SANDBOX_FUZZ_RANDOM") is None,  # reproducible in CI; set it to explore
    database=None,
)

# ------------------------------------------------------------------ building blocks

DUNDERS = [
    "__class__", "__base__", "__bases__", "__mro__", "__subclasses__", "__globals__", "__builtins__",
    "__code__", "__closure__", "__dict__", "__self__", "__func__", "__wrapped__", "__reduce__",
    "__reduce_ex__", "__getattribute__", "__init__", "__traceback__", "__context__", "__cause__",
    "__module__", "__loader__", "__spec__", "__import__", "__call__", "__get__", "__objclass__",
]
PLAIN_ATTRS = [
    "gi_frame", "gi_code", "cr_frame", "ag_frame", "f_back", "f_globals", "f_locals", "f_builtins",
    "tb_frame", "tb_next", "obj", "codecs", "decoder", "scanner", "sys", "os", "_os", "modules",
    "format", "format_map", "mro", "exceptions", "args", "cell_contents", "co_consts", "load_module",
    "system", "open", "read", "token", "value", "_value", "_token", "_grant", "name",
]
ROOTS = [
    "()", "''", "[]", "{}", "1", "print", "echo", "use_secret", "secrets", "secrets.canary", "json",
    "string", "typing", "functools", "(lambda: 0)", "(i for i in [1])", "ValueError('x')", "type", "object",
    "str", "getattr", "gen0()", "err0()", "K0()", "K0", "f0",
]
PRELUDE = """import json, string, typing, functools
def gen0():
    yield 1
def err0():
    try:
        (1).nope
    except Exception as e:
        return e
class K0:
    x = 1
def f0(a, /, b=2):
    return a
"""
GUARD_NAMES = ["_getattr_", "_getitem_", "_getiter_", "_write_", "_print_", "_apply_", "_inplacevar_", "__builtins__", "__import__"]
ESCAPE_MARKERS = re.compile(
    r"<module '[^']+' (?:from|\(built-in\)|\(frozen\))"  # a real module (proxies say "(sandboxed)")
    r"|<frame at|<code object|<cell at|<built-in method __subclasses__|'__builtins__': |<built-in function open>"
    r"|<function [^>]* at 0x[^>]*>, '__builtins__'"
)

# Most names get past the compiler (plain names, and ``__class__``, which the restricted runtime
# allows read-only), so most examples reach the runtime guards rather than the compile check.
names = st.one_of(st.sampled_from(PLAIN_ATTRS), st.sampled_from(PLAIN_ATTRS), st.just("__class__"), st.sampled_from(DUNDERS))
roots = st.sampled_from(ROOTS)


@st.composite
def chains(draw) -> str:
    expr = draw(roots)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["attr", "attr", "getattr", "call", "index", "key", "vars", "type"]))
        name = draw(names)
        if kind == "attr":
            expr = f"{expr}.{name}"
        elif kind == "getattr":
            expr = f"getattr({expr}, {name!r})"
        elif kind == "call":
            expr = f"{expr}()"
        elif kind == "index":
            expr = f"{expr}[{draw(st.sampled_from(['0', '-1', '1:']))}]"
        elif kind == "key":
            expr = f"{expr}[{draw(st.sampled_from(['__builtins__', 'open', 'os', '__import__']))!r}]"
        elif kind == "vars":
            expr = f"vars({expr})"
        else:
            expr = f"type({expr})"
    return expr


@st.composite
def format_exprs(draw) -> str:
    path = "".join(
        f".{draw(names)}" if draw(st.booleans()) else f"[{draw(st.sampled_from(['0', '__builtins__', 'os']))}]"
        for _ in range(draw(st.integers(1, 3)))
    )
    spec = draw(st.sampled_from(["", "!r", "!s", ":>10", ":{w}", ":^{w}.{w}"]))
    field = "{0" + path + spec + "}"
    root = draw(roots)
    return draw(
        st.sampled_from(
            [
                f"{field!r}.format({root}, w=3)",
                f"str.format({field!r}, {root}, w=3)",
                f"{field.replace('{0', '{x')!r}.format_map({{'x': {root}, 'w': 3}})",
                f"string.Formatter().vformat({field!r}, [{root}], {{'w': 3}})",
                f"format({root}, {spec.lstrip(':!')!r})",
                "f'{" + root + path.split("[")[0] + "}'",
                f"'%s %r' % ({root}, {root})",
            ]
        )
    )


@st.composite
def statements(draw) -> str:
    expr = draw(st.one_of(chains(), format_exprs()))
    form = draw(
        st.sampled_from(
            ["expr", "expr", "try", "try", "trystar", "gen", "gen", "lambda_default", "posonly", "class_body",
             "exec", "exec", "eval", "eval", "comprehension", "guard_assign", "with", "finally"]
        )
    )
    guard = draw(st.sampled_from(GUARD_NAMES))
    if form == "expr":
        return f"r = {expr}"
    if form == "try":
        return f"try:\n    r = {expr}\nexcept BaseException as e:\n    r = (type(e).__name__, getattr(e, 'obj', None), e.args)"
    if form == "trystar":
        return f"try:\n    raise ExceptionGroup('g', [ValueError({expr!r})])\nexcept* ValueError as eg:\n    r = {expr}"
    if form == "gen":
        return f"def g():\n    yield {expr}\nr = list(g())"
    if form == "lambda_default":
        return f"r = (lambda {guard}=getattr: {expr})()"
    if form == "posonly":
        return f"def f({guard}=getattr, /):\n    return {expr}\nr = f()"
    if form == "class_body":
        return f"class K:\n    {guard} = getattr\n    v = {expr}\nr = K.v"
    if form == "exec":
        return f"g = {{'{guard}': getattr}}\nexec({('r = ' + expr)!r}, g)\nr = g.get('r')"
    if form == "eval":
        return f"r = eval({expr!r})"
    if form == "comprehension":
        return f"r = [{expr} for {guard} in [getattr]]"
    if form == "guard_assign":
        return f"{guard} = getattr\nr = {expr}"
    if form == "with":
        return f"class W:\n    def __enter__(self):\n        return getattr\n    def __exit__(self, *a):\n        return True\nwith W() as {guard}:\n    r = {expr}"
    return f"try:\n    pass\nfinally:\n    r = {expr}"


@st.composite
def programs(draw) -> str:
    body = "\n".join(draw(st.lists(statements(), min_size=1, max_size=2)))
    tail = draw(st.sampled_from(["r", "print(r)\nr", "repr(r)", "echo(repr(r))", "json.dumps(repr(r))"]))
    return PRELUDE + body + "\n" + tail


_ESCAPE_CASES = [c.code for c in load() if c.category in {"dunder-walk", "format-string", "frames", "exceptions", "guard-shadowing", "secrets"}]


@st.composite
def mutated_corpus(draw) -> str:
    """A corpus escape with its names swapped for other dangerous ones and its code wrapped."""
    code = draw(st.sampled_from(_ESCAPE_CASES))
    for _ in range(draw(st.integers(0, 3))):
        found = re.findall(r"__\w+__|\b(?:gi_frame|f_back|f_globals|tb_frame|obj|codecs)\b", code)
        if not found:
            break
        code = code.replace(draw(st.sampled_from(found)), draw(names), 1)
    wrap = draw(st.sampled_from(["none", "exec", "function", "generator"]))
    if wrap == "exec":
        return f"exec({code!r})"
    indented = "\n".join("    " + line for line in code.splitlines())
    if wrap == "function":
        return f"def f():\n{indented}\n    return None\nf()"
    if wrap == "generator":
        return f"def f():\n    yield 0\n{indented}\nlist(f())"
    return code


# ------------------------------------------------------------------ fixtures and the invariant


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Environment]:
    env = Environment(tmp_path_factory.mktemp("fuzz"))
    yield env
    env.close()


@pytest.fixture(scope="module")
def fuzz_sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(
        "restricted",
        limits=FUZZ_LIMITS,
        capabilities=[echo, use_secret],
        secrets={SECRET_NAME: Secret(value=CANARY_SECRET, capabilities=["use_secret"])},
    )
    yield sb
    sb.close()


def check_invariant(sb: Sandbox, env: Environment, code: str) -> None:
    code = env.substitute(code)
    before = host_state()
    started = time.monotonic()
    try:
        result = sb.run(code)
    except Exception as exc:  # noqa: BLE001 - the invariant is "never raises"
        pytest.fail(f"host exception {type(exc).__name__}: {exc}\n--- code ---\n{code}")
    elapsed = time.monotonic() - started
    dumped = result.model_dump_json()
    problems = []
    if elapsed > FUZZ_LIMITS.wall_seconds + WALL_SLACK:
        problems.append(f"took {elapsed:.2f} s")
    if result.error is not None and result.error.kind == "internal":
        problems.append(f"internal error {result.error}")
    problems += [f"leak {leak}" for leak in find_leaks(dumped)]
    problems += env.violations()
    problems += state_violations(before, host_state())
    if result.ok:
        marker = ESCAPE_MARKERS.search(dumped)
        if marker:
            problems.append(f"an escape-only object reached the result: {marker.group(0)!r}")
    if problems:
        env.reset()
        pytest.fail(f"{problems}\n--- code ---\n{code}\n--- result ---\n{dumped[:2000]}")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@SETTINGS
@given(code=programs())
def test_fuzzed_snippets_stay_contained(fuzz_sandbox: Sandbox, fuzz_env: Environment, code: str) -> None:
    check_invariant(fuzz_sandbox, fuzz_env, code)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@settings(SETTINGS, max_examples=max(EXAMPLES * 2 // 3, 10))
@given(code=mutated_corpus())
def test_mutated_corpus_stays_contained(fuzz_sandbox: Sandbox, fuzz_env: Environment, code: str) -> None:
    check_invariant(fuzz_sandbox, fuzz_env, code)


# ------------------------------------------------------------------ redaction properties

secret_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF, blacklist_categories=("Cs",)), min_size=8, max_size=40
).filter(lambda v: v.strip() == v and len(set(v)) >= 4)
context_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)

ENCODINGS = ["plain", "quote", "quote_plus", "partial_percent", "json", "repr", "bytes_repr", "hex", "HEX", "b64", "b64url", "b64_nopad", "b64_in_blob", "b64url_in_blob"]


def encode(value: str, how: str, prefix: bytes = b"", suffix: bytes = b"") -> str:
    data = value.encode()
    if how == "plain":
        return value
    if how == "quote":
        return urllib.parse.quote(value, safe="")
    if how == "quote_plus":
        return urllib.parse.quote_plus(value)
    if how == "partial_percent":
        return "".join(urllib.parse.quote(c, safe="") if i % 2 else c for i, c in enumerate(value))
    if how == "json":
        return json.dumps(value)[1:-1]
    if how == "repr":
        return repr(value)[1:-1]
    if how == "bytes_repr":
        return repr(data)[2:-1]
    if how == "hex":
        return data.hex()
    if how == "HEX":
        return data.hex().upper()
    if how == "b64":
        return base64.b64encode(data).decode()
    if how == "b64url":
        return base64.urlsafe_b64encode(data).decode()
    if how == "b64_nopad":
        return base64.b64encode(data).decode().rstrip("=")
    if how == "b64_in_blob":
        return base64.b64encode(prefix + data + suffix).decode()
    if how == "b64url_in_blob":
        return base64.urlsafe_b64encode(prefix + data + suffix).decode()
    raise AssertionError(how)


def recoverable(value: str, text: str) -> str | None:
    """An independent decoder: how ``value`` can still be read out of ``text``, or None."""
    data = value.encode()
    if value in text:
        return "plain"
    for label, decoded in (("percent", urllib.parse.unquote(text)), ("percent+", urllib.parse.unquote_plus(text))):
        if value in decoded:
            return label
    for escaped in (json.dumps(value)[1:-1], repr(value)[1:-1], repr(data)[2:-1]):
        if escaped in text:
            return "escaped"
    if data.hex() in text.lower():
        return "hex"
    for run in re.findall(r"[A-Za-z0-9+/_=-]{8,}", text):
        for start in range(4):
            chunk = run[start:].rstrip("=")
            chunk = chunk[: len(chunk) - len(chunk) % 4] if len(chunk) % 4 == 1 else chunk
            for alt in (chunk, chunk.replace("-", "+").replace("_", "/")):
                try:
                    decoded = base64.b64decode(alt + "=" * (-len(alt) % 4), validate=False)
                except (binascii.Error, ValueError):
                    continue
                if data in decoded:
                    return "base64"
    return None


@SETTINGS
@given(
    value=secret_values,
    how=st.sampled_from(ENCODINGS),
    prefix=st.binary(max_size=5),
    suffix=st.binary(max_size=5),
    before=context_text,
    after=context_text,
)
def test_redactor_hides_every_promised_encoding(value: str, how: str, prefix: bytes, suffix: bytes, before: str, after: str) -> None:
    encoded = encode(value, how, prefix, suffix)
    assume(recoverable(value, before + after) is None)
    redactor = Redactor({"s": value})
    for truncated in (False, True):
        out = redactor.text(before + encoded + after, truncated=truncated)
        how_found = recoverable(value, out)
        assert how_found is None, f"{how} encoding recoverable as {how_found}: {out!r}"


@capability
def careless(how: str, before: str, after: str, halves: bool) -> list:
    """A careless capability that returns the canary secret, encoded, inside other text."""
    text = before + encode(CANARY_SECRET, how, b"u:", b"!") + after
    return [text[: len(text) // 2], text[len(text) // 2 :]] if halves else [text, ""]


POSITIONS = {
    "print": "print(t)",
    "print_pieces": "print(a, end='')\nprint(b)",
    "value": "t",
    "nested_value": "{'k': [1, {'x': t}]}",
    "dict_key": "{t: 1}",
    "exception": "raise ValueError(t)",
    "exception_args": "raise KeyError(a, b)",
    "echo_result": "echo(t)",
}


@pytest.fixture(scope="module")
def careless_sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(
        "restricted",
        limits=FUZZ_LIMITS,
        capabilities=[careless, echo],
        secrets={SECRET_NAME: Secret(value=CANARY_SECRET, capabilities=["careless"])},
    )
    yield sb
    sb.close()


@settings(SETTINGS, max_examples=max(EXAMPLES * 2 // 3, 10))
@given(
    how=st.sampled_from(ENCODINGS),
    position=st.sampled_from(sorted(POSITIONS)),
    before=context_text,
    after=context_text,
    halves=st.booleans(),
)
def test_secret_in_any_output_position_is_redacted(careless_sandbox: Sandbox, how: str, position: str, before: str, after: str, halves: bool) -> None:
    assume(recoverable(CANARY_SECRET, before + after) is None)
    code = f"a, b = careless({how!r}, {before!r}, {after!r}, {halves!r})\nt = a + b\n{POSITIONS[position]}"
    result = careless_sandbox.run(code)
    dumped = result.model_dump_json()
    # Search the raw fields as well as their JSON form (JSON escaping could hide a form).
    texts = [dumped, result.stdout, result.stderr, str(result.value), result.error.message if result.error else ""]
    for text in texts:
        found = recoverable(CANARY_SECRET, text)
        assert found is None, f"{how} in {position} recoverable as {found}: {text[:500]!r}"
