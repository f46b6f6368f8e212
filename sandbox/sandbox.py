"""The public entry point: `Sandbox` runs guest code, `Session` keeps guest state across runs.

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

import asyncio
import itertools
import keyword
import logging
import os
import math
import threading
import time
import uuid
import warnings
import weakref
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from runtimes.wire import WireError, plain
from sandbox import call_threads
from sandbox._bridge import RunBridge
from sandbox.capabilities import (
    ApiDescription,
    Capability,
    collect,
    describe,
)
from sandbox.errors import ConfigurationError, SandboxClosed
from sandbox.handles import RunHandle, StreamRedactor
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, RunResult, Usage, trusted
from sandbox.runtime import KNOWN_LAYERS, Driver, DriverSession, Job, Outcome, RunControl, limit_error
from sandbox.secrets import NO_REDACTION, Redactor, Secret, SecretBroker, scope_allows_capability, validate_secrets

if TYPE_CHECKING:  # imported lazily: a sandbox without policy or records does not pay for them
    from pydantic import BaseModel

    from sandbox.audit import RecordSink, RunRecorder
    from sandbox.egress import Egress, EgressClient
    from sandbox.overlay import Overlay
    from sandbox.policy import Policy, PolicyState, Principal
    from sandbox.results import FileChange
    from sandbox.transform import TransformResult

log = logging.getLogger("sandbox")

RuntimeName = Literal["restricted", "wasi"]
IsolationName = Literal["none", "process"]
RUNTIMES: tuple[str, ...] = ("restricted", "wasi")


POST_RUN_GRACE = 0.25
"""Seconds past the run's deadline that post-run steps (redaction, overlay changes) may take;
past it they are abandoned and the run ends with ``limit_exceeded`` / ``wall``."""

SESSION_RESET_NOTICE = (
    "[sandbox] this session's guest state was reset before this run (a limit ended its worker or instance, "
    "or it was released); globals from earlier runs are gone\n"
)

OutputCallback = Callable[[str, str], None]
"""``on_output(stream, text)``: ``stream`` is ``"stdout"`` or ``"stderr"``."""


@dataclass(frozen=True)
class _RunSpec:
    """A run's checked arguments and its clock, made before anything runs."""

    run_id: str
    code: str
    inputs: dict[str, Any]
    limits: Limits
    principal: Principal | None
    control: RunControl
    started: float


class _RunIds:
    """Run ids: 32 hex digits, a random per-process prefix (new in a forked child) and a counter.
    Unique within the process and across processes; not secret (nothing is granted by a run id)."""

    def __init__(self) -> None:
        self.reseed()

    def reseed(self) -> None:
        self.prefix = os.urandom(8).hex()
        self.counter = itertools.count(1)

    def next(self) -> str:
        return f"{self.prefix}{next(self.counter):016x}"


_RUN_IDS = _RunIds()
_next_run_id = _RUN_IDS.next
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_RUN_IDS.reseed)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _output_sink(on_output: OutputCallback | None, handle: RunHandle | None, redactor: Redactor
                 ) -> tuple[OutputCallback | None, StreamRedactor | None]:
    """The driver's ``on_output``: the host callback and the handle's iterator, redacted; None
    when nobody listens (drivers then skip streaming)."""
    targets = [t for t in (on_output, handle._emit if handle is not None else None) if t is not None]
    if not targets:
        return None, None

    def emit(stream: str, text: str) -> None:
        for target in targets:
            try:
                target(stream, text)
            except Exception:  # a host callback failing must not end the run
                log.exception("on_output callback failed")

    if not redactor:
        return emit, None
    streamer = StreamRedactor(redactor, emit)
    return streamer.write, streamer


def _stopped_outcome(outcome: Outcome, control: RunControl, limits: Limits) -> Outcome:
    """The outcome of a run the host stopped: cancelled, or a capability abandoned at the
    deadline. What the guest wrote before is kept; the value is dropped."""
    if control.cancelled and not outcome.ok:
        lineno = outcome.error.lineno if outcome.error is not None else None
        error = ErrorInfo(kind="cancelled", type="Cancelled", message="the run was cancelled by the host", lineno=lineno)
    elif control.abandoned is not None:
        error = limit_error("wall", f"wall-clock limit of {limits.wall_seconds:g} s exceeded while capability "
                                    f"{control.abandoned}() was running; the call was abandoned and its result discarded")
    else:
        return outcome
    return outcome.model_copy(update={"ok": False, "value": None, "error": error})


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
        self.limits = limits or Limits()
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
        self._driver = _make_driver(runtime, isolation, workers, required, extra_modules)
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
        self._check_sync_context("run")
        spec = self._prepare(code, inputs, limits, principal)
        return self._run_spec(spec, None, None, on_output=on_output)

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
        return self._start_spec(spec, None, _running_loop(), on_output)

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
        """Host misuse: a blocking run on a thread whose event loop must serve async capabilities."""
        if self._async_capabilities and _running_loop() is not None:
            raise RuntimeError(
                f"{method}() was called from a running asyncio event loop while an async capability is granted: "
                f"the loop would be blocked; use `await {'session' if method.startswith('session') else 'sandbox'}"
                ".arun(...)` instead"
            )

    def _limits_for(self, limits: Limits | None) -> Limits:
        """The run's limits: this sandbox's, or a per-run override within them."""
        if limits is None:
            return self.limits
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
                 principal: Principal | Mapping[str, Any] | str | None) -> _RunSpec:
        """Check a run's arguments (host misuse raises here) and start its clock."""
        self._check_open()
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        run_limits = self._limits_for(limits)
        try:
            wire_inputs = plain(dict(inputs)) if inputs else {}
        except WireError as exc:
            raise TypeError(f"inputs must be plain data (JSON types, tuple, set, bytes, date, datetime, time, "
                            f"timedelta, Decimal, UUID): {exc}") from None
        for name in wire_inputs:
            if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
                raise ConfigurationError(f"input name {name!r} must be an identifier, not a keyword, not starting with '_'")
        who = self.principal
        if principal is not None:
            from sandbox.policy import coerce_principal

            who = coerce_principal(principal)
        started = time.perf_counter()
        control = RunControl(time.monotonic() + run_limits.wall_seconds)
        return _RunSpec(_next_run_id(), code, wire_inputs, run_limits, who, control, started)

    def _start_spec(self, spec: _RunSpec, session: Session | None, loop: asyncio.AbstractEventLoop | None,
                    on_output: OutputCallback | None) -> RunHandle:
        handle = RunHandle(spec.run_id, spec.control)

        def target() -> None:
            try:
                result = self._run_spec(spec, session, loop, on_output=on_output, handle=handle)
            except BaseException as exc:  # noqa: BLE001 - host errors reach whoever waits on the handle
                handle._finish(None, exc)
            else:
                handle._finish(result)

        threading.Thread(target=target, name=f"sandbox-run-{spec.run_id[:8]}", daemon=True).start()
        return handle

    def _run_spec(
        self,
        spec: _RunSpec,
        session: Session | None,
        loop: asyncio.AbstractEventLoop | None,
        *,
        on_output: OutputCallback | None = None,
        handle: RunHandle | None = None,
    ) -> RunResult:
        """Run a prepared run to its `RunResult`: every step, post-run work included, inside the
        run's wall budget (plus `POST_RUN_GRACE` for the post-run steps)."""
        run_id, control = spec.run_id, spec.control
        # Secret values are read now (just in time); SecretUnavailable propagates to the host.
        broker = SecretBroker(self.secrets, run_id=run_id) if self.secrets else None
        redactor = broker.redactor if broker is not None else NO_REDACTION
        state = recorder = None
        if self.policy is not None:
            state = self.policy.start(run_id, spec.principal)
            state.bind_loop(loop)
        if self.records is not None:
            from sandbox.audit import RunRecorder, secret_grants

            recorder = RunRecorder(
                run_id=run_id, code=spec.code, runtime=self.runtime, isolation=self.isolation,
                principal=spec.principal, session_id=session.id if session is not None else None, limits=spec.limits,
                capabilities=self.capabilities, policy=self.policy.describe() if self.policy is not None else None,
                secrets=secret_grants(self.secrets), redact=redactor if redactor else None,
            )
        layer = self.files.layer() if self.files is not None else None
        granted = self.capabilities
        if layer is not None and self.files is not None:  # the overlay's capabilities, bound to this run's scratch layer
            granted = {**granted, **layer.bind({c.name: self.capabilities[c.name] for c in self.files.capabilities})}
        bridge = RunBridge(granted, loop, control, broker, state, recorder)
        sink, streamer = _output_sink(on_output, handle, redactor)
        job = Job(
            run_id=run_id,
            code=spec.code,
            limits=spec.limits,
            bridge=bridge,
            inputs=spec.inputs,
            capabilities=tuple(self.capabilities),
            secrets=broker.handles if broker is not None else (),
            control=control,
            on_output=sink,
            timings=self.timings,
        )
        driver_start = time.perf_counter() if self.timings else 0.0
        try:
            if session is not None:
                outcome = session._driver_run(job)
            else:
                outcome = self._driver.run(job)
        except Exception as exc:
            message = redactor.text(str(exc))
            # A traceback repeats the messages of the exception and its chain: attach it only
            # when none of them holds a secret.
            log.error(
                "driver %s failed on run %s: %s: %s", self._driver.name, run_id, type(exc).__name__, message,
                exc_info=exc if not _holds_secret(exc, redactor) else None,
            )
            outcome = Outcome(
                ok=False,
                error=ErrorInfo(kind="internal", type=type(exc).__name__, message=f"runtime failure: {message}"),
            )
        finally:
            if broker is not None:
                broker.revoke()
        outcome = _stopped_outcome(outcome, control, spec.limits)
        finish_start = time.perf_counter() if self.timings else 0.0
        timings = _host_timings(spec.started, driver_start, finish_start, outcome.timings) if self.timings else None

        def finish() -> RunResult:
            error = outcome.error
            if error is not None and redactor:
                error = error.model_copy(update={"message": redactor.text(error.message), "type": redactor.text(error.type)})
            if streamer is not None:
                streamer.flush(outcome.output_truncated)
            stderr = SESSION_RESET_NOTICE + outcome.stderr if outcome.session_reset else outcome.stderr
            value = redactor.value(outcome.value)
            stdout = redactor.text(outcome.stdout, truncated=outcome.output_truncated)
            stderr = redactor.text(stderr, truncated=outcome.output_truncated)
            changes = layer.changes(redactor.text if redactor else None) if layer is not None else None
            # Every field below is already validated (the driver's Outcome) or made here: construct
            # without validating again, which is most of the host's cost on a trivial run.
            return trusted(RunResult, {
                "ok": outcome.ok,
                "value": value,
                "stdout": stdout,
                "stderr": stderr,
                "output_truncated": outcome.output_truncated,
                "error": error,
                "usage": trusted(Usage, {
                    "wall_seconds": time.perf_counter() - spec.started,
                    "cpu_seconds": outcome.cpu_seconds or 0.0,
                    "peak_memory_bytes": outcome.peak_memory_bytes,
                    "capability_calls": bridge.calls,
                }),
                "run_id": run_id,
                "runtime": self.runtime,
                "isolation": self.isolation,
                "layers": outcome.layers,
                "warnings": list(bridge.warnings),
                "changes": changes,
                "session_reset": outcome.session_reset,
                "timings": timings,
            })

        if redactor or layer is not None:  # work that grows with what the guest produced: bounded
            future = call_threads.submit(finish)
            if call_threads.wait(future, control.remaining() + POST_RUN_GRACE):
                result = future.result()
            else:
                result = RunResult.model_construct(
                    ok=False, output_truncated=True, error=limit_error("wall", (
                        f"wall-clock limit of {spec.limits.wall_seconds:g} s exceeded while preparing the result "
                        "(redaction, file changes): output, value and changes were dropped")),
                    usage=Usage.model_construct(wall_seconds=time.perf_counter() - spec.started,
                                                cpu_seconds=outcome.cpu_seconds or 0.0,
                                                peak_memory_bytes=outcome.peak_memory_bytes,
                                                capability_calls=bridge.calls),
                    run_id=run_id, runtime=self.runtime, isolation=self.isolation, layers=outcome.layers,
                    changes=() if layer is not None else None, session_reset=outcome.session_reset,
                    warnings=list(bridge.warnings), timings=timings,
                )
        else:
            result = finish()
        if timings is not None:
            timings["finish"] = time.perf_counter() - finish_start
        if recorder is not None and self.records is not None:
            try:
                self.records.emit(recorder.finish(result))
            except Exception:
                log.exception("could not emit the run record of run %s", run_id)
        return result


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
        self._sandbox._check_sync_context("session.run")
        self._check_open()
        spec = self._sandbox._prepare(code, inputs, limits, principal)
        return self._sandbox._run_spec(spec, self, None, on_output=on_output)

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
        loop = asyncio.get_running_loop()
        self._check_open()
        spec = self._sandbox._prepare(code, inputs, limits, principal)
        return await self._sandbox._start_spec(spec, self, loop, on_output)

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
        spec = self._sandbox._prepare(code, inputs, limits, principal)
        return self._sandbox._start_spec(spec, self, _running_loop(), on_output)

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


def _host_timings(started: float, driver_start: float, driver_end: float,
                  driver: dict[str, float] | None) -> dict[str, float]:
    """The host's phases up to the driver's end (``prepare``, ``driver``) and the driver's own,
    prefixed ``driver.``; the caller adds ``finish`` once the result is built."""
    timings = {"prepare": driver_start - started, "driver": driver_end - driver_start}
    if driver:
        timings.update((f"driver.{name}", seconds) for name, seconds in driver.items())
    return timings


def _holds_secret(exc: BaseException, redactor: Redactor) -> bool:
    """True when ``exc`` or an exception chained to it has a message that ``redactor`` changes."""
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 20:
        text = str(current)
        if redactor.text(text) != text:
            return True
        current, seen = current.__cause__ or current.__context__, seen + 1
    return False


def _check_modules(modules: Iterable[str], runtime: str, isolation: str | None) -> tuple[str, ...]:
    """Validate ``Sandbox(modules=...)``: optional modules, process isolation only, installed."""
    from runtimes.restricted.modules import OPTIONAL_MODULES

    if isinstance(modules, str):
        modules = (modules,)
    names = tuple(dict.fromkeys(modules))
    if not names:
        return ()
    unknown = [name for name in names if name not in OPTIONAL_MODULES]
    if unknown:
        raise ConfigurationError(f"unknown optional module(s) {unknown}: choose from {list(OPTIONAL_MODULES)}")
    if isolation != "process" or runtime != "restricted":
        where = "in the guest image" if runtime == "wasi" else "safe in-process"
        raise ConfigurationError(
            f"modules={list(names)} are offered only with isolation='process' (not {where}): in-process the "
            "language layer is the only boundary, and these C extensions expose raw memory (ndarray.ctypes, the "
            "buffer protocol) and file I/O (np.load, ndarray.tofile, pd.read_*) that its guards cannot see; "
            "the wasi runtime's guest image does not contain them. See docs/data.md."
        )
    import importlib.util

    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigurationError(
            f"modules={list(names)}: {', '.join(missing)} not installed on the host; "
            "pip install 'sandbox[dataframes]'"
        )
    return names


def _make_driver(runtime: str, isolation: str | None, workers: int, require: frozenset[str],
                 modules: tuple[str, ...] = ()) -> Driver:
    if runtime == "wasi":
        from sandbox.wasi import WasiDriver

        driver: Driver = WasiDriver()
    elif isolation == "process":
        from sandbox.process import ProcessDriver

        driver = ProcessDriver(workers=workers, require=require, modules=modules)
    else:
        from sandbox.restricted import RestrictedDriver

        driver = RestrictedDriver()
    missing = require - set(driver.layers)
    if missing:
        from sandbox.errors import IsolationUnavailable

        driver.close()
        reasons = "".join(f"; {layer}: {why}" for layer, why in sorted(getattr(driver, "unavailable", {}).items())
                          if layer in missing)
        raise IsolationUnavailable(
            f"layers {sorted(missing)} are not applied by runtime={runtime!r}, isolation={isolation!r} "
            f"(it applies {', '.join(driver.layers)}){reasons}; choose a runtime or isolation that applies them"
        )
    return driver
