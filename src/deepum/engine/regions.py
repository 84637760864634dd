"""Regions: module calls recomputed in the backward pass (executes core/regions.py).

[Note: running a region]
The candidates are a model's *blocks*: the members of a ``ModuleList`` or
``Sequential`` that holds at least two modules of one class made of modules
with parameters (a transformer's layers, an encoder's and a decoder's, a
ResNet's bottlenecks), found from the root module down, not inside one
another. A single layer (a Linear) is not a block: checkpointed, it keeps
its input, which is what it saves.

The census is the root's first call. A saved-tensor hook counts what
autograd saves inside each candidate call, less the call's own arguments
(a region keeps them); the call's host seconds are its cost. A call can be
a region when every argument is a tensor or a plain value (numbers,
strings, dtypes, None, tuples of them; a list or dict could change before
the recompute), the call writes none of its argument tensors, gradients
are on, and a second run of the module, as its recompute would run (RNG
states restored, buffers as scratch copies), gives its outputs bit for bit.
That second run is what catches kernels that differ from run to run and a
Hugging Face layer whose outputs depend on its key-value cache. The
forward's peak is measured the same way in each window that chooses: the
program's model state plus what autograd saved (engine/watch.py ``held``).

A chosen region runs under PyTorch's non-reentrant checkpointing, started
and ended by module hooks as torch.distributed's composable ``checkpoint``
does: the forward keeps the call's inputs, the backward runs the module
again with the forward's RNG states and autocast state, and PyTorch checks
that the recomputed tensors have the saved ones' shapes and dtypes. During
the recompute the module's buffers are scratch copies (BatchNorm writes its
running statistics inside the kernel, with no version bump to tell by), so
the step writes them once, as without deepum. A Hugging Face layer
(``GradientCheckpointingLayer``) called with a key-value cache object runs as
a region without it, by keyword or by position, as under Hugging Face's own
checkpointing: a second run would extend the cache a second time.

[Note: autocast's cast cache in a region]
Under autocast, a cast of a parameter (fp32 to bf16 or fp16) is cached until
the outermost autocast context exits, that is past the loss: the cache holds
every layer's cast weights through the forward's peak, whether or not
autograd saved them. Inside a region autograd's saves are dropped, but the
cache would keep the casts alive, so a region would free less than the
census counted (the casts are part of what it saved) and the forward's peak
would carry a copy of the regions' weights in the lower precision. So a
region's forward, and with it its recompute (checkpointing replays the
autocast state it started with), runs with the cast cache off: each use
casts again, the same bits, and the casts die with the region's other
saves. Casts made outside regions are cached as before.

A region at the SELECTIVE level (core/regions.py) runs under PyTorch's
selective checkpointing with the core's ``keeps`` as its policy: the
forward keeps the outputs of matmuls, convolutions and attention, and the
recompute runs every other operator again and takes those from the cache.
The census's second run measures a call's two figures for it, under a
dispatch mode of its own: the bytes those operators write (the cache) and
the share of the call's time the others take (the host's clock on the cpu
device; on the GPU an estimate from FLOPs and bytes, see ``_Split``). In the windows that measure, a region's inputs
and its cache count toward the forward's peak (autograd's hooks do not see
inside a region: checkpointing holds them).

A module whose forward depends on Python state that changes between the
forward and the backward is not safe to recompute, as with any
checkpointing; the census catches argument kinds, writes and outputs that
differ, not such state.
"""

from __future__ import annotations

import contextlib
import enum
import inspect
import time
import weakref
from collections import Counter
from typing import Any

import torch
from torch.utils import checkpoint as _ckpt
from torch.utils._python_dispatch import TorchDispatchMode

from ..core.costs import DEFAULT_LAUNCH_S
from ..core.regions import NONE, SELECTIVE, WHOLE, Census, RegionPlan, keeps
from .inputs_host import InputsOnHost
from .stepplan import StepPlans

_graph_task = torch._C._current_graph_task_id
_top_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Size,
          torch.memory_format, torch.layout, enum.Enum)


def find_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The root's blocks, outermost first (see [Note: running a region])."""
    out: list[torch.nn.Module] = []

    def walk(m: torch.nn.Module, depth: int) -> None:
        if depth > 8:
            return
        kids = list(m.children())
        counts = Counter(type(k) for k in kids if _composite(k))
        if isinstance(m, (torch.nn.ModuleList, torch.nn.Sequential)) and counts:
            cls, n = counts.most_common(1)[0]
            if n >= 2:
                out.extend(k for k in kids if type(k) is cls)
                for k in kids:
                    if type(k) is not cls:
                        walk(k, depth + 1)
                return
        for k in kids:
            walk(k, depth + 1)

    walk(root, 0)
    return out


def _composite(m: torch.nn.Module) -> bool:
    """A module of modules with parameters (a layer, a bottleneck), not a single Linear or activation."""
    return any(True for _ in m.children()) and any(True for _ in m.parameters())


def _leaves(obj: Any, out: list) -> list:
    """The leaves of nested tuples (a list or dict is a leaf: it may change before the recompute)."""
    if isinstance(obj, tuple):
        for o in obj:
            _leaves(o, out)
    else:
        out.append(obj)
    return out


def _outputs(obj: Any) -> list:
    """The leaves of a module's output, through tuples, lists and dicts (model outputs are dicts)."""
    if isinstance(obj, (tuple, list)):
        return [x for o in obj for x in _outputs(o)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _outputs(o)]
    return [obj]


def _is_hf_layer(module: torch.nn.Module) -> bool:
    return hasattr(module, "gradient_checkpointing") and any(
        c.__name__ == "GradientCheckpointingLayer" for c in type(module).__mro__)


# torch.utils.checkpoint's generator takes its options positionally before
# the call's arguments, and their number grew across versions.
_GEN = _ckpt._checkpoint_without_reentrant_generator
_GEN_PARAMS = [p for p in inspect.signature(_GEN).parameters.values() if p.kind is p.POSITIONAL_OR_KEYWORD]


def _start(fn, context_fn, args, kwargs):
    given = {"fn": fn, "preserve_rng_state": True, "context_fn": context_fn, "determinism_check": "default",
             "debug": False}
    head = [given.get(p.name, p.default) for p in _GEN_PARAMS]
    gen = _GEN(*head, *args, **kwargs)
    next(gen)
    return gen


class _Tally:
    """One candidate's census: its calls' saved bytes and seconds, and whether each could be run again."""

    __slots__ = ("order", "saved", "seconds", "safe", "calls", "hf", "why", "kept", "cheap")

    def __init__(self, order: int) -> None:
        self.order = order
        self.saved = 0
        self.seconds = 0.0
        self.safe = True
        self.calls = 0
        self.hf = False  # a Hugging Face layer called with a cache: runs as a region without it
        self.why = ""  # why it is not safe, for the census's report
        self.kept = 0  # bytes of KEEP_OPS outputs (a SELECTIVE region's cache), from the second runs
        self.cheap = 0.0  # seconds of its calls outside KEEP_OPS


class _Recompute:
    """The context of a region's recompute: the module's buffers are scratch copies.

    A forward may write its buffers (BatchNorm's running statistics, written
    inside the kernel without a version bump, so a census could not tell):
    the recompute writes copies, and the step's buffers are written once.
    """

    def __init__(self, regions: Regions, module: torch.nn.Module, count: bool = True) -> None:
        self.regions = regions
        self.module = module
        self.count = count
        self.swapped: list = []

    def __enter__(self) -> None:
        self.regions.recomputing += 1
        if self.count:
            self.regions.counters.region_recomputes += 1
        for m in self.module.modules():
            for name, b in m._buffers.items():
                if b is not None:
                    self.swapped.append((m, name, b))
        for m, name, b in self.swapped:
            m._buffers[name] = b.clone()

    def __exit__(self, *exc) -> None:
        for m, name, b in self.swapped:
            m._buffers[name] = b
        self.swapped = []
        self.regions.recomputing -= 1


class Regions:
    """One session's regions: the census, the plan, and the hooks that run the chosen ones."""

    def __init__(self, pager) -> None:
        th = pager.config.thresholds
        self.pager = pager
        self.counters = pager.counters
        self.target = th.region_target
        self.rounds = th.region_rounds
        self.selective = pager.config.recompute_blocks == "selective"
        self.release = th.region_release
        self.plan = self._new_plan()
        self.census_ids: list[int] = []
        self.blocks: list[weakref.ref] = []
        self.tallies: dict[int, _Tally] = {}
        self.census_hooks: list = []
        self.set_hooks: dict[int, _Checkpointed] = {}  # module id -> its hooks
        self.root_hooks: list = []
        self.stack: list = []  # the candidate calls running now, innermost last
        self.recomputing = 0
        self.saving = None  # the saved-tensor hooks of the root call being measured
        self.outer = None  # the pair of saved-tensor hooks ours replaced, called from ours
        self.seen: set[int] = set()  # storages counted as saved in that call
        self.saved_bytes = 0
        self.start_bytes = 0
        self.forward_peak = 0
        self.retargeted = False
        self.flush_windows = th.flush_windows
        self.unintercepted = _Unintercepted(self.flush_windows)
        # (the window's forward peak, regions changed then); a dormant window's whole peak is negated
        self.history: list[tuple[int, int]] = []
        self.park_goals: list[tuple[int, int]] = []  # (windows in history then, bytes to park) at each change
        self.step_peaks: list[int] = []  # the whole peak demand of each window the plan weighed (0: dormant)
        self.watch = None  # engine/watch.py's Watch, which sets itself here: held(), paging
        self.parking = None  # engine/parking.py's Parking, which the watch sets here
        self.inputs_host = (InputsOnHost(pager.device, th.region_inputs_min, self._intercepting,
                                         self.counters)
                            if th.region_inputs == "host" else None)

    def _new_plan(self) -> RegionPlan:
        pager = self.pager
        plan = RegionPlan(pager.budget, self.target, self.rounds, self.release, pager.stop_bytes)
        plan.park_margin = int(pager.config.thresholds.park_margin * pager.table.limit)
        plan.park_effect = pager.config.thresholds.park_effect
        return plan

    # ------------------------------------------------------------ census

    def attach(self, root: torch.nn.Module) -> None:
        """The watch found the root in its first call's pre-hooks: take a census of its blocks in this call."""
        self.close()
        blocks = find_blocks(root)
        if not blocks:
            return
        self.blocks = [weakref.ref(b) for b in blocks]
        self.tallies = {}
        self.plan = self._new_plan()
        if self.parking is not None:
            self.parking.set_goal(0)  # a new root, a new plan: what is parked comes back at the next step
        self.unintercepted = _Unintercepted(self.flush_windows)
        for b in blocks:
            self.census_hooks.append(b.register_forward_pre_hook(_Fn(self._census_pre), with_kwargs=True))
            self.census_hooks.append(b.register_forward_hook(_Fn(self._census_post), with_kwargs=True,
                                                             always_call=True))
        self.root_hooks = [root.register_forward_pre_hook(_Fn(self._root_pre)),
                           root.register_forward_hook(_Fn(self._root_done), always_call=True)]
        # Called from the root's first call, before its forward runs: this
        # call is the census's (its pre-hook came too late to run for it).
        self._root_pre(root, ())

    def _root_pre(self, module, args) -> None:
        """A measured root call begins: what the program holds now, and a hook on what autograd saves."""
        watch = self.watch
        if self.inputs_host is not None and _graph_task() == -1 and not self.recomputing:
            self.inputs_host.root_call()
        if _graph_task() != -1 or self.recomputing or self.saving is not None or watch is None or not watch.paging:
            return  # a dormant step is not measured: it pays nothing
        if not self.root_hooks:
            # Removed by this very call's boundary (the call had gathered its
            # hooks before): its forward hook would not run to pop ours.
            return
        self.start_bytes = watch.held()
        self.seen = set()
        self.saved_bytes = 0
        # Hooks nest by replacing: the innermost pair alone runs. So a pair
        # already there (the session's kinds hook, the program's own) is
        # called from ours, and sees every saved tensor as before.
        top = _top_hooks(False) if _top_hooks is not None else None
        self.outer = top if top is not None and top[0] is not None else None
        self.saving = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self.saving.__enter__()

    def _pack(self, t: torch.Tensor):
        self._count(t)
        return t if self.outer is None else self.outer[0](t)

    def _unpack(self, packed):
        return packed if self.outer is None else self.outer[1](packed)

    def _count(self, t: torch.Tensor) -> None:
        # What autograd keeps for the backward: the forward's live bytes
        # beyond what the program held as the call began (parameters are
        # leaves, held anyway; a storage saved twice counts once).
        key, nbytes = self.count_held(t, leaves=False)
        if key and self.stack:
            call = self.stack[-1]
            if key not in call[2]:
                call[1].saved += nbytes

    def count_held(self, t: torch.Tensor, leaves: bool) -> tuple[int, int]:
        """Count ``t``'s storage once toward the measured forward: its key and bytes, or (0, 0).

        ``leaves``: count a leaf too (a selective region's cache holds
        detached outputs; other leaves are parameters, held anyway). A
        storage paged out already counts its page's bytes: the measure is
        of what the step would hold unpaged.
        """
        if self.recomputing or (t.is_leaf and not leaves) or t.is_meta or t.layout != torch.strided:
            return 0, 0
        s = t.untyped_storage()
        key = s._cdata
        if key in self.seen:
            return 0, 0
        nbytes = s.nbytes()
        if not nbytes:
            page = self.pager.table.pages.get(key)
            nbytes = page.nbytes if page is not None else 0
        self.seen.add(key)
        self.saved_bytes += nbytes
        return key, nbytes

    def _root_done(self, module, args, output) -> None:
        if self.saving is None or _graph_task() != -1:
            return
        self.saving.__exit__(None, None, None)
        self.saving = None
        self.forward_peak = max(self.forward_peak, self.start_bytes + self.saved_bytes)

    def _census_pre(self, module, args, kwargs) -> None:
        if _graph_task() != -1 or self.recomputing:
            return
        tally = self.tallies.get(id(module))
        if tally is None:
            tally = self.tallies[id(module)] = _Tally(len(self.tallies))
        leaves = _leaves((args, *kwargs.values()), [])
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        plain = all(isinstance(x, (torch.Tensor, *_PLAIN)) for x in leaves)
        # A Hugging Face layer's cache keywords are left out of a region's
        # runs; anything else that is not a tensor or a plain value (a cache
        # passed by position) keeps the call out.
        if not plain and _is_hf_layer(module):
            hf_args, hf_kwargs = _hf_call(module, args, kwargs)
            hf_ok = all(isinstance(x, (torch.Tensor, *_PLAIN)) for x in _leaves((hf_args, *hf_kwargs.values()), []))
        else:
            hf_ok = False
        ok = torch.is_grad_enabled() and (plain or hf_ok)
        # The call's own arguments stay saved as a region's inputs: not what it frees.
        inputs = {t.untyped_storage()._cdata for t in tensors if t.layout == torch.strided}
        self.stack.append((module, tally, inputs, time.perf_counter(), [(t, t._version) for t in tensors],
                           ok, plain, _rng_states(tensors)))

    def _census_post(self, module, args, kwargs, output) -> None:
        if not self.stack or self.stack[-1][0] is not module:
            return
        _, tally, _, t0, versions, ok, plain, rng = self.stack.pop()
        seconds = time.perf_counter() - t0
        tally.calls += 1
        tally.seconds += seconds
        tally.hf = tally.hf or not plain
        if not ok:
            tally.why = tally.why or "arguments"
        elif any(t._version != v for t, v in versions):
            tally.why = tally.why or "writes an argument"
        # Run the call again as its recompute would and compare every bit
        # of its outputs: what checkpointing cannot promise (kernels that
        # differ from run to run, a cache dropped that changed a layout) is
        # found here, once, and the module stays out of the regions.
        elif tally.safe and not _same_again(self, module, args, kwargs, output, rng, tally, seconds):
            tally.why = "differs when run again"
        tally.safe = not tally.why

    # ------------------------------------------------------------ each window

    def boundary(self, step_peak: int = 0, short: int = 0) -> bool:
        """The root is called again: close the census, choose regions; True when the watch is to retarget.

        ``step_peak``: the ending window's peak demand, as dormancy reads it (0 when dormant);
        ``short``: bytes it and its allocator's rests passed the allocator's cap by.
        """
        retarget = False
        peak = self.forward_peak
        if self.census_hooks:
            # The census window was the first step: its peak lacks the
            # optimizer's state, so the first choice waits for the next window.
            self._close_census()
        elif peak and not self.plan.done:
            if self.parking is not None:
                self.plan.parkable = self.parking.parkable()
                self.plan.step_floor = self.parking.step_floor()
            added = self.plan.window(peak, step_peak, short)
            self.history.append((peak, len(added)))
            self.step_peaks.append(step_peak)
            parked = self.parking is not None and self.parking.set_goal(self.plan.park)
            if parked:
                self.park_goals.append((len(self.history), self.plan.park))
            if self.plan.dropped:
                for hook in self.set_hooks.values():
                    hook.remove()
                self.set_hooks = {}
                self._count_levels()
            for i, level in added.items():
                self._set(self.census_ids[i], level)
            if added or self.plan.dropped or parked:
                # The step changed: a page plan recorded before would be
                # tried against it and move pages the step no longer needs
                # moved. The page planner starts over (at a root call, as
                # the watch's release starts it over).
                with self.pager.lock:
                    self.pager.plans = StepPlans(self.pager)
            if added and not self.retargeted:
                self.retargeted = retarget = True
        if self.plan.done and not self.plan.chosen:
            # No region: nothing to measure any more. (With regions set, each
            # paging window's forward is measured: whether it now fits.)
            self._remove(self.root_hooks)
        self.forward_peak = 0
        return retarget

    def dormant_window(self, reserved: int, flushes: int) -> None:
        """A window ran unintercepted with regions set (see ``_Unintercepted``)."""
        self.unintercepted.window(self, reserved, flushes)

    def park_goal(self) -> None:
        """Parking follows the plan's ``park`` where the plan changed it outside a window."""
        if self.parking is not None and self.parking.set_goal(self.plan.park):
            self.park_goals.append((len(self.history), self.plan.park))

    def _apply(self, changes: dict[int, int]) -> None:
        """Set the levels a dormant window chose."""
        for i, level in changes.items():
            self._set(self.census_ids[i], level)
        if changes:
            with self.pager.lock:
                self.pager.plans = StepPlans(self.pager)

    def _close_census(self) -> None:
        self._remove(self.census_hooks)
        self.stack = []
        order = sorted(self.tallies.items(), key=lambda kv: kv[1].order)
        self.census_ids = [k for k, _ in order]
        self.plan.take_census([Census(t.saved, t.seconds, t.safe, kept=t.kept if self.selective else -1,
                                      cheap=t.cheap) for _, t in order])

    def report(self) -> list[dict]:
        """The census, one row per candidate in call order (what each frees, costs, and why it is left out)."""
        level = {self.census_ids[i]: lv for i, lv in self.plan.chosen.items()}
        names = {NONE: "", SELECTIVE: "selective", WHOLE: "whole"}
        return [{"order": t.order, "saved_bytes": t.saved, "kept_bytes": t.kept, "seconds": t.seconds,
                 "cheap_seconds": t.cheap, "calls": t.calls, "safe": t.safe, "why": t.why, "hf_cache": t.hf,
                 "chosen": k in level, "level": names[level.get(k, NONE)]}
                for k, t in sorted(self.tallies.items(), key=lambda kv: kv[1].order)]

    def _set(self, module_id: int, level: int) -> None:
        module = next((m for m in (r() for r in self.blocks) if m is not None and id(m) == module_id), None)
        if module is None:
            return
        old = self.set_hooks.pop(module_id, None)
        if old is not None:
            old.remove()  # its level changes between steps, so no call of it is open
        if level != NONE:
            self.set_hooks[module_id] = _Checkpointed(self, module, self.tallies[module_id].hf, level)
        self._count_levels()

    def _count_levels(self) -> None:
        self.counters.regions = len(self.set_hooks)
        self.counters.regions_selective = sum(h.level == SELECTIVE for h in self.set_hooks.values())

    @staticmethod
    def _remove(hooks: list) -> None:
        for h in hooks:
            h.remove()
        hooks.clear()

    def close(self) -> None:
        self._remove(self.census_hooks)
        self._remove(self.root_hooks)
        for s in self.set_hooks.values():
            s.remove()
        self.set_hooks = {}
        if self.saving is not None:
            self.saving.__exit__(None, None, None)
            self.saving = None
        self.stack = []
        if self.inputs_host is not None:
            self.inputs_host.close()

    def _intercepting(self) -> bool:
        return self.watch is not None and self.watch.paging


def _end_start(cache: bool, hooks) -> None:
    """Undo a region's start: the cast cache as it was, and the hooks of its inputs popped
    (after the checkpoint's own, which sat above them)."""
    torch.set_autocast_cache_enabled(cache)
    if hooks is not None:
        hooks.__exit__(None, None, None)


def _cast_cache_off() -> bool:
    """Turn autocast's cast cache off for a region's forward; returns whether it was on."""
    was = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    return was


def _rng_states(tensors) -> tuple:
    cuda = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
    return torch.get_rng_state(), [(d, torch.cuda.get_rng_state(d)) for d in cuda]


_CACHE_NAMES = ("cache", "past_key_values", "past_key_value", "layer_past")


def _hf_call(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """A Hugging Face layer's arguments with its key-value cache left out, as its own checkpointing does.

    A second run of the layer would extend the cache a second time; the
    layer's outputs do not depend on a cache that starts empty, which the
    census's second run checks (it found T5's decoder layers differ: their
    cached keys have another memory layout). The cache may come by keyword
    or by position (GPT-2's blocks take it second).
    """
    kw = dict(kwargs)
    if kw.get("use_cache"):
        kw["use_cache"] = False
    if getattr(module, "_can_checkpoint_with_cache", False):
        return args, kw
    for name in _CACHE_NAMES:
        if kw.get(name) is not None:
            kw[name] = None
    names = _positional_names(type(module))
    args = tuple(None if i < len(names) and names[i] in _CACHE_NAMES else a for i, a in enumerate(args))
    return args, kw


_NAMES: dict[type, list[str]] = {}


def _positional_names(cls: type) -> list[str]:
    names = _NAMES.get(cls)
    if names is None:
        try:
            params = list(inspect.signature(cls.forward).parameters.values())[1:]  # after self
        except (TypeError, ValueError):
            params = []
        names = _NAMES[cls] = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return names


def _same_again(regions: Regions, module, args, kwargs, output, rng, tally: _Tally, seconds: float) -> bool:
    """Whether running ``module`` again, as a region's recompute would, gives ``output`` bit for bit."""
    cpu, cuda = rng
    args, kw = _hf_call(module, args, kwargs) if tally.hf else (args, kwargs)
    # With gradients, as the recompute runs (without them some models take
    # other kernels); but not under the census's saved-tensor hook: with an
    # identity hook a saved output and its node form a cycle that only a
    # backward breaks, and this graph is never run backward.
    saving = regions.saving
    if saving is not None:
        top = _top_hooks(False) if _top_hooks is not None else None
        if top is None or top[0] != regions._pack:
            return False  # the program's own hooks are inside ours: no second run
        saving.__exit__(None, None, None)
    try:
        return _compare_again(regions, module, args, kw, output, cpu, cuda, tally, seconds)
    except Exception:  # noqa: BLE001  (a second run that fails is a region that could fail: not one)
        return False
    finally:
        if saving is not None:
            saving.__enter__()


def _compare_again(regions: Regions, module, args, kw, output, cpu, cuda, tally: _Tally, seconds: float) -> bool:
    split = _Split(bool(cuda)) if regions.selective else None
    with torch.random.fork_rng(devices=[d for d, _ in cuda], device_type="cuda" if cuda else "cpu"), \
            _Recompute(regions, module, count=False):
        torch.set_rng_state(cpu)
        for d, state in cuda:
            torch.cuda.set_rng_state(state, d)
        with split if split is not None else contextlib.nullcontext():
            again = module.forward(*args, **kw)
    if split is not None:
        tally.kept += split.kept
        tally.cheap += seconds * split.cheap_share()
    first, second = _outputs(output), _outputs(again)
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
            return False
        if isinstance(a, torch.Tensor) and not (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)):
            return False
    return True


class _Split(TorchDispatchMode):
    """The census's second run of a call: what a SELECTIVE region would keep, and the share of time it would run.

    On the cpu device the share is of host seconds. On the GPU the host's
    clock sees launches, and events around each operator, in a census that
    intercepts every operator, see mostly the host's own time between
    launches: the share is estimated instead, from each kept operator's
    FLOPs and each other operator's bytes read and written, at the rates
    the device reaches (measured once, ``_rates``), plus a launch each.
    """

    def __init__(self, cuda: bool) -> None:
        super().__init__()
        self.cuda = cuda
        self.kept = 0
        self.seen: set[int] = set()
        self.held: list = []
        self.spans: list = []  # cpu: (kept, start, end) host seconds
        self.flops: dict = {}  # cuda: FLOPs of kept operators per dtype
        self.moved = 0  # cuda: bytes the other operators read and write
        self.ops = [0, 0]  # cuda: operators run again, kept

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        keep = _policy(None, func, *args, **kwargs) is _MUST_SAVE
        start = None if self.cuda else time.perf_counter()
        out = func(*args, **kwargs)
        outs = [t for t in _outputs(out) if isinstance(t, torch.Tensor)]
        if not self.cuda:
            self.spans.append((keep, start, time.perf_counter()))
        elif keep and outs:
            self.flops[outs[0].dtype] = self.flops.get(outs[0].dtype, 0) + _flops(func, args, outs[0])
        else:
            self.moved += sum(_nbytes(t) for t in _leaves((args, *kwargs.values()), []) + outs
                              if isinstance(t, torch.Tensor))
        self.ops[keep] += 1
        if keep:
            for t in outs:
                if t.layout == torch.strided:
                    s = t.untyped_storage()
                    if s._cdata not in self.seen:
                        self.seen.add(s._cdata)
                        self.held.append(s)  # alive to the run's end, as in a region's cache: no key reused
                        self.kept += s.nbytes()
        return out

    def cheap_share(self) -> float:
        """The share of the run's time outside KEEP_OPS."""
        if self.cuda:
            try:
                flops_s, bytes_s, launch_s = _rates(torch.cuda.current_device(), list(self.flops))
            except RuntimeError:  # no room for the measurement (CUDA's out-of-memory error is one)
                return 1.0  # as costly as the whole call: the choice then takes whole calls, as before levels

            cheap = self.moved / bytes_s + self.ops[0] * launch_s
            kept = sum(f / flops_s[d] for d, f in self.flops.items()) + self.ops[1] * launch_s
            total = cheap + kept
            return cheap / total if total > 0 else 1.0
        times = [(k, b - a) for k, a, b in self.spans]
        total = sum(t for _, t in times)
        return sum(t for k, t in times if not k) / total if total > 0 else 1.0


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() if t.layout == torch.strided else 0


def _flops(func, args, out: torch.Tensor) -> int:
    """FLOPs of a kept operator: matmuls by their contracted size, convolutions by their filter, attention by its two products."""
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    name = func.overloadpacket.__name__
    if "attention" in name and len(tensors) >= 3:
        q, k, v = tensors[:3]
        return 2 * q.numel() * k.shape[-2] + 2 * q.numel() // max(q.shape[-1], 1) * k.shape[-2] * v.shape[-1]
    if "convolution" in name and len(tensors) >= 2:
        w = tensors[1]
        return 2 * out.numel() * (w.numel() // max(w.shape[0], 1))
    # mm, addmm, bmm, baddbmm: the contracted size is the last of the left factor (after a bias).
    left = tensors[1] if name in ("addmm", "baddbmm", "addbmm") and len(tensors) >= 3 else tensors[0] if tensors else None
    return 2 * out.numel() * (left.shape[-1] if left is not None and left.dim() else 1)


_RATE_CACHE: dict = {}


def _rates(device: int, dtypes: list) -> tuple[dict, float, float]:
    """The device's matmul FLOP/s per dtype, copy bytes/s (measured once per process) and a launch's seconds."""
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes(), torch.no_grad():
        if (device, None) not in _RATE_CACHE:
            x = torch.empty(1 << 24, device=device)  # 64 MiB, read and written
            _RATE_CACHE[device, None] = 2 * x.numel() * 4 / _timed(torch.clone, x)
        for dtype in dtypes:
            if (device, dtype) not in _RATE_CACHE:
                a = torch.randn(2048, 2048, device=device).to(dtype)
                _RATE_CACHE[device, dtype] = 2 * 2048**3 / _timed(torch.mm, a, a)
    return {d: _RATE_CACHE[device, d] for d in dtypes}, _RATE_CACHE[device, None], DEFAULT_LAUNCH_S


def _timed(fn, *args, reps: int = 3) -> float:
    """Seconds of one ``fn(*args)`` on the device, after one run to warm up."""
    fn(*args)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn(*args)
    end.record()
    end.synchronize()
    return max(start.elapsed_time(end) / 1e3 / reps, 1e-9)


_MUST_SAVE = _ckpt.CheckpointPolicy.MUST_SAVE
_RECOMPUTE = _ckpt.CheckpointPolicy.PREFER_RECOMPUTE
_POLICY: dict = {}  # operator -> its policy, or the position of its dropout_p (an attention)


def _policy(ctx, func, *args, **kwargs):
    """The SELECTIVE level's checkpoint policy: the core's ``keeps``, per operator and its dropout."""
    policy = _POLICY.get(func)
    if policy is None:
        name = func.overloadpacket.__name__
        names = [a.name for a in func._schema.arguments]
        if keeps(name) and "dropout_p" in names:
            policy = _POLICY[func] = names.index("dropout_p")
        else:
            policy = _POLICY[func] = _MUST_SAVE if keeps(name) else _RECOMPUTE
    if type(policy) is int:
        p = args[policy] if policy < len(args) else kwargs.get("dropout_p", 0.0)
        return _MUST_SAVE if keeps(func.overloadpacket.__name__, p) else _RECOMPUTE
    return policy


@contextlib.contextmanager
def _both(first, second):
    with first, second:
        yield


class _Unintercepted:
    """What the regions do at the windows that run unintercepted: lower them once, or answer the allocator's flushes.

    The first such window is skipped: it follows the step in which paging
    stopped and every page came back. The next one lowers regions where its
    peak (``reserved``: the allocator's reserved peak) leaves room. The
    first window after the lowering, or after any change, is skipped too
    (the allocator lays out the changed step). Once later windows flush the
    allocator's cache ``Thresholds.flush_windows`` in a row (``flushes``: the
    flushes so far), the lowering is undone, or where nothing lowered is
    left to undo, one more region is set whole, or where every region is
    whole and state is parked, more is parked: a step that flushes each
    window waits on every stream each time, while a single flush may be a
    passing layout that an answer would pay for at every step after.

    It answers paging windows refused release for the allocator's rests
    alone too (``short_of_cap``).
    """

    def __init__(self, flush_windows: int = 2) -> None:
        self.need = max(1, flush_windows)  # windows in a row that flushed before an answer
        self.windows = 0  # unintercepted windows with regions set, before the lowering
        self.after_lowering = 0  # windows since the lowering or the last change
        self.flushes = 0  # the allocator's cache flushes at the last window
        self.flushing = 0  # windows in a row that flushed, counted from the second after a change
        self.undone = 0  # regions set back by undoing the lowering
        self.raised = 0  # regions set whole for a flushing step

    def window(self, regions: Regions, reserved: int, flushes: int) -> None:
        plan = regions.plan
        if plan.lowered:
            self.after_lowering += 1
            flushed = self.after_lowering >= 2 and flushes > self.flushes
            self.flushing = self.flushing + 1 if flushed else 0
            if self.flushing >= self.need:
                self.flushing = 0
                if plan.lowered_from:
                    changes = plan.undo_lower()
                    self.undone = len(changes)
                else:
                    changes = plan.raise_one()
                    self.raised += len(changes)
                if changes:
                    regions._apply(changes)
                    self.after_lowering = 0
                elif regions.parking is not None and plan.park_more():
                    regions.park_goal()
                    self.after_lowering = 0
            self.flushes = flushes
            return
        if not regions.set_hooks:
            return
        self.windows += 1
        self.flushes = flushes
        if self.windows < 2:
            return
        changes = plan.lower(reserved)
        regions.history.append((-reserved, len(changes)))  # negative: a dormant window's whole peak
        regions._apply(changes)

    def short_of_cap(self, regions: Regions) -> None:
        """Paging windows in a row kept paging for the allocator's overhead alone ([Note: the
        allocator's overhead at release] in core/dormancy.py): answered as an unintercepted step
        that flushes is, with one more region whole, or where every region is whole and state
        is parked, more parked."""
        plan = regions.plan
        if not plan.done or not plan.chosen:
            return  # still choosing: the next window's peak weighs what it sets
        changes = plan.raise_one()
        if changes:
            self.raised += len(changes)
            regions._apply(changes)
        elif regions.parking is not None and plan.park_more():
            regions.park_goal()
            with regions.pager.lock:
                regions.pager.plans = StepPlans(regions.pager)


class _Checkpointed:
    """A chosen module's hooks: its calls run under non-reentrant checkpointing, selective or whole."""

    def __init__(self, regions: Regions, module: torch.nn.Module, hf: bool, level: int) -> None:
        self.regions = regions
        self.module = weakref.ref(module)
        self.hf = hf
        self.level = level
        self.gens: list = []  # (the checkpoint's generator, its caching mode or None) per open call
        self.caching = None  # the caching mode _context made last
        self.hooks = [module.register_forward_pre_hook(_Fn(self._pre), with_kwargs=True),
                      module.register_forward_hook(_Fn(self._post), prepend=True, always_call=True)]

    def _context(self):
        recompute = _Recompute(self.regions, self.module())
        if self.level != SELECTIVE:
            self.caching = None
            return contextlib.nullcontext(), recompute
        self.caching, cached = _ckpt.create_selective_checkpoint_contexts(_policy)
        return self.caching, _both(recompute, cached)

    def _pre(self, module, args, kwargs):
        if self.regions.recomputing or not torch.is_grad_enabled() or _graph_task() != -1:
            self.gens.append(None)
            return
        regions = self.regions
        regions.counters.region_calls += 1
        if self.hf:
            args, kwargs = _hf_call(module, args, kwargs)
        host = regions.inputs_host  # [Note: a region's inputs on the host]
        if regions.saving is not None:
            for t in _leaves((args, *kwargs.values()), []):
                if isinstance(t, torch.Tensor) and not (host is not None and host.wants(t)):
                    regions.count_held(t, leaves=False)  # the region keeps its inputs
        cache = _cast_cache_off()  # [Note: autocast's cast cache in a region]
        hooks = host.hooks() if host is not None else None
        try:
            if hooks is not None:
                hooks.__enter__()  # under the checkpoint's own, which its start pushes
            gen = _start(module, self._context, args, kwargs)
        except BaseException:
            _end_start(cache, hooks)
            raise
        self.gens.append((gen, self.caching, cache, hooks))
        return (args, kwargs) if self.hf else None

    def _post(self, module, args, output) -> None:
        call = self.gens.pop() if self.gens else None
        if call is None:
            return
        gen, caching, cache, hooks = call
        torch.set_autocast_cache_enabled(cache)
        try:
            next(gen)
        except StopIteration:
            if caching is not None and self.regions.saving is not None:
                for t in _cached(getattr(caching, "storage", {}), []):
                    self.regions.count_held(t, leaves=True)
            return
        finally:
            if hooks is not None:
                _end_start(cache, hooks)
                self.regions.inputs_host.region_done()
        raise RuntimeError("deepum: a region's checkpoint did not end with its module call")

    def remove(self) -> None:
        for h in self.hooks:
            h.remove()


def _cached(obj: Any, out: list) -> list:
    """The tensors of a selective checkpoint's cache (nested dicts and lists of wrapped outputs)."""
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _cached(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _cached(v, out)
    elif isinstance(getattr(obj, "val", None), (torch.Tensor, list, tuple, dict)):
        _cached(obj.val, out)
    return out


def _noop(*args, **kwargs) -> None:
    return None


def _as_noop() -> object:
    return _noop


class _Fn:
    """A region hook; a module saved whole (pickle, deepcopy) keeps a no-op instead of the session."""

    __slots__ = ("fn",)

    def __init__(self, fn) -> None:
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        return (_as_noop, ())
