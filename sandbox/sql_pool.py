"""The host side of the SQL worker processes (`sandbox.sql_worker`): start, hand out, kill, reap.

A `WorkerPool` belongs to one database of the SQL capability. It keeps one idle worker warm
(started when the pool is made, and again after a worker is discarded), hands a worker to
each query (starting more for concurrent queries, up to ``max_workers``), and kills and
reaps a worker that missed its deadline, failed, sent something malformed or too large, or
died. `close` kills every worker, idle or busy; a later query starts a fresh one. Workers are
started from one long-lived thread, since ``PR_SET_PDEATHSIG`` fires when the thread that
started the child ends, not only the process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from runtimes import wire
from sandbox.sql_worker import HEADER

_WORKER_SCRIPT = str(Path(__file__).with_name("sql_worker.py"))
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sandbox-sql-spawn")


class WorkerLost(Exception):
    """The worker did not answer properly: it died, or sent a malformed or oversized frame."""


class WorkerTimeout(Exception):
    """The worker did not answer before the deadline (it has been killed)."""


class _Worker:
    def __init__(self, config: dict[str, Any], generation: int) -> None:
        self.generation = generation
        self.proc = _SPAWNER.submit(
            subprocess.Popen, [sys.executable, "-I", _WORKER_SCRIPT], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={"MALLOC_ARENA_MAX": "1"},
        ).result()
        self.ready = False
        self._buffer = b""
        self.send({**config, "parent": os.getpid()})

    def send(self, frame: dict[str, Any]) -> None:
        body = json.dumps(frame, separators=(",", ":")).encode()
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(HEADER.pack(len(body)) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerLost(f"the query worker exited ({self.exit_reason()})") from exc

    def receive(self, deadline: float, limit: int) -> Any:
        """The next frame, decoded; `WorkerTimeout` at ``deadline``, `WorkerLost` when the worker
        exits or announces more than ``limit`` bytes (nothing beyond ``limit`` is read)."""
        header = self._read(HEADER.size, deadline)
        (size,) = HEADER.unpack(header)
        if size > limit:
            raise WorkerLost(f"the query worker sent {size} bytes, more than the {limit} allowed")
        try:
            return wire.loads(self._read(size, deadline))
        except (ValueError, wire.WireError) as exc:
            raise WorkerLost("the query worker sent a malformed answer") from exc

    def _read(self, size: int, deadline: float) -> bytes:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        chunks, got = [], 0
        while got < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise WorkerTimeout
            chunk = os.read(fd, min(size - got, 1 << 20))
            if not chunk:
                raise WorkerLost(f"the query worker exited ({self.exit_reason()})")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def exit_reason(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = self.proc.wait(1)
            return f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        return "no answer"

    def kill(self) -> None:
        """SIGKILL and reap."""
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        for stream in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]


def _kill_all(workers: set[_Worker]) -> None:
    for worker in list(workers):
        worker.kill()
    workers.clear()


class WorkerPool:
    """Worker processes for one database configuration (``config`` is the worker's first frame)."""

    def __init__(self, config: dict[str, Any], *, max_workers: int = 4, ready_seconds: float = 60.0) -> None:
        self._config = config
        self._max = max_workers
        self._ready_seconds = ready_seconds
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._generation = 0  # bumped by close(): a call in flight then does not start a new worker
        self._finalizer = weakref.finalize(self, _kill_all, self._all)

    def warm(self) -> None:
        """Start an idle worker unless one is there (or the pool is at ``max_workers``)."""
        with self._lock:
            if self._idle or len(self._all) >= self._max:
                return
            worker = _Worker(self._config, self._generation)
            self._all.add(worker)
            self._idle.append(worker)

    def query(self, request: dict[str, Any], deadline: float, limit: int) -> dict[str, Any]:
        """Send ``request`` to a worker and return its answer (at most ``limit`` bytes).

        Raises `WorkerTimeout` (the worker was killed) at ``deadline``, `WorkerLost` when the
        worker died or misbehaved, `RuntimeError` when ``max_workers`` queries already run.
        A worker whose answer is not ``ok`` or a denial is replaced, not reused.
        """
        worker = self._take()
        keep = False
        try:
            if not worker.ready:
                if worker.receive(min(deadline, time.monotonic() + self._ready_seconds), 64) != {"ready": True}:
                    raise WorkerLost("the query worker did not start")
                worker.ready = True
            worker.send(request)
            answer = worker.receive(deadline, limit)
            keep = bool(answer.get("ok")) or answer.get("kind") == "denied"
            return answer
        finally:
            self._give_back(worker, keep)
            if not keep and worker.generation == self._generation:
                with contextlib.suppress(OSError):
                    self.warm()

    def close(self) -> None:
        """Kill and reap every worker (idle or busy). The pool stays usable."""
        with self._lock:
            self._generation += 1
            self._idle.clear()
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.proc.poll() is None:
                    return worker
                self._all.discard(worker)
                worker.kill()
            if len(self._all) >= self._max:
                raise RuntimeError(f"{self._max} queries are already running on this database")
            worker = _Worker(self._config, self._generation)
            self._all.add(worker)
            return worker

    def _give_back(self, worker: _Worker, keep: bool) -> None:
        with self._lock:
            if keep and worker in self._all and not self._idle:
                self._idle.append(worker)
                return
            self._all.discard(worker)
        worker.kill()
