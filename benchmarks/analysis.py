"""Derived numbers: the isolation-overhead breakdown and the issue targets, from one run's results."""

from __future__ import annotations

import statistics
from typing import Any

HOOK_NOTE = (
    "the driver exposes no per-phase timings (the harness looks for RunResult.timings or "
    "RunResult.usage.timings, a dict phase -> seconds); the phases below are derived from outside, as "
    "differences between medians of workloads measured in the same run, and cannot separate "
    "instantiate from teardown or compile from execution"
)


def _med(results: dict[str, Any], workload: str, subject: str) -> float | None:
    entry = results.get("workloads", {}).get(workload, {}).get("results", {}).get(subject, {})
    return entry.get("median") if entry.get("status") == "ok" else None


def _sub(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _div(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


def _phase_medians(samples: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for s in samples for k in s})
    return {k: statistics.median([s[k] for s in samples if k in s]) for k in keys}


def breakdown(results: dict[str, Any]) -> dict[str, Any]:
    """Where one run's time goes, for the wasi runtime and for process isolation."""
    out: dict[str, Any] = {}
    for name in ("wasi", "restricted+process"):
        info = results.get("subjects", {}).get(name, {})
        if info.get("status") != "ok":
            out[name] = {"status": "skipped", "reason": info.get("reason", "not measured")}
            continue
        entry: dict[str, Any] = {"status": "ok"}
        hooks = (results.get("timing_hooks") or {}).get(name)
        if hooks and hooks.get("samples"):
            entry["source"] = "driver timing hook"
            entry["phases_median_seconds"] = _phase_medians(hooks["samples"])
            entry["hook_samples"] = len(hooks["samples"])
        else:
            entry["source"] = "derived from outside"
            entry["note"] = HOOK_NOTE
        fresh = _med(results, "trivial_fresh", name)
        session = _med(results, "trivial_session", name)
        loop = _med(results, "cpu_loop", name)
        native_fresh = _med(results, "trivial_fresh", "native")
        native_loop = _med(results, "cpu_loop", "native")
        caps = _med(results, "capability_calls", name)
        native_json = _med(results, "json_1mb", "native")
        exec_loop = _sub(loop, fresh)
        native_exec_loop = _sub(native_loop, native_fresh)
        api = results.get("api_overhead", {}).get("median")
        derived: dict[str, Any] = {
            "end_to_end_fresh": fresh,
            "sandbox_api": api,
            "driver_fresh": _sub(fresh, api),
            "session_run": session,
            "instance_start_and_teardown": _sub(fresh, session),
            "execution_of_10k_loop": exec_loop,
            "execution_slowdown_vs_native": _div(exec_loop, native_exec_loop),
            "capability_round_trip": None if caps is None or fresh is None else (caps - fresh) / 100,
            "json_1mb_extra_over_native": _sub(_med(results, "json_1mb", name), native_json),
        }
        explain = {
            "end_to_end_fresh": "Sandbox.run('1 + 1') with fresh state, median",
            "sandbox_api": "measured: Sandbox.run with a driver that returns at once (checks, run id, RunResult)",
            "driver_fresh": "end to end minus the API: everything the runtime's driver does",
            "session_run": "the same in an open session: API + interpreter entry + compile + execute + result "
            "marshalling, without instance start",
            "instance_start_and_teardown": "fresh minus session: creating and discarding the per-run instance "
            "(wasi: Store + instantiate + teardown; process: handing the job to a pre-forked child, "
            "confinement, wait4, replacing the child)",
            "execution_of_10k_loop": "CPU loop minus trivial: pure execution of 10,000 iterations",
            "execution_slowdown_vs_native": "that execution time over native exec's",
            "capability_round_trip": "(100 capability calls minus trivial) / 100",
            "json_1mb_extra_over_native": "1 MB in and out plus guest json: extra time over native (marshalling "
            "across the boundary and slower execution)",
        }
        if name == "restricted+process":
            in_process = _med(results, "trivial_fresh", "restricted")
            derived["process_isolation_over_in_process"] = _sub(fresh, in_process)
            explain["process_isolation_over_in_process"] = (
                "restricted+process minus in-process restricted, fresh trivial: the price of the child process")
        usage = (results.get("driver_usage") or {}).get(name, {}).get("trivial_fresh")
        if usage:
            cpu = usage["cpu_seconds_median"]
            derived["guest_cpu_reported_by_driver"] = cpu
            derived["wall_outside_guest_cpu"] = _sub(fresh, cpu)
            explain["guest_cpu_reported_by_driver"] = (
                "median RunResult.usage.cpu_seconds of the fresh trivial runs (wasi: from fuel consumed, "
                "including interpreter entry; process: the child's CPU from wait4)")
            explain["wall_outside_guest_cpu"] = "end to end minus that: hand-off, waiting, host-side work"
            if usage.get("peak_memory_bytes_median"):
                derived["guest_peak_memory_bytes"] = usage["peak_memory_bytes_median"]
                explain["guest_peak_memory_bytes"] = "median RunResult.usage.peak_memory_bytes (bytes, not seconds)"
        cold = results.get("rss", {}).get(name, {}).get("first_result_seconds")
        derived["cold_start_to_first_result"] = cold
        explain["cold_start_to_first_result"] = "new interpreter: imports, set-up and the first run (warm caches)"
        entry["derived_seconds"] = derived
        entry["explain"] = explain
        out[name] = entry
    return out


def _target(area: str, what: str, target: str, value: Any, met: bool | None, unit: str, note: str = "") -> dict:
    return {"area": area, "what": what, "target": target, "value": value, "unit": unit, "met": met, "note": note}


def _le(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


MONTY_WORKLOADS = ("trivial_fresh", "trivial_session", "cpu_loop", "json_1mb", "capability_calls")
"""Workloads where restricted is compared with Monty head to head."""


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The performance targets of the project, checked against this run (``met`` is None when
    the number is only reported, or was not measured)."""
    m = lambda w, s: _med(results, w, s)  # noqa: E731
    he = results.get("workloads", {}).get("humaneval", {})
    problems = he.get("problems", 164)
    bd = results.get("breakdown", {})
    wasi_cap = bd.get("wasi", {}).get("derived_seconds", {}).get("capability_round_trip")
    rss = results.get("rss", {})
    scaling = results.get("scaling", {}).get("results", {}).get("restricted+process", {})
    two = scaling.get("runs_per_second", {}).get("2", {}).get("runs_per_second")
    one = scaling.get("runs_per_second", {}).get("1", {}).get("runs_per_second")
    out = [
        _target("restricted", "trivial snippet in a session", "<= 10 us", m("trivial_session", "restricted"),
                _le(m("trivial_session", "restricted"), 10e-6), "s"),
        _target("restricted", "trivial snippet, fresh state", "<= 20 us", m("trivial_fresh", "restricted"),
                _le(m("trivial_fresh", "restricted"), 20e-6), "s"),
    ]
    for workload in MONTY_WORKLOADS:
        speedup = _div(m(workload, "monty"), m(workload, "restricted"))
        out.append(_target("restricted", f"Monty / restricted, {workload}", "> 1x (restricted faster)", speedup,
                           None if speedup is None else speedup > 1, "x"))
    loop_ratio = _div(m("cpu_loop", "restricted"), m("cpu_loop", "native"))
    json_ratio = _div(m("json_1mb", "restricted"), m("json_1mb", "native"))
    caps = m("capability_calls", "restricted")
    out += [
        _target("restricted", "restricted / native on the 10k loop", "<= 1.3x", loop_ratio, _le(loop_ratio, 1.3), "x"),
        _target("restricted", "restricted / native on JSON 1 MB", "<= 1.5x", json_ratio, _le(json_ratio, 1.5), "x"),
        _target("restricted", "100 capability calls", "<= 0.3 ms", caps, _le(caps, 0.3e-3), "s"),
        _target("wasi", "fresh instance, trivial snippet", "<= 1 ms", m("trivial_fresh", "wasi"),
                _le(m("trivial_fresh", "wasi"), 1e-3), "s"),
        _target("wasi", "session run", "<= 150 us", m("trivial_session", "wasi"),
                _le(m("trivial_session", "wasi"), 150e-6), "s"),
        _target("wasi", "capability round trip", "<= 30 us", wasi_cap, _le(wasi_cap, 30e-6), "s",
                "derived: (100 calls - trivial) / 100"),
        _target("wasi", "process start to first result (warm cache)", "<= 300 ms",
                rss.get("wasi", {}).get("first_result_seconds"),
                _le(rss.get("wasi", {}).get("first_result_seconds"), 0.3), "s"),
        _target("wasi", "wasi / native on the 10k loop", "report", _div(m("cpu_loop", "wasi"), m("cpu_loop", "native")),
                None, "x"),
        _target("wasi", "RSS per live instance", "report", rss.get("wasi", {}).get("rss_per_live_session"), None,
                "bytes"),
        _target("process", "restricted+process, fresh state, end to end", "<= 1 ms", m("trivial_fresh", "restricted+process"),
                _le(m("trivial_fresh", "restricted+process"), 1e-3), "s"),
        _target("process", "restricted+process throughput, 2 workers / 2 threads", "report", two, None, "runs/s",
                f"1 worker: {one:.0f} runs/s" if one else ""),
    ]
    for name in ("restricted", "wasi", "restricted+process"):
        entry = he.get("results", {}).get(name, {})
        passed = entry.get("passed") if entry.get("status") == "ok" else None
        out.append(_target(name.split("+")[-1], f"HumanEval passes on {name}", f"{problems}/{problems}", passed,
                           None if passed is None else passed == problems, "count"))
    return out
