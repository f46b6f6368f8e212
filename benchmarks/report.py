"""Terminal report of a results dict (rich tables) and shared number formatting."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs" if seconds < 1e-4 else f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms" if seconds < 1e-2 else f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_ci(ci: list[float] | None) -> str:
    """A median's confidence interval as ``low–high``; ``-`` when there were too few samples."""
    return "-" if not ci else f"{fmt_time(ci[0])}–{fmt_time(ci[1])}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}×" if value < 10 else f"{value:.0f}×"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "-"
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{sign}{value:.0f} {unit}" if unit == "B" else f"{sign}{value:.1f} {unit}"
        value /= 1024
    return "-"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def fmt_value(value: Any, unit: str) -> str:
    if value is None:
        return "not measured"
    if unit == "s":
        return fmt_time(value)
    if unit == "x":
        return fmt_ratio(value)
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "runs/s":
        return f"{value:.0f} runs/s"
    return str(value)


def cell(entry: dict[str, Any]) -> str:
    """One workload × subject cell: median, or why there is none."""
    status = entry.get("status")
    if status == "ok" and "median" in entry:
        return fmt_time(entry["median"])
    return {"n/a": "n/a", "skipped": "skipped", "unsupported": "unsupported", "failed": "failed"}.get(status, "-")


def wasi_build_lines(results: dict[str, Any]) -> list[str]:
    """One line per measured wasi guest build step (cached load, first-use build): its time, or
    its status and why it is missing. Empty when the run did not measure the wasi build."""
    build = results.get("wasi_build") or {}
    lines = []
    for key, label in (("cached_load", "wasi guest load from the cache"), ("first_use_build", "wasi first-use build")):
        entry = build.get(key) or {}
        if entry.get("status") == "ok":
            lines.append(f"{label}: {fmt_time(entry['seconds'])}")
        elif entry:
            lines.append(f"{label}: {entry.get('status')} ({entry.get('reason')})")
    return lines


def settle_note(results: dict[str, Any]) -> str:
    """Whether background work was settled between bursts (results from before it say not)."""
    settle = results.get("settle") or {}
    if not settle.get("enabled"):
        return ("Background work (wasi spare instances, process children) was not settled between bursts: a burst "
                "shared the machine with the refills of the bursts before it, whichever subject they belonged to.")
    timeouts = settle.get("timeouts") or {}
    late = f" (settling timed out {sum(timeouts.values())} times: {', '.join(sorted(timeouts))})" if timeouts else ""
    return ("Background work (wasi spare instances, process children) was settled between bursts, untimed, so each "
            f"burst measures its own subject{late}: the latencies are at light load. The throughput curve "
            "(scaling.png) runs with that work alongside, as under sustained load.")


def subject_names(results: dict[str, Any]) -> list[str]:
    return list(results.get("subjects", {}))


def print_report(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    names = subject_names(results)
    workloads = results.get("workloads", {})
    subjects = results.get("subjects", {})

    summary = Table(title="Median latency per run (ratio vs native exec)", title_justify="left")
    summary.add_column("subject", style="bold")
    for w in workloads.values():
        summary.add_column(w["title"], justify="right")
    for name in names:
        row = [name]
        for wname, w in workloads.items():
            entry = w["results"].get(name, {})
            if wname == "humaneval":
                row.append(f"{entry['passed']}/{entry['problems']}" if entry.get("status") == "ok" else cell(entry))
                continue
            text = cell(entry)
            if entry.get("status") == "ok" and entry.get("ratio_native") is not None and name != "native":
                text += f"\n[dim]{fmt_ratio(entry['ratio_native'])}[/]"
            row.append(text)
        summary.add_row(*row)
    console.print(summary)

    for wname, w in workloads.items():
        if wname == "humaneval":
            continue
        table = Table(title=f"{w['title']} — {w['description']}", title_justify="left")
        for col in ("subject", "n", "median", "95% CI of median", "p90", "p99", "min", "× native", "× Monty", "note"):
            table.add_column(col, justify="left" if col in ("subject", "note") else "right")
        for name in names:
            e = w["results"].get(name, {})
            if e.get("status") == "ok":
                table.add_row(name, str(e["n"]), fmt_time(e["median"]), fmt_ci(e.get("median_ci95")),
                              fmt_time(e.get("p90")), fmt_time(e.get("p99")),
                              fmt_time(e["min"]), fmt_ratio(e.get("ratio_native")), fmt_ratio(e.get("ratio_monty")), "")
            else:
                table.add_row(name, "", "", "", "", "", "", "", "", f"[yellow]{e.get('status')}[/]: {e.get('reason', '')}")
        console.print(table)

    he = workloads.get("humaneval")
    if he:
        table = Table(title=f"HumanEval: {he['problems']} programs, fresh state each (compatibility and time)",
                      title_justify="left")
        for col in ("subject", "passed", "total", "median / program", "× native", "first failures"):
            table.add_column(col, justify="left" if col in ("subject", "first failures") else "right")
        for name in names:
            e = he["results"].get(name, {})
            if e.get("status") == "ok":
                fails = ", ".join(list(e["failures"])[:3]) + (" …" if len(e["failures"]) > 3 else "")
                table.add_row(name, f"{e['passed']}/{e['problems']}", fmt_time(e["total_seconds"]),
                              fmt_time(e.get("median")), fmt_ratio(e.get("ratio_native")), fails)
            else:
                table.add_row(name, "", "", "", "", f"[yellow]{e.get('status')}[/]: {e.get('reason', '')}")
        console.print(table)

    scaling = results.get("scaling")
    if scaling:
        levels = [str(c) for c in results["config"]["concurrency"]]
        table = Table(title="Throughput, trivial snippet fresh (runs/s) by concurrency", title_justify="left")
        table.add_column("subject")
        for level in levels:
            table.add_column(f"×{level}", justify="right")
        for name in names:
            e = scaling["results"].get(name, {})
            if e.get("status") == "ok":
                row = [name]
                for level in levels:
                    r = e["runs_per_second"].get(level, {})
                    row.append(f"{r['runs_per_second']:.0f}" if "runs_per_second" in r else r.get("error", "-")[:30])
                table.add_row(*row)
        console.print(table)

    rss = results.get("rss")
    if rss:
        table = Table(title="Memory and cold start (one child process per subject)", title_justify="left")
        for col in ("subject", "cold start → first result", "host peak RSS", "over baseline", "workers PSS",
                    "per live session"):
            table.add_column(col, justify="left" if col == "subject" else "right")
        for name in ["baseline", *names]:
            e = rss.get(name, {})
            if e.get("status") == "ok":
                table.add_row(name, fmt_time(e.get("first_result_seconds")), fmt_bytes(e.get("host_peak_rss")),
                              fmt_bytes(e.get("host_peak_rss_over_baseline")), fmt_bytes(e.get("workers_pss")),
                              fmt_bytes(e.get("rss_per_live_session")))
        console.print(table)

    breakdown = results.get("breakdown", {})
    for name, b in breakdown.items():
        if b.get("status") != "ok":
            continue
        table = Table(title=f"Where the time goes: {name} ({b['source']})", title_justify="left")
        table.add_column("phase")
        table.add_column("time", justify="right")
        table.add_column("how", style="dim")
        for phase, value in (b.get("phases_median_seconds") or {}).items():
            table.add_row(phase, fmt_time(value), "driver hook, median")
        for phase, value in b["derived_seconds"].items():
            shown = (fmt_ratio(value) if phase.endswith("_vs_native")
                     else fmt_bytes(value) if phase.endswith("_bytes") else fmt_time(value))
            table.add_row(phase, shown, b["explain"].get(phase, ""))
        console.print(table)

    targets = results.get("targets", [])
    if targets:
        table = Table(title="Performance targets", title_justify="left")
        for col in ("area", "what", "target", "measured", "met"):
            table.add_column(col, justify="right" if col in ("measured",) else "left")
        for t in targets:
            met = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[t["met"]]
            table.add_row(t.get("area", ""), t["what"], t["target"], fmt_value(t["value"], t["unit"]), met)
        console.print(table)

    skipped = [(n, s["reason"]) for n, s in subjects.items() if s.get("status") != "ok"]
    for n, reason in skipped:
        console.print(f"[yellow]skipped[/] {n}: {reason}")
    for wname, w in workloads.items():
        for n, e in w["results"].items():
            if e.get("status") in ("unsupported", "failed"):
                console.print(f"[yellow]{e['status']}[/] {n} on {w['title']}: {e.get('reason')}")
    ablation = results.get("ablation")
    if ablation:
        print_ablation(ablation, console)
    for line in wasi_build_lines(results):
        console.print(line)
    console.print(f"[dim]{settle_note(results)}[/]")
    if results.get("load_warning"):
        console.print(f"[yellow]warning:[/] {results['load_warning']}")
    before, after = results.get("load_before", {}), results.get("load_after", {})
    during = results.get("load_during", {})
    console.print(
        f"[dim]machine: {results['machine']['cpu_model']}, {results['machine']['cpu_count_logical']} CPUs, "
        f"Linux {results['machine']['kernel']}, Python {results['machine']['python']}; "
        f"load before {before.get('load_average')}, after {after.get('load_average')}; "
        f"CPU used by other processes before/after: {before.get('cpu_percent_other_processes')}% / "
        f"{after.get('cpu_percent_other_processes')}%; "
        f"1-min load during the run: max {_round(during.get('load1_max'))}, "
        f"mean {_round(during.get('load1_mean'))}; run took {results.get('duration_seconds', 0):.0f} s[/]"
    )


def print_ablation(ablation: dict[str, Any], console: Console) -> None:
    """The cost-per-layer table: each layer alone over the all-off baseline, with 95% CIs."""
    titles = ablation.get("titles", {})
    table = Table(title="Cost per layer: median with only that layer on, minus all switchable layers off "
                  "(bootstrap 95% CI)", title_justify="left")
    table.add_column("runtime")
    table.add_column("layer")
    for w in ablation["workloads"]:
        table.add_column(titles.get(w, w), justify="right")
    for runtime, entry in ablation.get("runtimes", {}).items():
        if entry.get("status") == "ok":
            base = entry["variants"].get("none", {})
            table.add_row(runtime, "[dim]baseline: none on[/]",
                          *[fmt_time(base.get(w, {}).get("median")) for w in ablation["workloads"]])
            for layer in [*entry["layers"], "all"]:
                cells = []
                for w in ablation["workloads"]:
                    cost = entry["costs"].get(layer, {}).get(w)
                    cells.append("failed" if cost is None else
                                 f"{_signed(cost['median'])}\n[dim]{fmt_signed_ci(cost.get('ci95'))}[/]")
                table.add_row(runtime, "all (as shipped)" if layer == "all" else layer, *cells)
        elif entry.get("reason") and not entry.get("not_switchable"):
            table.add_row(runtime, f"[yellow]skipped[/]: {entry['reason']}", *[""] * len(ablation["workloads"]))
        for layer, why in entry.get("not_switchable", {}).items():
            table.add_row(runtime, f"{layer}: [yellow]not switchable[/]", *[""] * len(ablation["workloads"]))
    console.print(table)
    for runtime, entry in ablation.get("runtimes", {}).items():
        for layer, why in entry.get("not_switchable", {}).items():
            console.print(f"[dim]{runtime} {layer} not switchable: {why}[/]")
        for variant, count in entry.get("settle_timeouts", {}).items():
            console.print(f"[yellow]{runtime} with {variant} on: settling timed out {count} times[/]")


def _signed(seconds: float) -> str:
    return ("-" if seconds < 0 else "+") + fmt_time(abs(seconds))


def fmt_signed_ci(ci: list[float] | None) -> str:
    return "no CI" if not ci else f"{_signed(ci[0])} … {_signed(ci[1])}"
