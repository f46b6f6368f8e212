"""The same program gives the same result on every runtime: 40 programs (values, errors,
limits, refused imports, capability calls, secrets, output), each run on every entry of
`tests.conftest.RUNTIMES`, must give exactly the outcome its row states: the value, or the
error's kind, type and limit name, and the output. Where runtimes still differ is one other
table, `runtime_differences` (asserted by test_runtime_differences.py)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, get_args

import pytest

from runtimes.guest import LIMIT_NAMES
from sandbox import Limits, Sandbox, capability
from sandbox.limits import LimitName
from sandbox.runtime import CapabilityFault
from sandbox.secrets import Secret, SecretValue

try:  # the root conftest, as pytest imports it (rootdir-relative, no package)
    from conftest import RUNTIMES  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - imported as tests.conftest
    from tests.conftest import RUNTIMES

SECRET = "s3cr3t-value-for-the-same-program-table"
LIMITS = Limits(cpu_seconds=0.5, wall_seconds=1.5, memory_bytes=64 << 20, max_output_bytes=200,
                max_value_bytes=64 << 10, max_recursion_depth=100)


@capability
def echo(text: str) -> str:
    """Returns its argument."""
    return text


@capability(name="kv.get")
def kv_get(key: str) -> str | None:
    """Reads a key."""
    return {"a": "A"}.get(key)


@capability
def deny(target: str) -> str:
    """Refused by the host's policy."""
    raise CapabilityFault("PolicyDenied", f"target {target!r} is not allowed")


@capability
def explode(message: str) -> str:
    """Fails on the host."""
    raise KeyError(message)


@capability
def nap(seconds: float) -> float:
    """Sleeps on the host."""
    import time

    time.sleep(seconds)
    return seconds


@capability
def use(token: SecretValue) -> int:
    """Uses the secret's value on the host; returns its length."""
    return len(token.reveal())


@dataclass(frozen=True)
class Program:
    """A program and its outcome on every runtime: ``value`` when it succeeds, else the
    error's ``(kind, type, limit)``; ``stdout`` (empty when None) and ``truncated``.
    ``wall_seconds`` replaces the table's wall limit for this program: a CPU-limit program
    needs room on a loaded machine, where its thread gets a fraction of a core."""

    id: str
    code: str
    value: Any = None
    error: tuple[str, str, str | None] | None = None
    stdout: str | None = None
    truncated: bool = False
    wall_seconds: float | None = None


def _err(kind: str, type_: str, limit: str | None = None) -> tuple[str, str, str | None]:
    return (kind, type_, limit)


def _guest(type_: str) -> tuple[str, str, None]:
    return ("guest_exception", type_, None)


def _limit(name: str) -> tuple[str, str, str]:
    return ("limit_exceeded", name, name)


PROGRAMS: tuple[Program, ...] = (
    # values
    Program("arithmetic", "2 ** 10 + 7 // 2", 1027),
    Program("strings", "'-'.join(sorted('cba')).upper()", "A-B-C"),
    Program("dict-comprehension", "{k: v for k, v in zip('ab', range(2))}", {"a": 0, "b": 1}),
    Program("class-method", "class A:\n    def __init__(self, x):\n        self.x = x\n    def double(self):\n        return self.x * 2\nA(21).double()", 42),
    Program("generator", "def g(n):\n    for i in range(n):\n        yield i * i\nsum(g(5))", 30),
    Program("caught-exception", "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    r = str(e)\nr", "division by zero"),
    Program("sets-and-fstrings", "x = 3.14159\n[sorted({3, 1} | {2}), f'{x:.2f}']", [[1, 2, 3], "3.14"]),
    Program("no-last-expression", "x = 1", None),
    # allowed imports
    Program("json", "import json\njson.loads(json.dumps({'a': [1, 2]}))", {"a": [1, 2]}),
    Program("math", "import math\n[math.isqrt(10**6), math.gcd(12, 18)]", [1000, 6]),
    Program("re", "import re\nre.findall(r'\\d+', 'a12b3')", ["12", "3"]),
    Program("datetime", "from datetime import date, timedelta\n(date(2024, 2, 28) + timedelta(days=1)).isoformat()", "2024-02-29"),
    Program("strptime", "from datetime import datetime\ndatetime.strptime('2024-05-03', '%Y-%m-%d').weekday()", 4),
    Program("collections-itertools", "import collections, itertools\n[collections.Counter('abca')['a'], len(list(itertools.permutations('abc')))]", [2, 6]),
    Program("fractions-hashlib", "import fractions, hashlib\n[str(fractions.Fraction(1, 3) + fractions.Fraction(1, 6)), hashlib.sha256(b'abc').hexdigest()[:8]]", ["1/2", "ba7816bf"]),
    Program("dataclasses", "from dataclasses import dataclass, asdict\n@dataclass\nclass P:\n    x: int\n    y: int = 2\nasdict(P(1))", {"x": 1, "y": 2}),
    # refused imports and names
    Program("import-os", "import os", error=_guest("ImportError")),
    Program("import-socket", "import socket", error=_guest("ImportError")),
    Program("time-sleep", "import time\ntime.sleep(1)", error=_guest("AttributeError")),
    Program("from-time-import-sleep", "from time import sleep", error=_guest("ImportError")),
    Program("open", "open('/etc/passwd')", error=_guest("NameError")),
    Program("module-is-read-only", "import json\njson.loads = None", error=_guest("TypeError")),
    # errors
    Program("name-error", "undefined_name + 1", error=_guest("NameError")),
    Program("syntax-error", "def f(:\n    pass", error=_err("compile_error", "SyntaxError")),
    Program("raised", "raise ValueError('bad')", error=_guest("ValueError")),
    # limits
    Program("cpu", "while True:\n    pass", error=_limit("cpu"), wall_seconds=30),
    Program("memory", "x = bytearray(10**9)", error=_limit("memory")),
    Program("recursion", "def f(n):\n    return f(n + 1)\nf(0)", error=_limit("recursion")),
    Program("value", "'x' * 100_000", error=_limit("value")),
    Program("wall", "nap(5)", error=_limit("wall")),
    # capabilities
    Program("capability", "echo('hi')", "hi"),
    Program("dotted-capability", "[kv.get('a'), kv.get('b')]", ["A", None]),
    Program("policy-denied", "deny('x')", error=_err("policy_denied", "PolicyDenied")),
    Program("policy-denied-caught", "try:\n    deny('x')\nexcept PolicyDenied as e:\n    r = type(e).__name__\nr", "PolicyDenied"),
    Program("host-failure", "try:\n    explode('x')\nexcept CapabilityError:\n    r = 'failed'\nr", "failed"),
    Program("namespace-is-read-only", "kv.get = print", error=_guest("TypeError")),
    # secrets
    Program("secret-handle", "[secrets.api.name, str(secrets.api)]", ["api", "<secret api (the api key): capabilities=use hosts=(none)>"]),
    Program("secret-used-on-the-host", "use(secrets.api)", len(SECRET)),
    # output
    Program("output", "print('hello', 'world')\nprint(1, end='!')\n2", 2, stdout="hello world\n1!"),
    Program("output-truncated", "for i in range(100):\n    print('é' * 3)\n'done'", "done", stdout="ééé\n" * 28 + "éé", truncated=True),
)


@pytest.fixture(scope="module", params=RUNTIMES)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    name, isolation = request.param
    # a run's limits may not exceed its sandbox's: room for the longest wall limit in the table
    wall_seconds = max(p.wall_seconds or LIMITS.wall_seconds for p in PROGRAMS)
    sb = Sandbox(name, isolation=isolation, limits=LIMITS.model_copy(update={"wall_seconds": wall_seconds}),  # type: ignore[arg-type]
                 capabilities=[echo, kv_get, deny, explode, nap, use],
                 secrets={"api": Secret(value=SECRET, capabilities=["use"], description="the api key")})
    yield sb
    sb.close()


def test_the_table_has_forty_programs_and_reaches_every_limit_name() -> None:
    assert len(PROGRAMS) == 40 and len({p.id for p in PROGRAMS}) == 40
    # One limit vocabulary: the host's type, the guest's constants, and every name is produced.
    assert get_args(LimitName) == LIMIT_NAMES
    assert {p.error[2] for p in PROGRAMS if p.error is not None and p.error[2] is not None} == set(LIMIT_NAMES)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.id)
def test_same_program_same_result(sandbox: Sandbox, program: Program) -> None:
    limits = LIMITS.model_copy(update={"wall_seconds": program.wall_seconds}) if program.wall_seconds else LIMITS
    result = sandbox.run(program.code, limits=limits)
    got = (result.value, None) if result.ok else (None, (result.error.kind, result.error.type, result.error.limit))
    assert got == (program.value, program.error), result.error
    assert result.stdout == (program.stdout or "")
    assert result.output_truncated is program.truncated


def test_a_lone_surrogate_in_the_source_is_a_compile_error(sandbox: Sandbox) -> None:
    # A string Python holds but UTF-8 cannot: every runtime reports what the compiler says of it.
    result = sandbox.run('x = "\ud800"\nx', limits=LIMITS)
    assert not result.ok and (result.error.kind, result.error.type) == ("compile_error", "SyntaxError"), result.error
    assert "surrogates not allowed" in result.error.message
    assert sandbox.run("'after'", limits=LIMITS).value == "after"
