"""`Session`: runs of one `Sandbox` that share guest state, and how that state is released."""

from __future__ import annotations

import logging
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sandbox._pipeline import OutputCallback, execute, prepare, running_loop, start
from sandbox.errors import SandboxClosed
from sandbox.handles import RunHandle
from sandbox.limits import Limits
from sandbox.results import RunResult
from sandbox.runtime import DriverSession, Job, Outcome

if TYPE_CHECKING:
    import asyncio

    from sandbox.policy import Principal
    from sandbox.sandbox import Sandbox

log = logging.getLogger("sandbox")


class Session:
    """Runs that share guest state (globals, imports, definitions). Made by `Sandbox.session()`.

    Runs in one session are serialised; use several sessions for parallelism. Closing the
    session (or its sandbox) discards the state. When the state is lost (a limit ended the
    session's worker or instance, or the sandbox released it: ``session_ttl``,
    ``max_sessions``), the next run starts fresh and its result has ``session_reset=True``
    and a notice at the start of its stderr. An unclosed session that is garbage-collected is
    released with a `ResourceWarning`.
    """

    def __init__(self, sandbox: Sandbox, state: DriverSession) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()
        self.id = uuid.uuid4().hex
        """Names this session in run records."""
        self.last_used = time.monotonic()
        self._box = _SessionBox(state)
        self._finalizer = weakref.finalize(self, _release_unclosed, self._box, self.id)

    @property
    def closed(self) -> bool:
        return self._box.closed

    @property
    def holds_state(self) -> bool:
        """True while the session keeps guest state (a worker or an instance) alive."""
        return not self._box.closed and self._box.state is not None

    def run(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """Like `Sandbox.run`, but globals from earlier runs of this session are visible."""
        sandbox = self._sandbox
        if sandbox._async_capabilities:
            sandbox._check_sync_context("session.run")
        self._check_open()
        return execute(sandbox, prepare(sandbox, code, inputs, limits, principal), self, None, on_output=on_output)

    async def arun(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """`run` for asyncio hosts; cancelling the awaiting task cancels the run."""
        import asyncio

        loop = asyncio.get_running_loop()
        self._check_open()
        spec = prepare(self._sandbox, code, inputs, limits, principal)
        return await start(self._sandbox, spec, self, loop, on_output)

    def start(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunHandle:
        """Like `Sandbox.start`, in this session."""
        self._check_open()
        spec = prepare(self._sandbox, code, inputs, limits, principal)
        return start(self._sandbox, spec, self, running_loop(), on_output)

    def close(self) -> None:
        """Discard the guest state. Idempotent."""
        with self._lock:
            self._finalizer.detach()
            self._box.close()

    def release(self, why: str) -> bool:
        """Drop the guest state but keep the session usable (its next run starts fresh and says
        so); False when a run is in progress."""
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if self._box.state is not None:
                self._box.state.close()
                self._box.state = None
                self._box.reset = True
                log.info("session %s released: %s", self.id, why)
            return True
        finally:
            self._lock.release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._box.closed:
            raise SandboxClosed("this Session is closed; open a new one with Sandbox.session()")

    def _driver_run(self, job: Job) -> Outcome:
        with self._lock:
            box = self._box
            if box.closed:
                raise SandboxClosed("this Session is closed; open a new one with Sandbox.session()")
            reset = box.reset
            if box.state is None:
                box.state = self._sandbox._driver.open_session()
            box.reset = False
            try:
                outcome = box.state.run(job)
            finally:
                self.last_used = time.monotonic()
        if reset and not outcome.session_reset:
            outcome = outcome.model_copy(update={"session_reset": True})
        return outcome


class _SessionBox:
    """A session's driver state, apart from the `Session` so that its finalizer can release it."""

    __slots__ = ("state", "closed", "reset")

    def __init__(self, state: DriverSession) -> None:
        self.state: DriverSession | None = state
        self.closed = False
        self.reset = False

    def close(self) -> None:
        self.closed = True
        state, self.state = self.state, None
        if state is not None:
            state.close()


def _release_unclosed(box: _SessionBox, session_id: str) -> None:
    if not box.closed:
        warnings.warn(f"sandbox Session {session_id} was not closed; its guest state was released",
                      ResourceWarning, stacklevel=2)
        box.close()
