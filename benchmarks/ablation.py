"""What each isolation layer costs: the same workloads with layers switched on one at a time.

For each runtime the baseline has every switchable layer off; each variant then switches on one
layer alone, and a last variant switches them all on (the runtime as shipped). A layer's cost is
the median of its variant minus the median of the baseline, with a bootstrap 95% confidence
interval of that difference. Variants of a runtime are measured interleaved (rotating order,
each call timed on its own), like the main run, and as there every variant's background work
(the process isolation forking the replacement of the child a run used) is settled, untimed,
before each call: a cost is what the layer adds to a run's path, not to the pre-forked child's
set-up (which runs off the path, and shows in the throughput under sustained load).

How layers are switched off (benchmark-only, never reachable from `Sandbox(...)` arguments):

- process (`sandbox.process.ProcessDriver`, private ``_disable``): ``rlimits`` (no per-run
  setrlimit plan), ``seccomp``, ``netns``, ``landlock``, ``uid`` (no drop to the unprivileged
  uid, so no RLIMIT_NPROC either). The language layer (RestrictedPython) and the allocator cap
  stay on in every variant.
- restricted (in process): ``alloc-cap`` through ``SANDBOX_DISABLE_ALLOC_CAP=1`` when the driver
  is built (the allocator hooks, once loaded, stay installed process-wide but unarmed);
  ``ticks`` and ``size-guards`` by compiling the guest with a transformer subclass (below) that
  leaves out the inserted ``_tick_``/``_enter_``/``_getiter_`` ticks, or the ``_mul_``/``_mod_``/
  ``_pow_``/``_lshift_``/``_sized_``/``_starred_``/``_formatted_`` guards. Every restricted
  variant, the baseline included, runs through the same compile hook, so the hook's own cost
  cancels out.
- wasi: nothing is switchable (see `NOT_SWITCHABLE`).
"""

from __future__ import annotations

import ast
import contextlib
import functools
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from benchmarks.runner import Config, settle_counted
from benchmarks.stats import summarise
from benchmarks.workloads import Workload
from benchmarks.workloads import by_name as workloads_by_name

WORKLOADS = ("trivial_fresh", "cpu_loop", "json_1mb")
LAYERS: dict[str, tuple[str, ...]] = {
    "restricted": ("ticks", "size-guards", "alloc-cap"),
    "process": ("rlimits", "seccomp", "netns", "landlock", "uid"),
}
NOT_SWITCHABLE: dict[str, dict[str, str]] = {
    "wasi": {
        "fuel": "fuel metering is compiled into the guest's machine code by the Engine configuration "
        "(consume_fuel); an epoch-only variant needs a second Engine, a second compile of the component "
        "(30-90 s) and a second shared runtime with its own spare pool in sandbox/wasi/_engine.py",
        "memory-limit": "Store.set_limits is applied by the shared runtime to every Store, spares included; "
        "a variant without it needs a per-driver runtime and spare pool in sandbox/wasi/_engine.py",
    },
}
BOOTSTRAP_ROUNDS = 1000


@dataclass
class AblationConfig:
    runtimes: tuple[str, ...] = ("restricted", "process")
    workloads: tuple[str, ...] = WORKLOADS
    budget_seconds: float = 1.5
    """Time per variant and workload (never fewer than ``min_samples`` runs)."""
    min_samples: int = 20
    max_samples: int = 400
    settle_timeout: float = Config.settle_timeout
    """Seconds one variant may take to settle before a call; a settle that times out is counted."""


@dataclass
class _Variant:
    runtime: str
    name: str
    on: frozenset[str]
    call: Callable[[str, dict[str, Any] | None], Any] | None = None
    close: Callable[[], None] = lambda: None
    settle: Callable[[float], object] = lambda _timeout: True
    samples: list[float] = field(default_factory=list)
    spent: float = 0.0
    error: str | None = None


# ---------------------------------------------------------------------- restricted: compile hook


def _transformer_without(off: frozenset[str]) -> type:
    """A `GuestTransformer` subclass that leaves out the checks of the layers in ``off``."""
    from runtimes.restricted.transformer import GuestTransformer

    class Ablated(GuestTransformer):  # type: ignore[misc, valid-type]
        if "ticks" in off:

            @staticmethod
            def _prepend(owner: ast.AST, body: list[ast.stmt], tick: str) -> None:
                return None

            def guard_iter(self, node: Any) -> ast.AST:
                return self.node_contents_visit(node)

            def _tick_while(self, node: ast.While) -> ast.AST:
                return node

        if "size-guards" in off:

            def visit_BinOp(self, node: ast.BinOp) -> ast.AST:
                return self.node_contents_visit(node)

            def visit_Call(self, node: ast.Call) -> ast.AST:
                return self.node_contents_visit(node)

            def visit_Starred(self, node: ast.Starred) -> ast.AST:
                return self.node_contents_visit(node)

            def visit_FormattedValue(self, node: ast.FormattedValue) -> ast.AST:
                return self.node_contents_visit(node)

    return Ablated


@functools.lru_cache(maxsize=64)
def _compile_without(off: frozenset[str], source: str, mode: str = "exec", filename: str | None = None) -> Any:
    """`transformer.compile_guest` with the checks of ``off`` left out (cached like the original)."""
    from runtimes.restricted import transformer

    filename = filename or transformer.GUEST_FILENAME
    if not off:
        return transformer.compile_guest(source, mode, filename)
    tree = ast.parse(source, filename, mode)
    visitor = _transformer_without(off)(top_level=(mode == "exec" and filename == transformer.GUEST_FILENAME))
    tree = visitor.visit(tree)
    if visitor.errors:
        return transformer.Compiled(None, "SyntaxError", "; ".join(visitor.errors), None)
    ast.fix_missing_locations(tree)
    return transformer.Compiled(compile(tree, filename, mode, dont_inherit=True))


@contextlib.contextmanager
def _compiling_without(off: frozenset[str]) -> Iterator[None]:
    from runtimes.restricted import executor

    original = executor.compile_guest
    executor.compile_guest = functools.partial(_compile_without, off)
    try:
        yield
    finally:
        executor.compile_guest = original


def _sandbox(runtime: str, on: frozenset[str]) -> tuple[Any, Callable[[], None]]:
    """A `Sandbox` with only the layers ``on`` of ``runtime``'s switchable layers; and its closer."""
    from sandbox import Limits, Sandbox
    from sandbox.restricted import DISABLE_ALLOC_CAP

    limits = Limits(cpu_seconds=30, wall_seconds=60)
    if runtime == "restricted":
        saved = os.environ.get(DISABLE_ALLOC_CAP)
        if "alloc-cap" not in on:
            os.environ[DISABLE_ALLOC_CAP] = "1"
        try:
            sb = Sandbox("restricted", limits=limits)
        finally:
            if saved is None:
                os.environ.pop(DISABLE_ALLOC_CAP, None)
            else:
                os.environ[DISABLE_ALLOC_CAP] = saved
        return sb, sb.close
    from sandbox.process import ProcessDriver

    driver = ProcessDriver(workers=1, _disable=frozenset(LAYERS["process"]) - on)
    sb = Sandbox("restricted", limits=limits)
    sb._driver.close()
    sb._driver, sb.isolation = driver, driver.isolation  # private on purpose: the layer switch is benchmark-only
    return sb, sb.close


def _make_call(runtime: str, sb: Any, on: frozenset[str]) -> Callable[[str, dict[str, Any] | None], Any]:
    off = frozenset(LAYERS["restricted"]) - on - {"alloc-cap"} if runtime == "restricted" else None

    def call(code: str, inputs: dict[str, Any] | None) -> Any:
        if off is None:
            result = sb.run(code, inputs=inputs)
        else:
            with _compiling_without(off):
                result = sb.run(code, inputs=inputs)
        if not result.ok:
            raise RuntimeError(f"{result.error.kind}: {result.error.message}" if result.error else "run failed")
        return result.value

    return call


def _layers(runtime: str) -> tuple[str, ...]:
    """The switchable layers of ``runtime`` on this host (the uid drop exists only on a root host)."""
    return tuple(layer for layer in LAYERS[runtime] if layer != "uid" or os.geteuid() == 0)


def _variants(runtime: str) -> list[_Variant]:
    layers = _layers(runtime)
    return ([_Variant(runtime, "none", frozenset())]
            + [_Variant(runtime, layer, frozenset({layer})) for layer in layers]
            + [_Variant(runtime, "all", frozenset(layers))])


# ---------------------------------------------------------------------------------- measuring


def _measure(variants: list[_Variant], workload: Workload, inputs: dict[str, Any] | None, cfg: AblationConfig,
             unsettled: dict[str, int]) -> None:
    """Time ``workload`` on every variant, interleaved; a variant whose settle before a call
    times out or fails is counted in ``unsettled``, by variant name."""
    running = [v for v in variants if v.call is not None]
    for v in running:
        v.samples, v.spent, v.error = [], 0.0, None
        try:
            if not workload.check(v.call(workload.code, inputs)):
                v.error = "wrong answer"
        except Exception as exc:
            v.error = f"{type(exc).__name__}: {exc}"[:300]
    running = [v for v in running if v.error is None]
    rnd = 0
    while running:
        order = running[rnd % len(running):] + running[: rnd % len(running)]
        rnd += 1
        for v in order:
            for other in variants:
                settle_counted(other.name, other.settle, cfg.settle_timeout, unsettled)
            t0 = time.perf_counter_ns()
            try:
                v.call(workload.code, inputs)  # type: ignore[misc]
            except Exception as exc:
                v.error = f"failed during measurement: {type(exc).__name__}: {exc}"[:300]
                running.remove(v)
                continue
            dt = (time.perf_counter_ns() - t0) / 1e9
            v.samples.append(dt)
            v.spent += dt
            if len(v.samples) >= cfg.max_samples or (v.spent >= cfg.budget_seconds and len(v.samples) >= cfg.min_samples):
                running.remove(v)


def median_difference(a: list[float], b: list[float], rounds: int = BOOTSTRAP_ROUNDS) -> dict[str, Any]:
    """median(a) - median(b) with a percentile-bootstrap 95% CI (fixed seed, so reruns of the
    analysis agree). CI is None when either side has fewer than 6 samples."""
    diff = statistics.median(a) - statistics.median(b)
    if min(len(a), len(b)) < 6:
        return {"median": diff, "ci95": None}
    rng = random.Random(0)
    boot = sorted(statistics.median(rng.choices(a, k=len(a))) - statistics.median(rng.choices(b, k=len(b)))
                  for _ in range(rounds))
    return {"median": diff, "ci95": [boot[int(0.025 * rounds)], boot[int(0.975 * rounds) - 1]]}


def run(cfg: AblationConfig, log: Callable[[str], None] = lambda _text: None) -> dict[str, Any]:
    """Measure every runtime in ``cfg``; returns the ``ablation`` section of results.json.
    Never raises for a runtime that cannot be built here: its entry says why."""
    workloads = workloads_by_name(list(cfg.workloads))
    out: dict[str, Any] = {
        "how": (__doc__ or "").split("\n\n", 1)[1].strip(),
        "workloads": [w.name for w in workloads],
        "titles": {w.name: w.title for w in workloads},
        "config": {"budget_seconds": cfg.budget_seconds, "min_samples": cfg.min_samples,
                   "max_samples": cfg.max_samples, "bootstrap_rounds": BOOTSTRAP_ROUNDS,
                   "settle_timeout": cfg.settle_timeout},
        "runtimes": {},
    }
    for runtime in cfg.runtimes:
        if runtime not in LAYERS:
            out["runtimes"][runtime] = {"status": "skipped", "layers": [],
                                        "not_switchable": NOT_SWITCHABLE.get(runtime, {}),
                                        "reason": "no layer of this runtime can be switched off"}
            continue
        variants = _variants(runtime)
        not_switchable = dict(NOT_SWITCHABLE.get(runtime, {}))
        if "uid" in set(LAYERS[runtime]) - set(_layers(runtime)):
            not_switchable["uid"] = "not a root host: children never change uid, so there is no drop to time"
        entry: dict[str, Any] = {"status": "ok", "layers": list(_layers(runtime)),
                                 "not_switchable": not_switchable, "variants": {}, "costs": {},
                                 "settle_timeouts": {}}
        try:
            for v in variants:
                log(f"ablation: {runtime} with {v.name} on")
                try:
                    sb, v.close = _sandbox(runtime, v.on)
                    v.call = _make_call(runtime, sb, v.on)
                    v.settle = sb.warm
                except Exception as exc:
                    v.error = f"set-up failed: {type(exc).__name__}: {exc}"[:300]
            base = variants[0]
            if base.call is None:
                entry.update(status="skipped", reason=base.error)
                out["runtimes"][runtime] = entry
                continue
            for workload in workloads:
                log(f"ablation: {runtime}, {workload.title}")
                _measure(variants, workload, workload.make_inputs(), cfg, entry["settle_timeouts"])
                for v in variants:
                    cell = entry["variants"].setdefault(v.name, {})
                    cell[workload.name] = ({"status": "ok", **summarise(v.samples)} if v.error is None and v.samples
                                           else {"status": "failed", "reason": v.error or "no samples"})
                    if v is base:
                        continue
                    cost = entry["costs"].setdefault(v.name, {})
                    cost[workload.name] = (median_difference(v.samples, base.samples)
                                           if v.samples and base.samples and v.error is None and base.error is None
                                           else None)
        finally:
            for v in variants:
                with contextlib.suppress(Exception):
                    v.close()
        out["runtimes"][runtime] = entry
    for runtime, reasons in NOT_SWITCHABLE.items():
        out["runtimes"].setdefault(runtime, {"status": "skipped", "layers": [], "not_switchable": reasons,
                                             "reason": "no layer of this runtime can be switched off"})
    return out
