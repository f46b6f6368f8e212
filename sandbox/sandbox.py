"""The public entry point: `Sandbox` runs guest code, `Session` keeps guest state across runs.

A `Sandbox` is configured once (runtime, isolation, limits, capabilities, secrets, egress) and
validated at construction: bad host input raises `ValueError`/`TypeError` with what to change.
Each `run` then builds a `Job`, hands it to the runtime's driver and returns a `RunResult`;
nothing the guest does raises on the host.

Secrets (see `sandbox.secrets`): at run start a `SecretBroker` reads every secret's value and
issues one token per secret; the driver exposes them to the guest as ``secrets.<name>`` handles.
`_RunBridge` resolves handles in capability arguments (scope, TTL and use checks), and redacts
capability results and fault messages before they reach the guest. When the run ends the tokens
are revoked, and stdout, stderr, the value and the error of the `RunResult` are redacted.

Policy and records (see `sandbox.policy`, `sandbox.audit`): with a `Policy`, each run gets a
`PolicyState` that `_RunBridge` asks about every call once its arguments are validated (allow,
deny with a reason the guest sees as `PolicyDenied`, or ask an approver; the escalation rule
ends the run with ``policy_denied``). With a `RecordSink`, a `RunRecorder` notes every call
and one redacted `RunRecord` per run (Session runs included) is emitted after the run.
"""

from __future__ import annotations

import asyncio
import keyword
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from runtimes.wire import WireError, plain
from sandbox.capabilities import ApiDescription, Capability, close_call_detail, collect, describe, open_call_detail
from sandbox.errors import ConfigurationError, SandboxClosed
from sandbox.limits import Limits
from sandbox.results import ErrorInfo, RunResult, Usage
from sandbox.runtime import KNOWN_LAYERS, CapabilityFault, Driver, DriverSession, Job, Outcome
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


class _RunBridge:
    """The host end of one run's capability calls: lookup, secret resolution, validation,
    policy, invocation, counting, recording, and redaction of what goes back to the guest."""

    def __init__(
        self,
        capabilities: Mapping[str, Capability],
        loop: asyncio.AbstractEventLoop | None,
        secrets: SecretBroker | None = None,
        policy: PolicyState | None = None,
        recorder: RunRecorder | None = None,
    ) -> None:
        self._capabilities = capabilities
        self._loop = loop
        self._secrets = secrets
        self._redactor: Redactor = secrets.redactor if secrets is not None else NO_REDACTION
        self._policy = policy
        self._recorder = recorder
        self._lock = threading.Lock()
        self.calls = 0
        self.warnings: list[str] = []  # from `sandbox.capabilities.warn`, in call order

    def call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            return self._redactor.value(self._call(name, args, kwargs))
        except CapabilityFault as fault:
            raise self._redactor.fault(fault) from None

    def _call(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        started = time.perf_counter()
        cap = self._capabilities.get(name)
        if cap is None:
            fault = CapabilityFault("CapabilityError", f"no capability named {name!r} was granted to this run")
            self._record(name, None, args, kwargs, "invalid", started, error=fault.message)
            raise fault
        with self._lock:
            self.calls += 1
        arguments: dict[str, Any] | None = None
        verdict = None
        detail, token = open_call_detail()  # filled by the capability through record_detail()
        try:
            if self._secrets is not None:
                args, kwargs = self._secrets.resolve_arguments(name, args, kwargs)
            arguments = cap.bind(args, kwargs)
            if self._policy is not None:
                verdict = self._policy.check(name, arguments, cap.action_for(arguments))
                if not verdict.allowed:
                    raise CapabilityFault(
                        "PolicyDenied", verdict.reason, terminate="policy_denied" if verdict.terminate else None
                    )
            if cap.is_async and self._loop is not None:
                future = asyncio.run_coroutine_threadsafe(cap.func(**arguments), self._loop)
                result = cap.dump_result(future.result())
            else:
                result = cap.call_bound(arguments)
        except CapabilityFault as fault:
            denied = fault.guest_type == "PolicyDenied"
            if denied and (verdict is None or verdict.allowed) and self._policy is not None and not fault.terminate:
                # A denial made elsewhere (a secret's scope, the capability itself) counts too.
                if self._policy.note_denial(name, fault.message):
                    fault = CapabilityFault(
                        "PolicyDenied", f"{fault.message}; too many denials in this run: the run ends",
                        terminate="policy_denied",
                    )
            status = "denied" if denied else "invalid" if arguments is None else "failed"
            self._record(name, arguments, args, kwargs, status, started, verdict, detail=detail,
                         reason=fault.message if denied else None, error=None if denied else fault.message)
            raise fault from None
        except Exception as exc:
            fault = CapabilityFault("CapabilityError", f"{name}() failed: {type(exc).__name__}: {exc}")
            self._record(name, arguments, args, kwargs, "failed", started, verdict, detail=detail, error=fault.message)
            raise fault from None
        finally:
            close_call_detail(token)
            if detail.get("warnings"):
                with self._lock:
                    self.warnings.extend(self._redactor.text(w) for w in detail["warnings"])
        self._record(name, arguments, args, kwargs, "ok", started, verdict, detail=detail)
        return result

    def refuse(self, name: str, reason: str) -> None:
        """Record a call the driver refused before `call` (an ungranted name, a malformed payload)."""
        if self._recorder is not None:
            self._recorder.call(name, None, "invalid", error=reason)

    def _record(self, name: str, arguments: Mapping[str, Any] | None, args: list[Any], kwargs: dict[str, Any],
                status: Any, started: float, verdict: Any = None, **detail: Any) -> None:
        if self._recorder is not None:
            if arguments is None:  # not bound: summarise what the guest passed
                arguments = {**{f"#{i}": a for i, a in enumerate(args)}, **kwargs}
            self._recorder.call(name, arguments, status, verdict=verdict, duration=time.perf_counter() - started,
                                **detail)


class Sandbox:
    """Runs untrusted Python under one runtime, one set of limits and one set of capabilities.

    Args:
        runtime: ``"restricted"`` (default; RestrictedPython in this process) or ``"wasi"``
            (CPython compiled to WebAssembly, inside Wasmtime). Anything else raises `ValueError`.
        limits: per-run ceilings; default ``Limits()`` (5 s CPU, 10 s wall, 256 MiB).
        capabilities: host functions the guest may call, as `Capability` objects or plain
            fully type-hinted functions. Duplicate names raise `ValueError`; missing type hints
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
            does not grant raises `ValueError`.
        egress: an `Egress` policy grants the built-in ``http`` capabilities (``http.request``,
            and ``http.get`` / ``http.post`` when those methods are allowed); without it the
            guest has no network at all.
        policy: a `sandbox.policy.Policy` (or the path of a TOML policy file) that decides every
            capability call at call time; a rule constraining an argument a capability does not
            have raises `ValueError`. Without one, every granted capability is allowed.
        principal: who the runs are for (`sandbox.policy.Principal`, a dict of its fields, or an
            id string): seen by the policy and written into every record.
        records: a `sandbox.audit.RecordSink` (e.g. ``JsonlSink("runs.jsonl", signing_key=...)``)
            that receives one `RunRecord` per run, redacted like the result.
        files: a `sandbox.overlay.Overlay` grants ``files.read/write/delete/list`` over host
            directories mounted read-only; each run writes to its own scratch layer, listed in
            `RunResult.changes`, and nothing reaches the host until `apply`.

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
        self._closed = False

    @classmethod
    async def aopen(cls, runtime: RuntimeName = "restricted", **kwargs: Any) -> Sandbox:
        """``Sandbox(runtime, **kwargs)`` for asyncio hosts: construction (which for ``wasi``
        may load or, on first use, build the guest) runs on a worker thread, so the event
        loop keeps running. Raises what the constructor raises."""
        return await asyncio.to_thread(cls, runtime, **kwargs)

    def run(self, code: str, *, inputs: Mapping[str, Any] | None = None) -> RunResult:
        """Run ``code`` with fresh guest state and return its `RunResult`.

        ``inputs`` become guest globals; they must be JSON-compatible (`TypeError` otherwise).
        Never raises for anything the guest does.
        """
        return self._run(code, inputs, None, None)

    async def arun(self, code: str, *, inputs: Mapping[str, Any] | None = None) -> RunResult:
        """`run` for asyncio hosts: the guest runs on a worker thread, async capabilities on this loop."""
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(self._run, code, inputs, None, loop)

    def transform(
        self,
        code: str,
        data: Any,
        *,
        output_model: type[BaseModel] | None = None,
        max_rows: int | None = None,
        max_bytes: int | None = None,
    ) -> TransformResult:
        """Run generated code defining ``transform(rows)`` over ``data`` and validate its output.

        ``data`` is a list of dicts or a ``.csv``/``.jsonl`` path; ``output_model`` an optional
        pydantic model every output row must satisfy. Input over ``max_rows`` (default 100 000)
        or ``max_bytes`` (default 8 MiB as JSON) raises `ValueError`. Returns a
        `sandbox.transform.TransformResult`; see `sandbox.transform` for the details.
        """
        from sandbox import transform as _t

        return _t.run_transform(
            self, code, data, output_model=output_model,
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
        """A `Session` whose guest globals persist across its runs."""
        self._check_open()
        return Session(self, self._driver.open_session())

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

    def _run(
        self,
        code: str,
        inputs: Mapping[str, Any] | None,
        session: DriverSession | None,
        loop: asyncio.AbstractEventLoop | None,
        session_id: str | None = None,
        *,
        prewired: bool = False,
    ) -> RunResult:
        self._check_open()
        if not isinstance(code, str):
            raise TypeError(f"code must be str, not {type(code).__name__}")
        if prewired:  # already checked as JSON data by the caller (transform): no second copy
            wire_inputs = dict(inputs or {})
        else:
            try:
                wire_inputs = plain(dict(inputs or {}))
            except WireError as exc:
                raise TypeError(f"inputs must be plain data (JSON types, tuple, set, bytes, date, datetime, time, "
                                f"timedelta, Decimal, UUID): {exc}") from None
        for name in wire_inputs:
            if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("_"):
                raise ValueError(f"input name {name!r} must be an identifier, not a keyword, not starting with '_'")
        run_id = os.urandom(16).hex()
        # Secret values are read now (just in time); SecretUnavailable propagates to the host.
        broker = SecretBroker(self.secrets, run_id=run_id) if self.secrets else None
        redactor = broker.redactor if broker is not None else NO_REDACTION
        state = recorder = None
        if self.policy is not None:
            state = self.policy.start(run_id, self.principal)
            state.bind_loop(loop)
        if self.records is not None:
            from sandbox.audit import RunRecorder, secret_grants

            recorder = RunRecorder(
                run_id=run_id, code=code, runtime=self.runtime, isolation=self.isolation, principal=self.principal,
                session_id=session_id, limits=self.limits, capabilities=self.capabilities,
                policy=self.policy.describe() if self.policy is not None else None,
                secrets=secret_grants(self.secrets), redact=redactor if redactor else None,
            )
        layer = self.files.layer() if self.files is not None else None
        granted = self.capabilities
        if layer is not None:  # the overlay's capabilities, bound to this run's scratch layer
            granted = {**granted, **layer.bind({c.name: self.capabilities[c.name] for c in self.files.capabilities})}
        bridge = _RunBridge(granted, loop, broker, state, recorder)
        job = Job(
            run_id=run_id,
            code=code,
            limits=self.limits,
            bridge=bridge,
            inputs=wire_inputs,
            capabilities=tuple(self.capabilities),
            secrets=broker.handles if broker is not None else (),
        )
        started = time.perf_counter()
        try:
            outcome = (session or self._driver).run(job)
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
        wall = time.perf_counter() - started
        error = outcome.error
        if error is not None and redactor:
            error = error.model_copy(update={"message": redactor.text(error.message), "type": redactor.text(error.type)})
        # Every field below is already validated (the driver's Outcome) or made here: construct
        # without validating again, which is most of the host's cost on a trivial run.
        result = RunResult.model_construct(
            ok=outcome.ok,
            value=redactor.value(outcome.value),
            stdout=redactor.text(outcome.stdout, truncated=outcome.output_truncated),
            stderr=redactor.text(outcome.stderr, truncated=outcome.output_truncated),
            output_truncated=outcome.output_truncated,
            error=error,
            usage=Usage.model_construct(
                wall_seconds=wall,
                cpu_seconds=outcome.cpu_seconds or 0.0,
                peak_memory_bytes=outcome.peak_memory_bytes,
                capability_calls=bridge.calls,
            ),
            run_id=run_id,
            runtime=self.runtime,
            isolation=self.isolation,
            layers=outcome.layers,
            changes=layer.changes(redactor.text if redactor else None) if layer is not None else None,
            warnings=list(bridge.warnings),
        )
        if recorder is not None and self.records is not None:
            try:
                self.records.emit(recorder.finish(result))
            except Exception:
                log.exception("could not emit the run record of run %s", run_id)
        return result


class Session:
    """Runs that share guest state (globals, imports, definitions). Made by `Sandbox.session()`.

    Runs in one session are serialised; use several sessions for parallelism. Closing the
    session (or its sandbox) discards the state.
    """

    def __init__(self, sandbox: Sandbox, state: DriverSession) -> None:
        self._sandbox = sandbox
        self._state: DriverSession | None = state
        self._lock = threading.Lock()
        self.id = uuid.uuid4().hex
        """Names this session in run records."""

    def run(self, code: str, *, inputs: Mapping[str, Any] | None = None) -> RunResult:
        """Like `Sandbox.run`, but globals from earlier runs of this session are visible."""
        return self._run(code, inputs, None)

    async def arun(self, code: str, *, inputs: Mapping[str, Any] | None = None) -> RunResult:
        """`run` for asyncio hosts."""
        loop = asyncio.get_running_loop()
        return await asyncio.to_thread(self._run, code, inputs, loop)

    def close(self) -> None:
        """Discard the guest state. Idempotent."""
        with self._lock:
            if self._state is not None:
                self._state.close()
                self._state = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, code: str, inputs: Mapping[str, Any] | None, loop: asyncio.AbstractEventLoop | None) -> RunResult:
        with self._lock:
            if self._state is None:
                raise SandboxClosed("this Session is closed; open a new one with Sandbox.session()")
            return self._sandbox._run(code, inputs, self._state, loop, self.id)


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
