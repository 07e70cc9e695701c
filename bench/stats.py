"""The statistics every benchmark reports: percentiles and latency summaries, computed one way."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def percentile(samples: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated linearly between the closest ranks.

    One definition for every scenario, so that a p99 in one table means what it means in another
    (nearest-rank and interpolated percentiles differ by a whole sample at the tail of a short run).
    """
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("percentile of no samples")
    position = q / 100 * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(samples: Iterable[float], scale: float = 1000.0) -> dict[str, float]:
    """p50, p90, p95, p99, p99.9, max and mean of `samples` times `scale` (seconds -> ms by default)."""
    ordered = sorted(s * scale for s in samples)
    summary = {f"p{q:g}".replace(".", ""): percentile(ordered, q) for q in (50, 90, 95, 99, 99.9)}
    summary["max"] = ordered[-1]
    summary["mean"] = statistics.fmean(ordered)
    return summary
