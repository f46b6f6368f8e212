"""The wasi epoch ticker on its native thread (`sandbox.wasi._ticker`): it ticks while runs are
active, so a guest that never yields still meets its wall-clock limit, and a forked child
starts its own thread instead of relying on one that did not survive the fork."""

from __future__ import annotations

import os
import time

import pytest

from sandbox.limits import Limits

_ticker = pytest.importorskip("sandbox.wasi._ticker", reason="the C extension is not built")


@pytest.fixture(scope="module")
def sandbox():
    from sandbox import Sandbox

    with Sandbox("wasi", limits=Limits(cpu_seconds=30, wall_seconds=0.3)) as sb:
        yield sb


def test_runs_are_counted_in_and_out_and_the_thread_runs(sandbox):
    from sandbox.wasi._engine import get_runtime

    assert get_runtime().ticker._native is _ticker
    assert sandbox.run("1 + 1").value == 2
    assert _ticker.state() == (0, True)


def test_a_busy_guest_meets_its_wall_limit(sandbox):
    started = time.monotonic()
    result = sandbox.run("while True:\n    pass")
    assert result.error is not None and result.error.limit == "wall", result.error
    assert time.monotonic() - started < 2.0
    assert _ticker.state()[0] == 0


def test_a_forked_child_has_no_ticker_thread_until_it_enters():
    assert _ticker.state()[1]  # started in this process by the tests above
    _ticker.enter()  # a run in progress in the parent when it forks
    try:
        pid = os.fork()
        if pid == 0:  # the child: only the forking thread exists
            code = 1
            try:
                if _ticker.state() == (0, False):
                    _ticker.enter()
                    code = 0 if _ticker.state() == (1, True) else 2
                    _ticker.exit()
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        _ticker.exit()
