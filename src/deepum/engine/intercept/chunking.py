"""Splitting foreach and fused operators whose lists do not fit the budget into slices that do.

These operators compute each list element independently, so running them
slice by slice gives the bits of one call; each slice is an operator of its
own, so faults, writes and outputs take the ordinary path.
"""

from __future__ import annotations

import torch

from ...errors import UnsupportedError
from ..remat import storage_of
from .plan import logical_nbytes


class Chunking:
    """The part of :class:`~deepum.engine.intercept.mode.PagingMode` that splits list operators."""

    def _chunk_cap(self) -> int:
        table = self.pager.table
        return max(1, int((table.limit - table.unpageable_bytes) * self.chunk_share))

    def _chunks(self, plan, args, kwargs, est):
        """Split a foreach or fused operator's lists into slices that fit, or None.

        These operators compute each list element independently, so running
        them slice by slice gives the same bits as one call. None when the
        operator cannot be split (one element per list already); it then runs
        whole, and the budget check names it if it does not fit.
        """
        # Lists run in parallel (element j of each goes together); empty ones
        # (an unused amsgrad state list, say) pass through whole.
        lists, values = [], []
        for i, n in plan.list_slots:
            v = args[i] if i < len(args) else kwargs.get(n)
            if v:
                lists.append((i, n))
                values.append(v)
        length = len(values[0])
        if length < 2:
            return None
        cost = [0] * length
        for v in values:
            if len(v) != length:
                raise UnsupportedError(
                    f"{plan.name}: list arguments of different lengths ({len(v)} and {length}); "
                    "deepum cannot split this operator into parts that fit the budget")
            for j, x in enumerate(v):
                if isinstance(x, torch.Tensor) and self.is_managed(x):
                    cost[j] += storage_of(x).nbytes() or logical_nbytes(x)
        total = sum(cost) or 1
        return (lists, values, slice_bounds([c + est * c // total for c in cost], self._chunk_cap()))

    def _run_chunks(self, func, types, args, kwargs, chunks):
        lists, values, bounds = chunks
        self.pager.counters.chunked_ops += 1
        results = []
        for a, b in bounds:
            cargs, ckwargs = list(args), dict(kwargs)
            for (i, n), v in zip(lists, values):
                if i < len(args):
                    cargs[i] = v[a:b]
                else:
                    ckwargs[n] = v[a:b]
            # Each slice is an operator of its own: faults, writes and
            # outputs go through the ordinary path.
            results.append(self.__torch_dispatch__(func, types, tuple(cargs), ckwargs))
        self.last_eid = -1  # the slices carry the IDs; the whole call has none
        return concat_results(results)


def slice_bounds(cost: list[int], cap: int) -> list[tuple[int, int]]:
    """Bounds [a, b) of consecutive list elements whose ``cost`` adds up to at most ``cap``
    (an element over it alone is a slice of its own)."""
    bounds, start, acc = [], 0, 0
    for j, c in enumerate(cost):
        if j > start and acc + c > cap:
            bounds.append((start, j))
            start, acc = j, 0
        acc += c
    bounds.append((start, len(cost)))
    return bounds


def concat_results(results: list):
    first = results[0]
    if first is None or (isinstance(first, tuple) and len(first) == 0):
        return first
    if isinstance(first, list):
        return [x for r in results for x in r]
    if isinstance(first, tuple):
        return tuple([x for r in results for x in r[k]] for k in range(len(first)))
    raise UnsupportedError(f"cannot join chunked results of type {type(first).__name__}")
