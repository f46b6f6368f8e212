"""A fresh restricted run reuses an earlier fresh run's state only when that run left nothing
behind: these runs try to keep something of theirs alive (in cyclic garbage that is collected
while a later run executes) and the later run must see nothing of it."""

from __future__ import annotations

import decimal
import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from runtimes.restricted import execute
from runtimes.restricted.guest_state import _SPARES, GuestState, take_spare

LIMITS = {"cpu_seconds": 2.0, "wall_seconds": 5.0, "memory_bytes": 64 << 20, "max_output_bytes": 1 << 16,
          "max_recursion_depth": 200}
CAPABILITIES = ("ns.call", "call")


@pytest.fixture(autouse=True)
def _no_spares_of_other_tests() -> None:
    """Each test starts with no state waiting for reuse: `spare()` is this test's own."""
    while _SPARES:
        _SPARES.pop().dismantle()


@pytest.fixture(autouse=True)
def _no_automatic_collection() -> Iterator[None]:
    """Garbage is collected only where a test says so (inside the later run)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Host:
    """Records the capability calls it receives; ``collect`` collects garbage during the run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list, dict]] = []
        self.during_call: Callable[[], None] | None = None

    def __call__(self, name: str, args: list, kwargs: dict) -> Any:
        self.calls.append((name, args, kwargs))
        if name == "collect":
            gc.collect()
        if self.during_call is not None:
            self.during_call()
        return "ok"


def run(code: str, host: Host | None = None, capabilities: tuple[str, ...] = CAPABILITIES, **kwargs: Any) -> dict:
    kwargs.setdefault("limits", LIMITS)
    return execute(code, call_host=host or Host(), capabilities=capabilities, **kwargs)


def spare() -> GuestState | None:
    return _SPARES[-1] if _SPARES else None


def test_a_clean_fresh_run_gives_its_state_to_the_next_one() -> None:
    run("x = [1, 2]\nprint(x)\ncall(1)\nns.call(2)")
    kept = spare()
    assert kept is not None and kept.reusable
    assert not kept.globals
    result = run("print('second')\n[call(3), ns.call(4)]")
    assert result["ok"], result["error"]
    assert result["stdout"] == "second\n"
    assert spare() is kept  # taken, run again and given back
    for capabilities in (("other",), ("other",), CAPABILITIES):  # a new namespace, then the same
        assert run("1", capabilities=capabilities)["ok"]
        assert spare() is kept


# Each program keeps, in a reference cycle of its own, something that could act after the run:
# the later run collects it while it runs.
KEEPERS = {
    "generator_finaliser_printing": "def g(p=print):\n    try:\n        yield 1\n    finally:\n        p('LEAK')\n",
    "generator_finaliser_calling_capability": "def g(c=call):\n    try:\n        yield 1\n    finally:\n        c('LEAK')\n",
    "generator_finaliser_through_namespace": "def g(n=ns):\n    try:\n        yield 1\n    finally:\n        n.call('LEAK')\n",
    "generator_finaliser_with_sized_method": "def g(j='x'.ljust):\n    try:\n        yield 1\n    finally:\n        j(1000000000000)\n",
    "generator_finaliser_with_format": "def g(f='{}'.format):\n    try:\n        yield 1\n    finally:\n        print(f('LEAK'))\n",
    "generator_defined_by_exec": "space = {}\nexec('def g(p=print):\\n    try:\\n        yield 1\\n    finally:\\n"
                                 "        p(\"LEAK\")\\n', space)\ng = space['g']\n",
    "generator_finaliser_looping": "def g():\n    try:\n        yield 1\n    finally:\n        while True:\n            print('LEAK')\n",
}
CYCLE = "gen = g()\nnext(gen)\nbox = [gen]\nbox.append(box)\n"
"""A suspended generator kept alive by a cycle (the box refers to itself), so only a collection frees it."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the kept code fails late
@pytest.mark.parametrize("keeper", sorted(KEEPERS))
def test_what_a_run_keeps_alive_never_reaches_a_later_fresh_run(keeper: str) -> None:
    run("1")  # the keeper runs on a state an earlier fresh run left clean
    clean = spare()
    assert clean is not None
    first = Host()
    result = run(KEEPERS[keeper] + CYCLE, first)
    assert result["ok"], result["error"]
    assert clean not in _SPARES  # taken by the keeper, then not given back
    later = Host()
    result = run("collect()\nprint('later')\n[call(1), ns.call(2)]", later, capabilities=("collect", *CAPABILITIES))
    assert result["ok"], result["error"]
    assert result["stdout"] == "later\n"
    assert result["value"] == ["ok", "ok"]
    assert [call[0] for call in later.calls] == ["collect", "call", "ns.call"]
    assert clean.globals == {} and clean.builtins == {}  # dismantled


def test_a_run_that_keeps_its_scaffold_alive_is_not_reused() -> None:
    run("1")
    clean = spare()
    assert clean is not None
    run("class Box:\n    pass\nb = Box()\nb.me = b\nb.keep = print\n")
    assert clean not in _SPARES  # taken by that run, then not given back
    run("1")
    clean = spare()
    assert clean is not None
    run("class Box:\n    pass\nb = Box()\nb.me = b\nb.keep = ns\n")
    assert clean not in _SPARES


def test_a_capability_a_later_run_was_not_granted_is_not_there() -> None:
    run("call(1)\nns.call(2)")
    result = run("call", capabilities=("other",))
    assert result["error"]["type"] == "NameError"
    result = run("ns", capabilities=("other",))
    assert result["error"]["type"] == "NameError"
    result = run("ns.call", capabilities=("ns.other",))
    assert result["error"]["type"] == "AttributeError"


def test_a_late_cancel_of_an_ended_run_does_not_stop_the_next_one() -> None:
    hooks: list[Callable[[], None]] = []

    def on_stop(stop: Callable[[], None]) -> Callable[[], None]:
        hooks.append(stop)
        return lambda: None

    first = run("1", on_stop=on_stop)
    assert first["ok"]
    host = Host()
    host.during_call = hooks[0]  # the first run's stop, called while the second runs
    second = run("call(1)\nx = 0\nfor i in range(100000):\n    x += i\nx", host, on_stop=on_stop)
    assert second["ok"], second["error"]
    assert second["value"] == sum(range(100000))
    # The current run's own stop still works.
    host.during_call = lambda: hooks[-1]()
    third = run("call(1)\nwhile True:\n    pass", host, on_stop=on_stop)
    assert third["error"]["type"] == "Cancelled"


def test_a_stopped_run_is_not_reused() -> None:
    run("1")
    clean = spare()
    result = run("while True:\n    pass", limits={**LIMITS, "wall_seconds": 0.05})
    assert result["error"]["kind"] == "limit_exceeded"
    assert spare() is not clean


def test_a_spare_of_the_other_memory_cap_kind_is_not_taken() -> None:
    run("1", memory_cap=False)
    kept = spare()
    assert kept is not None
    assert take_spare(memory_cap=True) is None
    assert kept not in _SPARES


def test_decimal_arithmetic_touches_the_sessions_own_context_never_the_hosts() -> None:
    state = GuestState()
    host_context = decimal.getcontext()
    host_context.clear_flags()
    for _ in range(2):
        result = run("import decimal\nstr(decimal.Decimal(1) / decimal.Decimal(3))", state=state)
        assert result["value"] == "0." + "3" * 28
        result = run("import decimal\nstr(decimal.Decimal(1) / decimal.Decimal(3))")
        assert result["value"] == "0." + "3" * 28
    assert state.decimal_context is not None and state.decimal_context.flags[decimal.Inexact]
    assert decimal.getcontext() is host_context and not host_context.flags[decimal.Inexact]


def test_concurrent_fresh_runs_see_nothing_of_each_other() -> None:
    import threading

    failures: list[str] = []

    def worker(first: int) -> None:
        host = Host()
        for n in range(first, first + 150):
            code = f"try:\n    seen = leaked\nexcept NameError:\n    seen = None\nleaked = {n}\nprint({n})\ncall({n})\nseen"
            result = run(code, host)
            if not result["ok"] or result["value"] is not None or result["stdout"] != f"{n}\n":
                failures.append(f"{n}: {result}")
        if [args for _, args, _ in host.calls] != [[n] for n in range(first, first + 150)]:
            failures.append(f"calls of {first}: {host.calls}")

    threads = [threading.Thread(target=worker, args=(1000 * k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures, failures[:3]


def test_a_hook_held_past_the_run_keeps_the_state_from_reuse() -> None:
    """Guest code cannot name a hook; were one kept anyway (here by the host during the run), the
    state is not reused."""
    run("1")
    kept = spare()
    assert kept is not None and kept.kit is not None
    hooks = kept.kit.hooks
    held: list[Any] = []
    host = Host()
    host.during_call = lambda: held.append(hooks["_getiter_"])
    assert run("call(1)", host)["ok"]
    assert held and spare() is not kept
