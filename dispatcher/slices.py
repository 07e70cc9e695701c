"""Long CPU work on the event loop in bounded slices: the loop runs other requests between them.

A 50 MB batch file or a 4 MB prompt scanned in one go stalled `/healthz` for seconds (13.3 s and
6.6 s). Work that goes item by item calls `await slices.tick()` after each item; every
`budget_s` of work it yields to the loop, so no request waits longer than about one slice.
"""

from __future__ import annotations

import asyncio
import time

# 2 ms: a request needs a few loop iterations to be answered, and two sliced jobs may share each
# iteration, so slices must stay well under the 50 ms p99 of /healthz; the yield itself (one loop
# iteration) costs microseconds, so throughput barely changes.
SLICE_S = 0.002


class Slices:
    def __init__(self, budget_s: float = SLICE_S) -> None:
        self._budget_s = budget_s
        self._since = time.perf_counter()

    async def tick(self) -> None:
        """Yield to the event loop if this slice has used its budget."""
        if time.perf_counter() - self._since >= self._budget_s:
            await asyncio.sleep(0)
            self._since = time.perf_counter()
