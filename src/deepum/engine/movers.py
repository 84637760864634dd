"""Moving page bytes between the device and host memory.

Two engines with one interface: :class:`HostTransfers` for the ``cpu`` device
(a budgeted fast tier on the host: every copy is synchronous) and
:class:`CudaTransfers`, which copies on dedicated streams.

[Note: cross-stream lifetime on CUDA]
* A copy *in* first re-allocates the storage (``resize_``) on the compute
  stream, so the caching allocator hands out memory that is free in that
  stream's order; the copy stream therefore waits for the compute stream up to
  that point before writing. In case the storage dies before the copy ends,
  the engine holds a reference to it until the copy's event has completed.
  (Marking the block as used by the copy stream with ``record_stream`` would
  also be safe, but then every prefetched block, when it is freed much later,
  waits for the copy stream to drain everything queued by then: measured on
  GPT-2, such blocks piled up until the allocator had to synchronize.)
* The compute stream waits on a page's ready event only when an operator uses
  the page: a prefetch never blocks the CPU or the compute stream early.
* A copy *out* waits for the compute stream (the last writer) and copies on
  the eviction stream. The storage is emptied at once, but its memory moves to
  a holder (``_swap_data_ptr_``) that is let go once the copy's event has
  completed (:meth:`CudaTransfers.release_finished`); until then the page
  table counts those bytes as leaving, not free. So the caching allocator
  never holds a block with pending stream uses: before, the block was marked
  used by the eviction stream (``record_stream``) and freed at once, and an
  allocation that found the budget's cap full of such blocks made the
  allocator wait for every pending event and empty its whole cache, which
  drained the GPU's queue several times a step. Now the engine itself waits,
  only where an operator needs the room now, and only for the oldest copies
  (:meth:`CudaTransfers.settle`). Torch without the binding uses a small
  extension (native/swap.cpp); without a compiler, ``record_stream``.
* A host buffer is reused only after every copy that reads or writes it has
  finished (its event is recorded in the pool).
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict, deque

import torch

from ..core.pages import Page
from ..errors import HostMemoryError
from .build import build

log = logging.getLogger("deepum")

_NATIVE_SWAP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "swap.cpp")
_swap_module: object = None


def _load_swap():
    """Torch's binding to hand a storage's memory to another, else the small extension
    (built on first use), else None (no compiler: callers copy instead)."""
    global _swap_module
    if _swap_module is None:
        if hasattr(torch.UntypedStorage, "_swap_data_ptr_"):
            _swap_module = "binding"
        elif os.environ.get("DEEPUM_NO_NATIVE", "") not in ("", "0"):
            _swap_module = False
        else:
            try:
                _swap_module = build("deepum_swap", _NATIVE_SWAP)
            except Exception as e:  # no compiler, no headers, a read-only cache
                log.warning("deepum: storages cannot change memory without a copy (%s): pages "
                            "are copied when rebuilt", str(e).splitlines()[0] if str(e) else type(e).__name__)
                _swap_module = False
    return _swap_module or None


def can_swap() -> bool:
    return _load_swap() is not None


def swap_data(dst: torch.UntypedStorage, src: torch.UntypedStorage) -> None:
    """Exchange the memory (and sizes) of two storages of one device; every tensor over
    either keeps its storage object (see the note above)."""
    how = _load_swap()
    if how == "binding":
        dst._swap_data_ptr_(src)
    else:
        how.swap_data(byte_view(dst), byte_view(src))


def byte_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole storage (a fresh tensor: no version bump on the user's)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _alloc_host(nbytes: int, pin: bool) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)


def _host_memory() -> tuple[int, int] | None:
    """(available, total) bytes of host memory, where the system says (Linux)."""
    try:
        with open("/proc/meminfo") as f:
            info = {k: int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in f)
                    if k in ("MemAvailable", "MemTotal")}
        return info["MemAvailable"], info["MemTotal"]
    except (OSError, KeyError, ValueError):
        return None


class HostPool:
    """Host buffers for evicted pages, reused by exact size.

    Training repeats the same tensor sizes every step, so exact-size free lists
    catch nearly every request. Pinning memory costs far more than a copy, so
    buffers are pinned once and kept until the session ends.
    """

    def __init__(self, pin: bool) -> None:
        self.pin = pin
        self._free: dict[int, list[tuple[torch.Tensor, object]]] = defaultdict(list)
        self.held_bytes = 0  # every buffer the pool made and has not dropped
        self.free_bytes = 0
        self.peak_held_bytes = 0

    def take(self, nbytes: int) -> torch.Tensor:
        free = self._free.get(nbytes)
        if free:
            for i, (buf, event) in enumerate(free):
                if event is None or event.query():
                    del free[i]
                    self.free_bytes -= nbytes
                    return buf
        self._check_host_room(nbytes)
        try:
            buf = _alloc_host(nbytes, self.pin)
        except RuntimeError as e:  # pinned or plain host allocation failed
            raise HostMemoryError(nbytes, self.pin, e) from e
        self.held_bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        return buf

    def _check_host_room(self, nbytes: int) -> None:
        """Refuse an allocation that would exhaust host memory.

        Pinning (and, under overcommit, plain allocation) succeeds well past
        what the machine can hold; the kernel's out-of-memory killer then ends
        the process with no error to catch (a 5.9B-parameter model under a
        24 GiB budget on a 128 GiB host ended with SIGKILL). A clear error while the page is
        still on the device loses nothing.
        """
        mem = _host_memory()
        if mem is None:
            return
        available, total = mem
        margin = max(1 << 30, total // 32)  # for the rest of this process and the system
        if nbytes + margin > available and self.free_bytes:
            self.trim()
            mem = _host_memory() or mem
            available = mem[0]
        if nbytes + margin > available:
            raise HostMemoryError(nbytes, self.pin, f"{available / 2**30:.1f} GiB of host memory is available "
                                  f"and {margin / 2**30:.1f} GiB stays free for the system")

    def trim(self) -> None:
        """Drop the free buffers whose copies are done (other sizes than the next request's)."""
        for nbytes, free in list(self._free.items()):
            keep = [(b, e) for b, e in free if not (e is None or e.query())]
            dropped = len(free) - len(keep)
            self.free_bytes -= dropped * nbytes
            self.held_bytes -= dropped * nbytes
            self._free[nbytes] = keep
        if self.pin and hasattr(torch._C, "_host_emptyCache"):
            # Freed pinned blocks stay in PyTorch's host cache, out of the
            # system's count of available memory, until emptied.
            torch._C._host_emptyCache()

    def give(self, buf: torch.Tensor, event: object = None) -> None:
        self._free[buf.numel()].append((buf, event))
        self.free_bytes += buf.numel()

    def clear(self) -> None:
        for bufs in self._free.values():
            for _, event in bufs:
                if event is not None:
                    event.synchronize()
        self._free.clear()
        self.held_bytes -= self.free_bytes
        self.free_bytes = 0


class HostTransfers:
    """Synchronous copies for the ``cpu`` device.

    Every method takes a batch of ``(storage, page)`` pairs: on CUDA one batch
    costs one stream switch and one event, however many pages it holds.
    """

    def __init__(self, device: torch.device, lag: int = 0) -> None:
        self.device = device
        self.pool = HostPool(pin=False)
        self.stall_seconds = 0.0
        self.recompute_seconds = 0.0
        # Thresholds.cpu_copy_lag: a copy out holds its page's memory until
        # ``lag`` calls of release_finished (one per operator) later, as on
        # CUDA until the copy ends: the memory moves to a holder storage
        # (where storages can swap memory; else it is only counted so).
        self.lag = lag
        self.leaving: deque[tuple[int, torch.UntypedStorage | None, int]] = deque()  # (tick, holder, bytes)
        self._ticks = 0

    def clock(self) -> object:
        """A start mark for clocked() (device time on CUDA): a rebuild is timed each time,
        so no context object is made for it."""
        return time.perf_counter()

    def clocked(self, start: object, name: str) -> None:
        """Add the time since ``start`` (clock()'s) to the counter ``name``."""
        setattr(self, name, getattr(self, name) + time.perf_counter() - start)

    def save(self, items: list) -> None:
        """Copy each page to its host buffer (taking one if it has none)."""
        for storage, page in items:
            if page.host is None:
                page.host = self.pool.take(page.nbytes)
            page.host.copy_(byte_view(storage))

    def free(self, storage: torch.UntypedStorage, copied: bool = False) -> int:
        """Free the storage's device memory; return the bytes whose release waits for a copy
        out (``copied``: :meth:`save` just took it), which the caller counts as leaving."""
        if not (copied and self.lag):
            storage.resize_(0)
            return 0
        nbytes, holder = storage.nbytes(), None
        if can_swap():
            holder = torch.UntypedStorage(0, device=self.device)
            swap_data(holder, storage)
        else:
            storage.resize_(0)
        self.leaving.append((self._ticks + self.lag, holder, nbytes))
        return nbytes

    def load(self, items: list, prefetch: bool) -> None:
        """Re-allocate each storage on the device and copy its host copy in."""
        t0 = time.perf_counter()
        for storage, page in items:
            storage.resize_(page.nbytes)
            byte_view(storage).copy_(page.host)
        if not prefetch:
            self.stall_seconds += time.perf_counter() - t0

    def wait(self, pages: list) -> int:
        """Make compute wait for in-flight copies in; return how many had not finished."""
        for page in pages:
            page.ready = None
        return 0

    def release_host(self, page: Page) -> None:
        if page.host is not None:
            self.pool.give(page.host, page.ready)
            page.host = None

    def release_finished(self) -> int:
        """Let go what finished copies held; return the leaving bytes now free."""
        self._ticks += 1
        leaving, freed = self.leaving, 0
        while leaving and leaving[0][0] <= self._ticks:
            freed += leaving.popleft()[2]
        return freed

    def settle(self, need: int | None = None) -> int:
        """Wait for the oldest copies out until ``need`` leaving bytes are free (None: all)."""
        leaving, freed = self.leaving, 0
        while leaving and (need is None or freed < need):
            freed += leaving.popleft()[2]
        return freed

    def synchronize(self) -> int:
        """Wait for every copy; return the leaving bytes now free."""
        return self.settle()

    def harvest(self) -> None:
        pass


class _StreamSwitch:
    """Current-stream get and set without the per-call cost of torch.cuda's wrappers.

    ``torch.cuda.current_stream()`` and ``torch.cuda.stream()`` resolve the
    device and build objects on every call (tens of microseconds on a slow
    host CPU); the pager asks for the current stream several times per
    operator under pressure, so it talks to the bindings directly and keeps
    one Stream object per stream ID.
    """

    def __init__(self, device: torch.device) -> None:
        self.index = device.index
        self._get = getattr(torch._C, "_cuda_getCurrentStream", None)
        self._set = getattr(torch._C, "_cuda_setStream", None)
        self._streams: dict[int, torch.cuda.Stream] = {}

    def current(self) -> torch.cuda.Stream:
        if self._get is None:
            return torch.cuda.current_stream(self.index)
        sid, idx, typ = self._get(self.index)
        stream = self._streams.get(sid)
        if stream is None:
            stream = self._streams[sid] = torch.cuda.Stream(stream_id=sid, device_index=idx, device_type=typ)
        return stream

    def set(self, stream: torch.cuda.Stream) -> None:
        if self._set is None:
            torch.cuda.set_stream(stream)
        else:
            self._set(stream.stream_id, stream.device_index, stream.device_type)


# Timed spans kept before they are read (see [Note: timed spans]).
HARVEST_AT = 64


class CudaTransfers(HostTransfers):
    """Copies on dedicated streams: one in, one out, so both directions overlap."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = HostPool(pin=True)
        self.stall_seconds = 0.0
        self.recompute_seconds = 0.0
        self.streams_ = _StreamSwitch(device)
        # High priority for copies in: compute is waiting for them sooner or later.
        self.h2d = torch.cuda.Stream(device, priority=-1)
        self.d2h = torch.cuda.Stream(device)
        # Timed spans not yet read: (start, end, counter, whether end may be reused).
        self._timed: list[tuple[torch.cuda.Event, torch.cuda.Event, str, bool]] = []
        self._spare: list[torch.cuda.Event] = []  # timing events read already, to record again
        self._harvest_at = HARVEST_AT
        # Prefetch batches still copying: (event, storages kept alive until it completes).
        self._inflight: deque[tuple[torch.cuda.Event, list]] = deque()
        # Memory of evicted pages whose copy out runs: (event, holder, bytes), oldest first.
        self.leaving: deque[tuple[torch.cuda.Event, torch.UntypedStorage, int]] = deque()
        self._save_event: torch.cuda.Event | None = None
        # Known at the first copy out: finding out may build the extension,
        # which a session that never pages should not wait for.
        self._swap: bool | None = None

    @property
    def swap(self) -> bool:
        if self._swap is None:
            self._swap = can_swap()
        return self._swap

    def save(self, items: list) -> None:
        d2h = self.d2h
        compute = self.streams_.current()
        d2h.wait_stream(compute)
        self.streams_.set(d2h)
        try:
            for storage, page in items:
                if page.host is None:
                    page.host = self.pool.take(page.nbytes)
                view = byte_view(storage)
                page.host.copy_(view, non_blocking=True)
                if not self.swap:
                    view.record_stream(d2h)
        finally:
            self.streams_.set(compute)
        event = torch.cuda.Event()
        event.record(d2h)
        self._save_event = event
        for _, page in items:
            # A later copy in must not read the buffer before this completes.
            page.ready = event

    def load(self, items: list, prefetch: bool) -> None:
        compute = self.streams_.current()
        for storage, page in items:
            storage.resize_(page.nbytes)
        if prefetch:
            stream = self.h2d
            stream.wait_stream(compute)
        else:
            # A demand fault: compute needs the pages now, so copy on the
            # compute stream itself; nothing queued for prefetch delays it.
            stream = compute
            start = self._timing_event()
            start.record(compute)
        waited = set()
        for _, page in items:
            if page.ready is not None and id(page.ready) not in waited:
                stream.wait_event(page.ready)
                waited.add(id(page.ready))
        if prefetch:
            self.streams_.set(stream)
        try:
            for storage, page in items:
                byte_view(storage).copy_(page.host, non_blocking=True)
        finally:
            if prefetch:
                self.streams_.set(compute)
        event = torch.cuda.Event(enable_timing=not prefetch)
        event.record(stream)
        if prefetch:
            self._inflight.append((event, [storage for storage, _ in items]))
        else:
            self._time(start, event, "stall_seconds", reuse_end=False)  # (the pages' ready event)
        for _, page in items:
            page.ready = event

    def wait(self, pages: list) -> int:
        compute = self.streams_.current()
        late = [p for p in pages if not p.ready.query()]
        if late:
            start = self._timing_event()
            start.record(compute)
        seen = set()
        for page in pages:
            if id(page.ready) not in seen:
                compute.wait_event(page.ready)
                seen.add(id(page.ready))
        if late:
            end = self._timing_event()
            end.record(compute)
            self._time(start, end, "stall_seconds")
        # Keep the events: a host buffer is reused only after its copy.
        return len(late)

    def clock(self) -> object:
        start = self._timing_event()
        start.record(self.streams_.current())
        return start

    def clocked(self, start: object, name: str) -> None:
        end = self._timing_event()
        end.record(self.streams_.current())
        self._time(start, end, name)

    # [Note: timed spans]
    # Every rebuild and every wait for a late copy is timed by a pair of
    # events, read once both have completed. They are read at most every
    # HARVEST_AT spans (or twice those the device had not reached at the
    # last reading), not only when the stats are asked for: a program that
    # never asks would otherwise keep two CUDA events a rebuild for the whole
    # run. A pair read is kept for the next span, so a paged step records
    # events without creating them, except an end that pages still hold as
    # their ready event (a demand fault's copy).

    def _timing_event(self) -> torch.cuda.Event:
        spare = self._spare
        return spare.pop() if spare else torch.cuda.Event(enable_timing=True)

    def _time(self, start: torch.cuda.Event, end: torch.cuda.Event, name: str, reuse_end: bool = True) -> None:
        timed = self._timed
        timed.append((start, end, name, reuse_end))
        if len(timed) >= self._harvest_at:
            self.harvest()

    def measure_link(self, nbytes: int = 64 << 20) -> tuple[float, float]:
        """Bytes per second host to device and back, through the pinned pool and these streams."""
        host = self.pool.take(nbytes)
        dev = torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        rates = []
        for stream, dst, src in ((self.h2d, dev, host), (self.d2h, host, dev)):
            with torch.cuda.stream(stream):
                dst.copy_(src, non_blocking=True)  # warm-up
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                dst.copy_(src, non_blocking=True)
                end.record(stream)
            end.synchronize()
            rates.append(nbytes / max(start.elapsed_time(end) / 1000.0, 1e-9))
        self.pool.give(host)
        del dev
        return rates[0], rates[1]

    def free(self, storage: torch.UntypedStorage, copied: bool = False) -> int:
        if not (copied and self.swap):
            storage.resize_(0)
            return 0
        holder = torch.UntypedStorage(0, device=self.device)
        swap_data(holder, storage)
        nbytes = holder.nbytes()
        self.leaving.append((self._save_event, holder, nbytes))
        return nbytes

    def release_finished(self) -> int:
        """Drop the references that kept storages alive during their copies; return the
        leaving bytes now free."""
        inflight = self._inflight
        while inflight and inflight[0][0].query():
            inflight.popleft()
        leaving, freed = self.leaving, 0
        # One eviction stream: its events complete in the order recorded.
        while leaving and leaving[0][0].query():
            freed += leaving.popleft()[2]
        return freed

    def settle(self, need: int | None = None) -> int:
        leaving, freed = self.leaving, 0
        while leaving and (need is None or freed < need):
            event, _, nbytes = leaving[0]
            event.synchronize()
            leaving.popleft()
            freed += nbytes
        return freed

    def synchronize(self) -> int:
        torch.cuda.synchronize(self.device)
        self._inflight.clear()
        freed = sum(n for _, _, n in self.leaving)
        self.leaving.clear()
        return freed

    def harvest(self) -> None:
        """Add the timed stalls and recomputes whose events have completed to their counters."""
        keep, spare = [], self._spare
        for item in self._timed:
            start, end, name, reuse_end = item
            if end.query():
                setattr(self, name, getattr(self, name) + start.elapsed_time(end) / 1000.0)
                if len(spare) < 2 * HARVEST_AT:
                    spare.append(start)
                    if reuse_end:
                        spare.append(end)
            else:
                keep.append(item)
        self._timed = keep
        # Spans the device has not reached yet are not scanned again at every new one.
        self._harvest_at = max(HARVEST_AT, 2 * len(keep))


def make_transfers(device: torch.device, cpu_copy_lag: int = 0) -> HostTransfers:
    if device.type == "cuda":
        return CudaTransfers(device)
    return HostTransfers(device, cpu_copy_lag)
