"""`RaySandboxPool`: a pool of Ray actors, each holding warm sandboxes built from specs.

Runs go to the actor with the fewest runs in flight. Each result comes back already
redacted (on the worker); records go to the key holder (see `sandbox.ray._records`).

A run whose actor dies (killed, node lost, out of memory) becomes a `RunResult` with
``error.kind == "internal"`` and ``error.type == "WorkerLost"``; it is never retried, because
its capability calls may already have had effects. The pool records it (the key holder's chain
shows the run started and was lost). The actor itself is restarted by Ray (up to
``max_restarts``) and takes new runs once it answers again.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from typing import Any

import ray
from pydantic import BaseModel, ConfigDict
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from sandbox.errors import ConfigurationError, SandboxClosed, SecretInTransit
from sandbox.limits import Limits
from sandbox.policy import RateStore
from sandbox.ray._spec import SandboxSpec
from sandbox.ray._worker import SandboxWorker, WorkerInfo
from sandbox.results import ErrorInfo, RunResult, Usage

DEFAULT_SPEC = "default"
_RECOVERY_CHECKS = 60
_RECOVERY_PAUSE = 0.5
_LOST = (RayActorError, ActorUnavailableError)


class PoolStats(BaseModel):
    """Counts since the pool started: ``runs`` finished (WorkerLost included), ``lost`` runs
    whose worker died, ``in_flight`` per actor, ``down``: actors lost and not answering yet
    (new runs go to the others)."""

    model_config = ConfigDict(frozen=True)

    size: int
    runs: int
    lost: int
    in_flight: tuple[int, ...]
    down: tuple[int, ...] = ()


class RaySandboxPool:
    """Warm sandboxes on ``size`` Ray actors.

    Args:
        spec: a `SandboxSpec`, or ``{name: SandboxSpec}`` to serve several (choose per run
            with ``spec=name``; the first is the default).
        size: number of actors (>= 1).
        num_cpus: CPUs Ray reserves for each actor (fractions allowed).
        max_restarts: how often Ray restarts a dead actor (-1: always). Runs in flight on it
            are never retried.
        max_concurrency: runs one actor serves at once (threads in the actor).
        records: where run records go: a `RecordSink` here on the driver (e.g. a signing
            `JsonlSink`), or a `RecordActor` handle; None for no records.
        rate_store: a `sandbox.policy.RateStore` (e.g. `ClusterRateStore()`) that counts
            per-principal rates for every actor at once; it must pickle. Required when a
            spec's policy has rates and ``size > 1``.
        runtime_env: Ray's ``runtime_env`` for the actors. Its ``env_vars`` must not name an
            environment variable a secret is read from (`SecretInTransit`): Ray writes them to
            its logs; set secrets in the workers' own environment instead.

    Configuration problems raise at once (`TypeError`, `ConfigurationError`); a spec that
    cannot be built on the worker (a layer the node cannot apply) raises from `wait_ready`.
    """

    def __init__(
        self,
        spec: SandboxSpec | Mapping[str, SandboxSpec],
        *,
        size: int = 2,
        num_cpus: float = 1.0,
        max_restarts: int = 3,
        max_concurrency: int = 4,
        records: Any = None,
        rate_store: RateStore | None = None,
        runtime_env: Mapping[str, Any] | None = None,
    ) -> None:
        specs = {DEFAULT_SPEC: spec} if isinstance(spec, SandboxSpec) else dict(spec)
        if not specs or not all(isinstance(s, SandboxSpec) for s in specs.values()):
            raise TypeError("spec must be a SandboxSpec or a non-empty {name: SandboxSpec} mapping")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigurationError(f"size must be an int >= 1, got {size!r}")
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be an int >= 1, got {max_concurrency!r}")
        if rate_store is not None and not isinstance(rate_store, RateStore):
            raise TypeError(f"rate_store must be a RateStore (an object with admit()), not {type(rate_store).__name__}")
        _check_runtime_env(runtime_env, specs)
        if rate_store is None and size > 1:
            counted = sorted(name for name, s in specs.items() if s.counts_rates)
            if counted:
                raise ConfigurationError(
                    f"the policy of spec(s) {counted} has per-principal rates, which each of the {size} actors "
                    "would count on its own: pass rate_store=ClusterRateStore() (or another shared RateStore)"
                )
        self._specs = specs
        self._default = next(iter(specs))
        self._sink: Any = None
        self._records = records
        if isinstance(records, ray.actor.ActorHandle):
            worker_records: Any = records
        elif records is not None:
            if not callable(getattr(records, "emit", None)):
                raise TypeError(f"records must be a RecordSink or a RecordActor handle, not {type(records).__name__}")
            self._sink, worker_records = records, "driver"
        else:
            worker_records = None
        options: dict[str, Any] = {
            "num_cpus": num_cpus, "max_restarts": max_restarts, "max_task_retries": 0,
            "max_concurrency": max_concurrency,
        }
        if runtime_env is not None:
            options["runtime_env"] = dict(runtime_env)
        actor_class = ray.remote(SandboxWorker).options(**options)
        self._actors: list[Any] = [actor_class.remote(i, specs, worker_records, rate_store) for i in range(size)]
        self._in_flight = [0] * size
        self._down: set[int] = set()  # actors lost and not yet ready again: new runs avoid them
        self._runs = self._lost = 0
        self._lock = threading.Lock()
        self._closed = False

    # -- running ------------------------------------------------------------------------

    def submit(self, code: str, *, inputs: Mapping[str, Any] | None = None, principal: Any = None,
               limits: Limits | None = None, spec: str | None = None) -> Future[RunResult]:
        """Start one run on the least busy actor; the future holds its `RunResult`.

        ``principal`` and ``limits`` override the spec's for this run. Raises what
        `Sandbox.run` raises for host mistakes (non-str code, bad inputs) when the future
        is read.
        """
        name = self._spec_name(spec)
        index = self._pick()
        ref = self._actors[index].run.remote(name, code, _plain(inputs), principal, limits)
        return self._track(ref, index, 1, lambda reply: reply.result,
                           lambda exc: self._lost_result(name, exc, code, principal, limits))

    def run(self, code: str, *, inputs: Mapping[str, Any] | None = None, principal: Any = None,
            limits: Limits | None = None, spec: str | None = None) -> RunResult:
        """`submit` and wait: the `RunResult` of one run on any actor."""
        return self.submit(code, inputs=inputs, principal=principal, limits=limits, spec=spec).result()

    async def arun(self, code: str, *, inputs: Mapping[str, Any] | None = None, principal: Any = None,
                   limits: Limits | None = None, spec: str | None = None) -> RunResult:
        """`run` for asyncio hosts."""
        future = self.submit(code, inputs=inputs, principal=principal, limits=limits, spec=spec)
        return await asyncio.wrap_future(future)

    def map(self, items: Iterable[str | Mapping[str, Any]], *, batch_size: int = 50,
            spec: str | None = None) -> list[RunResult]:
        """Many runs, ``batch_size`` per actor call; results in the order of ``items``.

        Each item is code, or a mapping with ``code`` and optionally ``inputs``,
        ``principal``, ``limits``. When an actor dies, every run of its batch is WorkerLost.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigurationError(f"batch_size must be an int >= 1, got {batch_size!r}")
        name = self._spec_name(spec)
        runs = [_item(item) for item in items]
        futures = []
        for start in range(0, len(runs), batch_size):
            batch = runs[start:start + batch_size]
            index = self._pick(len(batch))
            ref = self._actors[index].run_batch.remote(name, batch)

            def lost(exc: BaseException, batch: list[Any] = batch) -> list[RunResult]:
                return [self._lost_result(name, exc, code, principal, limits) for code, _, principal, limits in batch]

            futures.append(self._track(ref, index, len(batch), lambda replies: [r.result for r in replies], lost))
        return [result for future in futures for result in future.result()]

    def session(self, spec: str | None = None) -> PoolSession:
        """A session pinned to one actor: its runs share guest state there."""
        name = self._spec_name(spec)
        index = self._pick(0)
        try:
            session_id = ray.get(self._actors[index].open_session.remote(name))
        except RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        return PoolSession(self, index, name, session_id)

    # -- lifecycle ----------------------------------------------------------------------

    def wait_ready(self, timeout: float | None = None) -> list[WorkerInfo]:
        """Wait until every actor has built its sandboxes; returns where each runs.

        Raises `TimeoutError` after ``timeout`` seconds, or what building a spec raised on a
        worker (e.g. `IsolationUnavailable`).
        """
        self._check_open()
        try:
            return ray.get([actor.ready.remote() for actor in self._actors], timeout=timeout)
        except GetTimeoutError:
            raise TimeoutError(f"the pool's actors were not ready within {timeout} s") from None
        except RayTaskError as exc:
            raise exc.as_instanceof_cause() from None
        except RayActorError as exc:
            cause = getattr(exc, "cause", None) or exc
            raise RuntimeError(f"a pool actor could not start: {cause}") from None

    def stats(self) -> PoolStats:
        """Counts since the pool started."""
        with self._lock:
            return PoolStats(size=len(self._actors), runs=self._runs, lost=self._lost,
                             in_flight=tuple(self._in_flight), down=tuple(sorted(self._down)))

    @property
    def actors(self) -> tuple[Any, ...]:
        """The actor handles, in index order (what `WorkerInfo.index` refers to)."""
        return tuple(self._actors)

    def close(self) -> None:
        """Stop the actors (their sandboxes, zygotes and sessions go with them). Idempotent."""
        if self._closed:
            return
        self._closed = True
        for actor in self._actors:
            try:
                ray.get(actor.close.remote(), timeout=10)
            except Exception:  # a dead or stuck actor is killed below all the same
                pass
            ray.kill(actor, no_restart=True)

    def __enter__(self) -> RaySandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise SandboxClosed("this RaySandboxPool is closed; create a new one")

    def _spec_name(self, spec: str | None) -> str:
        self._check_open()
        name = self._default if spec is None else spec
        if name not in self._specs:
            raise ConfigurationError(f"no spec named {name!r} in this pool: choose from {sorted(self._specs)}")
        return name

    def _pick(self, runs: int = 1) -> int:
        with self._lock:
            up = [i for i in range(len(self._actors)) if i not in self._down] or range(len(self._actors))
            index = min(up, key=self._in_flight.__getitem__)
            self._in_flight[index] += runs
            return index

    def _track(self, ref: Any, index: int, runs: int, unpack: Callable[[Any], Any],
               lost: Callable[[BaseException], Any]) -> Future[Any]:
        """A future for ``ref``: records emitted, lost workers turned into results, host
        errors from the worker re-raised as their own type."""
        out: Future[Any] = Future()

        def done(ray_future: Future[Any]) -> None:
            worker_lost = False
            try:
                try:
                    replies = ray_future.result()
                except _LOST as exc:
                    worker_lost = True
                    value: Any = lost(exc)
                else:
                    batch = replies if isinstance(replies, list) else [replies]
                    if self._sink is not None:
                        for reply in batch:
                            if reply.record is not None:
                                self._sink.emit(reply.record)
                    value = unpack(replies)
            except RayTaskError as exc:
                self._finish(index, runs, False)
                out.set_exception(exc.as_instanceof_cause())
                return
            except BaseException as exc:  # the record sink failed: the caller must know
                self._finish(index, runs, False)
                out.set_exception(exc)
                return
            self._finish(index, runs, worker_lost)
            out.set_result(value)

        ref.future().add_done_callback(done)
        return out

    def _finish(self, index: int, runs: int, lost: bool) -> None:
        with self._lock:
            self._in_flight[index] -= runs
            self._runs += runs
            if lost:
                self._lost += runs
                if index in self._down:
                    return
                self._down.add(index)
        if lost:
            self._watch(index, _RECOVERY_CHECKS)

    def _watch(self, index: int, checks: int) -> None:
        """Keep new runs off actor ``index`` until it answers again (Ray restarts it); give up
        after ``checks`` failed attempts (it stays avoided while another actor is up)."""

        def answered(ready: Future[Any]) -> None:
            if ready.exception() is None:
                with self._lock:
                    self._down.discard(index)
            elif checks > 1 and not self._closed:
                timer = threading.Timer(_RECOVERY_PAUSE, self._watch, (index, checks - 1))
                timer.daemon = True
                timer.start()

        self._actors[index].ready.remote().future().add_done_callback(answered)

    def _lost_result(self, spec: str, exc: BaseException, code: str, principal: Any, limits: Limits | None,
                     session_id: str | None = None) -> RunResult:
        """The WorkerLost result of a run, and its record for the key holder: the chain shows
        that the run started and was lost (its capability calls are unknown)."""
        chosen = self._specs[spec]
        result = worker_lost(chosen.runtime, chosen.isolation or "none", exc)
        if self._records is not None:
            from sandbox.audit import RunRecorder, secret_grants
            from sandbox.policy import coerce_principal

            record = RunRecorder(
                run_id=result.run_id, code=code if isinstance(code, str) else "", runtime=result.runtime,
                isolation=result.isolation, principal=coerce_principal(principal) or chosen.principal,
                session_id=session_id, limits=limits or chosen.limits or Limits(),
                capabilities=chosen.capability_names, secrets=secret_grants(chosen.secrets),
            ).finish(result)
            if self._sink is not None:
                self._sink.emit(record)
            else:
                self._records.emit.remote(record)
        return result


class PoolSession:
    """Runs that share guest state on one actor of a `RaySandboxPool` (see `RaySandboxPool.session`).

    If the actor dies, the run in flight is WorkerLost and the session is gone: later runs
    raise `SandboxClosed`.
    """

    def __init__(self, pool: RaySandboxPool, index: int, spec: str, session_id: str) -> None:
        self._pool = pool
        self._index = index
        self._spec = spec
        self.id = session_id
        """Names this session in run records."""
        self._lost = False
        self._closed = False

    @property
    def actor_index(self) -> int:
        """The index of the actor this session lives on."""
        return self._index

    def submit(self, code: str, *, inputs: Mapping[str, Any] | None = None, principal: Any = None,
               limits: Limits | None = None) -> Future[RunResult]:
        """Start a run in this session; the future holds its `RunResult`."""
        if self._closed or self._lost:
            raise SandboxClosed("this session is closed" + (" (its worker was lost)" if self._lost else ""))
        self._pool._check_open()
        with self._pool._lock:
            self._pool._in_flight[self._index] += 1
        ref = self._pool._actors[self._index].session_run.remote(self.id, code, _plain(inputs), principal, limits)
        return self._pool._track(ref, self._index, 1, lambda reply: reply.result,
                                 lambda exc: self._on_lost(exc, code, principal, limits))

    def run(self, code: str, *, inputs: Mapping[str, Any] | None = None, principal: Any = None,
            limits: Limits | None = None) -> RunResult:
        """Like `RaySandboxPool.run`, but globals from earlier runs of this session are visible."""
        return self.submit(code, inputs=inputs, principal=principal, limits=limits).result()

    async def arun(self, code: str, *, inputs: Mapping[str, Any] | None = None, principal: Any = None,
                   limits: Limits | None = None) -> RunResult:
        return await asyncio.wrap_future(self.submit(code, inputs=inputs, principal=principal, limits=limits))

    def close(self) -> None:
        """Discard the guest state on the actor. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._lost and not self._pool._closed:
            try:
                ray.get(self._pool._actors[self._index].close_session.remote(self.id), timeout=10)
            except (*_LOST, GetTimeoutError):
                pass

    def __enter__(self) -> PoolSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_lost(self, exc: BaseException, code: str, principal: Any, limits: Limits | None) -> RunResult:
        self._lost = True
        return self._pool._lost_result(self._spec, exc, code, principal, limits, self.id)


def worker_lost(runtime: str, isolation: str, exc: BaseException) -> RunResult:
    """The `RunResult` of a run whose Ray worker died before answering."""
    return RunResult(
        ok=False,
        error=ErrorInfo(
            kind="internal", type="WorkerLost",
            message=f"the Ray worker running this run was lost ({type(exc).__name__}); the run was not retried "
                    "because its capability calls may already have had effects",
        ),
        usage=Usage(),
        run_id=os.urandom(16).hex(),
        runtime=runtime,
        isolation=isolation,
    )


def _item(item: str | Mapping[str, Any]) -> tuple[str, Any, Any, Any]:
    if isinstance(item, str):
        return item, None, None, None
    if not isinstance(item, Mapping) or "code" not in item:
        raise TypeError(f"each item must be code or a mapping with 'code', not {type(item).__name__}")
    unknown = set(item) - {"code", "inputs", "principal", "limits"}
    if unknown:
        raise TypeError(f"unknown item key(s) {sorted(unknown)}: use code, inputs, principal, limits")
    return item["code"], _plain(item.get("inputs")), item.get("principal"), item.get("limits")


def _plain(inputs: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return dict(inputs) if inputs is not None else None


def _check_runtime_env(runtime_env: Mapping[str, Any] | None, specs: Mapping[str, SandboxSpec]) -> None:
    """Refuse a ``runtime_env`` that would carry a secret's environment variable (Ray logs them)."""
    if runtime_env is None:
        return
    env_vars = set((runtime_env.get("env_vars") or {}))
    for spec in specs.values():
        for name, secret in spec.secrets.items():
            if secret.env is not None and secret.env in env_vars:
                raise SecretInTransit(
                    f"runtime_env sets {secret.env}, the source of secret {name!r}: Ray writes runtime_env "
                    "variables to its logs; set it in the workers' own environment (or use file=/provider=)"
                )
