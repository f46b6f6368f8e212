"""Benchmarks: start-up latency and isolation overhead of the sandbox runtimes, against peers.

Run ``python -m benchmarks`` (``--quick`` for under a minute) or ``sandbox bench``. Modules:
`workloads` (what runs), `subjects` (who runs it), `runner` (how it is measured), `analysis`
(breakdown and targets), `report` (terminal tables), `plots` (PNGs), `machine` (machine
description), `rss` (per-subject memory and cold start, in a child process), `readme`
(the README table, generated from ``results.json``).
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``sandbox bench``: same arguments as ``python -m benchmarks``."""
    from benchmarks.__main__ import main as _main

    return _main(argv)


__all__ = ["main"]
