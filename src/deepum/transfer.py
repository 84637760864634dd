"""Moving page bytes between the device and host memory.

Two engines with one interface: :class:`HostTransfers` for the ``cpu`` device
(a budgeted fast tier on the host: every copy is synchronous) and
:class:`CudaTransfers`, which copies on dedicated streams.

[Note: cross-stream lifetime on CUDA]
* A copy *in* first re-allocates the storage (``resize_``) on the compute
  stream, so the caching allocator hands out memory that is free in that
  stream's order; the copy stream therefore waits for the compute stream up to
  that point before writing, and the block is marked as used by the copy
  stream (``record_stream``) in case the storage dies before the copy ends.
* The compute stream waits on a page's ready event only when an operator uses
  the page: a prefetch never blocks the CPU or the compute stream early.
* A copy *out* waits for the compute stream (the last writer), copies on the
  eviction stream, marks the block as used by that stream and then frees it
  with ``resize_(0)``: the allocator does not reuse the block until the copy
  has finished, so eviction never waits on the CPU.
* A host buffer is reused only after every copy that reads or writes it has
  finished (its event is recorded in the pool).
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from .core.pages import Page
from .errors import HostMemoryError


def byte_view(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over the whole storage (a fresh tensor: no version bump on the user's)."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


def _alloc_host(nbytes: int, pin: bool) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)


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
        try:
            buf = _alloc_host(nbytes, self.pin)
        except RuntimeError as e:  # pinned or plain host allocation failed
            raise HostMemoryError(nbytes, self.pin, e) from e
        self.held_bytes += nbytes
        self.peak_held_bytes = max(self.peak_held_bytes, self.held_bytes)
        return buf

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
    """Synchronous copies for the ``cpu`` device."""

    streams = False

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = HostPool(pin=False)
        self.stall_seconds = 0.0

    def save(self, storage: torch.UntypedStorage, page: Page) -> None:
        """Copy the page to its host buffer (taking one if it has none)."""
        if page.host is None:
            page.host = self.pool.take(page.nbytes)
        page.host.copy_(byte_view(storage))

    def free(self, storage: torch.UntypedStorage, page: Page) -> None:
        storage.resize_(0)

    def load(self, storage: torch.UntypedStorage, page: Page, prefetch: bool) -> None:
        """Re-allocate the storage on the device and copy the host copy in."""
        t0 = time.perf_counter()
        storage.resize_(page.nbytes)
        byte_view(storage).copy_(page.host)
        if not prefetch:
            self.stall_seconds += time.perf_counter() - t0

    def wait(self, page: Page) -> bool:
        """Make compute wait for an in-flight copy in; True if it had not finished."""
        page.ready = None
        return False

    def release_host(self, page: Page) -> None:
        if page.host is not None:
            self.pool.give(page.host, page.ready)
            page.host = None

    def synchronize(self) -> None:
        pass

    def harvest(self) -> None:
        pass


class CudaTransfers(HostTransfers):
    """Copies on dedicated streams: one in, one out, so both directions overlap."""

    streams = True

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = HostPool(pin=True)
        self.stall_seconds = 0.0
        # Copies in have priority over the compute stream's own work queue
        # position only through events; a high priority keeps them from
        # queueing behind eviction copies in the hardware scheduler.
        self.h2d = torch.cuda.Stream(device, priority=-1)
        self.d2h = torch.cuda.Stream(device)
        self._timed: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []

    def save(self, storage: torch.UntypedStorage, page: Page) -> None:
        if page.host is None:
            page.host = self.pool.take(page.nbytes)
        view = byte_view(storage)
        self.d2h.wait_stream(torch.cuda.current_stream(self.device))
        if page.ready is not None:  # an earlier copy in still reads the buffer
            self.d2h.wait_event(page.ready)
        with torch.cuda.stream(self.d2h):
            page.host.copy_(view, non_blocking=True)
        view.record_stream(self.d2h)
        event = torch.cuda.Event()
        event.record(self.d2h)
        # Until it completes, a copy in must not read the buffer (see load).
        page.ready = event

    def free(self, storage: torch.UntypedStorage, page: Page) -> None:
        storage.resize_(0)

    def load(self, storage: torch.UntypedStorage, page: Page, prefetch: bool) -> None:
        compute = torch.cuda.current_stream(self.device)
        storage.resize_(page.nbytes)
        view = byte_view(storage)
        if prefetch:
            self.h2d.wait_stream(compute)
            if page.ready is not None:
                self.h2d.wait_event(page.ready)
            with torch.cuda.stream(self.h2d):
                view.copy_(page.host, non_blocking=True)
            view.record_stream(self.h2d)
            event = torch.cuda.Event()
            event.record(self.h2d)
            page.ready = event
        else:
            # A demand fault: compute needs the page now, so copy on the
            # compute stream itself; nothing queued on the prefetch stream
            # can delay it.
            start = torch.cuda.Event(enable_timing=True)
            start.record(compute)
            if page.ready is not None:
                compute.wait_event(page.ready)
            view.copy_(page.host, non_blocking=True)
            end = torch.cuda.Event(enable_timing=True)
            end.record(compute)
            self._timed.append((start, end))
            page.ready = end

    def wait(self, page: Page) -> bool:
        event = page.ready
        if event is None:
            return False
        late = not event.query()
        compute = torch.cuda.current_stream(self.device)
        if late:
            start = torch.cuda.Event(enable_timing=True)
            start.record(compute)
            compute.wait_event(event)
            end = torch.cuda.Event(enable_timing=True)
            end.record(compute)
            self._timed.append((start, end))
        else:
            compute.wait_event(event)
        # Keep the event: the host buffer may be reused only after it.
        return late

    def release_host(self, page: Page) -> None:
        if page.host is not None:
            self.pool.give(page.host, page.ready)
            page.host = None

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def harvest(self) -> None:
        """Add the timed stalls whose events have completed to stall_seconds."""
        keep = []
        for start, end in self._timed:
            if end.query():
                self.stall_seconds += start.elapsed_time(end) / 1000.0
            else:
                keep.append((start, end))
        self._timed = keep


def make_transfers(device: torch.device) -> HostTransfers:
    if device.type == "cuda":
        return CudaTransfers(device)
    return HostTransfers(device)
