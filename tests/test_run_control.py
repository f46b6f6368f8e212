"""`RunControl`: every hook registered before or while a run is cancelled is called exactly once."""

from __future__ import annotations

import threading

from sandbox.runtime import RunControl


def test_hooks_run_once_on_cancel_and_a_removed_hook_not_at_all() -> None:
    control = RunControl(1e12)
    calls: list[str] = []
    control.on_cancel(lambda: calls.append("a"))
    remove = control.on_cancel(lambda: calls.append("b"))
    control.on_cancel(lambda: calls.append("c"))
    remove()
    remove()  # a second removal does nothing
    assert control.cancel() is True
    assert control.cancel() is False
    assert calls == ["a", "c"]
    control.on_cancel(lambda: calls.append("late"))  # already cancelled: called at once
    assert calls == ["a", "c", "late"]


def test_a_failing_hook_does_not_keep_the_others_from_running() -> None:
    control = RunControl(1e12)
    calls: list[int] = []
    control.on_cancel(lambda: 1 / 0)  # type: ignore[func-returns-value]
    control.on_cancel(lambda: calls.append(1))
    control.cancel()
    assert calls == [1]


def test_registrations_racing_a_cancel_are_each_called_exactly_once() -> None:
    for _ in range(200):
        control = RunControl(1e12)
        counts = [0] * 64
        start = threading.Barrier(3)

        def register(first: int) -> None:
            start.wait()
            for i in range(first, 64, 2):
                control.on_cancel(lambda i=i: counts.__setitem__(i, counts[i] + 1))

        threads = [threading.Thread(target=register, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        start.wait()
        control.cancel()
        for thread in threads:
            thread.join()
        assert counts == [1] * 64
