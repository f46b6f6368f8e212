"""A stand-in runtime for host-side tests of secrets and egress.

The "guest" is a Python function ``guest(g)`` run on the host: ``g.secrets.<name>`` are opaque
handle objects, ``g.call(name, *args, **kwargs)`` goes through the job's bridge exactly as a
runtime does (handles become ``{SECRET_MARKER: token}`` on the wire), ``g.print`` collects stdout.
What the function returns is the run's value; a `CapabilityFault` it lets escape ends the run
with ``policy_denied`` (for ``PolicyDenied``) or ``guest_exception``. This pins the host side
without depending on any real runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import sandbox.sandbox as sandbox_module
from runtimes.wire import plain
from sandbox.results import ErrorInfo
from sandbox.runtime import CapabilityFault, Job, Outcome


class FakeHandle:
    __slots__ = ("_name", "_token", "_description")

    def __init__(self, name: str, token: str, description: str) -> None:
        self._name, self._token, self._description = name, token, description

    def __repr__(self) -> str:
        return self._description


class Guest:
    def __init__(self, job: Job, state: dict[str, Any]) -> None:
        self.job = job
        self.state = state
        self.out: list[str] = []
        self.err: list[str] = []
        self.secrets = type("secrets", (), {})()
        for spec in job.secrets:
            setattr(self.secrets, spec.name, FakeHandle(spec.name, spec.token, spec.description))

    def print(self, *args: Any, end: str = "\n", file: str = "stdout") -> None:
        (self.out if file == "stdout" else self.err).append(" ".join(str(a) for a in args) + end)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        token = lambda obj: obj._token if isinstance(obj, FakeHandle) else None  # noqa: E731
        wire_args = plain(list(args), handle_token=token)
        wire_kwargs = plain(dict(kwargs), handle_token=token)
        return self.job.bridge.call(name, wire_args, wire_kwargs)


class FakeDriver:
    name = "fake"
    isolation = "none"

    def __init__(self) -> None:
        self.guest: Callable[[Guest], Any] = lambda g: None
        self.jobs: list[Job] = []
        self.truncate_at: int | None = None

    def run(self, job: Job, state: dict[str, Any] | None = None) -> Outcome:
        self.jobs.append(job)
        g = Guest(job, state if state is not None else {})
        error = None
        value = None
        try:
            value = plain(self.guest(g), lenient=True)
        except CapabilityFault as fault:
            kind = "policy_denied" if fault.guest_type == "PolicyDenied" else "guest_exception"
            error = ErrorInfo(kind=kind, type=fault.guest_type, message=fault.message)
        except Exception as exc:
            error = ErrorInfo(kind="guest_exception", type=type(exc).__name__, message=str(exc))
        stdout = "".join(g.out)
        truncated = False
        if self.truncate_at is not None and len(stdout) > self.truncate_at:
            stdout, truncated = stdout[: self.truncate_at], True
        return Outcome(
            ok=error is None, value=value if error is None else None, stdout=stdout, stderr="".join(g.err),
            output_truncated=truncated, error=error,
        )

    def open_session(self) -> FakeSession:
        return FakeSession(self)

    def close(self) -> None:
        pass


class FakeSession:
    def __init__(self, driver: FakeDriver) -> None:
        self.driver = driver
        self.state: dict[str, Any] = {}

    def run(self, job: Job) -> Outcome:
        return self.driver.run(job, self.state)

    def close(self) -> None:
        pass


@contextmanager
def fake_driver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDriver]:
    driver = FakeDriver()
    monkeypatch.setattr(sandbox_module, "_make_driver", lambda *a, **k: driver)
    yield driver
