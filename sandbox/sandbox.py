"""The public entry point: `Sandbox` runs guest code, `Session` keeps guest state across runs.

This module is the facade: configuration checks and the public methods. The run pipeline is in
`sandbox._pipeline`, sessions in `sandbox._session`, the driver factory in `sandbox._drivers`;
`Session`, `POST_RUN_GRACE` and `SESSION_RESET_NOTICE` are re-exported here.

A `Sandbox` is configured once (runtime, isolation, limits, capabilities, secrets, egress) and
validated at construction: bad host input raises `ConfigurationError` (a `ValueError`) or `TypeError` with what to change.
Each `run` then builds a `Job`, hands it to the runtime's driver and returns a `RunResult`;
nothing the guest does raises on the host.

Secrets (see `sandbox.secrets`): at run start a `SecretBroker` reads every secret's value and
issues one token per secret; the driver exposes them to the guest as ``secrets.<name>`` handles.
The capability bridge (`sandbox._bridge`) resolves handles in capability arguments (scope, TTL
and use checks), and redacts capability results and fault messages before they reach the guest.
When the run ends the tokens are revoked, and stdout, stderr, the value and the error of the `RunResult` are redacted.

Policy and records (see `sandbox.policy`, `sandbox.audit`): with a `Policy`, each run gets a
`PolicyState` that the bridge asks about every call once its arguments are validated (allow,
deny with a reason the guest sees as `PolicyDenied`, or ask an approver; the escalation rule
ends the run with ``policy_denied``). With a `RecordSink`, a `RunRecorder` notes every call
and one redacted `RunRecord` per run (Session runs included) is emitted after the run.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from sandbox._drivers import check_modules as _check_modules
from sandbox._drivers import make_driver as _make_driver
from sandbox._pipeline import (
    POST_RUN_GRACE,
    SESSION_RESET_NOTICE,
    OutputCallback,
    RunSpec,
    execute,
    prepare,
    running_loop,
    start,
)
from sandbox._session import Session
from sandbox.capabilities import (
    ApiDescription,
    Capability,
    collect,
    describe,
)
from sandbox.errors import ConfigurationError, SandboxClosed
from sandbox.handles import RunHandle
from sandbox.limits import DEFAULT_LIMITS, Limits
from sandbox.results import RunResult
from sandbox.runtime import KNOWN_LAYERS
from sandbox.secrets import Secret, scope_allows_capability, validate_secrets

if TYPE_CHECKING:  # imported lazily: a sandbox without policy or records (or asyncio) does not pay for them
    import asyncio

    from pydantic import BaseModel

    from sandbox.audit import RecordSink
    from sandbox.egress import Egress, EgressClient
    from sandbox.overlay import Overlay
    from sandbox.policy import Policy, Principal
    from sandbox.results import FileChange
    from sandbox.transform import TransformResult

__all__ = ["POST_RUN_GRACE", "RUNTIMES", "SESSION_RESET_NOTICE", "IsolationName", "OutputCallback", "RuntimeName",
           "Sandbox", "Session"]

log = logging.getLogger("sandbox")

RuntimeName = Literal["restricted", "wasi"]
IsolationName = Literal["none", "process"]
RUNTIMES: tuple[str, ...] = ("restricted", "wasi")


class Sandbox:
    """Runs untrusted Python under one runtime, one set of limits and one set of capabilities.

    Args:
        runtime: ``"restricted"`` (default; RestrictedPython in this process) or ``"wasi"``
            (CPython compiled to WebAssembly, inside Wasmtime). Anything else raises `ConfigurationError`.
        limits: per-run ceilings; default ``Limits()`` (5 s CPU, 10 s wall, 256 MiB).
        capabilities: host functions the guest may call, as `Capability` objects or plain
            fully type-hinted functions. Duplicate names raise `ConfigurationError`; missing type hints
            raise `TypeError`.
        isolation: ``None`` for the runtime's own boundary, or ``"process"`` (restricted only):
            each run in a confined child process with rlimits, seccomp and a network namespace.
        workers: confined children kept for concurrent runs (``isolation="process"`` only); >= 1.
        require: isolation layers that must be applied (e.g. ``("seccomp", "netns")``); when
            one cannot be applied on this machine, construction raises `IsolationUnavailable`
            instead of running with less isolation.
        modules: optional heavy modules the guest may import, from `OPTIONAL_MODULES`
            (``"numpy"``, ``"pandas"``); default none. Offered only with
            ``isolation="process"``, where the OS layers contain them; with any other
            runtime or isolation, an unknown name, or a module not installed on the host
            (``pip install 'sandbox[dataframes]'``), construction raises `ConfigurationError`.
        secrets: ``{name: Secret(...)}``; the guest sees ``secrets.<name>``, an opaque handle
            that only the capabilities in the secret's scope can resolve, on the host. Values are
            read at the start of each run (`SecretUnavailable` if one cannot be read) and
            redacted from everything the run returns. A scope naming a capability this sandbox
            does not grant raises `ConfigurationError`.
        egress: an `Egress` policy grants the built-in ``http`` capabilities (``http.request``,
            and ``http.get`` / ``http.post`` when those methods are allowed); without it the
            guest has no network at all.
        policy: a `sandbox.policy.Policy` (or the path of a TOML policy file) that decides every
            capability call at call time; a rule constraining an argument a capability does not
            have raises `ConfigurationError`. Without one, every granted capability is allowed.
        principal: who the runs are for (`sandbox.policy.Principal`, a dict of its fields, or an
            id string): seen by the policy and written into every record.
        records: a `sandbox.audit.RecordSink` (e.g. ``JsonlSink("runs.jsonl", signing_key=...)``)
            that receives one `RunRecord` per run, redacted like the result.
        files: a `sandbox.overlay.Overlay` grants ``files.read/write/delete/list`` over host
            directories mounted read-only; each run writes to its own scratch layer, listed in
            `RunResult.changes`, and nothing reaches the host until `apply`.
        session_ttl: seconds a `Session` may sit idle before its guest state is released (its
            next run starts fresh, with ``RunResult.session_reset``); default: no expiry.
        max_sessions: most sessions holding guest state at once; opening one more releases
            the state of the least recently used idle session (same flag on its next run), or
            raises `SandboxError` when all are running.
        timings: when True, every `RunResult` carries ``timings``, the seconds spent in each
            phase of the run (see `RunResult.timings`); off (the default), nothing is measured.

    Every run method takes the same per-run keywords: ``inputs``; ``limits`` (a `Limits` whose
    every field is at most this sandbox's own, else `ConfigurationError` naming the field);
    ``principal`` (who this run is for, in place of the sandbox's; seen by the policy and the
    record); ``on_output(stream, text)``, called as the guest writes output.

    One `Sandbox` serves many runs, from several threads at once. Call `close()` (or use it as
    a context manager) to release workers and engines.
    """

    def __init__(
        self,
        runtime: RuntimeName = "restricted",
        *,
        limits: Limits | None = None,
        capabilities: Iterable[Capability | Callable[..., Any]] = (),
        isolation: IsolationName | None = None,
        workers: int = 1,
        require: Iterable[str] = (),
        modules: Iterable[str] = (),
        secrets: Mapping[str, Secret] | None = None,
        egress: Egress | None = None,
        policy: Policy | str | os.PathLike[str] | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        records: RecordSink | None = None,
        files: Overlay | None = None,
        session_ttl: float | None = None,
        max_sessions: int | None = None,
        timings: bool = False,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ConfigurationError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        if isolation not in (None, "none", "process"):
            raise ConfigurationError(f"unknown isolation {isolation!r}: use None or 'process'")
        if isolation == "process" and runtime != "restricted":
            raise ConfigurationError(
                f"isolation='process' applies to the restricted runtime; {runtime!r} is isolated by WebAssembly"
            )
        if limits is not None and not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sandbox.Limits, not {type(limits).__name__}")
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ConfigurationError(f"workers must be an int >= 1, got {workers!r}")
        if workers != 1 and isolation != "process":
            raise ConfigurationError("workers applies only to isolation='process'")
        required = frozenset(require)
        unknown = required - KNOWN_LAYERS
        if unknown:
            raise ConfigurationError(f"unknown isolation layer(s) {sorted(unknown)}: choose from {sorted(KNOWN_LAYERS)}")
        extra_modules = _check_modules(modules, runtime, isolation)
        if session_ttl is not None and (isinstance(session_ttl, bool) or not isinstance(session_ttl, (int, float))
                                        or not math.isfinite(session_ttl) or session_ttl <= 0):
            raise ConfigurationError(f"session_ttl must be a positive number of seconds or None, got {session_ttl!r}")
        if max_sessions is not None and (isinstance(max_sessions, bool) or not isinstance(max_sessions, int)
                                         or max_sessions < 1):
            raise ConfigurationError(f"max_sessions must be an int >= 1 or None, got {max_sessions!r}")
        self._egress: EgressClient | None = None
        if egress is not None:  # imported here: httpx is paid for only by sandboxes with egress
            from sandbox.egress import Egress, EgressClient

            if not isinstance(egress, Egress):
                raise TypeError(f"egress must be a sandbox.Egress, not {type(egress).__name__}")
        self.runtime = runtime
        self.limits = limits or DEFAULT_LIMITS
        self.secrets = validate_secrets(secrets)
        self.egress = egress
        if egress is not None:
            self._egress = EgressClient(egress)
        if files is not None:
            from sandbox.overlay import Overlay

            if not isinstance(files, Overlay):
                raise TypeError(f"files must be a sandbox.overlay.Overlay, not {type(files).__name__}")
        self.files = files
        granted = list(capabilities) + (self._egress.capabilities if self._egress is not None else [])
        granted += files.capabilities if files is not None else []
        self.capabilities = collect(granted)
        self._capability_names = tuple(self.capabilities)
        self._async_capabilities = any(cap.is_async for cap in self.capabilities.values())
        for secret_name, secret in self.secrets.items():
            for pattern in secret.capabilities:
                if not any(scope_allows_capability([pattern], cap) for cap in self.capabilities):
                    hint = " (pass egress=Egress(...) to grant http)" if pattern.split(".")[0] == "http" else ""
                    raise ConfigurationError(
                        f"secret {secret_name!r} is scoped to capability {pattern!r}, which this sandbox does not grant{hint}"
                    )
        self.policy: Policy | None = None
        self.principal: Principal | None = None
        self.records: RecordSink | None = None
        if policy is not None or principal is not None or records is not None:
            from sandbox.audit import check_sink
            from sandbox.policy import coerce_policy, coerce_principal

            self.policy = coerce_policy(policy)
            if self.policy is not None:
                self.policy.validate_for(self.capabilities)
            self.principal = coerce_principal(principal)
            self.records = check_sink(records)
        self.modules = extra_modules
        self._driver = _make_driver(runtime, isolation, workers, required, extra_modules, self._capability_names)
        self.isolation = self._driver.isolation
        if not isinstance(timings, bool):
            raise ConfigurationError(f"timings must be True or False, got {timings!r}")
        self.timings = timings
        self.session_ttl = float(session_ttl) if session_ttl is not None else None
        self.max_sessions = max_sessions
        self._sessions: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self._sessions_lock = threading.Lock()
        self._closed = False

    @classmethod
    async def aopen(cls, runtime: RuntimeName = "restricted", **kwargs: Any) -> Sandbox:
        """``Sandbox(runtime, **kwargs)`` for asyncio hosts: construction (which for ``wasi``
        may load or, on first use, build the guest) runs on a worker thread, so the event
        loop keeps running. Raises what the constructor raises."""
        import asyncio

        return await asyncio.to_thread(cls, runtime, **kwargs)

    def run(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """Run ``code`` with fresh guest state and return its `RunResult`.

        ``inputs`` become guest globals; they must be JSON-compatible (`TypeError` otherwise).
        Returns within the wall-clock limit plus a small constant, whatever the guest or a
        capability does. Never raises for anything the guest does. Called on a thread with a
        running event loop while an async capability is granted, raises `RuntimeError`: use
        `arun` there.
        """
        if self._async_capabilities:
            self._check_sync_context("run")
        return execute(self, prepare(self, code, inputs, limits, principal), None, None, on_output=on_output)

    async def arun(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunResult:
        """`run` for asyncio hosts: the guest runs on a worker thread, async capabilities on this
        loop. Cancelling the awaiting task cancels the run (the guest stops; the record says so)."""
        import asyncio

        loop = asyncio.get_running_loop()
        spec = self._prepare(code, inputs, limits, principal)
        return await self._start_spec(spec, None, loop, on_output)

    def start(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
        on_output: OutputCallback | None = None,
    ) -> RunHandle:
        """Start ``code`` on a background thread; returns a `sandbox.handles.RunHandle` at once.

        The handle cancels, waits for or awaits the run, and iterates its output as it comes.
        Bad arguments raise here, before anything runs. Async capabilities run on the event loop
        running in this thread, if any.
        """
        spec = self._prepare(code, inputs, limits, principal)
        return self._start_spec(spec, None, running_loop(), on_output)

    def stream(
        self,
        code: str,
        *,
        inputs: Mapping[str, Any] | None = None,
        limits: Limits | None = None,
        principal: Principal | Mapping[str, Any] | str | None = None,
    ) -> RunHandle:
        """``async for chunk in sb.stream(code)``: the run's output as it is written (`OutputChunk`
        with ``stream`` and ``text``), bounded by the output limit; then ``await`` the same handle
        for the `RunResult`. Cancelling the iterating task cancels the run."""
        return self.start(code, inputs=inputs, limits=limits, principal=principal)

    def transform(
        self,
        code: str,
        data: Any,
        *,
        output_model: type[BaseModel] | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
        strict: bool = False,
    ) -> TransformResult:
        """Run generated code defining ``transform(rows)`` over ``data`` and validate its output.

        ``data`` is a list of dicts or a ``.csv``/``.jsonl`` path; ``output_model`` an optional
        pydantic model every output row must satisfy. With ``strict=True`` (which needs
        ``output_model``) a row must match the model without coercion (``"12"`` is not an int)
        and without keys the model does not declare. Input over ``max_rows`` (default 100 000)
        or ``max_bytes`` (default 8 MiB as JSON) raises `ValueError`. Returns a
        `sandbox.transform.TransformResult`; see `sandbox.transform` for the details.
        """
        from sandbox import transform as _t

        return _t.run_transform(
            self, code, data, output_model=output_model, strict=strict,
            max_rows=_t.DEFAULT_MAX_ROWS if max_rows is None else max_rows,
            max_bytes=_t.DEFAULT_MAX_BYTES if max_bytes is None else max_bytes,
        )

    def apply(self, changes: Iterable[FileChange] | None) -> list[str]:
        """Commit a run's overlay changes (``result.changes``) to the host directories.

        All or nothing: raises `sandbox.overlay.OverlayConflict` (a `ValueError`) when a host
        file changed since the run or a path is not confined, before writing anything.
        Returns the guest paths written or deleted.
        """
        self._check_open()
        if self.files is None:
            raise ConfigurationError("this Sandbox has no file overlay: pass files=Overlay(...)")
        return self.files.apply(changes or ())

    def session(self) -> Session:
        """A `Session` whose guest globals persist across its runs. Close it (or use it as a
        context manager); an unclosed session is released with a `ResourceWarning` when it is
        garbage-collected."""
        self._check_open()
        self._sweep_sessions(opening=True)
        session = Session(self, self._driver.open_session())
        with self._sessions_lock:
            self._sessions[session.id] = session
        return session

    def sessions(self) -> list[Session]:
        """The sessions of this sandbox that are open (not closed, not yet collected)."""
        self._sweep_sessions()
        with self._sessions_lock:
            return [s for s in list(self._sessions.values()) if not s.closed]

    def _sweep_sessions(self, *, opening: bool = False) -> None:
        """Release the state of sessions idle past ``session_ttl``; when ``opening`` one more
        would pass ``max_sessions``, release the least recently used idle one."""
        with self._sessions_lock:
            live = [s for s in list(self._sessions.values()) if s.holds_state]
        if self.session_ttl is not None:
            now = time.monotonic()
            for session in live:
                if now - session.last_used > self.session_ttl and session.release("idle for longer than session_ttl"):
                    live.remove(session)
        if opening and self.max_sessions is not None and len(live) >= self.max_sessions:
            for session in sorted(live, key=lambda s: s.last_used):
                if session.release("released to stay within max_sessions"):
                    return
            from sandbox.errors import SandboxError

            raise SandboxError(f"max_sessions={self.max_sessions} sessions are running; close one or wait")

    def warm(self, timeout: float | None = None) -> bool:
        """Wait until the runtime is ready for its next runs with no work of its own in the
        background: the wasi runtime's spare instances are made, the process isolation's
        pre-forked children are up and waiting, and no refill is running (the in-process
        restricted runtime has nothing to prepare). Call it before taking traffic, or between
        measurements so one burst does not pay for the refills of another.

        Returns True once ready; False when ``timeout`` seconds (None: no limit) passed first or
        the runtime could not prepare (its runs then start their own instance or child, as
        usual). Raises `SandboxClosed` on a closed sandbox."""
        self._check_open()
        return self._driver.warm(timeout)

    def describe(self) -> ApiDescription:
        """The guest API as a Python stub (code mode) and JSON tool schemas (tool mode),
        listing the secret handles (names only) the guest will find under ``secrets`` and the
        modules guest code may import."""
        from sandbox.stub import guest_modules

        return describe(self.capabilities, self.secrets, modules=guest_modules(self.modules))

    def close(self) -> None:
        """Release the runtime's workers and engines. Idempotent; later runs raise `SandboxClosed`."""
        if not self._closed:
            self._closed = True
            with self._sessions_lock:
                sessions = list(self._sessions.values())
            for session in sessions:
                session.close()
            self._driver.close()
            if self._egress is not None:
                self._egress.close()
            for cap in self.capabilities.values():
                if cap.release is not None:
                    cap.release()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<Sandbox runtime={self.runtime} isolation={self.isolation} capabilities={sorted(self.capabilities)}"
            f" secrets={sorted(self.secrets)}>"
        )

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("this Sandbox is closed; create a new one")

    def _check_sync_context(self, method: str) -> None:
        """Host misuse: a blocking run on a thread whose event loop must serve async capabilities.
        Its callers call it only when an async capability is granted (a run without one pays nothing)."""
        if running_loop() is not None:
            raise RuntimeError(
                f"{method}() was called from a running asyncio event loop while an async capability is granted: "
                f"the loop would be blocked; use `await {'session' if method.startswith('session') else 'sandbox'}"
                ".arun(...)` instead"
            )

    def _limits_for(self, limits: Limits) -> Limits:
        """A run's override of this sandbox's limits, checked to be within them (`prepare` takes
        the sandbox's own when there is none)."""
        if not isinstance(limits, Limits):
            raise TypeError(f"limits must be a sandbox.Limits, not {type(limits).__name__}")
        for name in Limits.model_fields:
            if getattr(limits, name) > getattr(self.limits, name):
                raise ConfigurationError(
                    f"limits.{name}={getattr(limits, name)!r} exceeds this Sandbox's {name}={getattr(self.limits, name)!r}:"
                    " a run may only tighten the sandbox's limits"
                )
        return limits

    def _prepare(self, code: str, inputs: Mapping[str, Any] | None, limits: Limits | None,
                 principal: Principal | Mapping[str, Any] | str | None) -> RunSpec:
        """Check a run's arguments (host misuse raises here) and start its clock (`_pipeline.prepare`)."""
        return prepare(self, code, inputs, limits, principal)

    def _start_spec(self, spec: RunSpec, session: Session | None, loop: asyncio.AbstractEventLoop | None,
                    on_output: OutputCallback | None) -> RunHandle:
        return start(self, spec, session, loop, on_output)

    def _run_spec(self, spec: RunSpec, session: Session | None, loop: asyncio.AbstractEventLoop | None, *,
                  on_output: OutputCallback | None = None, handle: RunHandle | None = None) -> RunResult:
        """Run a prepared run to its `RunResult` (`_pipeline.execute`)."""
        return execute(self, spec, session, loop, on_output=on_output, handle=handle)
