"""Where a process run's child may run: `ChildHandle.pin_here` / `unpin` (see `sandbox.process`)."""

from __future__ import annotations

import os
import select
import signal
import sys
import time

import pytest

if not sys.platform.startswith("linux"):
    pytest.skip("process isolation is Linux-only", allow_module_level=True)

from sandbox.limits import Limits  # noqa: E402
from sandbox.process import ProcessDriver  # noqa: E402
from sandbox.runtime import Job  # noqa: E402

LIMITS = Limits(cpu_seconds=2, wall_seconds=5, memory_bytes=64 << 20)

if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("one CPU: nothing to pin to", allow_module_level=True)


class Bridge:
    def call(self, name: str, args: list, kwargs: dict) -> object:
        return None


def job(code: str) -> Job:
    return Job(run_id="t", code=code, limits=LIMITS, bridge=Bridge())


@pytest.fixture(scope="module")
def driver():
    d = ProcessDriver(workers=1)
    yield d
    d.close()


def test_a_session_child_waits_between_runs_on_all_its_cpus(driver):
    """A session's child is not left pinned between runs shorter than the pin: it is never pinned."""
    session = driver.open_session()
    try:
        for _ in range(3):
            out = session.run(job("1 + 1"))
            assert out.ok, out.error
            child = session._child
            assert child is not None and not child.pinned
            assert os.sched_getaffinity(child.pid) == driver._zygote.cpus
    finally:
        session.close()


def test_an_exited_child_is_never_pinned_by_pid(driver):
    """Once the child has exited its pid may be reaped and reused: `pin_here` looks at the pidfd,
    not at the zygote's exit report, which may not have come yet (here: the zygote is stopped, so
    the child stays a zombie and no report comes)."""
    child = driver._take(time.monotonic() + 30)
    zygote = driver._zygote
    os.kill(zygote.pid, signal.SIGSTOP)
    try:
        child.kill()
        poller = select.poll()
        poller.register(child.pidfd, select.POLLIN)
        assert poller.poll(5000)
        assert not child.exited.is_set()
        child.pin_here()
        assert not child.pinned
    finally:
        os.kill(zygote.pid, signal.SIGCONT)
        child.end()
        zygote.replenish()


def test_a_child_is_not_pinned_to_a_cpu_the_zygote_may_not_use():
    """The host thread's CPU outside the zygote's CPUs: the child stays where it may run."""
    mine = os.sched_getaffinity(0)
    first, other = sorted(mine)[:2]
    os.sched_setaffinity(0, {first})  # the zygote, started now, inherits this
    try:
        with ProcessDriver(workers=1) as d:
            assert d._zygote.cpus == {first}
            child = d._take(time.monotonic() + 30)
            try:
                os.sched_setaffinity(0, {other})
                child.pin_here()
                assert not child.pinned
                assert os.sched_getaffinity(child.pid) == {first}
            finally:
                child.end()
    finally:
        os.sched_setaffinity(0, mine)


def test_unpin_rereads_the_zygote_cpus_when_they_went_away(driver):
    """The zygote's CPUs as first read may no longer exist (a CPU taken away): the kernel refuses
    them (EINVAL), so `unpin` reads them again and gives the child those."""
    zygote = driver._zygote
    real = zygote.cpus
    child = driver._take(time.monotonic() + 30)
    try:
        child.pin_here()
        assert child.pinned and len(os.sched_getaffinity(child.pid)) == 1
        zygote.cpus = frozenset({os.cpu_count() + 64})  # a CPU this machine does not have
        child.unpin()
        assert zygote.cpus == real
        assert os.sched_getaffinity(child.pid) == real
    finally:
        zygote.cpus = real
        child.end()
        zygote.replenish()
