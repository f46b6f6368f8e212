"""Run records across a pool: workers build and redact them, one key holder chains and signs.

Each worker's `Sandbox` writes its records into a `RecordBuffer`; the worker takes the
record of each run as soon as the run ends (already redacted on the worker, like the result)
and sends it to the key holder:

- the driver, when the pool's ``records=`` is a `RecordSink` such as
  ``JsonlSink("runs.jsonl", signing_key=...)``: the record travels back with the result and
  the pool emits it before handing the result out;
- a `RecordActor`, when ``records=`` is its handle: the worker sends the record to the actor
  and waits for it to be chained before returning the result.

Either way there is one chain for the whole pool, which ``sandbox verify`` checks.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

from sandbox.audit import JsonlSink, RunRecord


class RecordBuffer:
    """A `RecordSink` on the worker that keeps each run's record until `take` claims it."""

    def __init__(self) -> None:
        self._records: dict[str, RunRecord] = {}
        self._lock = threading.Lock()

    def emit(self, record: RunRecord) -> None:
        with self._lock:
            self._records[record.run_id] = record

    def take(self, run_id: str) -> RunRecord | None:
        """The record of run ``run_id`` (None when the run emitted none), removed from the buffer."""
        with self._lock:
            return self._records.pop(run_id, None)


class RecordActor:
    """The key holder as a Ray actor: appends records to one signed JSONL chain.

    Start it with `RecordActor.start`; the signing key is read from a file on the actor's
    node, so the key itself never enters Ray's object store or task arguments.
    """

    def __init__(self, path: str, signing_key_file: str | None) -> None:
        self._sink = JsonlSink(path, signing_key=signing_key_file)

    @staticmethod
    def start(
        path: str | os.PathLike[str],
        *,
        signing_key_file: str | os.PathLike[str] | None = None,
        name: str | None = None,
        namespace: str | None = None,
    ) -> Any:
        """Start the actor and return its handle (pass it as ``RaySandboxPool(records=...)``).

        ``path`` and ``signing_key_file`` are paths on the node where the actor runs (the
        driver's node for a local cluster). A path that is not a key file raises `TypeError`
        here: a key object or its bytes would travel in the actor's arguments.
        """
        if signing_key_file is not None and not isinstance(signing_key_file, (str, os.PathLike)):
            raise TypeError("signing_key_file must be the path of a PEM file on the actor's node, "
                            f"not a {type(signing_key_file).__name__}: the key must not travel")
        options: dict[str, Any] = {"num_cpus": 0, "max_restarts": -1}
        if name is not None:
            options.update(name=name, namespace=namespace, get_if_exists=True)
        key = os.fspath(signing_key_file) if signing_key_file is not None else None
        return ray.remote(RecordActor).options(**options).remote(os.fspath(path), key)

    def emit(self, record: RunRecord) -> None:
        """Chain, sign and append one record."""
        self._sink.emit(record)

    def head(self) -> str:
        """The hash of the last record in the chain."""
        return self._sink.head
