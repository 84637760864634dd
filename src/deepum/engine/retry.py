"""The one evict-and-retry decision after an allocator out-of-memory error.

[Note: evict and retry]
The page table's count of free bytes can be right while the allocator still
fails: memory deepum does not see (kernel workspaces, other libraries) or
fragmentation. Whoever caught ``torch.OutOfMemoryError`` (an operator, a
page fault, a rebuild) undoes its own partial work, then calls
:func:`evict_for_retry`: any progress is worth a retry (the allocator may need a
few evictions before a large enough block is free); no progress raises the
error that names the cause, before anything else changed.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import BudgetTooSmallError, UnmanagedMemoryError


def evict_for_retry(pager: Any, what: str, need: int, working: int, cause: BaseException,
                    retry_safe: bool = True, unmanaged: bool = False) -> None:
    """Evict about ``need`` bytes so ``what`` can run again, or raise why it cannot.

    ``working``: the bytes ``what`` needs at once. ``retry_safe``: running it
    again cannot repeat a side effect. ``unmanaged``: when nothing could be
    evicted but the working set fits, blame memory deepum cannot see
    (:class:`UnmanagedMemoryError`) rather than the budget.
    """
    # Memory held for copies out is free once they end: the first progress.
    settled = pager.transfers.settle()
    pager.table.leaving_bytes -= settled
    freed = retry_safe and (settled or pager.evict_bytes(need))
    if not freed:
        limit = pager.table.limit
        if not unmanaged or working > limit or not retry_safe:
            raise BudgetTooSmallError(what, working, limit, pager.budget) from cause
        raise UnmanagedMemoryError(what, working, pager.table.resident_bytes, pager.budget) from cause
    pager.counters.oom_retries += 1


def call_after_oom(pager: Any, name: str, retry_safe: bool, call, est: int, pages, error: BaseException):
    """``call()`` once more after the out-of-memory ``error`` it raised, evicting before each
    try until it runs or :func:`evict_for_retry` says why it cannot (``est``: the bytes of
    its outputs; ``pages``: its inputs, resident and pinned)."""
    while True:
        # The allocator hit the budget (memory the engine cannot see:
        # workspaces, fragmentation). Evict and try again.
        with pager.lock:
            evict_for_retry(pager, name, max(est, pager.oom_retry_bytes),
                            est + sum(p.nbytes for p in pages), error, retry_safe, unmanaged=True)
        try:
            return call()
        except torch.OutOfMemoryError as e:
            error = e
