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

[Note: dropping instead of copying]
A page with a recipe (see recompute.py) is evicted without a copy while its
recipe's inputs exist, and rebuilt on the compute stream when needed
(:meth:`Pager.rebuild`): the inputs first (faulted or rebuilt in turn), then
the operator again. Three invariants make the bits the same: a write to a
page first rebuilds the dropped pages that read it and voids its readers'
recipes (:meth:`Pager.before_write`); a page written after it was made loses
its recipe; a dropped page holds its inputs' storages alive until it is
rebuilt or dies.

[Note: interruption]
An eviction first copies the page out and only then frees the device memory,
so at every instant either the device or the host holds the page's bytes.
:meth:`Pager.restore_all` trusts the storage's real size, not the page state,
so it repairs a page whose eviction was interrupted half way (an exception or
KeyboardInterrupt between the two steps).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections import deque

import torch

from .core.pages import ARRIVING, EVICTED, RESIDENT, Kind, Page, PageTable, State
from .core.policy import make_policy
from .errors import BudgetTooSmallError, RestoreError
from .recompute import MAX_DEPTH
from .trace import TraceRecorder, now_us
from .transfer import make_transfers

log = logging.getLogger("deepum")
_NO_RANGE = contextlib.nullcontext()


def _range(name: str):
    """A torch.profiler range while a profiler records, so deepum's work shows in its trace."""
    if torch.autograd.profiler._is_profiler_enabled:
        return torch.profiler.record_function(name)
    return _NO_RANGE


class _StorageRef(weakref.ref):
    """A weak reference to a storage that knows its page (for the death callback)."""

    __slots__ = ("page",)


class _Energy:
    """Joules the GPU used since the session began, from NVML's energy counter."""

    def __init__(self, nvml, handle) -> None:
        self.nvml, self.handle = nvml, handle
        self.start = nvml.nvmlDeviceGetTotalEnergyConsumption(handle)

    @classmethod
    def open(cls, device: torch.device) -> _Energy | None:
        if device.type != "cuda":
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
            # NVML numbers devices as the driver does; under CUDA_VISIBLE_DEVICES
            # CUDA's index may differ, so match by PCI address where torch has it.
            props = torch.cuda.get_device_properties(device)
            if hasattr(props, "pci_bus_id"):
                address = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
                handle = pynvml.nvmlDeviceGetHandleByPciBusId(address)
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
            return cls(pynvml, handle)
        except Exception as e:  # no NVML, no permission, no energy counter
            log.debug("GPU energy not available: %s", e)
            return None

    def joules(self) -> float:
        return (self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle) - self.start) / 1000.0


class Stats:
    """Counters the pager keeps; :meth:`Pager.stats` turns them into a dict."""

    __slots__ = (
        "faults", "evictions", "writebacks", "dropped_clean", "bytes_to_device",
        "bytes_to_host", "prefetches", "prefetch_hits", "late_prefetches",
        "wasted_prefetches", "oom_retries", "overshoots", "ops", "dead_pages",
        "unpageable_pages", "chunked_ops", "optimizer_steps", "comm_holds", "drops",
        "recomputes", "max_working_set_bytes",
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
        self.max_working_set_op = ""
        # Room kept free after each operator, so the next one's outputs rarely
        # have to evict on the critical path.
        self.headroom = limit // 16 if headroom is None else headroom
        # Window operators the prefetcher examines per operator (bounds its CPU cost).
        self.scan_ops = 8
        # Bytes prefetched and not used yet may not pass prefetch_cap: the
        # window can need more than the budget holds, and then each page
        # fetched far ahead pushes out one needed sooner, which is fetched
        # again (benchmarks/prefetch_cap_cpu.py, six steps of a 24-block CNN
        # under 12 MiB: without a cap 1,588 wasted prefetches and 1.8x lru's
        # bytes in; a quarter of the limit, 508 and 1.33x; an eighth, none
        # wasted and lru's bytes, with 1,274 prefetch hits).
        self.unused_prefetch_bytes = 0
        self.prefetch_cap = limit // 8
        self.lock = threading.RLock()
        self.dead: deque[_StorageRef] = deque()
        # (work, pages) of collectives still communicating: the pages stay pinned.
        self.held: list[tuple[object, list[Page]]] = []
        self.closed = False
        self.restored = 0
        # GPU energy since the session began, where NVML can tell (CUDA only).
        self.energy = _Energy.open(device)
        # Evict every unpinned page after every operator (tests).
        self.stress = False
        # Set by the session when asked to record a trace.
        self.trace: TraceRecorder | None = None
        # What each stable key held last time, so a page born again in the
        # next iteration is classified at birth (see set_kind).
        self.skey_kind: dict[int, Kind] = {}
        # Prediction and prefetching start once memory is tight; until then
        # the per-operator path skips them (nothing is off the device to fetch).
        self.pressure = False
        self.on_pressure = None  # set by the interceptor (names pages made before pressure)
        # Drop pages that have a recipe instead of copying them (recompute.py);
        # outputs smaller than recompute_min_bytes get no recipe.
        self.recompute = True
        self.recompute_min_bytes = 64 << 10

    # ------------------------------------------------------------------ pages

    def register(self, storage: torch.UntypedStorage, skey: int, pageable: bool,
                 kind: Kind = Kind.OTHER, preexisting: bool = False) -> Page:
        """A storage the engine has not seen: make it a resident page.

        ``preexisting``: the memory was allocated where no operator was
        intercepted (C++ internals, before the session); it counts towards the
        peak only after the next operator has made room.
        """
        page = Page(storage._cdata, storage.nbytes(), skey, pageable)
        page.kind = self.skey_kind.get(skey, kind)
        ref = _StorageRef(storage, self._on_death)
        ref.page = page
        page.ref = ref
        self.table.add(page, count_peak=not preexisting)
        if skey >= 0:  # negative: no stable key yet (made before pressure)
            self.live[skey] = page
        if not pageable:
            self.stats_.unpageable_pages += 1
        return page

    def set_kind(self, page: Page, kind: Kind) -> None:
        self.table.set_kind(page, kind)
        if page.skey >= 0:
            self.skey_kind[page.skey] = kind

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
            page.prefetched = False
            self.unused_prefetch_bytes -= page.nbytes
            self.stats_.wasted_prefetches += 1
        if page.recipe is not None:
            self.void(page)
        if page.readers:
            # Readers' recipes need this page: none of them is dropped (a
            # dropped reader holds the storage alive), so they just lose them.
            for reader in list(page.readers):
                self.void(reader)
        self.transfers.release_host(page)
        self.table.retire(page)
        if self.live.get(page.skey) is page:
            del self.live[page.skey]
        self.stats_.dead_pages += 1

    # --------------------------------------------------------- operator path

    def begin(self, op: object, pages: list[Page], out_bytes: int, written: list[Page] | tuple = ()) -> None:
        """Make ``pages`` resident and leave room for ``out_bytes`` of outputs.

        ``written``: the pages among them the operator will write.
        """
        table = self.table
        working = out_bytes
        for p in pages:
            working += p.nbytes
        if working > self.stats_.max_working_set_bytes:
            # The smallest budget that would do (deepum estimate).
            self.stats_.max_working_set_bytes = working
            self.max_working_set_op = str(op)
        if working > table.limit:
            raise BudgetTooSmallError(str(op), working, table.limit, self.budget,
                                      [(p.kind.name.lower(), p.nbytes) for p in pages])
        for p in pages:
            p.pins += 1
        try:
            missing = 0
            for p in pages:
                if p.state == EVICTED:
                    if p.host is None:  # dropped: computed again, its inputs first
                        self.rebuild(p)
                    else:
                        missing += p.nbytes
            for p in written:
                if p.readers or p.recipe is not None:
                    self.before_write(p)
            short = missing + out_bytes - table.room()
            if short > 0:
                self.make_room(short)
            faults, arriving = [], []
            for p in pages:
                state = p.state
                if state == EVICTED:
                    faults.append(p)
                elif state == ARRIVING:
                    arriving.append(p)
                elif p.prefetched:  # arrived earlier, first use now
                    p.prefetched = False
                    self.unused_prefetch_bytes -= p.nbytes
                    self.stats_.prefetch_hits += 1
            if faults:
                self.fault(faults)
            if arriving:
                self._arrive(arriving)
            for p in pages:
                table.touch(p)
            table.note_peak()
        except BaseException:
            self.unpin(pages)
            raise
        table.reserved_bytes += out_bytes

    def unpin(self, pages: list[Page], out_bytes: int = 0) -> None:
        """After an operator: its pages may be evicted again; ``out_bytes`` is begin()'s reservation."""
        self.table.reserved_bytes -= out_bytes
        for p in pages:
            p.pins -= 1

    def hold(self, work: object, pages: list[Page]) -> None:
        """Pin ``pages`` until ``work`` (a collective's handle) completes."""
        for p in pages:
            p.pins += 1
        self.held.append((work, pages))
        self.stats_.comm_holds += 1

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
            self._pressure_begins()
        if self.prefetch_enabled and self.pressure:
            self.transfers.release_finished()
            self._prefetch_ahead(eid)
        short = self.headroom - table.room()
        if short > 0:
            self.make_room(short, protect_window=True)
        if self.stress:
            # Testing aid: every page leaves after every operator, so every
            # input of the next one is faulted back in.
            self.evict_unpinned()
        if self.trace is not None:
            self.trace.counter(now_us(), table.kind_bytes)

    def _pressure_begins(self) -> None:
        log.info("memory pressure: %d bytes resident against a limit of %d; prediction and "
                 "paging start", self.table.resident_bytes, self.table.limit)
        self.pressure = True
        if self.on_pressure is not None:
            self.on_pressure()

    # ------------------------------------------------------ moving the pages

    def make_room(self, need: int, protect_window: bool = False) -> bool:
        """Evict victims until ``need`` more bytes are free; False if it cannot."""
        return self.evict_bytes(need, protect_window) >= need

    def evict_bytes(self, need: int, protect_window: bool = False) -> int:
        """Evict up to about ``need`` bytes of victims; return how many were freed."""
        if not self.pressure:
            self._pressure_begins()
        victims = self.policy.choose_victims(need, protect_window=protect_window)
        if victims:
            with _range("deepum::evict"):
                self.evict(victims)
        return sum(v.nbytes for v in victims)

    def evict_unpinned(self) -> None:
        """Evict every resident page no operator is using (stress mode)."""
        if not self.pressure:
            self._pressure_begins()
        self.evict([p for p in self.table.lru() if p.pins == 0])

    def evict(self, pages: list[Page]) -> None:
        """Copy the dirty ones out (or drop those with a recipe), then free the device memory of all."""
        st = self.stats_
        live, dirty, arriving = [], [], []
        drops = 0
        for page in pages:
            storage = page.ref()
            if storage is None:  # died since; its callback is queued
                self.retire(page)
                continue
            live.append((storage, page))
            if page.state == ARRIVING:
                arriving.append(page)
            if page.dirty or page.host is None:
                if page.recipe is not None and self.recompute and self._drop(page):
                    drops += 1
                else:
                    dirty.append((storage, page))
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
            st.bytes_to_host += sum(p.nbytes for _, p in dirty)
        st.drops += drops
        st.dropped_clean += len(live) - len(dirty) - drops
        for storage, page in live:
            page.dirty = False
            self.transfers.free(storage)
            if page.prefetched:
                page.prefetched = False
                self.unused_prefetch_bytes -= page.nbytes
                st.wasted_prefetches += 1
            self.table.evicted(page)
            self.policy.on_evict(page)
        st.evictions += len(live)
        if self.trace is not None and live:
            self.trace.transfer("evictions", t0, now_us(), [p for _, p in live])

    def fault(self, pages: list[Page]) -> None:
        """Bring evicted pages back now: the running operator needs them."""
        items = [(p.ref(), p) for p in pages]
        nbytes = sum(p.nbytes for p in pages)
        t0 = now_us() if self.trace is not None else 0.0
        while True:
            for _, p in items:
                self.table.arriving(p)
            try:
                with _range("deepum::fault"):
                    self.transfers.load(items, prefetch=False)
                break
            except torch.OutOfMemoryError as e:
                # The allocator is fuller than the page table knows (memory
                # deepum does not see, or fragmentation): evict and retry.
                self._unarrive(items)
                if not self.evict_bytes(nbytes):
                    raise BudgetTooSmallError("a page fault", nbytes, self.table.limit,
                                              self.budget) from e
                self.stats_.oom_retries += 1
            except BaseException:
                self._unarrive(items)
                raise
        for _, p in items:
            self.table.arrived(p)
        self.stats_.faults += len(items)
        self.stats_.bytes_to_device += nbytes
        if self.trace is not None:
            self.trace.transfer("faults", t0, now_us(), pages)

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
                # pages needed sooner (see __init__). Resume here later.
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
            with _range("deepum::prefetch"):
                self.transfers.load(batch, prefetch=True)
        except torch.OutOfMemoryError:
            # Fragmentation: the bytes are free but not in one piece. The pages
            # will be faulted in when needed; a prefetch is only a hint.
            self._unarrive(batch)
            return
        st = self.stats_
        for _, page in batch:
            page.prefetched = True
            self.unused_prefetch_bytes += page.nbytes
        st.prefetches += len(batch)
        st.bytes_to_device += sum(p.nbytes for _, p in batch)
        if self.trace is not None:
            self.trace.transfer("prefetches", t0, now_us(), [p for _, p in batch])

    # --------------------------------------------------------- recipes

    def attach_recipe(self, page: Page, recipe) -> None:
        """``page`` can be computed again by ``recipe`` (recompute.Recipe)."""
        page.recipe = recipe
        for q in recipe.inputs:
            if q.readers is None:
                q.readers = []
            q.readers.append(page)

    def void(self, page: Page) -> None:
        """Forget a resident page's recipe (its inputs or its bytes changed)."""
        recipe, page.recipe = page.recipe, None
        for q in recipe.inputs:
            if q.readers and page in q.readers:
                q.readers.remove(page)

    def _drop(self, page: Page) -> bool:
        """Evict ``page`` by its recipe if its inputs allow; False to copy it out instead."""
        recipe = page.recipe
        if not recipe.usable():
            self.void(page)
            return False
        # An input dropped, or being dropped in the same batch, holds its own inputs.
        depth = 1 + max((q.recipe.depth for q in recipe.inputs
                         if q.recipe is not None and q.recipe.held is not None), default=0)
        if depth > MAX_DEPTH:
            return False
        recipe.depth = depth
        recipe.held = [q.ref() for q in recipe.inputs]
        return True

    def before_write(self, page: Page) -> None:
        """``page`` is about to be written: recipes that read it, and its own, stop being exact."""
        for reader in list(page.readers or ()):
            if reader.dropped:
                self.rebuild(reader)
            self.void(reader)
        if page.recipe is not None:
            self.void(page)

    def rebuild(self, page: Page) -> None:
        """Compute a dropped page again on the compute stream (its inputs made resident first)."""
        recipe = page.recipe
        inputs = recipe.inputs
        for q in inputs:
            q.pins += 1
        try:
            for q in inputs:
                if q.dropped:
                    self.rebuild(q)
            evicted = [q for q in inputs if q.state == EVICTED]
            # The page, and the operator's own output until it is copied over.
            need = sum(q.nbytes for q in evicted) + 2 * page.nbytes
            if need > self.table.limit:
                raise BudgetTooSmallError(f"recomputing {recipe.func}", need, self.table.limit, self.budget)
            short = need - self.table.room()
            if short > 0:
                self.make_room(short)
            if evicted:
                self.fault(evicted)
            arriving = [q for q in inputs if q.state == ARRIVING]
            if arriving:
                self._arrive(arriving)
            storage = page.ref()
            while True:
                self.table.arriving(page)
                self.table.reserved_bytes += page.nbytes
                try:
                    with _range("deepum::recompute"):
                        storage.resize_(page.nbytes)
                        recipe.run_into(storage, self.device)
                    break
                except torch.OutOfMemoryError as e:
                    self._unarrive([(storage, page)])
                    if not self.evict_bytes(2 * page.nbytes):
                        raise BudgetTooSmallError(f"recomputing {recipe.func}", 2 * page.nbytes,
                                                  self.table.limit, self.budget) from e
                    self.stats_.oom_retries += 1
                except BaseException:
                    self._unarrive([(storage, page)])
                    raise
                finally:
                    self.table.reserved_bytes -= page.nbytes
            self.table.arrived(page)
            page.ready = None
            page.dirty = True  # no host copy: the next eviction drops or copies it again
            recipe.held = None
            for q in inputs:
                self.table.touch(q)
            self.stats_.recomputes += 1
        finally:
            for q in inputs:
                q.pins -= 1

    def _arrive(self, pages: list[Page]) -> None:
        late = self.transfers.wait(pages)
        st = self.stats_
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

    # ---------------------------------------------------------------- exit

    def restore_all(self) -> None:
        """Bring every live page back to the device; RestoreError if they do not fit."""
        self.release_held(wait=True)
        self.reap()
        pending, arriving, dropped = [], [], []
        for page in list(self.table.pages.values()):
            storage = page.ref()
            if storage is None:
                self.retire(page)
                continue
            page.pins = 0  # no operator runs any more
            if page.state == ARRIVING:
                arriving.append(page)
            elif page.dropped:
                dropped.append(page)
            elif page.host is not None and storage.nbytes() == 0 and page.nbytes:
                # Holding the storage keeps it alive until it is back.
                pending.append((storage, page))
        if arriving:
            self._arrive(arriving)
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

    def _pages_by_kind(self) -> dict[str, int]:
        counts = dict.fromkeys((k.name.lower() for k in Kind), 0)
        for page in self.table.pages.values():
            counts[page.kind.name.lower()] += 1
        return counts

    def stats(self) -> dict:
        self.transfers.harvest()
        st = self.stats_
        out = {name: getattr(st, name) for name in Stats.__slots__}
        if self.energy is not None:
            out["energy_joules"] = self.energy.joules()
            if st.optimizer_steps:
                out["energy_joules_per_step"] = out["energy_joules"] / st.optimizer_steps
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
            resident_bytes_by_kind={k.name.lower(): self.table.kind_bytes[k] for k in Kind},
            pages_by_kind=self._pages_by_kind(),
            max_working_set_op=self.max_working_set_op,
            policy=self.policy.name,
            prediction_accuracy=self.policy.accuracy,
        )
        return out
