"""`Sandbox.warm`: after it returns True, what the runtime prepares ahead of runs is ready and
nothing of it is left running in the background (wasi spare instances, process children)."""

from __future__ import annotations

import pytest

from sandbox import Sandbox
from sandbox.errors import SandboxClosed


def test_restricted_has_nothing_to_prepare():
    with Sandbox("restricted") as sb:
        assert sb.warm(timeout=0) is True
    with pytest.raises(SandboxClosed):
        sb.warm()


def test_wasi_spares_ready_after_warm():
    pytest.importorskip("wasmtime")
    from sandbox.wasi._engine import get_runtime

    with Sandbox("wasi") as sb:
        spares = get_runtime().spares
        assert sb.warm(timeout=120) is True  # the first call makes the spares (none exist before a run ends)
        assert spares.target > 0 and spares.available == spares.target
        for _ in range(3):
            assert sb.run("1 + 1").value == 2  # each takes a spare and wakes the refill
        with sb.session() as session:
            assert session.run("x = 5\nx").value == 5
        assert sb.warm(timeout=120) is True
        assert spares.available == spares.target
        assert sb.warm(timeout=0) is True  # settled: nothing is due, so no wait at all


def test_process_children_ready_after_warm():
    from sandbox.process.child_handle import ChildHandle

    with Sandbox("restricted", isolation="process", workers=1) as sb:
        driver = sb._driver
        for _ in range(3):
            assert sb.run("1 + 1").value == 2  # each ends its child and asks the zygote for another
        with sb.session() as session:
            assert session.run("x = 5\nx").value == 5  # pins a child, and asks for its replacement
            assert sb.warm(timeout=60) is True
            zygote = driver._zygote
            with zygote.spares.mutex:
                waiting: list[ChildHandle | None] = list(zygote.spares.queue)
            assert len(waiting) == driver._spares
            assert all(c is not None and c.ready is not None and c.alive() for c in waiting)
            assert sb.warm(timeout=0) is True
