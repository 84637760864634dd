"""Host-side reads of paged storages on the cpu device (see the note)."""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

from ...core.pages import DEAD

# [Note: host reads]
# On the cpu device a paged storage is host memory that C++ may read without
# an operator, below the dispatch mode's reach: Tensor.tolist() and .numpy()
# read the data pointer, and tensor_split's C++ reads its index tensor. An
# evicted storage has no memory there ("data is not allocated yet"). These
# functions are caught one level up, as torch functions, and their tensor
# arguments faulted in and pinned while they run. What numpy() and
# __array__/__dlpack__ return shares the storage for as long as it lives, so
# those pages become unpageable for good. On CUDA no such read exists: host
# code reads device memory only through a copy, which is an operator.
_READS = {torch.Tensor.tolist, torch.tensor_split, torch.Tensor.tensor_split}
_ALIASES = {torch.Tensor.numpy, torch.Tensor.__array__, torch.Tensor.__dlpack__}


class HostReadMode(TorchFunctionMode):
    """Fault in the tensors a host-side read is about to touch (cpu device only)."""

    def __init__(self, pager) -> None:
        super().__init__()
        self.pager = pager

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        alias = func in _ALIASES
        if not (alias or func in _READS):
            return func(*args, **kwargs)
        pager = self.pager
        pages = []
        with pager.lock:
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.Tensor) and a.is_cpu and a.layout == torch.strided:
                    p = pager.table.pages.get(a.untyped_storage()._cdata)
                    if p is not None and p.state != DEAD:
                        pages.append(p)
            if pages:
                # The copies that bring pages back are operators themselves:
                # run them below the paging mode, as its own fault path does.
                with torch.utils._python_dispatch._disable_current_modes():
                    pager.begin(func, pages, 0)
                if alias:
                    for p in pages:
                        # Writes through the alias are invisible: recipes that read it stop being exact.
                        pager.before_write(p)
                        pager.table.make_unpageable(p)
                        pager.counters.unpageable_pages += 1
        if not pages:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        finally:
            with pager.lock:
                pager.unpin(pages)
