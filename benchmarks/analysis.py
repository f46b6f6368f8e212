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


def _target(issue: int, what: str, target: str, value: Any, met: bool | None, unit: str, note: str = "") -> dict:
    return {"issue": issue, "what": what, "target": target, "value": value, "unit": unit, "met": met, "note": note}


def _le(value: float | None, bound: float) -> bool | None:
    return None if value is None else value <= bound


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The benchmark targets named by issues 2, 3 and 4, checked against this run."""
    m = lambda w, s: _med(results, w, s)  # noqa: E731
    he = results.get("workloads", {}).get("humaneval", {})
    he_r = he.get("results", {}).get("restricted", {})
    he_w = he.get("results", {}).get("wasi", {})
    bd = results.get("breakdown", {})
    wasi_cap = bd.get("wasi", {}).get("derived_seconds", {}).get("capability_round_trip")
    rss = results.get("rss", {})
    scaling = results.get("scaling", {}).get("results", {}).get("restricted+process", {})
    two = scaling.get("runs_per_second", {}).get("2", {}).get("runs_per_second")
    one = scaling.get("runs_per_second", {}).get("1", {}).get("runs_per_second")
    r_fresh, monty_feed = m("trivial_fresh", "restricted"), m("trivial_session", "monty")
    speedup = _div(monty_feed, r_fresh)
    loop_ratio = _div(m("cpu_loop", "restricted"), m("cpu_loop", "native"))
    he_pass = he_r.get("passed") if he_r.get("status") == "ok" else None
    he_w_pass = he_w.get("passed") if he_w.get("status") == "ok" else None
    proc = m("trivial_fresh", "restricted+process")
    checkout = m("trivial_fresh", "monty")
    return [
        _target(2, "restricted, cached trivial snippet, fresh state", "<= 30 us", r_fresh, _le(r_fresh, 30e-6), "s"),
        _target(2, "Monty warm feed / restricted fresh", ">= 8x", speedup,
                None if speedup is None else speedup >= 8, "x"),
        _target(2, "restricted / native on the 10k loop", "<= 1.3x", loop_ratio, _le(loop_ratio, 1.3), "x"),
        _target(2, "HumanEval passes on restricted", f"{he.get('problems', 164)}/{he.get('problems', 164)}",
                he_pass, None if he_pass is None else he_pass == he.get("problems"), "count"),
        _target(3, "wasi fresh instance, trivial snippet", "<= 1.5 ms", m("trivial_fresh", "wasi"),
                _le(m("trivial_fresh", "wasi"), 1.5e-3), "s"),
        _target(3, "wasi session run", "<= 0.3 ms", m("trivial_session", "wasi"),
                _le(m("trivial_session", "wasi"), 0.3e-3), "s"),
        _target(3, "wasi capability round trip", "<= 50 us", wasi_cap, _le(wasi_cap, 50e-6), "s",
                "derived: (100 calls - trivial) / 100"),
        _target(3, "process start to first wasi result (warm cache)", "<= 1 s",
                rss.get("wasi", {}).get("first_result_seconds"),
                _le(rss.get("wasi", {}).get("first_result_seconds"), 1.0), "s"),
        _target(3, "wasi / native on the 10k loop", "report", _div(m("cpu_loop", "wasi"), m("cpu_loop", "native")),
                None, "x"),
        _target(3, "wasi RSS per live instance", "report", rss.get("wasi", {}).get("rss_per_live_session"), None,
                "bytes"),
        _target(3, "HumanEval passes on wasi", f"{he.get('problems', 164)}/{he.get('problems', 164)}", he_w_pass,
                None if he_w_pass is None else he_w_pass == he.get("problems"), "count"),
        _target(4, "restricted+process, fresh state, end to end", "<= 1.5 ms", proc, _le(proc, 1.5e-3), "s"),
        _target(4, "restricted+process / Monty checkout+feed", "report", _div(proc, checkout), None, "x"),
        _target(4, "restricted+process throughput, 2 workers / 2 threads", "report", two, None, "runs/s",
                f"1 worker: {one:.0f} runs/s" if one else ""),
    ]
