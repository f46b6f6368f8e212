"""CPU limit precision under ``isolation="process"``: the per-run CPU timer.

RLIMIT_CPU counts whole seconds, so on its own it let a 0.3 s budget run to the next
second. Each run now arms ``setitimer(ITIMER_PROF)`` in the confined child (SIGPROF keeps
its default action: seccomp denies ``rt_sigaction``), and the host reads the child's CPU
clock as a backstop that a guest without its language layer cannot disarm.
"""

from __future__ import annotations

import sys

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("process isolation is Linux-only", allow_module_level=True)

from sandbox import Sandbox  # noqa: E402
from sandbox.limits import Limits  # noqa: E402
from sandbox.process import ProcessDriver  # noqa: E402

BUDGET = Limits(cpu_seconds=0.3, wall_seconds=10)
PRECISION = 0.35

C_LEVEL_WORK = "import math\nmath.factorial(300000)"
"""Seconds of CPU inside one C call: the language layer's tick checks never run during it."""

DISARM_AND_SPIN = """\
import signal
signal.setitimer(signal.ITIMER_PROF, 0)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGPROF, signal.SIGXCPU})
while True:
    pass
"""


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox("restricted", isolation="process", limits=BUDGET)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def raw_driver():
    d = ProcessDriver(workers=1, _allow_raw=True)
    yield d
    d.close()


def assert_cpu_limit(error, cpu_seconds) -> None:
    assert error is not None and error.kind == "limit_exceeded" and error.limit == "cpu", error
    assert cpu_seconds is not None and cpu_seconds <= PRECISION, cpu_seconds


@pytest.mark.parametrize("code", [C_LEVEL_WORK, "while True:\n    pass"], ids=["c-call", "python-loop"])
def test_cpu_budget_stops_within_50ms_and_the_pool_stays_clean(sandbox, code):
    result = sandbox.run(code)
    assert not result.ok
    assert_cpu_limit(result.error, result.usage.cpu_seconds)
    later = sandbox.run("sum(range(1000))")
    assert later.ok and later.value == 499500, later.error
    assert later.usage.cpu_seconds is not None and later.usage.cpu_seconds < 0.3


def test_session_budget_is_per_run(sandbox):
    """Each run in a session gets its own budget: the timer of one run never ends the next."""
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.2:\n    pass\n'ok'"
    with sandbox.session() as session:
        for _ in range(3):  # 0.6 s in total, 0.2 s per run
            result = session.run(spin)
            assert result.ok and result.value == "ok", result.error
        result = session.run(C_LEVEL_WORK)
        assert_cpu_limit(result.error, result.usage.cpu_seconds)
        after = session.run("'fresh'")
        assert after.ok and after.value == "fresh" and after.session_reset, after.error


def test_signal_module_is_out_of_the_guests_reach(sandbox):
    result = sandbox.run("import signal\nsignal.setitimer(signal.ITIMER_PROF, 0)")
    assert not result.ok and result.error.kind == "guest_exception", result.error
    assert "signal" in result.error.message


def test_raw_busy_loop_is_stopped_by_the_timer(raw_driver):
    out = raw_driver._run_raw("while True:\n    pass", BUDGET)
    assert not out.ok
    assert_cpu_limit(out.error, out.cpu_seconds)
    assert raw_driver._run_raw("result = 6 * 7", BUDGET).value == 42


def test_raw_guest_cannot_ignore_sigprof(raw_driver):
    if "seccomp" not in raw_driver.layers:
        pytest.skip("seccomp is not in force on this host")
    code = ("import signal\ntry:\n    signal.signal(signal.SIGPROF, signal.SIG_IGN)\n    result = 'ignored'\n"
            "except OSError as exc:\n    result = 'refused'\n")
    out = raw_driver._run_raw(code, BUDGET)
    assert out.ok and out.value == "refused", (out.value, out.error)


def test_raw_guest_that_disarms_its_timer_is_stopped_by_the_host(raw_driver):
    """Without the language layer a guest can re-arm its own timer and block SIGPROF/SIGXCPU;
    the host still reads its CPU clock and kills it well before RLIMIT_CPU's whole second."""
    out = raw_driver._run_raw(DISARM_AND_SPIN, BUDGET)
    assert not out.ok and out.error.kind == "limit_exceeded" and out.error.limit == "cpu", out.error
    assert out.cpu_seconds is not None and out.cpu_seconds <= 0.5, out.cpu_seconds
    assert raw_driver._run_raw("result = 1", BUDGET).value == 1
