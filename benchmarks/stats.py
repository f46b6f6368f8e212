"""Summary statistics of latency samples (seconds)."""

from __future__ import annotations

import math
import statistics
from typing import Any

MIN_TAIL_SAMPLES = 20
"""Below this many samples a p90/p99 is one or two raw samples, not a tail: reported as None."""

_Z95 = 1.959964


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in [0, 1])."""
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median_ci(ordered: list[float]) -> tuple[float, float] | None:
    """Distribution-free 95% confidence interval of the median of an already sorted list.

    The bounds are order statistics at ranks ``n/2 ∓ 1.96·√n/2`` (the normal approximation of the
    binomial(n, ½) count of samples below the median), so no resampling is needed and any
    latency distribution is fine. None when ``n < 6``: fewer samples cannot give 95% coverage.
    """
    n = len(ordered)
    if n < 6:
        return None
    half = _Z95 * math.sqrt(n) / 2
    low = max(0, math.floor(n / 2 - half))
    high = min(n - 1, math.ceil(n / 2 + half) - 1)
    return ordered[low], ordered[high]


def summarise(samples: list[float]) -> dict[str, Any]:
    """n, median with its 95% CI, p90, p99, min, max, mean and relative spread (IQR / median).

    p90 and p99 are None below `MIN_TAIL_SAMPLES` samples; the CI bounds are None below 6.
    """
    ordered = sorted(samples)
    if not ordered:
        return {"n": 0}
    n = len(ordered)
    median = statistics.median(ordered)
    q1, q3 = percentile(ordered, 0.25), percentile(ordered, 0.75)
    ci = median_ci(ordered)
    tails = n >= MIN_TAIL_SAMPLES
    return {
        "n": n,
        "median": median,
        "median_ci95": list(ci) if ci else None,
        "p90": percentile(ordered, 0.90) if tails else None,
        "p99": percentile(ordered, 0.99) if tails else None,
        "min": ordered[0],
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
        "iqr_over_median": (q3 - q1) / median if median > 0 else None,
    }


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b
