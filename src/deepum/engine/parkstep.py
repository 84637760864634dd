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

Copies run on the step's stream; the post-hook waits for the last one, so
the buffers hold the step's values when the step returns (a program may
save or print the state next). Operators that read no parked entry pass
straight through. Under a paging session the device copies are made below
this mode and above the paging mode: they are pages, and room is made for
them like for any operator's output.
"""

from __future__ import annotations

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

    def __init__(self, device: torch.device, parked: dict[int, torch.Tensor], cap: int) -> None:
        super().__init__()
        self.device = device
        self.parked = parked  # id(host buffer) -> the buffer
        self.cap = max(1, cap)  # parked bytes a slice holds at most
        self.writes: dict[object, frozenset[int]] = {}
        self.runs = 0  # operators (or slices of one) run over parked arguments

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
        if lists and func.__name__.startswith(("_foreach_", "_fused_")):
            # Element j of each list goes together, scalar lists too.
            length = len(bound[lists[0]])
            lists = [i for i, v in enumerate(bound) if isinstance(v, (list, tuple)) and len(v) == length]
            bounds = self._slices(bound, lists)
        else:
            bounds = [(0, None)]  # one call (a cat of parked tensors, say): every list whole
        results = [self._run(func, names, bound, len(args), writes, lists, a, b) for a, b in bounds]
        return results[0] if len(results) == 1 else concat_results(results)

    def _slices(self, bound: list, lists: list[int]) -> list[tuple[int, int]]:
        """List bounds [a, b) holding at most ``cap`` parked bytes each."""
        length = len(bound[lists[0]])
        cost = [sum(bound[i][j].nbytes for i in lists if id(bound[i][j]) in self.parked) for j in range(length)]
        return slice_bounds(cost, self.cap)

    def _run(self, func, names, bound, npos, writes, lists, a, b):
        """One slice: parked arguments in, the operator, written ones back."""
        self.runs += 1
        back: list[tuple[torch.Tensor, torch.Tensor]] = []  # (host buffer, device copy) to write back
        swap: dict[int, torch.Tensor] = {}  # id(device copy) -> host buffer, for in-place returns

        def bring(x, written_arg):
            if not isinstance(x, torch.Tensor) or id(x) not in self.parked:
                return x
            dev = device_copy(x, self.device)
            swap[id(dev)] = x
            if written_arg:
                back.append((x, dev))
            return dev

        call = []
        for i, v in enumerate(bound):
            if i in lists:
                v = [bring(x, i in writes) for x in v[a:b]]
            else:
                v = bring(v, i in writes)
            call.append(v)
        out = func(*call[:npos], **{n: v for n, v in zip(names[npos:], call[npos:]) if v is not None})
        if back:
            devs = [d for _, d in back]
            with resident(*devs), _disable_current_modes():
                for host, dev in back:
                    host.copy_(dev, non_blocking=self.device.type == "cuda")
        if isinstance(out, torch.Tensor):
            return swap.get(id(out), out)
        return out


def device_copy(host: torch.Tensor, device: torch.device, non_blocking: bool = True) -> torch.Tensor:
    """A new device tensor with a host buffer's values (engine/parking.py's restores too).

    Made under the modes below the caller (a paging session's: a page, room
    made for it) from no tensor (the buffer must not become a page); filled
    below every mode.
    """
    dev = torch.empty(host.shape, dtype=host.dtype, device=device)
    with written(dev), _disable_current_modes():
        dev.copy_(host, non_blocking=non_blocking and device.type == "cuda")
    return dev
