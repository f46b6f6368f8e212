"""Per-runtime counts of the corpus run, printed by ``conftest.pytest_terminal_summary``.

Known failures (cases with a strict ``xfail`` in the corpus) still count as escaped or leaked:
the line must not read ``escaped 0`` while a known escape is open.
"""

from __future__ import annotations

from collections import defaultdict

COUNTS: dict[str, dict[str, int]] = defaultdict(
    lambda: {"cases": 0, "blocked": 0, "escaped": 0, "leaked": 0, "skipped": 0, "known": 0}
)


def record(runtime: str, outcome: str, *, known: bool = False) -> None:
    """``outcome``: blocked | escaped | leaked | skipped; ``known``: the case has an xfail."""
    counts = COUNTS[runtime]
    counts["cases"] += 1
    counts[outcome] += 1
    if known and outcome in ("escaped", "leaked"):
        counts["known"] += 1


def lines() -> list[str]:
    out = []
    for runtime, c in COUNTS.items():
        line = f"adversarial {runtime}: cases {c['cases']}, blocked {c['blocked']}, escaped {c['escaped']}, leaked {c['leaked']}"
        extra = []
        if c["known"]:
            extra.append(f"{c['known']} of them known, xfail")
        if c["skipped"]:
            extra.append(f"skipped {c['skipped']} documented non-guarantees")
        if extra:
            line += " (" + "; ".join(extra) + ")"
        out.append(line)
    return out
