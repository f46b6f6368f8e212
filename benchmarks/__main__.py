"""`python -m benchmarks` (and `sandbox bench`): measure every subject, write JSON and PNGs.

    python -m benchmarks --quick              # under a minute
    python -m benchmarks                      # the full run, under 10 minutes on 2 cores
    python -m benchmarks --out /tmp/bench --subjects native,restricted,monty --workloads trivial_fresh
    python -m benchmarks --out benchmarks/results   # the committed results (README table)
    python -m benchmarks --quick --ablate     # plus the cost of each isolation layer (ablation.png)
"""

from __future__ import annotations

import argparse
import faulthandler
import signal
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from benchmarks.runner import Config, Runner
from benchmarks.runner import Progress as ProgressHook


class _RichProgress(ProgressHook):
    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.description:<44}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        )
        self.task: Any = None

    def start(self, total: int) -> None:
        self.bar.start()
        self.task = self.bar.add_task("starting", total=total)

    def phase(self, text: str) -> None:
        self.bar.update(self.task, description=text[:44])

    def advance(self, n: int = 1) -> None:
        self.bar.advance(self.task, n)

    def log(self, text: str) -> None:
        self.bar.console.print(text)

    def stop(self) -> None:
        self.bar.stop()


def _names(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sandbox bench", description="Benchmark the sandbox runtimes against peers.")
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: a new temporary directory; "
                        "pass --out benchmarks/results to replace the committed results)")
    parser.add_argument("--subjects", help="comma-separated subset of: native, restricted, restricted+process, wasi, "
                        "monty, smolagents, restrictedpython, python-c (default: all)")
    parser.add_argument("--workloads", help="comma-separated subset of: trivial_fresh, trivial_session, cpu_loop, "
                        "json_1mb, capability_calls, import_heavy, agent_turn, humaneval (default: all)")
    parser.add_argument("--budget", type=float, default=None, help="seconds per workload and subject")
    parser.add_argument("--workers", type=int, default=None, help="process-isolation workers (default 2)")
    parser.add_argument("--humaneval-limit", type=int, default=None, help="run only the first N HumanEval problems")
    parser.add_argument("--no-rss", action="store_true", help="skip the per-subject memory/cold-start children")
    parser.add_argument("--no-plots", action="store_true", help="do not write PNGs")
    parser.add_argument("--ablate", action="store_true",
                        help="also measure what each isolation layer costs (layers switched on one at a time)")
    parser.add_argument("--wasi-build", action="store_true",
                        help="also time a first-use wasi guest build into a temporary cache (30-90 s)")
    parser.add_argument("--no-settle", action="store_true",
                        help="do not let background work (wasi spare and process child refills) finish between "
                        "bursts: each burst then shares the machine with the refills of the bursts before it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the process exit code (0 on success, 2 on bad usage)."""
    args = parse_args(argv)
    if hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 PID` shows where a run hangs
    console = Console()
    if not console.is_terminal:
        console = Console(width=150)  # logs and CI: keep the tables readable
    try:
        config = Config.for_mode(
            args.quick, out=args.out, subjects=_names(args.subjects), workloads=_names(args.workloads),
            budget_seconds=args.budget, workers=args.workers, humaneval_limit=args.humaneval_limit,
            wasi_build=args.wasi_build or None, ablate=args.ablate or None,
        )
        if args.no_rss:
            config.rss = False
        if args.no_plots:
            config.plots = False
        if args.no_settle:
            config.settle = False
        progress = _RichProgress(Console(stderr=True))
        runner = Runner(config, progress)
        try:
            results = runner.run()
        finally:
            progress.stop()
    except ValueError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=str) + "\n")
    tmp.replace(path)
    from benchmarks.report import print_report

    print_report(results, console)
    written = [path]
    if config.plots:
        try:
            from benchmarks.plots import write_all
        except ImportError as exc:
            console.print(f"[yellow]no plots:[/] matplotlib is not installed ({exc})")
        else:
            written += write_all(results, out)
    console.print("wrote " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
