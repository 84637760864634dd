"""Bytes of new storages an operator will return, before it runs: a run on meta tensors,
remembered by the arguments' metadata."""

from __future__ import annotations

import torch

from ..remat import storage_of
from .plan import OpPlan, flat_outputs
from .sparse import sparse_nbytes

META_CACHE_MAX = 1 << 16


def estimate_cached(cache: dict, plan: OpPlan, func, args, kwargs) -> int:
    """estimate, remembered by the arguments' metadata (all a meta run sees).

    A new execution ID needs an estimate before it runs; IDs are new for
    every operator of a first iteration, and for every operator of a
    program whose chains never recur. Transformer layers repeat the same
    shapes, so most of those are one dict look-up instead of a meta run
    (measured on CPU: docs/BENCHMARKS.md, "Interception cost per operator").
    """
    try:
        key = (plan, meta_key(args), meta_key(kwargs))
        est = cache.get(key)
    except TypeError:  # an argument that cannot be hashed: no caching
        return estimate(plan, func, args, kwargs)
    if est is None:
        est = estimate(plan, func, args, kwargs)
        if len(cache) >= META_CACHE_MAX:
            cache.clear()  # programs whose shapes never repeat
        cache[key] = est
    return est


def estimate(plan: OpPlan, func, args, kwargs) -> int:
    """Bytes of new storages the operator will return, from a run on meta tensors; -1 if unknown."""
    if plan.sized and not plan.factory:
        return -1
    try:
        margs = to_meta(args)
        mkwargs = {k: to_meta(v) for k, v in kwargs.items()}
        inputs = {storage_of(t)._cdata for t in flat_outputs(margs)}
        out = func(*margs, **mkwargs)
    except Exception:
        return -1  # no meta kernel (or sparse arguments): see guess()
    total = 0
    for t in flat_outputs(out):
        if t.layout != torch.strided:
            total += sparse_nbytes(t)
            continue
        s = storage_of(t)
        if s._cdata not in inputs:
            total += s.nbytes()
    return total


def meta_key(x):
    """What a meta run of an operator sees of an argument, hashable; TypeError if it cannot be."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise TypeError("no strides (sparse): estimated without the cache")
        return (x.dtype, x.shape, x.stride())
    if isinstance(x, (list, tuple)):
        return tuple(meta_key(y) for y in x)
    if isinstance(x, dict):
        return tuple(sorted((k, meta_key(v)) for k, v in x.items()))
    if isinstance(x, torch.device):
        return "device"  # _to_meta makes every device "meta"
    hash(x)
    return (type(x), x)  # 1, 1.0 and True hash alike but promote differently


def to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(to_meta(y) for y in x)
    if isinstance(x, torch.device):
        return torch.device("meta")
    return x


# [Note: sizes known before the run]
# An operator's outputs must fit before it runs, or the budget is passed.
# The quiet path skips the estimate; that is safe only where the outputs are
# small next to the quarter of the limit it keeps free. Two kinds are not:
# factories (one call can make a tensor as large as the budget) and operators
# whose meta kernel is known to under-state their outputs (the RNN layers:
# their workspace is sized by the backend at run time). Both always take the
# full path (plan.sized; plan.py's UNRELIABLE_META). Where no estimate exists (no meta kernel, sparse
# arguments, the operators just named) the first run of an execution ID gets
# all the room the budget has (guess); later runs use the size it made.
# Whatever still passes the limit is counted as an overshoot, and room is
# made right after the operator (Pager.end).
def guess(table, pages: list) -> int:
    """Room for the outputs of an operator whose size cannot be told beforehand: all there is.

    See [Note: sizes known before the run]. The size it really made is
    learned after the run, so this happens once per execution ID.
    """
    return max(0, table.limit - table.unpageable_bytes - sum(p.nbytes for p in pages if p.pageable))
