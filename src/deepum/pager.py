"""The pager: the fault path, eviction and prefetch, in one place.

The interceptor calls :meth:`Pager.begin` before an operator runs and
:meth:`Pager.end` after. Everything else here serves those two calls:

``begin(op, pages, out_bytes)``
    pins the operator's pages, makes room for the pages that are not resident
    plus the operator's outputs (evicting victims the policy picks), then
    faults the missing pages in and waits for pages still arriving.
``end(...)``
    unpins, records what the operator wrote, tells the policy which operator
    ran, prefetches what the policy predicts, and pre-evicts to keep headroom.

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

import threading
import weakref
from collections import deque

import torch

from .core.pages import EVICTED, Page, PageTable, State
from .core.policy import make_policy
from .errors import BudgetTooSmallError, RestoreError
from .transfer import make_transfers


class _StorageRef(weakref.ref):
    """A weak reference to a storage that knows its page (for the death callback)."""

    __slots__ = ("page",)


class Stats:
    """Counters the pager keeps; :meth:`Pager.stats` turns them into a dict."""

    __slots__ = (
        "faults", "evictions", "writebacks", "dropped_clean", "bytes_to_device",
        "bytes_to_host", "prefetches", "prefetch_hits", "late_prefetches",
        "wasted_prefetches", "oom_retries", "overshoots", "ops", "dead_pages",
        "unpageable_pages", "chunked_ops",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class Pager:
    def __init__(self, device: torch.device, budget: int, limit: int, policy: str = "deepum",
                 lookahead: int = 32, prefetch: bool = True, headroom: int | None = None) -> None:
        self.device = device
        self.budget = budget
        self.table = PageTable(limit)
        # Stable key -> the live page now playing that role (for the predictor).
        self.live: dict[int, Page] = {}
        self.policy = make_policy(policy, self.table, lookahead, self.live)
        self.prefetch_enabled = prefetch and self.policy.prefetches
        self.transfers = make_transfers(device)
        self.stats_ = Stats()
        # Room kept free after each operator, so the next one's outputs rarely
        # have to evict on the critical path.
        self.headroom = limit // 16 if headroom is None else headroom
        # Window operators the prefetcher examines per operator (bounds its CPU cost).
        self.scan_ops = 8
        self.lock = threading.RLock()
        self.dead: deque[_StorageRef] = deque()
        self.closed = False
        self.restored = 0
        # Prediction and prefetching start once memory is tight; until then
        # the per-operator path skips them (nothing is off the device to fetch).
        self.pressure = False

    # ------------------------------------------------------------------ pages

    def register(self, storage: torch.UntypedStorage, skey: int, pageable: bool) -> Page:
        """A storage the engine has not seen: make it a resident page."""
        page = Page(storage._cdata, storage.nbytes(), skey, pageable)
        ref = _StorageRef(storage, self._on_death)
        ref.page = page
        page.ref = ref
        self.table.add(page)
        self.live[skey] = page
        if not pageable:
            self.stats_.unpageable_pages += 1
        return page

    def _on_death(self, ref: _StorageRef) -> None:
        # Runs wherever the storage died (any thread, inside any operator):
        # only queue it; the next operator retires it under the lock.
        if not self.closed:
            self.dead.append(ref)

    def reap(self) -> None:
        """Retire pages whose storages the program freed."""
        dead = self.dead
        while dead:
            self.retire(dead.popleft().page)

    def retire(self, page: Page) -> None:
        if page.state == State.DEAD:
            return
        if page.prefetched:
            self.stats_.wasted_prefetches += 1
        self.transfers.release_host(page)
        self.table.retire(page)
        if self.live.get(page.skey) is page:
            del self.live[page.skey]
        self.stats_.dead_pages += 1

    # --------------------------------------------------------- operator path

    def begin(self, op: object, pages: list[Page], out_bytes: int) -> None:
        """Make ``pages`` resident and leave room for ``out_bytes`` of outputs."""
        table = self.table
        missing = 0
        working = out_bytes
        for p in pages:
            working += p.nbytes
            if p.state >= EVICTED:
                missing += p.nbytes
        if working > table.limit:
            raise BudgetTooSmallError(str(op), working, table.limit, self.budget)
        for p in pages:
            p.pins += 1
        try:
            short = missing + out_bytes - table.room()
            if short > 0:
                self.make_room(short)
            for p in pages:
                state = p.state
                if state == State.EVICTED:
                    self.fault(p)
                elif state == State.ARRIVING:
                    self._arrive(p)
                elif p.prefetched:
                    p.prefetched = False
                    self.stats_.prefetch_hits += 1
                table.touch(p)
        except BaseException:
            self.unpin(pages)
            raise

    def unpin(self, pages: list[Page]) -> None:
        for p in pages:
            p.pins -= 1

    def end(self, eid: int, written: list[Page]) -> None:
        """After an operator: record writes, prefetch ahead, keep headroom."""
        for p in written:
            storage = p.ref()
            if storage is not None and storage.nbytes() != p.nbytes:
                self.table.resize(p, storage.nbytes())
            if not p.dirty:
                p.dirty = True
                # The host copy is stale now; its buffer can serve another page.
                self.transfers.release_host(p)
        table = self.table
        if table.resident_bytes > table.limit:
            # The operator's outputs were larger than estimated.
            self.stats_.overshoots += 1
            self.make_room(table.resident_bytes - table.limit)
        if not self.pressure and table.resident_bytes * 4 > table.limit * 3:
            self.pressure = True
        if self.prefetch_enabled and self.pressure:
            policy = self.policy
            policy.observe(eid)
            for distance, page in policy.prefetch_plan(self.scan_ops):
                if page.state != State.EVICTED or page.ref() is None:
                    continue
                short = page.nbytes + self.headroom - table.room()
                if short > 0 and not self.make_room(short, protect_window=True):
                    policy.rewind(distance)
                    break
                self.prefetch(page)
        short = self.headroom - table.room()
        if short > 0:
            self.make_room(short, protect_window=True)

    # ------------------------------------------------------ moving the pages

    def make_room(self, need: int, protect_window: bool = False) -> bool:
        """Evict victims until ``need`` more bytes are free; False if it cannot."""
        return self.evict_bytes(need, protect_window) >= need

    def evict_bytes(self, need: int, protect_window: bool = False) -> int:
        """Evict up to about ``need`` bytes of victims; return how many were freed."""
        self.pressure = True
        freed = 0
        for victim in self.policy.choose_victims(need, protect_window=protect_window):
            freed += victim.nbytes
            self.evict(victim)
        return freed

    def evict(self, page: Page) -> None:
        storage = page.ref()
        if storage is None:  # died since; its callback is queued
            self.retire(page)
            return
        st = self.stats_
        if page.dirty or page.host is None:
            self.transfers.save(storage, page)
            st.writebacks += 1
            st.bytes_to_host += page.nbytes
        else:
            st.dropped_clean += 1
        page.dirty = False
        self.transfers.free(storage, page)
        if page.prefetched:
            page.prefetched = False
            st.wasted_prefetches += 1
        self.table.evicted(page)
        self.policy.on_evict(page)
        st.evictions += 1

    def fault(self, page: Page) -> None:
        """Bring an evicted page back now: the operator needs it."""
        storage = page.ref()
        while True:
            self.table.arriving(page)
            try:
                self.transfers.load(storage, page, prefetch=False)
                break
            except torch.OutOfMemoryError as e:
                # The allocator is fuller than the page table knows (memory
                # deepum does not see, or fragmentation): evict and retry.
                self._unarrive(page, storage)
                if not self.evict_bytes(page.nbytes):
                    raise BudgetTooSmallError("a page fault", page.nbytes, self.table.limit,
                                              self.budget) from e
                self.stats_.oom_retries += 1
            except BaseException:
                self._unarrive(page, storage)
                raise
        self.table.arrived(page)
        self.stats_.faults += 1
        self.stats_.bytes_to_device += page.nbytes

    def prefetch(self, page: Page) -> None:
        storage = page.ref()
        self.table.arriving(page)
        try:
            self.transfers.load(storage, page, prefetch=True)
        except torch.OutOfMemoryError:
            # Fragmentation: the bytes are free but not in one piece. The page
            # will be faulted in when needed; a prefetch is only a hint.
            self._unarrive(page, storage)
            return
        page.prefetched = True
        self.stats_.prefetches += 1
        self.stats_.bytes_to_device += page.nbytes

    def _arrive(self, page: Page) -> None:
        if self.transfers.wait(page):
            self.stats_.late_prefetches += 1
        elif page.prefetched:
            self.stats_.prefetch_hits += 1
        page.prefetched = False
        self.table.arrived(page)

    def _unarrive(self, page: Page, storage: torch.UntypedStorage) -> None:
        if storage.nbytes():
            storage.resize_(0)
        self.table.cancel_arrival(page)

    # ---------------------------------------------------------------- exit

    def restore_all(self) -> None:
        """Bring every live page back to the device; RestoreError if they do not fit."""
        self.reap()
        pending = []
        for page in list(self.table.pages.values()):
            storage = page.ref()
            if storage is None:
                self.retire(page)
                continue
            if page.state == State.ARRIVING:
                self._arrive(page)
            if page.host is not None and storage.nbytes() == 0 and page.nbytes:
                # Holding the storage keeps it alive until it is back.
                pending.append((page, storage))
        for i, (page, _storage) in enumerate(pending):
            try:
                if page.state != State.EVICTED:  # an eviction interrupted half way
                    page.pins = 0
                    self.table.evicted(page)
                self.fault(page)
                self.restored += 1
            except Exception as e:
                rest = [p for p, _ in pending[i:]]
                raise RestoreError(len(rest), sum(p.nbytes for p in rest), e) from e
        self.transfers.synchronize()

    def close(self) -> None:
        """Forget every page (after restore_all) and give host memory back."""
        self.transfers.synchronize()
        self.closed = True
        self.dead.clear()
        for page in list(self.table.pages.values()):
            self.transfers.release_host(page)
        self.table.pages.clear()
        self.live.clear()
        self.transfers.pool.clear()

    # --------------------------------------------------------------- stats

    def stats(self) -> dict:
        self.transfers.harvest()
        st = self.stats_
        out = {name: getattr(st, name) for name in Stats.__slots__}
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_reserved(self.device)
        else:
            peak = self.table.peak_resident_bytes
        out.update(
            peak_device_bytes=peak,
            peak_managed_bytes=self.table.peak_resident_bytes,
            resident_bytes=self.table.resident_bytes,
            budget_bytes=self.budget,
            limit_bytes=self.table.limit,
            managed_pages=len(self.table),
            unpageable_bytes=self.table.unpageable_bytes,
            host_bytes=self.transfers.pool.held_bytes,
            peak_host_bytes=self.transfers.pool.peak_held_bytes,
            stall_seconds=self.transfers.stall_seconds,
            policy=self.policy.name,
            prediction_accuracy=self.policy.accuracy,
        )
        return out
