"""Daemon threads for host work a run may have to walk away from.

Capability calls and post-run steps (redaction, overlay diffs) run here so that the thread
serving the run can stop waiting at the run's deadline. A call still running then keeps its
thread until it returns on its own; its result goes nowhere. The threads are daemons (an
abandoned call never holds up interpreter exit), idle ones are reused, at most
`MAX_IDLE` wait for work, and one idle for `IDLE_SECONDS` exits (a quiet host holds none).

The hand-off is lean, because a run may make many calls. A thread that hands off work keeps a
partner worker (while it is free), so calls from one guest thread land on one warm thread. Each
worker has two flags (`sandbox._handoff`): one posted for a call, one posted when the call is done
(or when `Call.wake` is called). A waiter that finds its flag not yet posted sleeps on a pipe,
which a post writes to only while the waiter sleeps. The caller hands a call over and arms its own
flag with the GIL released across both, so the worker finds the GIL free. Pipes rather than locks
for the sleep, because writing to a pipe releases the GIL before the wake-up and the kernel treats
it as a synchronous wake-up: the woken thread finds the GIL free, where a lock wakes a thread
that must then wait for the GIL. A worker is also woken on its caller's CPU (its ``go`` flag
pins it for the wake-up, and it unpins itself before it runs the call), since waking a thread on
an idle CPU is slow in a VM (a round trip measured about 6 us pinned, the pin and unpin
included, against 17-21 us unpinned, on 2 vCPUs). For the same reason the caller, before it
sleeps on the ``done`` flag, yields its CPU (where the worker was just woken) for up to
`DONE_YIELD_US`: a call that ends within that time wakes no one (measured on 2 vCPUs: a
capability that runs 10 to 100 us costs 7 to 11 us on top of its own time instead of 18 to
30 us). The caller stops yielding as soon as a yield runs nothing else (the worker blocks, so
the caller sleeps instead of spinning), and after a yield that lasted a whole time slice of
another task (a busy host) its flag does not yield for its next waits (see `sandbox._handoff`).
Without the extension the flags are `_PipeFlag`s (the same states under a lock, and no pinning
or yielding).
"""

from __future__ import annotations

import math
import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")

MAX_IDLE = 8
IDLE_SECONDS = 2.0
DONE_YIELD_US = 50
"""How long a caller yields its CPU to the worker before it sleeps until the call ends."""


class _Flag(Protocol):
    def post(self) -> None: ...
    def close(self) -> None: ...


class _PipeFlag:
    """`sandbox._handoff.Flag` in Python, where the extension is not built: the same states
    (empty, posted, sleeping) under a lock, waited for by `_pipe_post_and_wait`; it pins nothing
    and its waiter does not yield (``pin`` and ``yield_us`` are accepted and ignored)."""

    __slots__ = ("_fd", "state", "lock", "poller")

    def __init__(self, fd: int, *, pin: bool = False, yield_us: int = 0) -> None:
        self._fd = fd
        self.state = 0
        self.lock = threading.Lock()
        self.poller: Any = None
        """The waiter's ``select.poll`` on the read end (made by its first sleep)."""

    def post(self) -> None:
        with self.lock:
            sleeping, self.state = self.state == 2, 1
        if sleeping and self._fd >= 0:
            try:
                os.write(self._fd, b"x")
            except BlockingIOError:  # a full pipe wakes the waiter anyway
                pass

    def close(self) -> None:
        self._fd = -1


def _pipe_post_and_wait(post: Any, wait: Any, fd: int, timeout_ms: int, /) -> bool:
    """`sandbox._handoff.post_and_wait` for `_PipeFlag`s."""
    if post is not None:
        post.post()
    with wait.lock:
        if wait.state == 1:
            wait.state = 0
            return True
        wait.state = 2
    if wait.poller is None:
        wait.poller = select.poll()
        wait.poller.register(fd, select.POLLIN)
    if wait.poller.poll(timeout_ms):
        try:
            os.read(fd, 64)
        except BlockingIOError:
            pass
    with wait.lock:
        posted, wait.state = wait.state == 1, 0
    return posted


_new_flag: Callable[..., _Flag]
_post_and_wait: Callable[[Any, Any, int, int], bool]
try:
    from sandbox import _handoff
except ImportError:  # not built (pip install -e . / make setup builds it)
    _new_flag, _post_and_wait = _PipeFlag, _pipe_post_and_wait
else:
    _new_flag, _post_and_wait = _handoff.Flag, _handoff.post_and_wait

_lock = threading.Lock()
_idle: list[_Worker] = []
_workers: set[_Worker] = set()
"""Every worker whose thread runs (for closing their pipes in a forked child)."""
_local = threading.local()


class Call(Generic[T]):
    """One piece of work handed to a worker: its outcome once done, and the waiter's side.

    The work is handed over by the first `wait` or `wait_until` (or `release`); a wait returns
    when the work is done, when `wake` is called, or at its time, whichever comes first. Only the
    thread that started the call may wait for it, and it must wait for it or `release` it.
    """

    __slots__ = ("_func", "_args", "_worker", "_given", "_woken", "_ok", "_value", "done")

    def __init__(self, func: Callable[..., T], args: tuple[Any, ...], worker: _Worker) -> None:
        self._func: Callable[..., T] | None = func
        self._args = args
        self._worker = worker
        self._given = False
        self._woken = False
        self._ok = False
        self._value: Any = None
        self.done = False

    def _run(self) -> None:
        func, args = self._func, self._args
        self._func = self._args = None  # type: ignore[assignment]
        try:
            self._value = func(*args)  # type: ignore[misc]
            self._ok = True
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
            self._value = exc

    def wake(self) -> None:
        """Make `wait` return now (thread-safe, idempotent)."""
        with _lock:
            self._woken = True
            if self._worker.retired:
                return
            self._worker.done.post()

    def release(self) -> None:
        """Hand the work over without waiting for it (it runs; its outcome goes nowhere)."""
        if not self._given:
            self._given = True
            self._worker.go.post()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the work (or `wake`); True when it is done."""
        return self.wait_until(time.monotonic() + timeout)

    def wait_until(self, deadline: float) -> bool:
        """`wait` until the `time.monotonic` instant ``deadline``; True when the work is done."""
        worker = self._worker
        timeout = deadline - time.monotonic()
        if not self._given:
            if self._woken or timeout <= 0:
                self.release()
                return self.done
            self._given = True
            post: _Flag | None = worker.go  # handed over and waited for with the GIL released across both
        elif self.done or self._woken or timeout <= 0:
            return self.done
        else:
            post = None
        while True:
            _post_and_wait(post, worker.done, worker.done_r, math.ceil(timeout * 1000))
            if self.done:
                return True
            if self._woken:
                return False
            # No post (time out, signal), or one for an earlier call (abandoned or woken): the
            # work was handed over once; wait again for what is left of the time.
            post = None
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                return False

    def result(self) -> T:
        """The work's return value, or raises its exception. Only once it is done."""
        if not self.done:
            raise RuntimeError("the call is not done")
        if self._ok:
            return self._value
        raise self._value


class _Worker:
    """A daemon thread that runs the calls given to it, one at a time.

    ``busy`` (under `_lock`): it was taken for a call that has not finished. ``owned``: a
    thread keeps it as its partner, so when free it waits for that thread's next call instead
    of joining `_idle`. ``retired``: its thread has exited or is exiting. Its pipes are closed
    when nothing refers to it any more.
    """

    __slots__ = ("go_r", "go_w", "done_r", "done_w", "go", "done", "next_call", "busy", "owned", "retired")

    def __init__(self) -> None:
        self.go_r, self.go_w = os.pipe()
        self.done_r, self.done_w = os.pipe()
        for fd in (self.go_r, self.go_w, self.done_r, self.done_w):
            os.set_blocking(fd, False)
        self.go = _new_flag(self.go_w, pin=True)
        self.done = _new_flag(self.done_w, yield_us=DONE_YIELD_US)
        self.next_call: Call[Any] | None = None
        """The call its caller prepared (`start`); taken when the caller posts ``go``."""
        self.busy = True
        self.owned = True
        self.retired = False
        with _lock:
            _workers.add(self)
        threading.Thread(target=self._serve, name="sandbox-host-call", daemon=True).start()

    def _serve(self) -> None:
        try:
            self._serve_calls()
        finally:  # however it leaves, nothing posts or pins this thread again
            with _lock:
                self._retire()
            self.go.close()

    def _serve_calls(self) -> None:
        idle_ms = int(IDLE_SECONDS * 1000)
        go, go_r = self.go, self.go_r
        got = _post_and_wait(None, go, go_r, idle_ms)
        while True:
            if not got:
                with _lock:
                    if not self.busy:  # nobody took this thread meanwhile: leave
                        self._retire()
                        # Nobody waits on it and `start` skips a retired worker, so its pipes
                        # can go now, not when the last reference does (the thread-local of a
                        # long-lived host thread it was the partner of may keep it for good).
                        self.close()
                        return
                got = _post_and_wait(None, go, go_r, idle_ms)  # taken just now: its work is on the way
                continue
            call, self.next_call = self.next_call, None
            if call is None:
                got = _post_and_wait(None, go, go_r, idle_ms)
                continue
            call._run()
            with _lock:
                # Free before the waiter wakes, so its next call finds this worker available.
                self.busy = False
                leave = False
                if not self.owned:
                    if len(_idle) >= MAX_IDLE:
                        self._retire()
                        leave = True
                    else:
                        _idle.append(self)
                call.done = True
            del call
            if leave:
                self.done.post()
                return
            got = _post_and_wait(self.done, go, go_r, idle_ms)

    def _retire(self) -> None:  # under _lock
        self.retired = True
        _workers.discard(self)
        if self in _idle:
            _idle.remove(self)

    def close(self) -> None:
        self.go.close()
        self.done.close()
        for fd in (self.go_r, self.go_w, self.done_r, self.done_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self.go_r = self.go_w = self.done_r = self.done_w = -1

    def __del__(self) -> None:
        if self.go_r >= 0:
            self.close()


def start(func: Callable[..., T], *args: Any) -> Call[T]:
    """Prepare ``func(*args)`` for a daemon thread: the calling thread's partner when it is free,
    else an idle worker, else a new one. It runs once the call is waited for or released."""
    partner: _Worker | None = getattr(_local, "partner", None)
    worker = partner
    with _lock:
        if worker is not None and (worker.busy or worker.retired):
            worker.owned = False  # busy with an abandoned call, or gone: it joins the idle list when done
            worker = None
        if worker is None and _idle:
            worker = _idle.pop()
        if worker is not None:
            worker.busy = worker.owned = True
    if worker is None:
        worker = _Worker()
    if worker is not partner:
        _local.partner = worker
    call: Call[T] = Call(func, args, worker)
    worker.next_call = call  # it runs once the call is waited for or released
    return call


def submit(func: Callable[[], T]) -> Call[T]:
    """Run ``func()`` on a daemon thread (see `start`); for one-off work such as post-run steps."""
    return start(func)


def wait(call: Call[Any], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``call``; True when it is done."""
    return call.wait(timeout)


def _after_fork_in_child() -> None:
    # Workers do not survive a fork: a forked child starts with none, and closes their pipes.
    global _lock, _idle, _workers, _local
    for worker in list(_workers):
        worker.close()
    _lock = threading.Lock()
    _idle = []
    _workers = set()
    _local = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
