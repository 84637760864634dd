"""The optimizer's step run a slice of its parameters at a time ([Note: a sliced optimizer step]).

[Note: a sliced optimizer step]
The step over parked state ([Note: a step over parked state] in
engine/parkstep.py) copies an entry in for every operator that reads it.
A fused step has one operator, but torch's foreach step (CUDA's default
AdamW) and its one-tensor step run one operator per term of the update,
and read each moment two or three times: they copied two to three times
the parked bytes in (docs/BENCHMARKS.md, sessions 27 and 28), and a
foreach step's temporaries, the size of all the parameters, raised the
floor the step needs.

torch's own optimizers whose update of a parameter reads only that
parameter, its gradient and its state (``SLICEABLE``: Adam, AdamW, SGD,
RMSprop, ...) can instead run their step over a few parameters at a time,
with the same bits: a foreach operator computes each list element on its
own, and a one-tensor step is a loop over the parameters. So the pre-hook
runs the optimizer's own step function (the one under torch's hook
wrapper) once per slice of each group's parameters, with the slice's
parked entries swapped for device copies in the state dict and the other
parameters out of the groups; after each slice the entries are copied
back into their host buffers and swapped back. Then every group's
parameter list is emptied for the step the program called, which runs
over nothing, and the post-hook puts the lists back. Each parked entry is
copied in once and back once; the step's temporaries are one slice's.

On CUDA the slices are pipelined as the parked step's are: copies in on
one side stream, copies back on another, ``pipeline_schedule`` deciding
the order, so at most the cap's bytes of parked state are on the device.

It is used only where it cannot change what the program sees: no closure
(it must run before the update), no differentiable or fused group (a fused
step is one operator already), no pre-hook of the optimizer's own, and no
global one registered after the session's (either would run after the
update it should precede; the session's own later hook, which names and
classes pages, may). Otherwise the step runs under ParkedStep.
"""

from __future__ import annotations

import torch
import torch.optim.optimizer as optimizer_hooks

from .intercept.chunking import slice_bounds
from .parkstep import copy_back, fill, pipeline_schedule

SLICEABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad,
             torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam, torch.optim.Adadelta)


def sliceable(optimizer, args, kwargs, hook_id: int) -> bool:
    """Whether this step may run sliced (see the Note); ``hook_id``: the session's global pre-hook."""
    if type(optimizer) not in SLICEABLE or len(args) > 1 or kwargs.get("closure") is not None:
        return False
    if optimizer._optimizer_step_pre_hooks:
        return False
    hooks = optimizer_hooks._global_optimizer_pre_hooks
    keys = list(hooks)
    if hook_id not in keys:
        return False
    if any(not getattr(hooks[k], "__module__", "").startswith("deepum.") for k in keys[keys.index(hook_id) + 1:]):
        return False  # (the session's own later hooks only name and class pages)
    step = getattr(type(optimizer).step, "__wrapped__", None)
    return step is not None and not any(g.get("fused") or g.get("differentiable") for g in optimizer.param_groups)


class SlicedStep:
    """One optimizer step run a slice of parameters at a time over parked state (the Note)."""

    def __init__(self, device: torch.device, parked: dict[int, torch.Tensor], cap: int, pipeline: int) -> None:
        self.device = device
        self.parked = parked  # id(host buffer) -> the buffer
        self.cuda = device.type == "cuda"
        self.cap = max(1, cap // max(pipeline, 3) if self.cuda else cap)
        self.pipeline = pipeline
        self.streams = (torch.cuda.Stream(device), torch.cuda.Stream(device)) if self.cuda else None
        self.last = None  # the last copies back (the post-hook waits for them)
        self.runs = 0  # slices stepped
        self.moved = [0, 0]  # bytes copied in, copied back

    def run(self, optimizer, kwargs) -> list:
        """Step every parameter, a slice at a time; returns the groups' parameter lists, which are
        left empty for the program's own call of the step (the caller puts them back after it)."""
        step = type(optimizer).step.__wrapped__
        groups = optimizer.param_groups
        saved = [g["params"] for g in groups]
        try:
            for g in groups:
                g["params"] = []
            for g, params in zip(groups, saved):
                units = [self._entries(optimizer.state.get(p)) for p in params]
                # A parameter weighs its parked bytes, or its own where more:
                # a foreach step's temporaries are a list the size of the
                # slice's parameters, and a run of parameters with nothing
                # parked would otherwise be one slice whose temporaries pass
                # the step's floor (Parking.step_floor counts one slice's).
                bounds = slice_bounds([max(sum(h.nbytes for _, _, h in u), p.nbytes) for u, p in zip(units, params)],
                                      self.cap)
                self._group(step, optimizer, g, params, units, bounds, kwargs)
                g["params"] = []
        except BaseException:
            for g, params in zip(groups, saved):
                g["params"] = params
            raise
        return saved

    def _entries(self, state) -> list[tuple[dict, object, torch.Tensor]]:
        if not state:
            return []
        return [(state, k, v) for k, v in state.items() if isinstance(v, torch.Tensor) and id(v) in self.parked]

    def _group(self, step, optimizer, group, params, units, bounds, kwargs) -> None:
        ins, outs = self.streams if self.cuda else (None, None)
        main = torch.cuda.current_stream(self.device) if self.cuda else None
        if self.cuda:
            ins.wait_stream(outs)  # an earlier group's copies back into buffers this one reads
        # On the cpu tier the copies are done when called: one slice at a time.
        order = (pipeline_schedule(len(bounds), self.pipeline) if self.cuda else
                 ((action, j) for j in range(len(bounds)) for action in ("in", "run", "free")))
        staged: dict[int, _Slice] = {}
        for action, j in order:
            a, b = bounds[j]
            if action == "in":
                staged[j] = self._bring([e for u in units[a:b] for e in u], ins)
            elif action == "run":
                sl = staged[j]
                if sl.ready is not None:
                    main.wait_event(sl.ready)
                for (state, key, _), dev in zip(sl.entries, sl.devs):
                    state[key] = dev
                group["params"] = params[a:b]
                try:
                    step(optimizer, **kwargs)
                finally:  # (a step that raised keeps what it wrote, in the host buffers)
                    group["params"] = []
                    self._back(sl, outs)
                self.runs += 1
            elif (sl := staged.pop(j)).done is not None:
                sl.done.synchronize()
        for sl in staged.values():  # the group's last slices: their memory free for the next group's
            if sl.done is not None:
                sl.done.synchronize()
        if self.cuda:
            self.last = outs.record_event()

    def _bring(self, entries, stream) -> _Slice:
        """Device copies of the slice's parked entries (on ``stream``), one copy call for all."""
        sl = _Slice(entries)
        hosts = [h for _, _, h in entries]
        # Made under the modes below (a paging session's: pages, room made for them).
        sl.devs = [torch.empty(h.shape, dtype=h.dtype, device=self.device) for h in hosts]
        sl.ready = fill(sl.devs, hosts, self.device, stream)
        self.moved[0] += sum(h.nbytes for h in hosts)
        return sl

    def _back(self, sl: _Slice, stream) -> None:
        """The slice's entries copied back into their host buffers (on ``stream``) and swapped back."""
        hosts = [h for _, _, h in sl.entries]
        if hosts:
            sl.done = copy_back(hosts, sl.devs, self.device, stream)
        for state, key, host in sl.entries:
            state[key] = host
        self.moved[1] += sum(h.nbytes for h in hosts)
        sl.devs = []


class _Slice:
    __slots__ = ("entries", "devs", "ready", "done")

    def __init__(self, entries) -> None:
        self.entries = entries  # (state dict, key, host buffer)
        self.devs: list[torch.Tensor] = []
        self.ready = None
        self.done = None
