"""Bytes of new storages an operator will return, before it runs: a run on meta tensors,
remembered by the arguments' metadata."""

from __future__ import annotations

import torch

from .plan import OpPlan, flat_outputs

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
    """Bytes of new storages the operator will return, from a run on meta tensors."""
    try:
        margs = to_meta(args)
        mkwargs = {k: to_meta(v) for k, v in kwargs.items()}
        inputs = {t.untyped_storage()._cdata for t in flat_outputs(margs)}
        out = func(*margs, **mkwargs)
    except Exception:
        return 0  # no meta kernel: learn the size after the first run
    total = 0
    for t in flat_outputs(out):
        s = t.untyped_storage()
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
