"""Run handles: a run started in the background, cancellable, awaitable, with its output as it comes.

`Sandbox.start` returns a `RunHandle`; `Sandbox.stream` returns one too, for ``async for``.
Output reaches the handle (and an ``on_output`` callback) as the guest writes it, within the
run's output limit, redacted like the final result.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any, Generator, NamedTuple

from sandbox.results import RunResult
from sandbox.runtime import RunControl
from sandbox.secrets import Redactor

if TYPE_CHECKING:  # asyncio and concurrent.futures load when a handle is made or awaited, not with the package
    from concurrent.futures import Future

_END = object()


class OutputChunk(NamedTuple):
    """Text the guest wrote to ``stream`` (``"stdout"`` or ``"stderr"``)."""

    stream: str
    text: str


class RunHandle:
    """A run in progress (made by `Sandbox.start` / `Sandbox.stream`).

    - `cancel()` stops the guest (within about 100 ms on every runtime); the result then has
      ``error.kind == "cancelled"`` and keeps the output written before.
    - `result(timeout=None)` blocks for the `RunResult` (`TimeoutError` when ``timeout`` passes);
      ``await handle`` is the asyncio form. A host error (bad arguments) is raised by both.
    - Iterating the handle (``for chunk in handle`` or ``async for chunk in handle``) yields
      `OutputChunk`s as the guest writes them, until the run ends.
    """

    def __init__(self, run_id: str, control: RunControl) -> None:
        self.run_id = run_id
        from concurrent.futures import Future

        self._control = control
        self._future: Future[RunResult] = Future()
        self._chunks: queue.SimpleQueue[Any] = queue.SimpleQueue()

    # -- control ---------------------------------------------------------------------------

    def cancel(self) -> bool:
        """Stop the run; False when it had already finished or been cancelled."""
        if self._future.done():
            return False
        return self._control.cancel()

    def done(self) -> bool:
        return self._future.done()

    def result(self, timeout: float | None = None) -> RunResult:
        """The run's `RunResult`, waiting up to ``timeout`` seconds (None: as long as it takes)."""
        return self._future.result(timeout)

    def __await__(self) -> Generator[Any, None, RunResult]:
        return self._wait().__await__()

    async def _wait(self) -> RunResult:
        import asyncio

        try:
            return await asyncio.shield(asyncio.wrap_future(self._future))
        except asyncio.CancelledError:
            await self._stop_after_cancel()
            raise

    async def _stop_after_cancel(self) -> None:
        """The awaiting task was cancelled: cancel the run and give it a moment to stop, so
        that no guest keeps running behind a cancelled task."""
        import asyncio

        self.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(self._future)), 1.0)
        except BaseException:  # noqa: BLE001 - the caller's cancellation is what matters
            pass

    # -- output ------------------------------------------------------------------------------

    def _emit(self, stream: str, text: str) -> None:
        if text:
            self._chunks.put(OutputChunk(stream, text))

    def _finish(self, result: RunResult | None, error: BaseException | None = None) -> None:
        self._chunks.put(_END)
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[OutputChunk]:
        while True:
            chunk = self._chunks.get()
            if chunk is _END:
                self._chunks.put(_END)
                return
            yield chunk

    def __aiter__(self) -> AsyncIterator[OutputChunk]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[OutputChunk]:
        import asyncio

        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    chunk = self._chunks.get_nowait()
                except queue.Empty:
                    chunk = await loop.run_in_executor(None, self._chunks.get)
                if chunk is _END:
                    self._chunks.put(_END)
                    return
                yield chunk
        except asyncio.CancelledError:
            await self._stop_after_cancel()
            self._chunks.put(_END)  # wakes the executor thread still waiting for a chunk
            raise


class StreamRedactor:
    """Redacts streamed output so that a secret split across writes is still caught.

    Text is held back until ``hold`` more characters follow it and cutting there does not
    change what the redactor finds (no value straddles the cut); `flush` releases the rest.
    """

    def __init__(self, redactor: Redactor, sink: Callable[[str, str], None], hold: int = 4096) -> None:
        self._redactor = redactor
        self._sink = sink
        self._hold = hold
        self._pending: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, stream: str, text: str) -> None:
        with self._lock:
            pending = self._pending.get(stream, "") + text
            cut = len(pending) - self._hold
            out = ""
            if cut >= self._hold:
                head, tail = pending[:cut], pending[cut:]
                redacted_head = self._redactor.text(head)
                if redacted_head + self._redactor.text(tail) == self._redactor.text(pending):
                    out, pending = redacted_head, tail
            self._pending[stream] = pending
        if out:
            self._sink(stream, out)

    def flush(self, truncated: bool = False) -> None:
        """Release what is held back (``truncated``: the output hit its cap, see `Redactor.text`)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for stream, text in pending.items():
            if text:
                self._sink(stream, self._redactor.text(text, truncated=truncated))
