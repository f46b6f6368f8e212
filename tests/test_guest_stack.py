"""The deep guest stack: C recursion a guest can reach never overflows the host's stack, and runs
stay on the calling thread when the ``_deepstack`` extension is built."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import pytest

from runtimes.restricted.executor import execute
from runtimes.restricted.guest_stack import GUEST_STACK, GuestStack
from runtimes.restricted.guest_thread import GuestThreads, stack_bytes

from runtimes.restricted import _deepstack  # noqa: F401  (built by `make setup`, which fails without it)

LIMITS = {"cpu_seconds": 10.0, "wall_seconds": 30.0, "memory_bytes": 256 << 20, "max_output_bytes": 1 << 16,
          "max_recursion_depth": 500}


def _nested_tuple_hash() -> int:
    t: tuple = ()
    for _ in range(300_000):
        t = (t,)
    return hash(t)


def test_the_extension_is_used_on_the_calling_thread() -> None:
    assert GUEST_STACK.mode == "switch"
    assert GUEST_STACK.run(threading.get_ident, 64 << 20) == threading.get_ident()


def test_c_recursion_deeper_than_a_thread_stack_runs_on_the_deep_stack() -> None:
    # 300 000 levels of tuple hashing need far more than the default 8 MiB C stack.
    assert GUEST_STACK.run(_nested_tuple_hash, 256 << 20) == GUEST_STACK.run(_nested_tuple_hash, 256 << 20)


def test_a_guest_hashing_a_deeply_nested_tuple_does_not_crash_the_host() -> None:
    code = "t = ()\nfor i in range(300000):\n    t = (t,)\nhash(t)"
    result = execute(code, limits=LIMITS, call_host=lambda *a: None)
    assert result["ok"] and result["value"] == GUEST_STACK.run(_nested_tuple_hash, 256 << 20), result


def test_results_and_exceptions_come_back_and_runs_nest() -> None:
    def boom() -> None:
        raise KeyError("inner")

    with pytest.raises(KeyError, match="inner"):
        GUEST_STACK.run(boom, 64 << 20)
    assert GUEST_STACK.run(lambda: GUEST_STACK.run(lambda: 7, 64 << 20) + 1, 64 << 20) == 8


def test_pages_a_deep_run_committed_are_given_back_and_the_stack_is_reused() -> None:
    GUEST_STACK.run(_nested_tuple_hash, 256 << 20)
    assert _deepstack.stack_size() >= stack_bytes(256 << 20)
    assert _deepstack.resident_bytes() <= _deepstack.KEEP_BYTES
    size = _deepstack.stack_size()
    GUEST_STACK.run(lambda: None, 1 << 20)
    assert _deepstack.stack_size() == size


def test_a_guest_gets_the_full_recursion_limit_however_deep_the_caller_is() -> None:
    code = "def f(n):\n    return f(n - 1) if n else 0\nf(450)"

    def host_recursion(depth: int) -> dict:
        return host_recursion(depth - 1) if depth else execute(code, limits=LIMITS, call_host=lambda *a: None)

    result = host_recursion(sys.getrecursionlimit() - 200)
    assert result["ok"], result["error"]


def test_other_threads_get_their_own_stack() -> None:
    seen: list[object] = []
    worker = threading.Thread(target=lambda: seen.append(GUEST_STACK.run(_nested_tuple_hash, 256 << 20)))
    worker.start()
    worker.join()
    assert isinstance(seen[0], int)


def test_disabled_stacks_run_on_the_caller_and_the_thread_fallback_keeps_the_guarantee() -> None:
    disabled = GuestStack(GuestThreads())
    disabled.disable()
    assert disabled.mode == "caller"
    assert disabled.run(threading.get_ident, 64 << 20) == threading.get_ident()
    script = textwrap.dedent(
        """
        import os, threading
        os.environ["SANDBOX_DISABLE_DEEP_STACK"] = "1"
        from runtimes.restricted.guest_stack import GUEST_STACK
        assert GUEST_STACK.mode == "thread"
        def deep():
            t = ()
            for _ in range(300_000):
                t = (t,)
            return hash(t), threading.get_ident()
        value, ident = GUEST_STACK.run(deep, 256 << 20)
        assert ident != threading.get_ident()
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
