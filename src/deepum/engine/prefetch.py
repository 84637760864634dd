"""DeepUM's chained prefetch, executed: the policy plans, this fetches within the cap and the room.

[Note: the prefetch cap]
Bytes prefetched and not used yet (``unused_prefetch_bytes``) may not pass
``prefetch_cap`` (Thresholds.prefetch_cap): where the window needs more than
the budget holds, each page fetched far ahead pushes out one needed sooner.
A page leaves the count when an operator first uses it (a hit), when it is
evicted or dies unused (wasted); pager.py and lifecycle.py keep that.
"""

from __future__ import annotations

import torch

from ..core.pages import EVICTED, RESIDENT
from .telemetry import now_us, profiler_range


class Prefetcher:
    """The part of :class:`~deepum.engine.pager.Pager` that fetches ahead of need."""

    def _prefetch_ahead(self, eid: int) -> None:
        """DeepUM's chained prefetch: fetch what the predicted operators need, in order."""
        policy, table = self.policy, self.table
        policy.observe(eid)
        batch = []
        for distance, page in policy.prefetch_plan(self.scan_ops):
            if page.state != EVICTED:
                continue
            if page.host is None:
                # Dropped: computed early only from inputs already here; else on demand.
                if all(q.state == RESIDENT for q in page.recipe.inputs):
                    short = 2 * page.nbytes + self.headroom - table.room()
                    if short > 0 and not self.make_room(short, protect_window=True):
                        policy.rewind(distance)
                        break
                    self.rebuild(page)
                continue
            storage = page.ref()
            if storage is None:
                continue
            if self.unused_prefetch_bytes + page.nbytes > self.prefetch_cap:
                # Enough fetched ahead and not used yet: more would push out
                # pages needed sooner (Thresholds.prefetch_cap). Resume here later.
                policy.rewind(distance)
                break
            short = page.nbytes + self.headroom - table.room()
            if short > 0 and not self.make_room(short, protect_window=True):
                policy.rewind(distance)
                break
            table.arriving(page)  # reserves its bytes before the next decision
            batch.append((storage, page))
        if not batch:
            return
        t0 = now_us() if self.trace is not None else 0.0
        try:
            with profiler_range("deepum::prefetch"):
                self.transfers.load(batch, prefetch=True)
        except torch.OutOfMemoryError:
            # Fragmentation: the bytes are free but not in one piece. The pages
            # will be faulted in when needed; a prefetch is only a hint.
            self._unarrive(batch)
            return
        st = self.counters
        for _, page in batch:
            page.prefetched = True
            self.unused_prefetch_bytes += page.nbytes
        st.prefetches += len(batch)
        st.bytes_to_device += sum(p.nbytes for _, p in batch)
        if self.trace is not None:
            self.trace.transfer("prefetches", t0, now_us(), [p for _, p in batch])
