"""A region's inputs on the host between its call and its recompute (``Thresholds.region_inputs="host"``).

[Note: a region's inputs on the host]
A region (engine/regions.py) keeps its call's tensor arguments for its
recompute: on a transformer, the residual stream entering each layer, kept
from the forward through the forward's peak to the backward. With
``Thresholds.region_inputs="host"`` they wait on the host instead.
PyTorch's non-reentrant checkpointing saves a region's arguments through
autograd (``_NoopSaveInputs``) before it pushes its own saved-tensor
hooks, so a pair of hooks pushed before the region starts, and popped
after its checkpoint ends, sees exactly those saves:

- pack: a contiguous argument of at least ``region_inputs_min`` bytes is
  copied into a host buffer and autograd keeps the handle; the program's
  last reference to the argument then frees its memory, as it would have
  without a region. On CUDA the buffer is pinned and the copy runs on a side
  stream that waits for the program's stream; the program's stream waits
  for the copy when the region's call ends, so a later write to the
  argument cannot race it. On the cpu tier the buffer is an anonymous
  memory map outside the counting allocator, as parking's are, and the copy
  is made at once. The copy runs below a paging session's modes with the
  argument's page held resident (the buffer must not become a page).
- unpack (the recompute): a new device tensor with the buffer's values,
  made through ``device_copy`` (under a paging session, a page with room
  made for it). While the session is not intercepting, on CUDA, the input
  packed before it is copied in on the side stream at the same time, one
  region ahead of its recompute.
- A buffer goes back to the pool when autograd drops its handle (the graph
  is freed), not at the unpack: a ``retain_graph`` backward unpacks twice,
  and a second forward before the backward (gradient accumulation over one
  graph) must not write over the first's buffers.

The bytes are the argument's, copied when the region started: the recompute
sees what the forward saw. Arguments that are small, strided or on another
device stay where they are, handed to the hooks that were there before.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import _disable_current_modes

from .intercept.host_access import resident
from .parking import host_bytes
from .parkstep import device_copy

_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)


class _Held:
    """One argument on the host: its buffer, and its copy back when one is under way."""

    __slots__ = ("host", "requires_grad", "seq", "index", "fetched", "ready", "__weakref__")

    def __init__(self, host: torch.Tensor, requires_grad: bool, seq: list, index: int) -> None:
        self.host = host
        self.requires_grad = requires_grad
        self.seq = seq  # the handles of the root call that packed it, in order (weak)
        self.index = index
        self.fetched: torch.Tensor | None = None  # copied in ahead of its unpack
        self.ready = None  # that copy's event


class InputsOnHost:
    """One session's region inputs on the host: the hooks, the buffers, the copies in flight."""

    def __init__(self, device: torch.device, min_bytes: int, intercepting: Callable[[], bool], counters) -> None:
        self.device = device
        self.counters = counters
        self.cuda = device.type == "cuda"
        self.min_bytes = max(int(min_bytes), 1)
        self.intercepting = intercepting
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.pool: dict[int, list[torch.Tensor]] = {}  # bytes -> free raw buffers
        self.seq: list[weakref.ref] = []  # this root call's handles
        self.pending = None  # the open region's copies out (CUDA event)
        self.outer = None  # the hooks ours cover while a region starts

    def wants(self, t) -> bool:
        """Whether an argument goes to the host (the others stay and count as the region's)."""
        return (isinstance(t, torch.Tensor) and t.device == self.device and t.layout == torch.strided
                and t.nbytes >= self.min_bytes and t.is_contiguous() and not t.is_nested)

    def root_call(self) -> None:
        self.seq = []

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        """The pair to push before a region's checkpoint starts (pop it after the checkpoint ends)."""
        top = _top_hooks(False) if _top_hooks is not None else None
        self.outer = top if top is not None and top[0] is not None else None
        return torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def region_done(self) -> None:
        """The region's call ended: the program's stream waits for its copies out."""
        if self.pending is not None:
            torch.cuda.current_stream(self.device).wait_event(self.pending)
            self.pending = None

    def _pack(self, t: torch.Tensor):
        if not self.wants(t):
            return t if self.outer is None else (_Kept(self.outer[0](t), self.outer[1]))
        with resident(t), _disable_current_modes():
            raw, host = self._buffer(t)
            if self.cuda:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.stream):
                    host.copy_(t, non_blocking=True)
                t.record_stream(self.stream)
                self.pending = self.stream.record_event()
            else:
                host.copy_(t)
        self.counters.region_input_bytes += t.nbytes
        held = _Held(host, t.requires_grad, self.seq, len(self.seq))
        self.seq.append(weakref.ref(held))
        weakref.finalize(held, self._release, raw)
        return held

    def _unpack(self, packed):
        if isinstance(packed, _Kept):
            return packed.unpack(packed.packed)
        if not isinstance(packed, _Held):
            return packed
        dev, packed.fetched = packed.fetched, None
        if dev is not None:
            torch.cuda.current_stream(self.device).wait_event(packed.ready)
        else:
            dev = device_copy(packed.host, self.device)
        if self.cuda and packed.index > 0 and not self.intercepting():
            self._fetch(packed.seq[packed.index - 1]())
        return dev.requires_grad_(packed.requires_grad)

    def _fetch(self, held: _Held | None) -> None:
        """Copy an input in on the side stream ahead of its recompute."""
        if held is None or held.fetched is not None:
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        held.fetched = device_copy(held.host, self.device, stream=self.stream)
        # Its block is the program's stream's: not reused before the copy ends,
        # should the handle die unused.
        held.fetched.record_stream(self.stream)
        held.ready = self.stream.record_event()

    def _buffer(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(raw bytes, the same as ``like``'s dtype and shape): from the pool, else new."""
        free = self.pool.get(like.nbytes)
        raw = free.pop() if free else host_bytes(like.nbytes, self.cuda)
        return raw, raw.view(like.dtype).view(like.shape)

    def _release(self, raw: torch.Tensor) -> None:
        self.pool.setdefault(raw.numel(), []).append(raw)

    def close(self) -> None:
        self.pool = {}
        self.seq = []


class _Kept:
    """An argument left where it is, packed by the hooks ours covered."""

    __slots__ = ("packed", "unpack")

    def __init__(self, packed, unpack) -> None:
        self.packed = packed
        self.unpack = unpack
