"""Pages' lives: birth (register), death (the storage's weak-reference callback, then retire),
collectives' holds, and restore at exit.

[Note: what the page table holds]
Only weak references to storages (``Page.ref``). When the program frees a
storage, the weak reference's callback queues the page and the next operator
retires it (:meth:`Pager.reap`): its host copy goes back to the pool and it is
never copied anywhere again. Pages touched by a running operator are pinned
and are never victims.

[Note: interruption]
An eviction first copies the page out and only then frees the device memory,
so at every instant either the device or the host holds the page's bytes.
:meth:`Pager.restore_all` trusts the storage's real size, not the page state,
so it repairs a page whose eviction was interrupted half way (an exception or
KeyboardInterrupt between the two steps).
"""

from __future__ import annotations

import functools
import weakref

import torch

from ..core.pages import ARRIVING, DEAD, EVICTED, RESIDENT, Kind, Page
from ..errors import RestoreError
from .stepplan import RECORDING

_use_count = torch._C._storage_Use_Count


class StorageRef(weakref.ref):
    """A weak reference to a storage that knows its page (for the death callback)."""

    __slots__ = ("page",)


class Lifecycle:
    """The part of :class:`~deepum.engine.pager.Pager` that makes, retires and restores pages."""

    def register(self, storage: torch.UntypedStorage, skey: int, pageable: bool,
                 kind: Kind = Kind.OTHER, preexisting: bool = False, nbytes: int = -1) -> Page:
        """A storage the engine has not seen: make it a resident page.

        ``preexisting``: the memory was allocated where no operator was
        intercepted (C++ internals, before the session); it counts towards the
        peak only after the next operator has made room. ``nbytes``: the
        storage's size where the caller has read it.
        """
        page = Page(storage._cdata, storage.nbytes() if nbytes < 0 else nbytes, skey, pageable)
        page.kind = self.skey_kind.get(skey, kind)
        ref = StorageRef(storage, self._death_callback)
        ref.page = page
        page.ref = ref
        self.table.add(page, count_peak=not preexisting)
        if skey >= 0:  # negative: no stable key yet (made before pressure)
            self.live[skey] = page
        if not pageable:
            self.counters.unpageable_pages += 1
        if self.plans.mode and not preexisting:
            self.plans.made.append(page)  # (StepPlans.born, written out: every output)
        return page

    def set_kind(self, page: Page, kind: Kind) -> None:
        self.table.set_kind(page, kind)
        if page.skey >= 0:
            self.skey_kind[page.skey] = kind

    # [Note: a page's death]
    # A storage's weak-reference callback runs wherever the storage died (any
    # thread, inside any operator), so it only queues the reference; the next
    # operator retires the page under the lock (reap). The callback is the
    # queue's own append: no Python frame at every death, and one object for
    # every page's weak reference (a bound method made anew per page was one
    # more object for the garbage collector to carry from a page's birth into
    # its oldest generation, benchmarks/gc_census_cpu.py). After close() the
    # queue is cleared and never read again; deaths after it still land there,
    # at most one small reference per page alive at close, freed with the pager.
    _death_callback = functools.cached_property(lambda self: self.dead.append)

    def reap(self) -> None:
        """Retire pages whose storages the program freed."""
        dead, live, table, plans = self.dead, self.live, self.table, self.plans
        if self.closed:  # the table is forgotten: nothing to retire
            dead.clear()
        while dead:
            page = dead.popleft().page
            # Most dead pages are plain activations: retire() written out for them.
            if (page.state == DEAD or page.prefetched or page.recipe is not None or page.readers
                    or page.host is not None or plans.mode == RECORDING):  # (plans.freed records)
                self.retire(page)
                continue
            table.retire(page)
            if live.get(page.skey) is page:
                del live[page.skey]
            self.counters.dead_pages += 1

    def retire(self, page: Page) -> None:
        if page.state == DEAD:
            return
        if page.prefetched:
            page.prefetched = False
            self.unused_prefetch_bytes -= page.nbytes
            self.counters.wasted_prefetches += 1
        if page.recipe is not None:
            self.void(page)
        if page.readers:
            # A recipe holds its inputs' storages, so a page with readers dies
            # only when released on purpose (remat.py, [Note: lineage]):
            # whatever readers are left lose their recipes.
            for reader in list(page.readers):
                self.void(reader)
        if page.host is not None:
            self.transfers.release_host(page)
        if self.plans.mode:
            self.plans.freed(page)
        self.table.retire(page)
        if self.live.get(page.skey) is page:
            del self.live[page.skey]
        self.counters.dead_pages += 1

    def hold(self, work: object, pages: list[Page]) -> None:
        """Pin ``pages`` until ``work`` (a collective's handle) completes."""
        for p in pages:
            p.pins += 1
        self.held.append((work, pages))
        self.counters.comm_holds += 1

    def release_held(self, wait: bool = False) -> None:
        keep = []
        for work, pages in self.held:
            if wait:
                work.wait()
            if wait or work.is_completed():
                self.unpin(pages)
            else:
                keep.append((work, pages))
        self.held = keep

    def restore_all(self) -> None:
        """Bring every live page back to the device; RestoreError if they do not fit."""
        self.release_held(wait=True)
        self.reap()
        # Memory still held for copies out would stand in the way of the pages
        # coming back under the allocator's cap.
        self.table.leaving_bytes -= self.transfers.settle()
        pending, dropped = self._to_restore()
        # Everything comes back: nothing is to be evicted to make room.
        self.table.limit = max(self.table.limit, 1 << 62)
        for i, page in enumerate(dropped):
            try:
                if page.dropped:  # a rebuild of another may have brought it
                    self.rebuild(page)
                    self.restored += 1
            except Exception as e:
                rest = dropped[i:] + [p for _, p in pending]
                raise RestoreError(len(rest), sum(p.nbytes for p in rest), e) from e
        for i, (storage, page) in enumerate(pending):
            try:
                if page.state == RESIDENT and storage.nbytes() == page.nbytes:
                    continue  # faulted in as a dropped page's input
                if page.state != EVICTED:  # an eviction interrupted half way
                    self.table.evicted(page)
                self.table.arriving(page)
                try:
                    self.transfers.load([(storage, page)], prefetch=False)
                except BaseException:
                    self._unarrive([(storage, page)])
                    raise
                self.table.arrived(page)
                self.restored += 1
            except Exception as e:
                rest = [p for _, p in pending[i:]]
                raise RestoreError(len(rest), sum(p.nbytes for p in rest), e) from e
        # Recipes end with the session: lineage nodes die with them.
        for page in list(self.table.pages.values()):
            if page.recipe is not None:
                self.void(page)
        self.table.leaving_bytes -= self.transfers.synchronize()

    def _to_restore(self) -> tuple[list, list[Page]]:
        """(storage, page) pairs to copy back and dropped pages to rebuild; arrivals finished."""
        pending, arriving, dropped = [], [], []
        for page in list(self.table.pages.values()):
            storage = page.ref()
            if storage is None:
                self.retire(page)
                continue
            page.pins = 0  # no operator runs any more
            if page.state == ARRIVING:
                arriving.append(page)
            elif page.readers and _use_count(page.key) == 1:
                continue  # a lineage node: nothing of the program's will see it again
            elif page.dropped:
                dropped.append(page)
            elif page.host is not None and storage.nbytes() == 0 and page.nbytes:
                # Holding the storage keeps it alive until it is back.
                pending.append((storage, page))
        if arriving:
            self._arrive(arriving)
        return pending, dropped

    def close(self) -> None:
        """Forget every page (after restore_all) and give host memory back."""
        self.table.leaving_bytes -= self.transfers.synchronize()
        self.closed = True
        self.dead.clear()  # (see [Note: a page's death])
        for page in list(self.table.pages.values()):
            self.transfers.release_host(page)
        self.table.pages.clear()
        self.live.clear()
        self.transfers.pool.clear()
