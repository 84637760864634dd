"""Sparse tensors: their index and value tensors stay resident and are counted, never paged."""

from __future__ import annotations

import torch

from ...core.pages import DEAD
from ..remat import storage_of


def sparse_parts_resident(mode, t: torch.Tensor, found: dict | None) -> int:
    """A sparse tensor's index and value tensors stay resident and are counted.

    C++ reaches them through the sparse tensor, not as operator
    arguments (SparseAdam builds tensors from a gradient's indices with
    ``grad.new``), so they can never be evicted. A part evicted while it
    was an ordinary page (before it joined a sparse tensor) is faulted in
    with the operator (``found``) and pinned for good next time.
    Returns the bytes of parts seen for the first time.
    """
    pager = mode.pager
    new = 0
    for part in _sparse_parts(t):
        s = storage_of(part)
        p = pager.table.pages.get(s._cdata)
        if p is None:
            if s.nbytes() and s.device == mode.device:
                pager.register(s, mode.skeys(("sparse", len(mode.skeys))), False)
                new += s.nbytes()
        elif p.pageable and p.state != DEAD:
            if p.resident:
                pager.before_write(p)
                pager.table.make_unpageable(p)
                pager.counters.unpageable_pages += 1
            elif found is not None:
                found[p.key] = p
    return new


def sparse_nbytes(t: torch.Tensor) -> int:
    """Bytes a sparse (or other storage-less) tensor holds, where its layout tells."""
    return sum(x.nbytes for x in _sparse_parts(t))


def _sparse_parts(t: torch.Tensor) -> tuple:
    """The strided tensors inside a sparse tensor (indices, values); () for other layouts."""
    try:
        if t.layout == torch.sparse_coo:
            return t._indices(), t._values()
        return (t.values(), *_compressed_indices(t))
    except (RuntimeError, NotImplementedError):
        return ()


def _compressed_indices(t: torch.Tensor) -> tuple:
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.crow_indices(), t.col_indices()
    if t.layout in (torch.sparse_csc, torch.sparse_bsc):
        return t.ccol_indices(), t.row_indices()
    return ()
