"""Steady memory growth per allocation site, measured with ``tracemalloc``.

A leak grows with every call; a cache, a pool or an interned string grows once. So a site counts
only when it kept at least one block per call in each of two rounds (after a warm-up that fills
the caches the code under test is allowed). Objects the CEL runtime frees in batches rather than
at once grow by less than one per call over a few hundred calls, and are left out. Python
allocations only, which makes the measure deterministic, unlike the process's resident size.
"""

from __future__ import annotations

import gc
import itertools
import tracemalloc
from collections.abc import Callable

Leaks = list[tracemalloc.StatisticDiff]


def steady_growth(
    run: Callable[[], object], times: int, *, warm_up: int = 200, every: int = 1
) -> Leaks:
    """The allocation sites that kept at least one block per ``every`` runs in each half of
    ``times`` runs, after ``warm_up`` runs."""
    for _ in range(warm_up):
        run()
    gc.collect()
    half = times // 2
    tracemalloc.start(8)
    try:
        snapshots = [tracemalloc.take_snapshot()]
        for _ in range(2):
            for _ in range(half):
                run()
            gc.collect()
            snapshots.append(tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    first, second = (
        after.compare_to(before, "traceback") for before, after in itertools.pairwise(snapshots)
    )
    least = half // every
    steady = {stat.traceback for stat in first if stat.count_diff >= least}
    return [s for s in second if s.count_diff >= least and s.traceback in steady]


def kept_bytes(leaks: Leaks) -> int:
    return sum(stat.size_diff for stat in leaks)
