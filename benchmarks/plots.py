"""PNG plots of a results dict (matplotlib, Agg backend; no display needed).

- ``startup.png``: start-up latency per subject on a log scale (trivial snippet fresh, in a
  session, and cold start of a new process to its first result), with 95% CI whiskers on the medians.
- ``overhead.png``: median time over native exec per workload and subject, log scale.
- ``scaling.png``: runs per second against concurrency (1, 2, 4, 8) per subject.
- ``humaneval.png``: HumanEval passes per subject.
- ``ablation.png`` (with ``--ablate``): the cost of each isolation layer per workload, with CIs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {
    "native": "#555555",
    "restricted": "#1f77b4",
    "restricted+process": "#17becf",
    "wasi": "#2ca02c",
    "monty": "#d62728",
    "smolagents": "#ff7f0e",
    "restrictedpython": "#9467bd",
    "python-c": "#8c564b",
}


def _ok(entry: dict[str, Any]) -> bool:
    return entry.get("status") == "ok" and entry.get("median") is not None


def ci_error(entry: dict[str, Any], scale: float = 1.0) -> tuple[float, float]:
    """(below, above) the median of ``entry`` to its 95% CI bounds, divided by ``scale``; zeros
    when the cell has too few samples for a CI."""
    ci = entry.get("median_ci95")
    if not ci:
        return 0.0, 0.0
    return max(0.0, entry["median"] - ci[0]) / scale, max(0.0, ci[1] - entry["median"]) / scale


def _footer(fig: Any, results: dict[str, Any]) -> None:
    m = results["machine"]
    fig.text(0.01, 0.005, f"{m['cpu_model']}, {m['cpu_count_logical']} CPUs, Python {m['python']}, "
             f"{m['timestamp_utc']}{' (quick run)' if results['config'].get('quick') else ''}"
             f"{'; background work settled between bursts' if results['config'].get('settle') else ''}",
             fontsize=7, color="#777777")


def startup(results: dict[str, Any], path: Path) -> Path:
    names = [n for n, s in results["subjects"].items() if s.get("status") == "ok"]
    w = results.get("workloads", {})
    rss = results.get("rss", {})
    series = [
        ("fresh state", w.get("trivial_fresh", {}).get("results", {})),
        ("in a session", w.get("trivial_session", {}).get("results", {})),
    ]
    fig, ax = plt.subplots(figsize=(9, 0.6 * max(3, len(names)) + 2))
    height = 0.27
    for i, (label, res) in enumerate(series):
        ys, xs, low, err = [], [], [], []
        for j, name in enumerate(names):
            e = res.get(name, {})
            if _ok(e):
                ys.append(j + (i - 1) * height)
                xs.append(e["median"] * 1e3)
                lo, hi = ci_error(e)
                low.append(lo * 1e3)
                err.append(hi * 1e3)
        ax.barh(ys, xs, height=height, xerr=[low, err], label=f"`1 + 1`, {label} (median, 95% CI)",
                color=["#4c72b0", "#55a868"][i], alpha=0.9, error_kw={"elinewidth": 0.8})
        for y, x, e in zip(ys, xs, err):
            ax.text((x + e) * 1.1, y, f"{x * 1e3:.1f} µs" if x < 0.1 else f"{x * 1e3:.0f} µs" if x < 1
                    else f"{x:.2f} ms", va="center", fontsize=7)
    ys, xs = [], []
    for j, name in enumerate(names):
        e = rss.get(name, {})
        if e.get("status") == "ok" and e.get("first_result_seconds"):
            ys.append(j + height)
            xs.append(e["first_result_seconds"] * 1e3)
    if xs:
        ax.barh(ys, xs, height=height, label="new process → first result", color="#c44e52", alpha=0.8)
        for y, x in zip(ys, xs):
            ax.text(x * 1.08, y, f"{x:.0f} ms", va="center", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("milliseconds (log scale)")
    ax.set_title("Start-up latency per subject")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False)
    ax.grid(axis="x", which="both", alpha=0.25)
    _footer(fig, results)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def overhead(results: dict[str, Any], path: Path) -> Path:
    workloads = {k: v for k, v in results.get("workloads", {}).items()}
    names = [n for n, s in results["subjects"].items() if s.get("status") == "ok" and n != "native"]
    fig, ax = plt.subplots(figsize=(max(8, 1.4 * len(workloads) + 2), 5))
    width = 0.8 / max(1, len(names))
    labels = [w["title"] for w in workloads.values()]
    for i, name in enumerate(names):
        xs, ys, low, high = [], [], [], []
        for j, w in enumerate(workloads.values()):
            e = w["results"].get(name, {})
            if e.get("status") == "ok" and e.get("ratio_native"):
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(e["ratio_native"])
                lo, hi = ci_error(e, e["median"] / e["ratio_native"])
                low.append(lo)
                high.append(hi)
        ax.bar(xs, ys, width=width, label=name, color=COLORS.get(name), yerr=[low, high],
               error_kw={"elinewidth": 0.7, "capsize": 1.5})
    ax.axhline(1.0, color="#333333", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("median time / native exec (log scale)")
    ax.set_title("Overhead ratio per workload (1 = native exec; whiskers: 95% CI of the median; "
                 "missing bar = skipped, n/a or unsupported)", fontsize=10)
    ax.legend(fontsize=8, ncol=2)
    ax.grid(axis="y", which="both", alpha=0.25)
    _footer(fig, results)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def scaling(results: dict[str, Any], path: Path) -> Path:
    data = results.get("scaling", {}).get("results", {})
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for name, e in data.items():
        if e.get("status") != "ok":
            continue
        pts = [(int(k), v["runs_per_second"]) for k, v in e["runs_per_second"].items() if "runs_per_second" in v]
        if pts:
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=COLORS.get(name))
    levels = results["config"]["concurrency"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_yscale("log")
    ax.set_xlabel("concurrent threads (process isolation: workers)")
    ax.set_ylabel("runs per second, trivial snippet fresh (log)")
    ax.set_title(f"Scaling on {results['machine']['cpu_count_logical']} CPUs (refills run alongside: sustained load)")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.grid(which="both", alpha=0.25)
    _footer(fig, results)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def humaneval(results: dict[str, Any], path: Path) -> Path | None:
    he = results.get("workloads", {}).get("humaneval")
    if not he:
        return None
    rows = [(n, e) for n, e in he["results"].items() if e.get("status") == "ok"]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(3, len(rows)) + 1.2))
    ax.barh([n for n, _ in rows], [e["passed"] for _, e in rows], color=[COLORS.get(n, "#999999") for n, _ in rows])
    for i, (_, e) in enumerate(rows):
        ax.text(e["passed"] + 1, i, f"{e['passed']}/{e['problems']}", va="center", fontsize=8)
    ax.set_xlim(0, he["problems"] * 1.12)
    ax.invert_yaxis()
    ax.set_xlabel("programs passed")
    ax.set_title(f"HumanEval compatibility ({he['problems']} canonical solutions with their tests)")
    _footer(fig, results)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ablation(results: dict[str, Any], path: Path) -> Path | None:
    """Cost per layer: one panel per workload, a bar per runtime/layer with its bootstrap 95% CI."""
    data = results.get("ablation")
    if not data:
        return None
    rows = [(runtime, layer) for runtime, e in data["runtimes"].items() if e.get("status") == "ok"
            for layer in [*e["layers"], "all"]]
    if not rows:
        return None
    workloads = data["workloads"]
    fig, axes = plt.subplots(1, len(workloads), figsize=(4.2 * len(workloads), 0.42 * len(rows) + 1.8),
                             sharey=True, squeeze=False)
    for ax, w in zip(axes[0], workloads):
        ys, xs, low, high, colors = [], [], [], [], []
        for i, (runtime, layer) in enumerate(rows):
            cost = data["runtimes"][runtime]["costs"].get(layer, {}).get(w)
            if not cost:
                continue
            scale = 1e3
            ys.append(i)
            xs.append(cost["median"] * scale)
            ci = cost.get("ci95") or [cost["median"], cost["median"]]
            low.append(max(0.0, cost["median"] - ci[0]) * scale)
            high.append(max(0.0, ci[1] - cost["median"]) * scale)
            colors.append(COLORS["restricted+process" if runtime == "process" else "restricted"]
                          if layer != "all" else "#555555")
        ax.barh(ys, xs, xerr=[low, high], color=colors, error_kw={"elinewidth": 0.8, "capsize": 2})
        ax.axvline(0, color="#333333", linewidth=0.8)
        ax.set_title(data.get("titles", {}).get(w, w), fontsize=10)
        ax.set_xlabel("extra ms per run (median, 95% CI)")
        ax.grid(axis="x", alpha=0.25)
    axes[0][0].set_yticks(range(len(rows)), [f"{r}: {layer}" for r, layer in rows], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle("Cost per layer: only that layer on, minus all switchable layers off", fontsize=11)
    _footer(fig, results)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_all(results: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = [startup(results, out / "startup.png"), overhead(results, out / "overhead.png"),
            scaling(results, out / "scaling.png"), humaneval(results, out / "humaneval.png"),
            ablation(results, out / "ablation.png")]
    return [p for p in made if p is not None]
