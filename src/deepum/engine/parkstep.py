"""The optimizer's step over parked state, a slice at a time ([Note: a step over parked state]).

[Note: a step over parked state]
Bringing every parked entry back before the step (engine/parking.py) makes
the step hold every parameter, gradient and state tensor at once, and a
model whose state is most of the budget cannot stop paging for that step
alone. So parked entries stay host buffers in ``optimizer.state`` through
the step, and a dispatch mode, pushed for the step only (the optimizer's
pre-hook to its post-hook), runs each operator that reads one:

- its host arguments are copied to new device tensors, the operator runs on
  those, and the arguments it writes (its schema says which) are copied
  back into their host buffers; the device copies are then let go;
- a foreach or fused operator (AdamW's ``_fused_adamw_``, the ``_foreach``
  operators of a foreach step) runs in slices of its lists, each slice
  holding at most ``Thresholds.park_slice`` of the limit of parked bytes:
  these operators compute each list element on its own, so slices give the
  bits of one call (as engine/intercept/chunking.py splits them under a
  paging session);
- an in-place operator returns the host tensor it wrote, as it would have;
  an operator that returns a view of a parked entry raises
  UnsupportedError (writes through the view could not reach the buffer).

Copies of an operator run in slices are pipelined on CUDA when no paging
mode is below this one: the next slice is copied in on one side stream
while the operator runs the current one on the step's stream, and the
slice before is copied back on another, so the two directions of the link
run at once and beside the kernels. Each slice is then
``1/Thresholds.park_pipeline`` of the cap (at least three of them): up to
all but two of them are copied in ahead of the one running, and the host
waits for the older of two slices copying back before it copies in the
next, so at most ``park_pipeline`` slices are on the device, never more
than the cap the step's floor counts (core/regions.py). Each slice's copies
in, and its copies back, are one call each: a copy per tensor from Python
costs the host more than the link takes to move it. Elsewhere (the cpu tier, a
paging session, an operator of one slice) the copies run on the step's
stream in order. The post-hook waits for the last copy back, so the
buffers hold the step's values when the step returns (a program may save
or print the state next). Operators that read no parked entry pass
straight through. Under a paging session the device copies are made below
this mode and above the paging mode: they are pages, and room is made for
them like for any operator's output.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes

from ..errors import UnsupportedError
from .intercept.chunking import concat_results, slice_bounds
from .intercept.host_access import resident, written


def _writes(func) -> frozenset[int]:
    """Positions of the schema's arguments the operator writes."""
    return frozenset(i for i, a in enumerate(func._schema.arguments)
                     if a.alias_info is not None and a.alias_info.is_write)


class ParkedStep(TorchDispatchMode):
    """Runs the optimizer's operators that read parked host buffers, as the Note says."""

    def __init__(self, device: torch.device, parked: dict[int, torch.Tensor], cap: int, pipeline: int = 3) -> None:
        super().__init__()
        self.device = device
        self.parked = parked  # id(host buffer) -> the buffer
        self.cap = max(1, cap)  # parked bytes a slice holds at most
        self.pipeline = max(pipeline, 3)  # pipelined slices a cap is cut into (see _pipelined)
        self.writes: dict[object, frozenset[int]] = {}
        self.runs = 0  # operators (or slices of one) run over parked arguments
        self.cuda = device.type == "cuda"
        self.streams = None  # (copies in, copies back), made at the first pipelined operator
        self.last = None  # the last pipelined copies back (the post-hook waits for them)
        self.trailing: list[_Slice] = []  # the last operator's slices still copying back (see pipeline_schedule)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        parked = self.parked
        if not any(id(a) in parked or (isinstance(a, (list, tuple)) and any(id(x) in parked for x in a))
                   for a in (*args, *kwargs.values())):
            return func(*args, **kwargs)
        writes = self.writes.get(func)
        if writes is None:
            writes = self.writes[func] = _writes(func)
            if any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns):
                # A view of a device copy would be let go with it, and what is
                # written through it would never reach the host buffer.
                raise UnsupportedError(
                    f"{func}: the optimizer's step takes a view of its parked state, which deepum cannot "
                    "follow; give the session recompute_blocks=False to keep the optimizer's state on the device")
        names = [a.name for a in func._schema.arguments]
        bound = list(args) + [kwargs.get(n) for n in names[len(args):]]
        lists = [i for i, v in enumerate(bound) if isinstance(v, (list, tuple))
                 and any(isinstance(x, torch.Tensor) for x in v)]
        sliced = bool(lists) and func.__name__.startswith(("_foreach_", "_fused_"))
        if sliced:
            # Element j of each list goes together, scalar lists too.
            length = len(bound[lists[0]])
            lists = [i for i, v in enumerate(bound) if isinstance(v, (list, tuple)) and len(v) == length]
        if sliced and self.cuda and torch._C._len_torch_dispatch_stack() == 0:
            results = self._pipelined(func, names, bound, len(args), writes, lists)
        else:
            if self.streams is not None:
                torch.cuda.current_stream(self.device).wait_stream(self.streams[1])  # (as in _pipelined)
                for sl in self.trailing:  # their memory free before this operator's slices take more
                    if sl.done is not None:
                        sl.done.synchronize()
                self.trailing = []
            bounds = self._slices(bound, lists, self.cap) if sliced else [(0, None)]  # (None: every list whole)
            results = [self._run(func, self._bring(bound, writes, lists, a, b), names, len(args))
                       for a, b in bounds]
        return results[0] if len(results) == 1 else concat_results(results)

    def _slices(self, bound: list, lists: list[int], cap: int) -> list[tuple[int, int]]:
        """List bounds [a, b) holding at most ``cap`` parked bytes each."""
        length = len(bound[lists[0]])
        cost = [sum(bound[i][j].nbytes for i in lists if id(bound[i][j]) in self.parked) for j in range(length)]
        return slice_bounds(cost, cap)

    def _bring(self, bound, writes, lists, a, b, stream=None) -> _Slice:
        """The slice's call arguments, its parked ones copied to the device (on ``stream``)."""
        sl = _Slice()
        hosts, devs = [], []

        def bring(x, written_arg):
            if not isinstance(x, torch.Tensor) or id(x) not in self.parked:
                return x
            # Made under the modes below this one (a paging session's: a page, room made for it).
            dev = torch.empty(x.shape, dtype=x.dtype, device=self.device)
            hosts.append(x)
            devs.append(dev)
            sl.swap[id(dev)] = x
            if written_arg:
                sl.back.append((x, dev))
            return dev

        for i, v in enumerate(bound):
            sl.call.append([bring(x, i in writes) for x in v[a:b]] if i in lists else bring(v, i in writes))
        sl.ready = fill(devs, hosts, self.device, stream)
        return sl

    def _run(self, func, sl: _Slice, names, npos: int, out_stream=None):
        """One slice: the operator, then its written arguments copied back (on ``out_stream``)."""
        self.runs += 1
        call = sl.call
        out = func(*call[:npos], **{n: v for n, v in zip(names[npos:], call[npos:]) if v is not None})
        if sl.back:
            sl.done = copy_back([h for h, _ in sl.back], [d for _, d in sl.back], self.device, out_stream)
        if isinstance(out, torch.Tensor):
            return sl.swap.get(id(out), out)
        return out

    def _pipelined(self, func, names, bound, npos, writes, lists) -> list:
        """The slices with their copies overlapped (the Note): in on one stream, back on another."""
        if self.streams is None:
            self.streams = (torch.cuda.Stream(self.device), torch.cuda.Stream(self.device))
        ins, outs = self.streams
        main = torch.cuda.current_stream(self.device)
        bounds = self._slices(bound, lists, max(1, self.cap // self.pipeline))
        ins.wait_stream(outs)  # an earlier operator's copies back into the buffers this one reads
        staged: dict[int, _Slice] = {}
        carried, self.trailing = self.trailing, []  # an earlier operator's slices still copying back
        results = []
        for action, j in pipeline_schedule(len(bounds), self.pipeline, len(carried)):
            if action == "in":
                staged[j] = self._bring(bound, writes, lists, *bounds[j], stream=ins)
            elif action == "run":
                sl = staged[j]
                main.wait_event(sl.ready)
                results.append(self._run(func, sl, names, npos, out_stream=outs))
            else:  # "free": the slice's copies back are done, its memory free for the next one
                sl = carried.pop(0) if j < 0 else staged.pop(j)
                if sl.done is not None:
                    sl.done.synchronize()
        self.trailing = carried + [staged[j] for j in sorted(staged)]
        self.last = outs.record_event()
        return results


def pipeline_schedule(n: int, pipeline: int, carried: int = 0) -> Iterator[tuple[str, int]]:
    """One pipelined operator's order over its ``n`` slices.

    ("in", j) copies slice j in; ("run", j) runs the operator on it and starts
    its copies back; ("free", j) waits for those, and the slice's memory is
    free again. ``carried`` slices of an earlier operator may still be
    copying back (indices -carried..-1, oldest first); the last two of this
    one's are left so to the next. All but two of ``pipeline`` slices are
    copied in ahead of the one running, and a slice is copied in only once
    the older of two copying back is done: at most ``pipeline`` slices hold
    device memory at any point.
    """
    ahead = max(pipeline, 3) - 2
    behind = list(range(-carried, 0))
    while len(behind) > 2:
        yield "free", behind.pop(0)
    yield from (("in", j) for j in range(min(ahead, n)))
    for k in range(n):
        if k + ahead < n:
            if len(behind) >= 2:
                yield "free", behind.pop(0)
            yield "in", k + ahead
        yield "run", k
        behind.append(k)


class _Slice:
    """One slice of a parked operator: its call arguments and the device copies to write back."""

    __slots__ = ("call", "back", "swap", "ready", "done")

    def __init__(self) -> None:
        self.call: list = []
        self.back: list[tuple[torch.Tensor, torch.Tensor]] = []  # (host buffer, device copy)
        self.swap: dict[int, torch.Tensor] = {}  # id(device copy) -> host buffer, for in-place returns
        self.ready = None  # on CUDA, pipelined: the copies in are done
        self.done = None  # ... the copies back are done


def fill(devs: list[torch.Tensor], hosts: list[torch.Tensor], device: torch.device, stream=None):
    """New device tensors ``devs`` given the values of ``hosts``, in one call (a copy each from
    Python costs the host more than the link takes to move it); below every mode, the pages of
    ``devs`` (under a paging session) held and made dirty. ``stream`` (CUDA): the copies run on
    it, after the current stream's work (the blocks come from that stream's pool: their last
    users run first). Returns the copies' event on ``stream``, else None."""
    if stream is not None:
        stream.wait_stream(torch.cuda.current_stream(device))
    with written(*devs), _disable_current_modes():
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if devs:
                torch._foreach_copy_(devs, hosts, non_blocking=device.type == "cuda")
    return stream.record_event() if stream is not None else None


def copy_back(hosts: list[torch.Tensor], devs: list[torch.Tensor], device: torch.device, stream=None):
    """The values of ``devs`` into their host buffers ``hosts``, in one call, below every mode.
    ``stream`` (CUDA): the copies run on it after the current stream's work, and the device
    tensors' blocks are not reused before they are done. Returns their event on ``stream``, else None."""
    with resident(*devs), _disable_current_modes():
        if stream is not None:
            stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            if devs:
                torch._foreach_copy_(hosts, devs, non_blocking=device.type == "cuda")
    if stream is None:
        return None
    for dev in devs:
        dev.record_stream(stream)
    return stream.record_event()


def device_copy(host: torch.Tensor, device: torch.device, non_blocking: bool = True, stream=None) -> torch.Tensor:
    """A new device tensor with a host buffer's values (engine/parking.py's restores too).

    Made under the modes below the caller (a paging session's: a page, room
    made for it) from no tensor (the buffer must not become a page); filled
    below every mode. ``stream`` (CUDA): the copy runs on it; the memory is
    the current stream's, so that stream must have waited for the current
    one (the block's last users) first.
    """
    dev = torch.empty(host.shape, dtype=host.dtype, device=device)
    with written(dev), _disable_current_modes():
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            dev.copy_(host, non_blocking=non_blocking and device.type == "cuda")
    return dev
