"""Page kinds (parameter, gradient, optimizer state, activation) learned from hooks, for the
stats and the memory picture."""

from __future__ import annotations

import sys
import weakref

import torch
import torch.optim.optimizer as optimizer_hooks

from ..core.pages import Kind
from ..engine.intercept.mode import PagingMode
from ..engine.pager import Pager
from ..engine.watch import Watch


def install_kind_hooks(pager: Pager, mode: PagingMode, track_kinds: bool, watch: Watch | None = None) -> list:
    """Learn what pages hold: saved for backward, or a parameter's gradient and state.

    ``watch`` (engine/watch.py), if any, says whether the session intercepts
    now (a dormant one skips the optimizer hooks' look-ups, a few microseconds
    per tensor each step) and which state entries it parks. Returns the hooks.
    """
    parking = watch.parking if watch is not None else None

    def paging() -> bool:
        return watch is None or watch.paging


    def page_of(t):
        if not isinstance(t, torch.Tensor):
            return None
        return mode.page_of(t)  # (through TensorBase: never host access's wrappers)

    def pack(t):
        page = page_of(t)
        if page is not None and page.kind == Kind.OTHER:
            with pager.lock:
                pager.set_kind(page, Kind.ACTIVATION)
        return t

    settled = _Settled(pager.config.thresholds)

    def classify(optimizer) -> int:
        """Class the optimizer's tensors' pages; how many changed class."""
        changed = 0
        with pager.lock:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    for t, kind in ((p, Kind.PARAMETER), (p.grad, Kind.GRADIENT)):
                        page = page_of(t)
                        if page is not None and page.kind != kind:
                            pager.set_kind(page, kind)
                            changed += 1
                    for v in optimizer.state.get(p, {}).values():
                        page = page_of(v)
                        if page is not None and page.kind != Kind.OPTIMIZER_STATE:
                            pager.set_kind(page, Kind.OPTIMIZER_STATE)
                            changed += 1
        return changed

    unpageable = [pager.counters.unpageable_pages]

    def before_step(optimizer, args, kwargs):
        if pager.counters.unpageable_pages != unpageable[0]:
            # New memory that cannot be paged out since the last look: optimizer
            # state may be over it ([Note: state over storages that cannot be resized]).
            unpageable[0] = pager.counters.unpageable_pages
            pager.counters.rehomed_states += rehome_state(optimizer, pager.device, parking)
        # Pages born from here to the post-hook (optimizer state made on the
        # first step) are numbered among siblings (intercept/register.py).
        pager.in_optimizer_step = True
        if paging() and settled.due(optimizer):
            settled.note(optimizer, classify(optimizer))

    def after_step(optimizer, args, kwargs):
        pager.in_optimizer_step = False
        pager.counters.optimizer_steps += 1  # the "step" of joules per step
        if not paging():
            return
        if settled.due(optimizer):
            settled.note(optimizer, classify(optimizer))
        settled.stepped(optimizer)
        # The engine's own copies and buffers must not become pages.
        with torch.utils._python_dispatch._disable_current_modes(), pager.lock:
            pager.plans.boundary()  # (and the step's mark on the trace)

    hooks = [optimizer_hooks.register_optimizer_step_pre_hook(before_step),
             optimizer_hooks.register_optimizer_step_post_hook(after_step),
             _parameter_hook(pager, page_of)]
    if track_kinds:
        saved = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        saved.__enter__()
        hooks.append(saved)
    return hooks


# [Note: state over storages that cannot be resized]
# Paging out frees a storage's memory in place, which a storage that cannot
# be resized does not allow: memory loaded by torch.load or safetensors on
# the budgeted device (the cpu tier; on CUDA a load to the device copies),
# made by torch.from_numpy or torch.frombuffer. optimizer.load_state_dict
# keeps the loaded tensors as the state where device and dtype already
# match, so a resumed run's state would sit in the budget for good, and the
# run would pass the budget with no way to make room. The optimizer's state
# dict belongs to the optimizer: before a step, an entry over such a
# storage is replaced by a copy the engine can page, with the same values
# (a load to CUDA leaves the same tensors behind). Only where the state is
# all that holds the tensor and its storage: a copy of what the program
# still holds (the checkpoint's dict, a view) would add its size, and the
# loaded memory would stay all the same.
def rehome_state(optimizer, device: torch.device, parking=None) -> int:
    """Replace the optimizer's state tensors over storages that cannot be resized, held by the
    state alone, by copies; how many. Entries parked on the host (engine/parking.py; on the cpu
    tier, host buffers the same device names) stay."""
    done = 0
    probe = {0: torch.empty(2)}  # a tensor only a dict holds, looked at as the state's are
    for _, t in list(probe.items()):
        alone = _holders(t)
    for state in optimizer.state.values():
        for key, v in list(state.items()):
            if parking is not None and parking.holds(state, key, v):
                continue
            # (Plain strided tensors only: a subclass's or a sparse tensor's storage is not its data.)
            if (type(v) is torch.Tensor and v.layout == torch.strided and v.device == device and v.numel() > 1
                    and not v.requires_grad and not torch._C.TensorBase.untyped_storage(v).resizable()
                    and all(n <= m for n, m in zip(_holders(v), alone))):
                state[key] = v.clone()
                done += 1
    return done


_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _holders(t: torch.Tensor) -> tuple[int, int]:
    """(references to the tensor, to its storage): compared with a probe's, counted the same way."""
    storage = torch._C.TensorBase.untyped_storage(t)
    return sys.getrefcount(t), _use_count(storage._cdata) if _use_count is not None else 0


class _Rounds:
    """One optimizer's look-up rounds: steps in a row whose rounds changed nothing, steps,
    state entries at the last step, classes changed in this step's rounds."""

    __slots__ = ("quiet", "steps", "states", "changed")

    def __init__(self) -> None:
        self.quiet = self.steps = self.changed = 0
        self.states = -1


class _Settled:
    """When the optimizer hooks class pages again (Thresholds.kinds_settle, kinds_every)."""

    def __init__(self, th) -> None:
        self.settle, self.every = th.kinds_settle, th.kinds_every
        self.rounds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def _of(self, optimizer) -> _Rounds:
        try:
            r = self.rounds.get(optimizer)
            if r is None:
                r = self.rounds[optimizer] = _Rounds()
        except TypeError:  # an optimizer without weak references: always look
            return _Rounds()
        return r

    def due(self, optimizer) -> bool:
        r = self._of(optimizer)
        return (r.quiet < self.settle or r.changed > 0 or r.steps % self.every == 0
                or len(optimizer.state) != r.states)

    def note(self, optimizer, changed: int) -> None:
        self._of(optimizer).changed += changed

    def stepped(self, optimizer) -> None:
        r = self._of(optimizer)
        r.quiet = 0 if r.changed else r.quiet + 1
        r.steps += 1
        r.states = len(optimizer.state)
        r.changed = 0


def _parameter_hook(pager: Pager, page_of):
    """Class a parameter as one when a module registers it, not only from the first optimizer step."""
    def on_parameter(module, name, param):
        page = page_of(param)
        if page is not None:
            with pager.lock:
                pager.set_kind(page, Kind.PARAMETER)
    return torch.nn.modules.module.register_module_parameter_registration_hook(on_parameter)


def remove_kind_hooks(hooks: list) -> None:
    for hook in reversed(hooks):
        if hasattr(hook, "remove"):
            hook.remove()
        else:
            hook.__exit__(None, None, None)
