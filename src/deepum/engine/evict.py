"""Pages going out: room made for an operator (victims the policy or the plan picks), and the
eviction of a batch (dirty pages copied out, pages with recipes dropped).

Pages come back through prefetch.py; this is the other direction of the
pager's traffic (pager.py is the operator path that calls both).
"""

from __future__ import annotations

from ..core.pages import ARRIVING, Page
from ..core.policy import Action
from .telemetry import now_us, profiler_range


class Evictor:
    """The part of :class:`~deepum.engine.pager.Pager` that evicts pages."""

    def make_room(self, need: int, protect_window: bool = False, wait: bool = True) -> bool:
        """Evict victims until ``need`` more bytes are free; False if it cannot.

        Memory still held by copies out (``table.leaving_bytes``) counts as
        coming: fewer victims are taken for it, and with ``wait`` the oldest of
        those copies are waited for until the room is there. Without ``wait``
        (headroom kept ahead, prefetches), nothing blocks and False says the
        room is not free yet.
        """
        table = self.table
        goal = table.room() + need
        table.leaving_bytes -= self.transfers.release_finished()
        short = goal - table.room() - table.leaving_bytes
        if short > 0:
            # A batch (Thresholds.evict_batch); a planned step takes what it lacks.
            self.evict_bytes(short if self.plans.steering else max(short, self.evict_batch), protect_window)
        if table.room() < goal and wait and table.leaving_bytes:
            table.leaving_bytes -= self.transfers.settle(goal - table.room())
            self.counters.leaving_waits += 1
        return table.room() >= goal

    def evict_bytes(self, need: int, protect_window: bool = False) -> int:
        """Evict up to about ``need`` bytes of victims; return how many were freed."""
        if not self.pressure:
            self._pressure_begins()
        if self.plans.steering:
            # Short of room despite the plan: the recorded step still says
            # which pages are needed last (stepplan.py).
            victims = self.plans.victims(need)
            self.counters.plan_short_evictions += len(victims)
        else:
            victims = self.policy.choose_victims(need, protect_window=protect_window)
            self.counters.victim_choices += 1
        if victims:
            with profiler_range("deepum::evict"):
                self.evict(victims)
        return sum(v.nbytes for v in victims)

    def evict_unpinned(self) -> None:
        """Evict every resident page no operator is using (stress mode)."""
        if not self.pressure:
            self._pressure_begins()
        self.evict([p for p in self.table.lru() if p.pins == 0])

    def evict(self, pages: list[Page], action=None) -> None:
        """Copy the dirty ones out (or drop those with a recipe), then free the device memory of all.

        ``action(page)``: drop or copy (default: the policy's choice).
        """
        st = self.counters
        live, dirty, arriving = [], [], []
        dropping: set[Page] = set()  # dropped in this batch, not yet marked evicted
        if action is None:
            action = self.policy.action
        # Lineage nodes first: releasing one voids its readers' recipes, which
        # must happen before any of those readers is chosen to be dropped.
        pages = [p for p in pages if not (p.readers and p.recipe is None and self._release_lineage(p))]
        for page in pages:
            storage = page.ref()
            if storage is None:  # died since; its callback is queued
                self.retire(page)
                continue
            if page.state == ARRIVING:
                arriving.append(page)
            copy = False
            if page.dirty or page.host is None:
                if (page.recipe is not None and self.recompute and action(page) == Action.DROP
                        and self._drop(page, dropping)):
                    dropping.add(page)
                    st.bytes_dropped += page.nbytes
                else:
                    dirty.append((storage, page))
                    copy = True
            live.append((storage, page, copy))
        if arriving:
            # A prefetch still copying in: memory is freed on the compute
            # stream, so that stream must be past the copy first.
            self.transfers.wait(arriving)
            for page in arriving:
                self.table.arrived(page)
        t0 = now_us() if self.trace is not None else 0.0
        if dirty:
            # Copy out before freeing anything: at every instant the bytes
            # live on the device or on the host (see the note on interruption).
            self.transfers.save(dirty)
            st.writebacks += len(dirty)
            self._note_writebacks(dirty)
        st.drops += len(dropping)
        st.dropped_clean += len(live) - len(dirty) - len(dropping)
        table, free = self.table, self.transfers.free
        # The online choice's scan rescans after losing a window page; a plan
        # that steers has no window (its prefetches are planned).
        on_evict = None if self.plans.steering else self.policy.on_evict
        copied = 0
        for storage, page, copy in live:
            if copy:
                copied += page.nbytes
            page.dirty = False
            table.leaving_bytes += free(storage, copy)
            if page.prefetched:
                page.prefetched = False
                self.unused_prefetch_bytes -= page.nbytes
                st.wasted_prefetches += 1
            table.evicted(page)
            if on_evict is not None:
                on_evict(page)
        st.bytes_to_host += copied
        st.evictions += len(live)
        if self.trace is not None and live:
            self._trace_evictions(t0, [p for _, p, _ in live], len(dropping), len(dirty))
