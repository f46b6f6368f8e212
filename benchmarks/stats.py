"""Summary statistics of latency samples (seconds)."""

from __future__ import annotations

import math
import statistics
from typing import Any


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in [0, 1])."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summarise(samples: list[float]) -> dict[str, Any]:
    """n, median, p90, p99, min, max, mean and relative spread (IQR / median) of ``samples``."""
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    median = statistics.median(ordered)
    q1, q3 = percentile(ordered, 0.25), percentile(ordered, 0.75)
    return {
        "n": len(ordered),
        "median": median,
        "p90": percentile(ordered, 0.90),
        "p99": percentile(ordered, 0.99),
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "iqr_over_median": (q3 - q1) / median if median > 0 else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b
