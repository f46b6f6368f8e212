"""What runs inside each pool actor: warm sandboxes, sessions, records sent on.

`SandboxWorker` is made into a Ray actor by `RaySandboxPool`. It builds one `Sandbox` per
spec when it starts (so the first run finds a warm zygote or engine), runs code in them, and
hands back results that were redacted here, on the worker. Secrets are read here at each run
start, from this node's environment, files or providers: their values never leave it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict

from sandbox.audit import RunRecord
from sandbox.errors import SandboxClosed
from sandbox.policy import RateStore
from sandbox.ray._records import RecordBuffer
from sandbox.ray._spec import SandboxSpec
from sandbox.results import RunResult
from sandbox.sandbox import Sandbox, Session
from sandbox.transform import TransformResult


class WorkerInfo(BaseModel):
    """One pool actor as it reported itself when ready: where it runs and the isolation
    layers each of its sandboxes applies (``{spec name: layers}``)."""

    model_config = ConfigDict(frozen=True)

    index: int
    pid: int
    node_id: str
    layers: dict[str, tuple[str, ...]]


class Reply(BaseModel):
    """A run's result and its record (the record only when the driver is the key holder)."""

    model_config = ConfigDict(frozen=True)

    result: RunResult | TransformResult
    record: RunRecord | None = None


class SandboxWorker:
    """The body of one pool actor. ``records`` is ``"driver"`` (records travel back with the
    result), a `RecordActor` handle (records go there) or None (no records)."""

    def __init__(self, index: int, specs: Mapping[str, SandboxSpec], records: Any,
                 rate_store: RateStore | None) -> None:
        self._index = index
        self._records = records
        self._buffer = RecordBuffer() if records is not None else None
        self._sandboxes: dict[str, Sandbox] = {}
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()
        try:
            for name, spec in specs.items():
                self._sandboxes[name] = spec.build(records=self._buffer, rate_store=rate_store)
        except BaseException:
            self.close()
            raise

    def ready(self) -> WorkerInfo:
        """Where this worker runs and which layers its sandboxes apply."""
        return WorkerInfo(
            index=self._index, pid=os.getpid(), node_id=ray.get_runtime_context().get_node_id(),
            layers={name: tuple(sb._driver.layers) for name, sb in self._sandboxes.items()},
        )

    def run(self, spec: str, code: str, inputs: Mapping[str, Any] | None, principal: Any, limits: Any) -> Reply:
        """One run in the named spec's sandbox; ``principal`` and ``limits`` override the spec's."""
        result = self._sandbox(spec).run(code, inputs=inputs, principal=principal, limits=limits)
        return self._reply(result, result.run_id)

    def run_batch(self, spec: str, items: list[tuple[str, Any, Any, Any]]) -> list[Reply]:
        """Several runs, one after the other, in one actor call: ``(code, inputs, principal, limits)`` each."""
        return [self.run(spec, *item) for item in items]

    def transform(self, spec: str, code: str, rows: list[dict[str, Any]]) -> Reply:
        """`Sandbox.transform` over ``rows`` (output rows as dicts; the caller validates them)."""
        result = self._sandbox(spec).transform(code, rows)
        return self._reply(result, result.run.run_id)

    def open_session(self, spec: str) -> str:
        """Open a session on this worker; returns its id."""
        session = self._sandbox(spec).session()
        with self._lock:
            self._sessions[session.id] = session
        return session.id

    def session_run(self, session_id: str, code: str, inputs: Mapping[str, Any] | None, principal: Any,
                    limits: Any) -> Reply:
        """A run in an open session (`SandboxClosed` when this worker does not hold it)."""
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise SandboxClosed("this session is not open on its worker (closed, or the worker restarted)")
        result = session.run(code, inputs=inputs, principal=principal, limits=limits)
        return self._reply(result, result.run_id)

    def close_session(self, session_id: str) -> None:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session is not None:
            session.close()

    def close(self) -> None:
        """Close every session and sandbox (zygotes and engines go with them)."""
        for session in list(self._sessions.values()):
            session.close()
        for sandbox in self._sandboxes.values():
            sandbox.close()

    def _sandbox(self, spec: str) -> Sandbox:
        try:
            return self._sandboxes[spec]
        except KeyError:
            raise KeyError(f"no spec named {spec!r} in this pool: choose from {sorted(self._sandboxes)}") from None

    def _reply(self, result: RunResult | TransformResult, run_id: str) -> Reply:
        record = self._buffer.take(run_id) if self._buffer is not None else None
        if record is not None and self._records != "driver":
            ray.get(self._records.emit.remote(record))
            record = None
        return Reply(result=result, record=record)
