"""Pages coming in: DeepUM's chained prefetch (the policy plans, this fetches within the cap
and the room), a plan's prefetches, and faults on demand.

[Note: the prefetch cap]
Bytes prefetched and not used yet (``unused_prefetch_bytes``) may not pass
``prefetch_cap`` (Thresholds.prefetch_cap): where the window needs more than
the budget holds, each page fetched far ahead pushes out one needed sooner.
A page leaves the count when an operator first uses it (a hit), when it is
evicted or dies unused (wasted); pager.py and lifecycle.py keep that.

[Note: rebuild inputs]
A dropped page the window needs is rebuilt early only when its recipe's
inputs are all resident (a rebuild ahead of time must not fault). Otherwise
its inputs that wait on the host are prefetched like the window's own pages,
under the same cap and room, and the rebuild on demand finds them arriving.
On the GPU these inputs were every demand fault left at half the peak
(benchmarks/fault_probe.py; docs/BENCHMARKS.md, session 8). The inputs of
dropped inputs count too, as deep as a rebuild would go.
"""

from __future__ import annotations

import torch

from ..core.pages import ARRIVING, EVICTED, RESIDENT, Page
from .remat import FAULT, rebuild_pages
from .retry import evict_for_retry
from .telemetry import now_us, profiler_range


class Prefetcher:
    """The part of :class:`~deepum.engine.pager.Pager` that brings pages in: ahead of need
    (DeepUM's window, a plan's prefetches) and on demand (faults)."""

    def prefetch_pages(self, pages: list) -> list[Page]:
        """Start copying in the planned ``pages`` that are on the host, as far as room allows;
        return those that did not fit (left to fault where used).

        The plan left the room (see [Note: the planned step]), but on CUDA the
        memory of a page copied out is free only once its copy has ended.
        """
        table, batch, room, short = self.table, [], self.table.room(), []
        for page in pages:
            if page is None or page.state != EVICTED or page.host is None:
                continue
            if page.nbytes > room and self.prefetch_waits and room + table.leaving_bytes >= page.nbytes:
                # Its room is held by copies out still running: wait for them
                # here rather than fault the page in where it is used.
                freed = self.transfers.settle(page.nbytes - room)
                table.leaving_bytes -= freed
                room += freed
                self.counters.leaving_waits += 1
            if page.nbytes > room:
                short.append(page)
                continue
            storage = page.ref()
            if storage is None:
                continue
            room -= page.nbytes
            table.arriving(page)
            batch.append((storage, page))
        if batch:
            self._load_ahead(batch)
        return short

    def _prefetch_ahead(self, wanted: list[tuple[int, Page]]) -> None:
        """DeepUM's chained prefetch: fetch what the predicted operators need, in order
        (``wanted``: the policy's (distance, page) pairs, from ``advance``)."""
        policy, table = self.policy, self.table
        batch = []
        for distance, page in wanted:
            if page.state != EVICTED:
                continue
            if page.host is None:
                # Dropped: computed early only from inputs already here.
                inputs = page.recipe.inputs
                if all(q.state == RESIDENT for q in inputs):
                    short = rebuild_pages() * page.nbytes + self.headroom - table.room()
                    if short > 0 and not self.make_room(short, protect_window=True, wait=False):
                        policy.rewind(distance)
                        break
                    self.rebuild(page)
                    continue
                # Else its inputs on the host start coming in now, so that the
                # rebuild on demand waits for copies under way instead of
                # faulting them in one by one (see [Note: rebuild inputs]).
                if not all(self._fetch_ahead(q, batch, distance) for q in self._rebuild_faults(page)):
                    policy.rewind(distance)
                    break
                continue
            if not self._fetch_ahead(page, batch, distance):
                policy.rewind(distance)
                break
        if batch:
            self._load_ahead(batch)

    def _rebuild_faults(self, page: Page) -> list[Page]:
        """The pages on the host that rebuilding dropped ``page`` would fault in, its dropped
        ancestors' inputs included (as far as a rebuild goes: Remat.rebuild_walk)."""
        return [q for step, q in self.rebuild_walk(page) if step is FAULT]

    def _fetch_ahead(self, page: Page, batch: list, distance: int) -> bool:
        """Mark ``page`` (evicted, with a host copy) arriving and add it to ``batch``; False: stop the scan.

        The scan stops where the bytes fetched ahead and not yet used reach the
        cap, or where no room can be made without pages the window needs. The
        cap does not hold for the next operator's pages (``distance`` 0): no
        page is needed sooner, and they would be faulted in right after.
        """
        storage = page.ref()
        if storage is None:
            return True
        if distance > 0 and self.unused_prefetch_bytes + page.nbytes > self.prefetch_cap:
            # Enough fetched ahead and not used yet: more would push out
            # pages needed sooner (Thresholds.prefetch_cap). Resume here later.
            return False
        short = page.nbytes + self.headroom - self.table.room()
        if short > 0 and not self.make_room(short, protect_window=True, wait=False):
            return False
        self.table.arriving(page)  # reserves its bytes before the next decision
        batch.append((storage, page))
        return True

    def _load_ahead(self, batch: list) -> None:
        """Copy in (storage, page) pairs already marked arriving, on the side stream."""
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
            self.trace.transfer("prefetches", t0, now_us(), [p for _, p in batch], planned=self.plans.steering)

    def fault(self, pages: list[Page]) -> None:
        """Bring evicted pages back now: the running operator needs them."""
        items = [(p.ref(), p) for p in pages]
        nbytes = sum(p.nbytes for p in pages)
        t0 = now_us() if self.trace is not None else 0.0
        while True:
            for _, p in items:
                self.table.arriving(p)
            try:
                with profiler_range("deepum::fault"):
                    self.transfers.load(items, prefetch=False)
                break
            except torch.OutOfMemoryError as e:
                # The allocator is fuller than the page table knows (memory
                # deepum does not see, or fragmentation): evict and retry.
                self._unarrive(items)
                evict_for_retry(self, "a page fault", nbytes, nbytes, e)
            except BaseException:
                self._unarrive(items)
                raise
        for _, p in items:
            self.table.arrived(p)
        self.counters.faults += len(items)
        self.counters.bytes_to_device += nbytes
        if self.trace is not None:
            self.trace.transfer("faults", t0, now_us(), pages)


    def _prefetch_used(self, page: Page) -> None:
        """An operator or a rebuild uses a prefetched page for the first time: a hit."""
        page.prefetched = False
        self.unused_prefetch_bytes -= page.nbytes
        self.counters.prefetch_hits += 1

    def _arrive(self, pages: list[Page]) -> None:
        late = self.transfers.wait(pages)
        if late and self.plans.steering:
            # Which of the batch was late is not told: all start earlier.
            for p in pages:
                self.plans.late(p)
        st = self.counters
        prefetched = 0
        for p in pages:
            if p.prefetched:
                prefetched += 1
                p.prefetched = False
                self.unused_prefetch_bytes -= p.nbytes
            self.table.arrived(p)
        st.late_prefetches += late
        st.prefetch_hits += prefetched - late

    def _unarrive(self, items: list) -> None:
        for storage, page in items:
            if page.state != ARRIVING:
                continue
            if storage.nbytes():
                storage.resize_(0)
            self.table.cancel_arrival(page)
