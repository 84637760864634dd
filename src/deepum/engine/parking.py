"""Parking: optimizer state on the host between optimizer steps (executes core/regions.py's ``park``).

[Note: a parked state entry]
A parked entry is one tensor of ``optimizer.state[param]`` (AdamW's
``exp_avg``, for instance) whose place in that dict holds a host tensor
between two optimizer steps. The engine swaps the dict's value, never the
tensor's storage, so whatever the program does with the optimizer between
steps (``state_dict()``, ``torch.save``, printing, ``.numpy()``) sees a
plain host tensor with the state's values; no operator is intercepted.

- After a step (the optimizer's post-hook) the chosen entries are copied
  into host buffers: on CUDA on a side stream that waits for the step, so
  the program goes on; on the cpu tier at once.
- At the next boundary (the root module's call: the next forward), or at
  any reading once the copy has finished, each entry whose value is still
  the device tensor that was copied, unchanged since (its version), is
  replaced by its host buffer; the device tensor is then freed.
- Before the next step (the optimizer's pre-hook) each entry whose value
  is still its host buffer is replaced by a new device tensor copied from
  it, on the step's stream; an entry the program replaced meanwhile (a
  ``load_state_dict``) is left as the program set it.

On CUDA the host buffers are pinned; on the cpu tier they come from an
anonymous memory map, outside the counting allocator, as a host tier
outside the budgeted one would be. The buffers are kept from step to step
while the same entries are parked.
"""

from __future__ import annotations

import mmap
import weakref

import torch
import torch.optim.optimizer as optimizer_hooks
from torch.utils._python_dispatch import _disable_current_modes

from .intercept.host_access import resident
from .parkslice import SLICEABLE, SlicedStep, sliceable
from .parkstep import ParkedStep, device_copy


class _Entry:
    """One parked state entry: where it lives, its host buffer, and the device tensor being copied."""

    __slots__ = ("owner", "state", "key", "host", "device", "version")

    def __init__(self, owner: int, state: dict, key, host: torch.Tensor) -> None:
        self.owner = owner  # id() of the optimizer
        self.state = state
        self.key = key
        self.host = host
        self.device: torch.Tensor | None = None
        self.version = -1


# Through TensorBase: a paging session's host-access wrapper of
# ``untyped_storage`` would fault the page in and pin it.
_storage = torch._C.TensorBase.untyped_storage


def host_bytes(nbytes: int, cuda: bool) -> torch.Tensor:
    """Raw host bytes outside the budgeted tier: pinned on CUDA; on the cpu tier an anonymous
    memory map, outside the counting allocator (engine/inputs_host.py's buffers too)."""
    if cuda:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    return torch.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=torch.uint8)[:nbytes]


def _host_buffer(like: torch.Tensor, cuda: bool) -> torch.Tensor:
    if cuda:
        return torch.empty(like.shape, dtype=like.dtype, pin_memory=True)
    return host_bytes(like.nbytes, cuda).view(like.dtype).view(like.shape)


def _foreach(group: dict) -> bool:
    """Whether a parameter group's step runs torch's foreach implementation (as torch
    chooses it when ``foreach`` is None: on CUDA, unless ``fused``)."""
    if group.get("fused"):
        return False
    foreach = group.get("foreach")
    if foreach is None:
        return bool(group["params"]) and all(p.is_cuda for p in group["params"])
    return bool(foreach)


class Parking:
    """One session's parked optimizer state: the hooks, the chosen entries, the copies in flight."""

    def __init__(self, device: torch.device, counters, slice_bytes: int = 1 << 62, pipeline: int = 3) -> None:
        self.device = device
        self.slice_bytes = slice_bytes  # parked bytes a slice of the step holds at most (engine/parkstep.py)
        self.pipeline = pipeline  # on CUDA, slices of the pipelined step a slice is cut into (engine/parkstep.py)
        self.stepping: ParkedStep | SlicedStep | None = None  # the step under way over parked state
        self.emptied = None  # (optimizer, its groups' parameter lists) while a sliced step has them out
        self.cuda = device.type == "cuda"
        self.counters = counters
        self.goal = 0  # bytes to park
        self.optimizers: weakref.WeakSet = weakref.WeakSet()
        self.entries: dict[tuple[int, object], _Entry] = {}  # (id of the state dict, key) -> entry
        self.pending: list[_Entry] = []  # copied out, not yet swapped
        self.parked: list[_Entry] = []  # their dict holds the host buffer
        self.event = None
        self.stream = torch.cuda.Stream(device) if self.cuda else None
        self.hooks = [optimizer_hooks.register_optimizer_step_pre_hook(self._before),
                      optimizer_hooks.register_optimizer_step_post_hook(self._after)]

    def parkable(self) -> int:
        """Bytes of optimizer state that parking could move (on the device now, or parked)."""
        on_device = sum(t.nbytes for opt in list(self.optimizers) for _, _, t in self._candidates(opt, True))
        return on_device + sum(e.host.nbytes for e in self.parked)

    def step_floor(self) -> int:
        """Bytes an optimizer step holds at least, all of its state parked: the parameters,
        their gradients and one slice of the state ([Note: a step over parked state]),
        and for a foreach step its temporaries, a list the size of the parameters
        (AdamW's square roots of the second moments) where the step runs under
        ParkedStep (the slices' results are kept), one slice's where it runs sliced."""
        floor = min(self.parkable(), self.slice_bytes)
        for opt in list(self.optimizers):
            for g in opt.param_groups:
                params = sum(p.nbytes for p in g["params"])
                grads = sum(p.nbytes for p in g["params"] if p.requires_grad)
                # A sliced step (engine/parkslice.py) makes one slice's temporaries at a time.
                temps = min(params, self.slice_bytes) if type(opt) in SLICEABLE else params
                floor += params + grads + (temps if _foreach(g) else 0)
        return floor

    def _candidates(self, opt, paged_out: bool = False):
        """The optimizer's state tensors that can be parked (``paged_out``: also those a
        paging session holds off the device now, whose storage is empty)."""
        for group in opt.param_groups:
            for p in group["params"]:
                state = opt.state.get(p)
                if not state:
                    continue
                for key, t in state.items():
                    # A tensor that is all of its storage: a view of a flat
                    # buffer would stop sharing it once swapped.
                    if (isinstance(t, torch.Tensor) and t.device == self.device and t.numel() > 1
                            and not t.is_complex()  # a complex step views its state as real
                            and not t.requires_grad and t.is_contiguous() and t.storage_offset() == 0
                            and _storage(t).nbytes() in (t.nbytes, 0 if paged_out else t.nbytes)
                            and not self.holds(state, key, t)):
                        yield state, key, t

    def holds(self, state: dict, key, t: torch.Tensor) -> bool:
        """Whether ``t`` is a parked entry's buffer (on the cpu tier it is on the device too)."""
        e = self.entries.get((id(state), key))
        return e is not None and e.host is t

    def set_goal(self, nbytes: int) -> bool:
        """Park ``nbytes`` of state from the next step on (0: none; what is parked comes back at the next step).

        Returns whether the goal changed.
        """
        if nbytes == self.goal:
            return False
        self.goal = nbytes
        self.entries = {e2: e for e2, e in self.entries.items() if e in self.parked or e in self.pending}
        return True

    def _after(self, optimizer, args, kwargs) -> None:
        self._end_step()
        self.optimizers.add(optimizer)
        # Entries parked already (this optimizer's stayed parked through its step) count toward the goal.
        total = sum(e.host.nbytes for e in self.parked + self.pending)
        chosen = []
        for state, key, t in self._candidates(optimizer):
            if total >= self.goal:
                break
            entry = self.entries.get((id(state), key))
            if entry is None or entry.state is not state or entry.host.shape != t.shape or entry.host.dtype != t.dtype:
                entry = self.entries[(id(state), key)] = _Entry(id(optimizer), state, key,
                                                                  _host_buffer(t, self.cuda))
            entry.device, entry.version = t, t._version
            chosen.append(entry)
            total += t.nbytes
        if not chosen:
            return
        # The copies are the engine's, below a paging session's mode (the
        # host buffers must not become pages), with the state's pages held
        # resident while they run.
        with resident(*[e.device for e in chosen]), _disable_current_modes():
            if self.cuda:
                self.stream.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(self.stream):
                    for e in chosen:
                        e.host.copy_(e.device, non_blocking=True)
                    self.event = self.stream.record_event()
            else:
                for e in chosen:
                    e.host.copy_(e.device)
        self.pending += chosen
        self.counters.parked_bytes += sum(e.host.nbytes for e in chosen)
        if not self.cuda:
            self.swap()

    def ready(self) -> bool:
        return bool(self.pending) and (self.event is None or self.event.query())

    def swap(self, wait: bool = False) -> None:
        """Put the host buffers in the state dicts (``wait``: for the copies out to finish first)."""
        if not self.pending:
            return
        if self.event is not None:
            if not wait and not self.event.query():
                return
            self.event.synchronize()
        for e in self.pending:
            if e.state.get(e.key) is e.device and e.device._version == e.version:
                e.state[e.key] = e.host
                self.parked.append(e)
            e.device = None
        self.pending = []

    def _before(self, optimizer, args, kwargs) -> None:
        if self.emptied is not None:
            self._end_step()  # a sliced step whose post-hook never came (the program's call raised)
        # This optimizer's copies out not yet swapped in never left the device.
        mine = id(optimizer)
        for e in self.pending:
            if e.owner == mine:
                e.device = None
        self.pending = [e for e in self.pending if e.owner != mine]
        # Entries the program replaced meanwhile are no longer parked; past
        # the goal (lowered since), this optimizer's entries come back.
        self.parked = [e for e in self.parked if e.state.get(e.key) is e.host]
        over = sum(e.host.nbytes for e in self.parked) - self.goal
        for e in [e for e in self.parked if e.owner == mine]:
            if over <= 0:
                break
            e.state[e.key] = device_copy(e.host, self.device)
            self.parked.remove(e)
            over -= e.host.nbytes
        staying = {id(e.host): e.host for e in self.parked if e.owner == mine}
        if not staying or self.stepping is not None:
            return
        if sliceable(optimizer, args, kwargs, self.hooks[0].id):
            # The optimizer's own step, a slice of its parameters at a time
            # (engine/parkslice.py); the program's call then steps nothing.
            sliced = SlicedStep(self.device, staying, self.slice_bytes, self.pipeline)
            self.emptied = (optimizer, sliced.run(optimizer, kwargs))
            self.stepping = sliced
            return
        # The step reads them where they are, a slice at a time.
        self.stepping = ParkedStep(self.device, staying, self.slice_bytes, self.pipeline)
        self.stepping.__enter__()

    def _end_step(self) -> None:
        """The step's mode off, its copies back waited for (the program may read the state next)."""
        stepping, self.stepping = self.stepping, None
        if self.emptied is not None:
            optimizer, saved = self.emptied
            self.emptied = None
            for g, params in zip(optimizer.param_groups, saved):
                g["params"] = params
        if stepping is None:
            return
        if isinstance(stepping, ParkedStep):
            stepping.__exit__(None, None, None)
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
            if stepping.last is not None:
                stepping.last.synchronize()  # the pipelined copies back
        self.counters.parked_bytes += sum(h.nbytes for h in stepping.parked.values())

    def restore(self) -> None:
        """Every parked entry back on the device (the session ends)."""
        self._end_step()  # a step that raised never reached its post-hook
        if self.event is not None:
            self.event.synchronize()  # copies out still writing buffers that go with the entries
        for e in self.pending:
            e.device = None
        self.pending = []
        for e in self.parked:
            if e.state.get(e.key) is e.host:
                e.state[e.key] = device_copy(e.host, self.device, non_blocking=False)
        self.parked = []
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        self.restore()
        for h in self.hooks:
            h.remove()
        self.hooks = []
