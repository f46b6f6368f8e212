"""Daemon threads for host work a run may have to walk away from.

Capability calls and post-run steps (redaction, overlay diffs) run here so that the thread
serving the run can stop waiting at the run's deadline. A call still running then keeps its
thread until it returns on its own; its result goes nowhere. The threads are daemons (an
abandoned call never holds up interpreter exit), idle ones are reused, at most
`MAX_IDLE` wait for work, and one idle for `IDLE_SECONDS` exits (a quiet host holds none).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

MAX_IDLE = 8
IDLE_SECONDS = 2.0

_idle: list[queue.SimpleQueue] = []
_lock = threading.Lock()


def submit(func: Callable[[], T]) -> Future[T]:
    """Run ``func()`` on a daemon thread; its return value or exception lands in the future."""
    future: Future[T] = Future()
    with _lock:
        inbox = _idle.pop() if _idle else None
    if inbox is None:
        inbox = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(inbox,), name="sandbox-host-call", daemon=True).start()
    inbox.put((func, future))
    return future


def _serve(inbox: queue.SimpleQueue) -> None:
    while True:
        try:
            func, future = inbox.get(timeout=IDLE_SECONDS)
        except queue.Empty:
            with _lock:
                if inbox in _idle:  # nobody took this thread meanwhile: leave
                    _idle.remove(inbox)
                    return
            continue  # taken just now: its work is on the way
        _run(func, future)
        del func, future
        with _lock:
            if len(_idle) >= MAX_IDLE:
                return
            _idle.append(inbox)


def _run(func: Callable[[], Any], future: Future) -> None:
    try:
        result = func()
    except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
        future.set_exception(exc)
    else:
        future.set_result(result)


def wait(future: Future, timeout: float, wake: threading.Event | None = None) -> bool:
    """Wait up to ``timeout`` seconds for ``future`` (or until ``wake`` is set); True when it is done."""
    if future.done():
        return True
    event = wake if wake is not None else threading.Event()
    future.add_done_callback(lambda _f: event.set())
    event.wait(max(0.0, timeout))
    return future.done()
