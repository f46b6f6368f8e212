"""The subjects: every way of running a snippet that the harness measures side by side.

A subject runs guest code with fresh state (`run`) and, where it has one, in a session
(`open_session`). It returns the value of the code's last expression and raises `GuestFailure`
when the code failed. A subject that cannot be set up on this machine (not installed, runtime
not landed yet, probe run failed) raises `Unavailable` from `setup` with the reason; the
harness reports it as skipped with that reason and never substitutes anything for it.

In-process subjects that execute plain code objects (native, stock RestrictedPython) cache the
compiled code by source, as the sandbox's restricted runtime does, so the comparison is
execution against execution.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import operator
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

from benchmarks.workloads import ALLOWLIST, CAPABILITIES

RESULT_NAME = "bench_result_value"
PURE_BUILTINS = ("all", "any", "dict", "enumerate", "filter", "map", "max", "min", "sum", "reversed", "sorted",
                 "list", "tuple", "zip", "iter", "next")
_SENTINEL = "\n@@bench-result@@"


class Unavailable(Exception):
    """This subject cannot run on this machine; the message says why."""


class GuestFailure(Exception):
    """The subject ran the code and reported a failure."""


@lru_cache(maxsize=4096)
def capture_last(code: str) -> str:
    """``code`` with its trailing expression statement assigned to ``bench_result_value``."""
    tree = ast.parse(code)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = tree.body[-1]
        tree.body[-1] = ast.copy_location(
            ast.Assign(targets=[ast.Name(RESULT_NAME, ast.Store())], value=last.value), last
        )
        ast.fix_missing_locations(tree)
        return ast.unparse(tree)
    return code


class Session:
    """A subject's session: guest state kept across `run` calls."""

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


class Subject:
    """One way of running guest code. Subclasses set the class attributes and override `run`."""

    name = ""
    title = ""
    kind = "peer"  # "ours", "peer" or "baseline"
    features: frozenset[str] = frozenset({"inputs", "capabilities", "session"})
    notes: tuple[str, ...] = ()
    fresh_means = "fresh state per run"
    session_means = "one session, state kept"

    def setup(self) -> None:
        """Prepare the subject; raise `Unavailable` with the reason when it cannot run here."""

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        raise NotImplementedError

    def open_session(self) -> Session:
        raise Unavailable(f"{self.name} has no sessions")

    @contextlib.contextmanager
    def concurrent(self, threads: int) -> Iterator[Callable[[str], Any]]:
        """A `run` callable safe to call from ``threads`` threads at once."""
        yield self.run

    tag: str | None = None
    """The workload being measured; set by the runner so driver-reported usage can be grouped."""

    def settle(self, timeout: float) -> bool:
        """Wait until work this subject does in the background after its runs (refilling spare
        instances or pre-forked children) is over; True once so, False at ``timeout`` seconds.
        The runner calls it untimed between bursts, so a burst is not charged for another
        subject's refills. Subjects with no background work return True at once."""
        return True

    def timings(self) -> dict[str, Any] | None:
        """Per-phase timings of recent runs, when the runtime exposes them."""
        return None

    def usage(self) -> dict[str, list[tuple[float, float, int | None]]] | None:
        """Driver-reported (wall, cpu, peak memory) per run, grouped by workload, where reported."""
        return None

    def close(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "features": sorted(self.features),
            "fresh": self.fresh_means,
            "session": self.session_means if "session" in self.features else None,
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------------------- native


class _GlobalsSession(Session):
    def __init__(self, subject: _CodeObjectSubject) -> None:
        self._subject = subject
        self._globals = subject.fresh_globals()

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        return self._subject.execute(code, inputs, self._globals)


class _CodeObjectSubject(Subject):
    def compile(self, code: str) -> Any:
        raise NotImplementedError

    def fresh_globals(self) -> dict[str, Any]:
        raise NotImplementedError

    def execute(self, code: str, inputs: dict[str, Any] | None, glb: dict[str, Any]) -> Any:
        compiled = self.compile(code)
        if inputs:
            glb.update(inputs)
        glb.pop(RESULT_NAME, None)
        try:
            exec(compiled, glb)
        except Exception as exc:
            raise GuestFailure(f"{type(exc).__name__}: {exc}") from None
        return glb.get(RESULT_NAME)

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        return self.execute(code, inputs, self.fresh_globals())

    def open_session(self) -> Session:
        return _GlobalsSession(self)


class NativeSubject(_CodeObjectSubject):
    name = "native"
    title = "native exec"
    kind = "baseline"
    notes = ("CPython exec() of a cached code object with fresh globals; no isolation at all",)

    @staticmethod
    @lru_cache(maxsize=4096)
    def _compile(code: str) -> Any:
        return compile(capture_last(code), "<bench>", "exec")

    def compile(self, code: str) -> Any:
        return self._compile(code)

    def fresh_globals(self) -> dict[str, Any]:
        return {"__builtins__": builtins, "__name__": "__bench__", **CAPABILITIES}


# ------------------------------------------------------------------- stock RestrictedPython


class StockRestrictedPythonSubject(_CodeObjectSubject):
    name = "restrictedpython"
    title = "RestrictedPython (stock)"
    notes = (
        "compile_restricted (cached by source) with a minimal policy: safe_builtins + utility_builtins + the pure "
        "builtins " + "/".join(PURE_BUILTINS) + " (not limited_builtins, whose range() stops at 1,000); "
        "guards from RestrictedPython.Guards/Eval (safer_getattr, full_write_guard, guarded unpacking); "
        "__import__ limited to the same module allowlist as the sandbox",
    )

    def setup(self) -> None:
        try:
            import RestrictedPython  # noqa: F401
            from RestrictedPython import compile_restricted, safe_builtins, utility_builtins
            from RestrictedPython.Eval import default_guarded_getitem, default_guarded_getiter
            from RestrictedPython.Guards import (
                full_write_guard,
                guarded_iter_unpack_sequence,
                guarded_unpack_sequence,
                safer_getattr,
            )
            from RestrictedPython.PrintCollector import PrintCollector
        except ImportError as exc:
            raise Unavailable(f"RestrictedPython is not installed ({exc})") from None
        allowed = frozenset(ALLOWLIST)

        def guarded_import(
            name: str, globals: Any = None, locals: Any = None, fromlist: Any = (), level: int = 0
        ) -> Any:
            if level != 0 or name.split(".")[0] not in allowed:
                raise ImportError(f"import of {name!r} is not allowed")
            return __import__(name, globals, locals, fromlist, level)

        ops = {
            "+=": operator.iadd, "-=": operator.isub, "*=": operator.imul, "/=": operator.itruediv,
            "//=": operator.ifloordiv, "%=": operator.imod, "**=": operator.ipow, "<<=": operator.ilshift,
            ">>=": operator.irshift, "|=": operator.ior, "&=": operator.iand, "^=": operator.ixor,
        }

        def inplacevar(op: str, x: Any, y: Any) -> Any:
            return ops[op](x, y)

        rp_builtins = dict(safe_builtins)
        rp_builtins.update(utility_builtins)
        for name in PURE_BUILTINS:
            rp_builtins[name] = getattr(builtins, name)
        rp_builtins["__import__"] = guarded_import
        self._globals = {
            "__builtins__": rp_builtins,
            "__name__": "__bench__",
            "__metaclass__": type,
            "_getattr_": safer_getattr,
            "_getitem_": default_guarded_getitem,
            "_getiter_": default_guarded_getiter,
            "_write_": full_write_guard,
            "_inplacevar_": inplacevar,
            "_iter_unpack_sequence_": guarded_iter_unpack_sequence,
            "_unpack_sequence_": guarded_unpack_sequence,
            "_apply_": lambda f, *a, **k: f(*a, **k),
            "_print_": PrintCollector,
            **CAPABILITIES,
        }
        self._compile_restricted = compile_restricted

    @lru_cache(maxsize=4096)  # noqa: B019 - one subject per run
    def compile(self, code: str) -> Any:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)  # "Prints, but never reads 'printed'"
                return self._compile_restricted(capture_last(code), "<bench>", "exec")
        except SyntaxError as exc:
            raise GuestFailure(f"compile refused: {exc}") from None

    def fresh_globals(self) -> dict[str, Any]:
        return dict(self._globals)


# ---------------------------------------------------------------------------- python -c


class PythonSubprocessSubject(Subject):
    name = "python-c"
    title = "python -c (subprocess)"
    kind = "baseline"
    features = frozenset({"inputs"})
    notes = (
        "a new interpreter per run: [sys.executable, '-c', code]; inputs arrive as JSON on stdin and the "
        "value leaves on stdout; no host channel, so no capabilities and no sessions",
    )

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        body = capture_last(code)
        if inputs:
            program = (
                "import json as _bj, sys as _bs\nglobals().update(_bj.loads(_bs.stdin.read()))\n"
                + body
                + f"\n_bs.stdout.write({_SENTINEL!r} + _bj.dumps(globals().get({RESULT_NAME!r})))\n"
            )
            stdin = json.dumps(inputs)
        else:
            program = (
                body + f"\nimport sys as _bs\n_bs.stdout.write({_SENTINEL!r} + repr(globals().get({RESULT_NAME!r})))\n"
            )
            stdin = None
        done = subprocess.run(
            [sys.executable, "-c", program], input=stdin, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]
            raise GuestFailure(last)
        payload = done.stdout.rpartition(_SENTINEL)[2]
        return json.loads(payload) if inputs else ast.literal_eval(payload)


# ------------------------------------------------------------------------------ sandbox


class _SandboxSession(Session):
    def __init__(self, subject: SandboxSubject, session: Any) -> None:
        self._subject = subject
        self._session = session

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        return self._subject.unwrap(self._session.run(code, inputs=inputs))

    def close(self) -> None:
        self._session.close()


class SandboxSubject(Subject):
    """This project's runtimes, through the public `Sandbox` API."""

    kind = "ours"

    def __init__(self, name: str, title: str, runtime: str, isolation: str | None = None, workers: int = 1,
                 notes: tuple[str, ...] = (), layers: tuple[str, ...] = ()) -> None:
        self.name, self.title = name, title
        self.required_layers = layers
        self.runtime, self.isolation, self.workers = runtime, isolation, workers
        self.notes = notes
        self._sandbox: Any = None
        self._timings: list[dict[str, float]] = []
        self._timings_lock = threading.Lock()
        self._usage: dict[str, list[tuple[float, float, int | None]]] = {}

    def _make(self, workers: int | None = None) -> Any:
        from sandbox import Limits, Sandbox

        kwargs: dict[str, Any] = {}
        if self.isolation:
            kwargs = {"isolation": self.isolation, "workers": workers or self.workers}
        return Sandbox(
            self.runtime,
            limits=Limits(cpu_seconds=30, wall_seconds=60),
            capabilities=list(CAPABILITIES.values()),
            **kwargs,
        )

    def setup(self) -> None:
        try:
            self._sandbox = self._make()
        except Exception as exc:  # runtime not landed, dependency missing, layer unavailable
            raise Unavailable(f"Sandbox({self.runtime!r}, isolation={self.isolation!r}) failed: "
                              f"{type(exc).__name__}: {exc}") from None
        try:
            probe = self._sandbox.run("1 + 1")
            value = self.unwrap(probe)
        except Exception as exc:
            self.close()
            raise Unavailable(f"probe run `1 + 1` failed: {exc}") from None
        if value != 2:
            self.close()
            raise Unavailable(f"probe run `1 + 1` returned {value!r}, not 2")
        missing = [layer for layer in self.required_layers if layer not in probe.layers]
        if missing:
            self.close()
            raise Unavailable(
                f"the runtime answers but does not apply {missing} (layers applied: {list(probe.layers)}); "
                "it is a stand-in, so it is not measured as this subject"
            )
        self.layers = list(probe.layers)
        self._timings.clear()
        self._usage.clear()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layers": getattr(self, "layers", None)}

    def unwrap(self, result: Any) -> Any:
        tag = self.tag
        if tag is not None and threading.current_thread().name.startswith(("bench-", "MainThread")):
            bucket = self._usage.setdefault(tag, [])
            if len(bucket) < 5000:
                u = result.usage
                bucket.append((u.wall_seconds, u.cpu_seconds, u.peak_memory_bytes))
        timings = _phase_timings(result)
        if timings:
            with self._timings_lock:
                self._timings.append(timings)
                if len(self._timings) > 5000:
                    del self._timings[:2500]
        if not result.ok:
            err = result.error
            raise GuestFailure(f"{err.kind}: {err.type}: {err.message}" if err else "run failed")
        return result.value

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        return self.unwrap(self._sandbox.run(code, inputs=inputs))

    def settle(self, timeout: float) -> bool:
        """`Sandbox.warm`: wasi spares made, process children forked and waiting, no refill running."""
        return self._sandbox is None or bool(self._sandbox.warm(timeout))

    def open_session(self) -> Session:
        return _SandboxSession(self, self._sandbox.session())

    @contextlib.contextmanager
    def concurrent(self, threads: int) -> Iterator[Callable[[str], Any]]:
        if self.isolation != "process":
            yield self.run
            return
        sb = self._make(workers=threads)
        try:
            sb.warm(60.0)  # its workers + 1 children are forked and waiting, as a host would have them before traffic
            yield lambda code: self.unwrap(sb.run(code))
        finally:
            sb.close()

    def timings(self) -> dict[str, Any] | None:
        with self._timings_lock:
            samples = list(self._timings)
        return {"samples": samples} if samples else None

    def usage(self) -> dict[str, list[tuple[float, float, int | None]]] | None:
        return {k: list(v) for k, v in self._usage.items()} or None

    def clear_timings(self) -> None:
        with self._timings_lock:
            self._timings.clear()

    def close(self) -> None:
        if self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None


def _phase_timings(result: Any) -> dict[str, float] | None:
    """Per-phase seconds of one run: `RunResult.timings` (None unless the sandbox was made with
    ``timings=True``). A plain field read: the harness must not charge the subject for probing."""
    timings = result.timings
    return dict(timings) if timings else None


# --------------------------------------------------------------------------------- Monty


class _MontySession(Session):
    def __init__(self, subject: MontySubject) -> None:
        self._subject = subject
        self._cm = subject.pool.checkout()
        self._session = self._cm.__enter__()

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        return self._subject.feed(self._session, code, inputs)

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


class MontySubject(Subject):
    name = "monty"
    title = "Monty (pydantic-monty)"
    fresh_means = "checkout + feed_run + return (a pooled worker, fresh session)"
    session_means = "warm feed_run on a checked-out session"
    notes = (
        "pydantic_monty.Monty pool (workers are `monty` subprocesses); fresh = checkout()+feed_run, "
        "session = feed_run on a held session; capabilities via external_lookup, inputs via inputs=",
        "no background work between runs (the worker's and the pool threads' CPU time does not move after "
        "a burst), so it needs no settling",
    )

    def setup(self) -> None:
        try:
            import pydantic_monty
        except ImportError as exc:
            raise Unavailable(f"pydantic-monty is not installed ({exc})") from None
        self._mod = pydantic_monty
        try:
            self.pool = pydantic_monty.Monty(min_processes=1, max_processes=8, request_timeout=120)
            self.pool.__enter__()
        except Exception as exc:
            raise Unavailable(f"Monty pool failed to start: {type(exc).__name__}: {exc}") from None

    def feed(self, session: Any, code: str, inputs: dict[str, Any] | None) -> Any:
        try:
            return session.feed_run(
                code, inputs=inputs, external_lookup=CAPABILITIES, print_callback=self._mod.CollectString()
            )
        except self._mod.MontyError as exc:
            lines = str(exc).strip().splitlines()
            raise GuestFailure(f"{type(exc).__name__}: {lines[-1] if lines else ''}") from None

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        with self.pool.checkout() as session:
            return self.feed(session, code, inputs)

    def open_session(self) -> Session:
        return _MontySession(self)

    def close(self) -> None:
        pool = getattr(self, "pool", None)
        if pool is not None:
            pool.__exit__(None, None, None)
            self.pool = None


# ---------------------------------------------------------------------------- smolagents


class _SmolSession(Session):
    def __init__(self, subject: SmolagentsSubject) -> None:
        self._subject = subject
        self._executor = subject.new_executor()

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        return self._subject.execute(self._executor, code, inputs)


class SmolagentsSubject(Subject):
    name = "smolagents"
    title = "smolagents LocalPythonExecutor"
    fresh_means = "one executor, its state dict reset before each run"
    session_means = "one executor, state kept"
    notes = (
        "smolagents.local_python_executor.LocalPythonExecutor (an AST interpreter in this process) with the "
        "same import allowlist as the sandbox; capabilities passed as tools",
    )

    def setup(self) -> None:
        try:
            import logging

            from smolagents.local_python_executor import LocalPythonExecutor
        except ImportError as exc:
            raise Unavailable(f"smolagents is not installed ({exc})") from None
        logging.getLogger("smolagents").setLevel(logging.ERROR)
        self._cls = LocalPythonExecutor
        self._local = threading.local()

    def new_executor(self) -> Any:
        ex = self._cls(additional_authorized_imports=list(ALLOWLIST))
        ex.send_tools(dict(CAPABILITIES))
        return ex

    def _executor(self) -> Any:
        ex = getattr(self._local, "executor", None)
        if ex is None:
            ex = self._local.executor = self.new_executor()
        return ex

    @staticmethod
    def execute(ex: Any, code: str, inputs: dict[str, Any] | None) -> Any:
        if inputs:
            ex.send_variables(inputs)
        try:
            return ex(code).output
        except Exception as exc:
            message = str(exc).strip().splitlines()
            raise GuestFailure(f"{type(exc).__name__}: {message[-1] if message else ''}"[:300]) from None

    def run(self, code: str, inputs: dict[str, Any] | None = None) -> Any:
        ex = self._executor()
        ex.state = {"__name__": "__main__"}
        return self.execute(ex, code, inputs)

    def open_session(self) -> Session:
        return _SmolSession(self)


# ---------------------------------------------------------------------------------- list


def all_subjects(workers: int = 2) -> list[Subject]:
    """Every subject, ours first. ``workers`` sizes the process-isolation pool."""
    return [
        NativeSubject(),
        SandboxSubject(
            "restricted", "sandbox restricted", "restricted",
            notes=("sandbox.Sandbox('restricted'): RestrictedPython in this process, cooperative limits",),
            layers=("restricted-python",),
        ),
        SandboxSubject(
            "restricted+process", "sandbox restricted + process", "restricted", isolation="process", workers=workers,
            notes=(f"Sandbox('restricted', isolation='process', workers={workers}): pre-forked confined child per run "
                   "(rlimits, seccomp, netns)",),
            layers=("restricted-python", "rlimits", "seccomp"),
        ),
        SandboxSubject(
            "wasi", "sandbox wasi", "wasi",
            notes=("Sandbox('wasi'): CPython component in Wasmtime; fresh = new Store + instance per run, "
                   "session = one instance kept",),
            layers=("wasm",),
        ),
        MontySubject(),
        SmolagentsSubject(),
        StockRestrictedPythonSubject(),
        PythonSubprocessSubject(),
    ]


def by_name(names: list[str] | None, workers: int = 2) -> list[Subject]:
    subjects = all_subjects(workers)
    if not names:
        return subjects
    known = {s.name: s for s in subjects}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown subject(s) {unknown}: choose from {sorted(known)}")
    return [known[n] for n in names]
