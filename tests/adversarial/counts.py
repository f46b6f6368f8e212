"""Corpus counts by category and runtime, written into SECURITY.md between markers.

    python -m tests.adversarial.counts            # rewrite the table in SECURITY.md
    python -m tests.adversarial.counts --check    # exit 1 when SECURITY.md is stale (CI)
    python -m tests.adversarial.counts --print    # print the table only

Per runtime, each case counts under its expected outcome there (``refused``, ``blocked``,
``limit``, ``truncated``, ``any``; ``unbounded`` = a documented non-guarantee, skipped).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from tests.adversarial.corpus import CORPUS, load

RUNTIME_IDS = ("restricted", "restricted+process", "wasi")
"""The ids `tests/conftest.py` RUNTIMES produce (name, or name+isolation)."""
SECURITY_MD = Path(__file__).resolve().parents[2] / "SECURITY.md"
START, END = "<!-- corpus-counts:start -->", "<!-- corpus-counts:end -->"


def table() -> str:
    cases = load(CORPUS)
    categories = sorted({c.category for c in cases})
    lines = [
        f"{len(cases)} cases in `tests/adversarial/corpus.jsonl`. Per runtime: cases expected to be "
        "refused / stopped by a limit (incl. output truncation) / merely contained (`blocked`, `any`) / "
        "skipped as a documented non-guarantee (`unbounded`); known failures (`xfail`) in parentheses.",
        "",
        "| category | cases | " + " | ".join(RUNTIME_IDS) + " |",
        "|---|---:|" + "---|" * len(RUNTIME_IDS),
    ]
    totals = {rid: Counter() for rid in RUNTIME_IDS}
    for category in categories + ["**total**"]:
        subset = cases if category == "**total**" else [c for c in cases if c.category == category]
        cells = []
        for rid in RUNTIME_IDS:
            count = Counter(_bucket(c.expectation(rid)) for c in subset)
            xfail = sum(1 for c in subset if rid in c.xfail)
            cell = f"{count['refused']} / {count['limit']} / {count['contained']} / {count['unbounded']}"
            if xfail:
                cell += f" ({xfail} xfail)"
            cells.append(cell)
            if category != "**total**":
                totals[rid].update(count)
        lines.append(f"| {category} | {len(subset)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bucket(expectation: str) -> str:
    return {"refused": "refused", "limit": "limit", "truncated": "limit", "blocked": "contained", "any": "contained"}.get(
        expectation, expectation
    )


def render(text: str) -> str:
    if START not in text or END not in text:
        raise SystemExit(f"{SECURITY_MD} has no {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when SECURITY.md is out of date")
    parser.add_argument("--print", action="store_true", help="print the table and exit")
    args = parser.parse_args(argv)
    if args.print:
        print(table())
        return 0
    current = SECURITY_MD.read_text()
    updated = render(current)
    if args.check:
        if updated != current:
            print("SECURITY.md corpus counts are stale: run `python -m tests.adversarial.counts`", file=sys.stderr)
            return 1
        return 0
    SECURITY_MD.write_text(updated)
    print(f"wrote corpus counts to {SECURITY_MD}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
