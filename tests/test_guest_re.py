"""The guest's ``re`` (`runtimes.restricted.guest_re`): the ``re`` API served by `regex`, every
match bounded by the run's remaining time, no host state touched."""

from __future__ import annotations

import re
import time

import pytest

from sandbox import Limits, Sandbox

CATASTROPHIC = [
    "import re\nre.match(r'(a|aa)+$', 'a' * 60 + 'b')",
    "import re\nre.compile(r'(a|aa)+$').search('a' * 60 + 'b')",
    "import re\nre.findall(r'(a|aa)+$', 'a' * 60 + 'b')",
    "import re\nlist(re.finditer(r'(a|aa)+$', 'a' * 60 + 'b'))",
    "import re\nre.sub(r'(a|aa)+$', 'x', 'a' * 60 + 'b')",
    "import re\nre.split(r'(a|aa)+$', 'a' * 60 + 'b')",
    "import re\ntry:\n    re.fullmatch(r'(a|aa)+$', 'a' * 60 + 'b')\nexcept BaseException:\n    pass\n'caught'",
    "import re\nre.match(r'(a+)+$', 'a' * 40 + 'b')\nre.match(r'(a|aa)+$', 'a' * 60 + 'b')",
]


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox("restricted", limits=Limits(cpu_seconds=1, wall_seconds=2)) as box:
        yield box


@pytest.mark.parametrize("code", CATASTROPHIC)
def test_catastrophic_backtracking_stops_at_the_run_deadline(sandbox, code):
    started = time.monotonic()
    result = sandbox.run(code)
    elapsed = time.monotonic() - started
    assert not result.ok and result.error.kind == "limit_exceeded", result.error
    assert result.error.limit in ("cpu", "wall"), result.error
    # regex counts its timeout in CPU time: on a loaded machine the wall time stretches with the load.
    assert elapsed < 30, elapsed
    assert sandbox.run("1 + 1").value == 2


def test_the_re_api_is_compatible(sandbox):
    code = r'''
import re
p = re.compile(r"(?P<w>\w+)\s(\d+)", re.I)
m = p.search("hello 42 x")
[m.group(0), m.group("w"), m[2], m.groups(), m.groupdict(), m.span(), m.start(2), m.end(), m.lastindex,
 isinstance(p, re.Pattern), isinstance(m, re.Match), m.re == p, p.pattern, p.groups, p.groupindex["w"],
 re.sub(r"\d", lambda mm: str(int(mm.group()) + 1), "a1b2"), re.subn("a", "b", "aaa"),
 re.split(r",\s*", "a, b,c"), re.findall(r"(\d)(\d)", "12 34"), [x.group() for x in re.finditer(r"\w", "ab")],
 re.escape("a.b c"), re.fullmatch("a+", "aaa") is not None, re.match("b", "ab"), re.sub("", "-", "ab"),
 re.search("^b", "a\nb", re.M | re.S).start(), p.match("hi 1", 0, 4).group(2), m.expand(r"\2-\g<w>")]
'''
    result = sandbox.run(code)
    assert result.ok, result.error
    p = re.compile(r"(?P<w>\w+)\s(\d+)", re.I)
    m = p.search("hello 42 x")
    expected = [m.group(0), m.group("w"), m[2], m.groups(), m.groupdict(), m.span(), m.start(2), m.end(),
                m.lastindex, True, True, True, p.pattern, p.groups, p.groupindex["w"],
                re.sub(r"\d", lambda mm: str(int(mm.group()) + 1), "a1b2"), re.subn("a", "b", "aaa"),
                re.split(r",\s*", "a, b,c"), re.findall(r"(\d)(\d)", "12 34"), ["a", "b"],
                re.escape("a.b c"), True, None, re.sub("", "-", "ab"), re.search("^b", "a\nb", re.M | re.S).start(),
                "1", m.expand(r"\2-\g<w>")]
    assert result.value == expected


def test_errors_debug_and_process_wide_state_are_not_offered(sandbox):
    result = sandbox.run(
        "import re\nout = []\ntry:\n    re.compile('(')\nexcept re.error:\n    out.append('error')\n"
        "out.append(hasattr(re, 'DEBUG') or hasattr(re, 'purge') or hasattr(re, 'template'))\n"
        "try:\n    re.compile('a', 512)\nexcept ValueError as exc:\n    out.append(str(exc))\nout"
    )
    assert result.ok and result.value == ["error", False, "re.DEBUG is not available in the sandbox"], result


def test_a_guest_str_subclass_pattern_does_not_reach_the_host_cache(sandbox, capfd):
    """A pattern of a guest ``str`` subclass equal (by its own ``__eq__``/``__hash__``) to any
    string is copied to a plain str before compiling: the host's patterns stay its own."""
    code = (
        "import re\nclass P(str):\n    def __eq__(self, other):\n        return True\n"
        "    def __hash__(self):\n        return hash('[0-9]+')\n"
        "re.compile(P('x'))\nre.findall(P('x'), 'x1')"
    )
    result = sandbox.run(code)
    assert result.ok and result.value == ["x"], result
    import regex

    assert regex.findall("[0-9]+", "a12b3") == ["12", "3"]
    assert re.findall("[0-9]+", "a12b3") == ["12", "3"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""
