"""How many bytes tensors hold, read without intercepting operators (for core/dormancy.py).

CUDA: the caching allocator's own statistics. The cpu tier has none, so a
small compiled allocator (native/counter.cpp, built on first use through
torch's extension API) wraps torch's CPU allocator and counts; once a cpu
session has installed it, it stays for the life of the process. Where it
cannot be built (no compiler) there is no signal, and the session keeps
paging: it never runs unwatched on a guess.
"""

from __future__ import annotations

import logging
import os
import weakref

import torch

from ..core.config import THRESHOLDS
from .build import build

log = logging.getLogger("deepum")
_NATIVE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "native", "counter.cpp")
_counter = None
_counter_failed = False


def load_counter():
    """The compiled counting allocator's module, or None (DEEPUM_NO_NATIVE=1, or no compiler)."""
    global _counter, _counter_failed
    if _counter is not None or _counter_failed:
        return _counter
    if os.environ.get("DEEPUM_NO_NATIVE", "") not in ("", "0"):
        _counter_failed = True
        return None
    try:
        _counter = build("deepum_counter", _NATIVE)
    except Exception as e:  # no compiler, no headers, a read-only cache
        _counter_failed = True
        log.warning("deepum: the cpu tier's memory counter could not be built (%s); the session "
                    "keeps intercepting every operator. Set DEEPUM_NO_NATIVE=1 to skip the build.",
                    str(e).splitlines()[0] if str(e) else type(e).__name__)
    return _counter


# The allocator's out-of-memory observers cannot be removed once attached:
# one is attached for the process, and it tells the signals alive on the
# device ([Note: out of memory while dormant] in core/dormancy.py).
_listening: weakref.WeakSet = weakref.WeakSet()
_observer_attached = False


def _on_out_of_memory(*args) -> None:
    """The allocator is about to raise an out-of-memory error: (device, bytes asked for, the
    device's limit, its free bytes). Nothing here may raise: the allocator's error would become
    this one."""
    try:
        device, asked = int(args[0]), int(args[1])
        for signal in list(_listening):
            if signal.index == device and signal.on_oom is not None:
                signal.on_oom(asked)
    except Exception:
        log.exception("deepum: out-of-memory observer")


def _listen(signal) -> None:
    global _observer_attached
    attach = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
    if attach is not None and not _observer_attached:
        attach(_on_out_of_memory)
        _observer_attached = True
    _listening.add(signal)


class CudaSignal:
    """The caching allocator's allocated bytes; its peak is reset at each window.

    Its statistics come as a dict of dicts built per call, so a reading costs
    tens of microseconds: the watch rate-limits readings (Thresholds.reading_interval_s).
    """

    interval_s = THRESHOLDS.reading_interval_s
    window_min_s = THRESHOLDS.window_min_s
    cached = True  # a caching allocator under a cap: its rests count at release (core/dormancy.py)

    def __init__(self, device: torch.device) -> None:
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        # The reserved peak before the last reset, so the session's peak survives the resets.
        self.folded_reserved_peak = 0
        self.window_reserved = 0  # the last window's reserved peak (the cap is on reserved bytes)
        self.flushes = 0  # times the allocator handed its cache back to find a block, so far
        self.on_oom = None  # called with the bytes asked for when the allocator runs out (the watch sets it)
        _listen(self)

    def current(self) -> int:
        return torch._C._cuda_memoryStats(self.index)["allocated_bytes"]["all"]["current"]

    def close_window(self) -> int:
        """The window's peak of allocated bytes; a new window starts."""
        stats = torch._C._cuda_memoryStats(self.index)
        reserved = self.window_reserved = stats["reserved_bytes"]["all"]["peak"]
        if reserved > self.folded_reserved_peak:
            self.folded_reserved_peak = reserved
        self.flushes = stats.get("num_alloc_retries", 0)
        peak = stats["allocated_bytes"]["all"]["peak"]
        torch._C._cuda_resetPeakMemoryStats(self.index)
        return peak

    def rebase(self, known: int) -> None:
        """Paging stopped. The allocator counts every block, so nothing to rebase.

        Its cache, though, holds the blocks that evictions freed and restores
        took, laid out for the paged step. Under the budget's cap the program's
        own allocations could then find no block that fits and flush the
        cache themselves, each flush a wait on every stream, step after step.
        Handing the unused blocks back once, here, lets the steady state lay
        its blocks out afresh.
        """
        torch.cuda.empty_cache()

    def close(self) -> None:
        """The process's observer stays; this signal no longer listens."""
        self.on_oom = None
        _listening.discard(self)


class CpuSignal:
    """The counting allocator's bytes, relative to what the page table knew when paging stopped.

    Blocks made before the allocator was installed are not counted, so the
    bytes in use are the pages known at the last release plus what the count
    grew since; a pre-existing block freed while dormant is still counted,
    which only makes paging start early.
    """

    # A reading is one call into the counter, but the Python around it is
    # not free: readings at most every half millisecond of host time. Every
    # root call is a boundary.
    interval_s = 5e-4
    window_min_s = 0.0
    cached = False

    def __init__(self, counter) -> None:
        self.counter = counter
        self.base = 0
        self.mark = 0
        self.folded_reserved_peak = 0
        self.window_reserved = 0  # no cache: what is reserved is what is allocated
        self.flushes = 0
        self.on_oom = None  # (the cpu tier's counter never runs out)
        counter.install()

    def current(self) -> int:
        return self.base + self.counter.current() - self.mark

    def close_window(self) -> int:
        peak = self.window_reserved = self.base + self.counter.peak() - self.mark
        self.counter.reset_peak()
        return peak

    def rebase(self, known: int) -> None:
        self.base = known
        self.mark = self.counter.current()
        self.counter.reset_peak()

    def close(self) -> None:
        """The counter stays installed for the process (see native/counter.cpp)."""


def open_signal(device: torch.device) -> CudaSignal | CpuSignal | None:
    if device.type == "cuda":
        return CudaSignal(device)
    counter = load_counter()
    return CpuSignal(counter) if counter is not None else None
