"""Render the README benchmark table from ``results.json`` (never typed by hand).

    python -m benchmarks.readme                      # print the markdown
    python -m benchmarks.readme --update README.md   # replace the block between the markers

The block lives between ``<!-- bench:start -->`` and ``<!-- bench:end -->``; everything
outside it is left as it is. ``--update`` fails (exit 2) when the markers are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import cell, fmt_ratio, fmt_time, fmt_value, settle_note, wasi_build_lines

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
DEFAULT_RESULTS = Path(__file__).resolve().parent / "results" / "results.json"


def render(results: dict[str, Any], image_dir: str | None = None) -> str:
    m = results["machine"]
    workloads = results.get("workloads", {})
    subjects = results.get("subjects", {})
    quick = " --quick" if results["config"].get("quick") else ""
    lines = [
        f"Measured with `sandbox bench{quick}` (or `python -m benchmarks{quick}`) on {m['cpu_model']}, "
        f"{m['cpu_count_logical']} CPUs, Linux {m['kernel']}, Python {m['python']}, {m['timestamp_utc'][:10]}. "
        "Medians per run; the ratio under each is against native `exec` in the same run. "
        "Generated from `benchmarks/results/results.json` by `python -m benchmarks.readme --update README.md`.",
        "",
    ]
    header = ["subject"] + [w["title"] for w in workloads.values()]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|")
    notes: list[str] = []
    for name, info in subjects.items():
        row = [f"{info.get('title', name)}"]
        if info.get("status") != "ok":
            notes.append(f"{info.get('title', name)}: skipped — {info.get('reason')}")
            row += ["skipped"] * (len(header) - 1)
            lines.append("| " + " | ".join(row) + " |")
            continue
        for wname, w in workloads.items():
            e = w["results"].get(name, {})
            if wname == "humaneval":
                row.append(f"{e['passed']}/{e['problems']}" if e.get("status") == "ok" else cell(e))
                continue
            text = cell(e)
            if e.get("status") == "ok" and name != "native" and e.get("ratio_native") is not None:
                text += f" ({fmt_ratio(e['ratio_native'])})"
            elif e.get("status") in ("unsupported", "failed"):
                notes.append(f"{info.get('title', name)} on {w['title']}: {e['status']} — {e.get('reason')}")
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines.append("")
        lines += [f"- {n}" for n in notes]
    targets = results.get("targets", [])
    if targets:
        lines += ["", "| area | target | measured | met |", "|---|---|---:|---|"]
        for t in targets:
            met = {True: "yes", False: "no", None: "—"}[t["met"]]
            lines.append(f"| {t.get('area', '')} | {t['what']}: {t['target']} | {fmt_value(t['value'], t['unit'])} | {met} |")
    if image_dir is not None:
        lines += ["", " ".join(f"![{name}]({image_dir}/{name}.png)"
                               for name in ("startup", "overhead", "scaling", "humaneval"))]
    lines += ["", settle_note(results)]
    build = "; ".join(wasi_build_lines(results))
    if build:
        lines += ["", build + "."]
    before = results.get("load_before", {})
    during = results.get("load_during", {})
    load = before.get("load_average") or [None]
    lines += ["", f"Noise: 1-minute load {_num(load[0])} at the start and at most {_num(during.get('load1_max'))} "
              f"during the run on {m['cpu_count_logical']} CPUs; other processes used "
              f"{before.get('cpu_percent_other_processes')}% CPU at the start. Compare ratios within one run. "
              f"The run took {fmt_time(results.get('duration_seconds'))}."]
    if results.get("load_warning"):
        lines += ["", f"Warning: {results['load_warning']}."]
    return "\n".join(lines) + "\n"


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:.2f}"


def update(readme: Path, block: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} has no {START} ... {END} markers; add them where the table belongs")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{block}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="results.json to render")
    parser.add_argument("--update", type=Path, metavar="README", help="rewrite the marked block in this file")
    args = parser.parse_args(argv)
    try:
        results = json.loads(args.results.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.results}: {exc}; run `python -m benchmarks` first", file=sys.stderr)
        return 2
    if args.update:
        image_dir = os.path.relpath(args.results.resolve().parent, args.update.resolve().parent)
        try:
            update(args.update, render(results, image_dir))
        except (OSError, ValueError) as exc:
            print(str(exc), file=sys.stderr)
            return 2
        print(f"updated {args.update}")
    else:
        print(render(results, os.path.relpath(args.results.resolve().parent)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
