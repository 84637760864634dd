"""Paging on and off mid-program: executes what core/dormancy.py decides.

[Note: where paging turns on and off]
Module forward pre-hooks are the only thing that runs while the session is
dormant: none per operator. A global hook finds the *root*, the first
module called; it is then replaced by hooks on the root and its upper
levels (as many levels as stay within Thresholds.watched_modules modules:
a transformer's blocks, a share of a ResNet's bottlenecks), since any module hook
sends every module call through PyTorch's slower call path, and a global
one does so for every module. Each call of the root is a boundary (a
training step's forward, a generation step), a call of another hooked
module a reading. When the program frees the root, the global hook comes
back to find another. Modules outside the root's tree (a second model) are
not read, but their memory is in each window's peak, which the allocator
or the counter measures for the whole process. The hooks pickle as a no-op
(a module saved whole inside a session loads without deepum).

Turning on pushes the interceptor (and the host-access mode) onto the
session's thread; turning off brings every page back to the device
and pops them. Both happen only where that is safe:

- on the thread that entered the session (a dispatch mode is per thread);
- outside a backward pass (``_current_graph_task_id() == -1``): autograd's
  nodes run under the thread state captured when backward began, which
  would undo a push or pop made inside it;
- with the modes the session pushed where it left them (no mode of the
  program's above them), and no thread joined with ``attach()``.

Otherwise the turn waits for the next module call. Memory allocated while
dormant becomes pages when an operator first uses it (on CUDA the session's
adoption scan also runs when paging turns on).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import weakref

import torch
from torch.overrides import _get_current_function_mode_stack
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode_stack

from ..core.budget import allocator_cap
from ..core.dormancy import Dormancy, Turn, allocator_overhead, paging_measure
from ..core.pages import Kind
from ..errors import RestoreError
from .parking import Parking
from .stepplan import StepPlans

log = logging.getLogger("deepum")
_graph_task = torch._C._current_graph_task_id


class Watch:
    """One session's dormancy: the hook, the signal, and the two transitions."""

    def __init__(self, pager, mode, signal, adopt=None, regions=None) -> None:
        """Made before the session pushes its modes (their depth is taken here)."""
        th = pager.config.thresholds
        self.pager = pager
        self.mode = mode  # the interceptor (engine/intercept/mode.py)
        self.host_mode = None  # host_access.HostAccessMode, if it watches: entered while paging
        self.signal = signal  # engine/memsignal.py
        self.adopt = adopt  # called after paging turns on (CUDA: the adoption scan)
        self.regions = regions  # engine/regions.py, or None
        self.parking = None  # engine/parking.py: the optimizer state the regions' plan parks
        if regions is not None:
            regions.watch = self
            self.parking = regions.parking = Parking(pager.device, pager.counters,
                                                     int(th.park_slice * pager.table.limit), th.park_pipeline)
        cap = allocator_cap(pager.budget, th.cap_slack) if signal.cached and th.release_rests != "off" else None
        self.state = Dormancy(pager.table.limit, th.engage, th.release, th.calm_windows, cap=cap,
                              oom_limit=th.dormant_oom_limit, stop=pager.stop_bytes)
        signal.on_oom = self.out_of_memory
        self.shorts = 0  # paging windows in a row refused release for the allocator's overhead
        self.owner = threading.get_ident()
        self.root: weakref.ref | None = None
        self.attached = 0  # threads inside attach(): paging stays on
        self.depth = self._stacks()  # the mode stacks' depths below the session's modes
        # Readings cost what the signal costs; a costly one (CUDA's statistics) is rate-limited.
        self.next_read = 0.0
        self.window_min_s = signal.window_min_s
        self.window_ends = 0.0
        self.paging_since = time.perf_counter()
        self.paging_seconds = 0.0
        self.watched_modules = th.watched_modules
        self.hooks: list = []
        self.closed = False
        # Each window's (paging, its peak as dormancy read it, the allocator's allocated and
        # reserved peaks, its flushes so far): what the allocator held above the peak, window
        # by window, for a release rule that weighs it (docs/DESIGN.md, Dormancy).
        self.windows: collections.deque = collections.deque(maxlen=64)
        self._find_root()

    def _find_root(self) -> None:
        self.root = None
        self.root_id = 0  # id() of the root while it lives (its weak reference clears this)
        if self.regions is not None:
            self.regions.close()
        self._remove_hooks()
        self.hooks.append(torch.nn.modules.module.register_module_forward_pre_hook(_Hook(self)))

    def _root_died(self, ref: weakref.ref) -> None:
        """The program freed the root module (and with it the hooked tree): watch all modules again."""
        if self.root is ref and not self.closed:
            self._find_root()

    def _hook_tree(self, root: torch.nn.Module) -> None:
        """Hooks on the root and its upper levels, at most ``watched_modules`` modules.

        Levels are taken whole while they fit; of the first level that does
        not, an evenly spaced share fills what is left (a flat stack of many
        blocks is still read along its length).
        """
        self._remove_hooks()
        chosen, level, seen = [root], [root], {id(root)}
        while level:
            nxt = [c for m in level for c in _called_children(m) if id(c) not in seen]
            room = self.watched_modules - len(chosen)
            if not nxt or room <= 0:
                break
            if len(nxt) > room:
                stride = -(-len(nxt) // room)
                chosen += nxt[::stride]
                break
            seen.update(id(c) for c in nxt)
            chosen += nxt
            level = nxt
        hook = _Hook(self)
        self.hooks = [m.register_forward_pre_hook(hook) for m in chosen]

    def _remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks = []

    # ------------------------------------------------------------ the hook

    def _on_module(self, module, args) -> None:
        # Called on every hooked module call of the program: the common
        # cases (a paging session's inner module, a reading not yet due)
        # return after a few attribute reads.
        is_root = id(module) == self.root_id
        if self.state.paging and not is_root and self.root_id:
            return
        if threading.get_ident() != self.owner:
            return
        parking = self.parking
        if parking is not None and parking.pending and (is_root or parking.ready()):
            parking.swap(wait=True)  # before the root's regions hook measures what the step holds
        now = time.perf_counter()
        if not self.root_id:
            # Its first call starts the first window: no boundary yet.
            self.root = weakref.ref(module, self._root_died)
            self.root_id = id(module)
            self._hook_tree(module)
            if self.regions is not None:
                self.regions.attach(module)
            return
        if is_root and now >= self.window_ends:
            self.window_ends = now + self.window_min_s
            self._boundary()
            return
        if self.state.paging or now < self.next_read:
            return
        self.next_read = now + self.signal.interval_s
        if self.state.reading(self.signal.current()) is Turn.ENGAGE:
            self._engage()

    def _boundary(self) -> None:
        state = self.state
        peak, overhead = self._paging_peak() if state.paging else (0, 0)
        # (Only where the peak itself would stop paging: over it, the peak is what is over.)
        short = state.over_cap(peak, overhead) if state.paging and peak <= state.release_bytes else 0
        if self.regions is not None and self.regions.boundary(peak, short):
            th = self.pager.config.thresholds
            state.retarget(th.region_engage, th.region_release, of=self.pager.budget)
        if self.regions is not None and self.regions.retargeted and self.regions.plan.dropped:
            th = self.pager.config.thresholds
            state.retarget(th.engage, th.release)  # every region unset: dormancy's own rule again
            self.regions.retargeted = False
        if state.paging:
            turn = state.boundary(peak, overhead)
            if turn is Turn.RELEASE and not self._release():
                state.refused()
            self._answer_short()
            return
        peak = self.signal.close_window()
        self.windows.append((False, peak, peak, self.signal.window_reserved, self.signal.flushes))
        over = peak - self.pager.table.limit
        if over > 0:  # grew past the limit unwatched (the cpu tier; CUDA's cap raises instead)
            st = self.pager.counters
            st.overshoots += 1
            st.overshoot_max_bytes = max(st.overshoot_max_bytes, over)
        if self.regions is not None:
            self.regions.dormant_window(self.signal.window_reserved, self.signal.flushes)
        if state.boundary(peak) is Turn.ENGAGE:
            self._engage()

    def _answer_short(self) -> None:
        """Release refused for the allocator's overhead alone, ``flush_windows`` windows in a row,
        with the regions' rounds over (before, each window's shortfall is theirs to weigh): the
        regions lower the step's demand ([Note: the allocator's overhead at release])."""
        self.shorts = self.shorts + 1 if self.state.short else 0
        if self.regions is not None and self.shorts >= self.pager.config.thresholds.flush_windows:
            self.shorts = 0
            self.regions.unintercepted.short_of_cap(self.regions)

    def _paging_peak(self) -> tuple[int, int]:
        """A paging window's peak demand (what it held, paged out or not) and what its allocator
        held above its allocated peak and could not hand back; starts the next window."""
        table = self.pager.table
        plans = self.pager.plans
        # The page planner recorded this step where the same bytes were born
        # in it (a step of other sizes is not it): what the program held,
        # without the lineage that the table's count keeps.
        recorded = (plans.demand if plans.demand and abs(table.window_born_bytes - plans.demand_born) * 64
                    <= plans.demand_born else None)
        flushes = self.signal.flushes
        allocated = self.signal.close_window()
        peak = paging_measure(table.window_demand_bytes, recorded,
                              allocated if self.pager.device.type == "cuda" else None, table.window_peak_bytes)
        # (The cpu tier's counter has no cache to flush: no overhead.)
        held_out = self.pager.config.thresholds.release_rests == "clean" and allocated is not None and peak > allocated
        overhead = allocator_overhead(allocated, self.signal.window_reserved, self.signal.flushes > flushes, held_out)
        self.windows.append((True, peak, allocated, self.signal.window_reserved, self.signal.flushes))
        table.new_window()
        return peak, overhead

    def held(self) -> int:
        """Bytes of the program's model state (parameters, gradients, optimizer state), paged out or not.

        What else is on the device at a step's start may be what recipes keep
        of pages the program freed (lineage), which is the engine's choice,
        not the program's demand; the batch and other small tensors are left
        out with it.
        """
        pager = self.pager
        state = (Kind.PARAMETER, Kind.GRADIENT, Kind.OPTIMIZER_STATE)
        with _disable_current_modes(), pager.lock:
            pager.reap()
            return sum(p.nbytes for p in pager.table.pages.values() if p.kind in state)

    # ------------------------------------------------------------ transitions

    def _stacks(self) -> tuple[int, int]:
        return len(_get_current_dispatch_mode_stack()), len(_get_current_function_mode_stack())

    def _engage(self) -> None:
        if _graph_task() != -1 or self._stacks() != self.depth:
            self.state.deferred()  # not here: read again at the next module call
            return
        pager = self.pager
        if self.adopt is not None:
            with _disable_current_modes(), pager.lock:
                self.adopt()
        self.mode.__enter__()
        if self.host_mode is not None:
            self.host_mode.__enter__()
        self.paging_since = time.perf_counter()
        pager.counters.paging_starts += 1
        pager.table.new_window()

    def _release(self) -> bool:
        """Bring every page back and stop intercepting; False where that is not possible now."""
        pager = self.pager
        if self.attached or _graph_task() != -1 or not self._on_top():
            return False
        table = pager.table
        with _disable_current_modes(), pager.lock:
            pager.reap()
            if table.live_bytes > table.limit:  # every page back would not fit
                return False
            limit = table.limit
            try:
                pager.restore_all()  # rebuilds dropped pages and ends every recipe
            except RestoreError as e:
                # Whatever came back is resident, the rest is where it was: paging goes on.
                log.info("deepum: paging stays on: %s", e)
                return False
            finally:
                table.limit = limit
            pager.transfers.pool.clear()
            pager.pressure = False
            pager.plans = StepPlans(pager)
        if self.host_mode is not None:
            self.host_mode.__exit__(None, None, None)
        self.mode.__exit__(None, None, None)
        self.depth = self._stacks()
        self.paging_seconds += time.perf_counter() - self.paging_since
        pager.counters.paging_stops += 1
        self.signal.rebase(table.resident_bytes)
        return True

    def _on_top(self) -> bool:
        dispatch = _get_current_dispatch_mode_stack()
        return bool(dispatch) and dispatch[-1] is self.mode

    def out_of_memory(self, asked: int) -> None:
        """The allocator is raising an out-of-memory error for ``asked`` bytes (any thread).

        While paging, the pager's retry answers it. While dormant nothing can
        ([Note: out of memory while dormant] in core/dormancy.py): paging
        starts at the next module call, and the program is told why.
        """
        if self.state.paging or self.closed:
            return
        self.state.alarm()
        self.next_read = 0.0
        self.pager.counters.dormant_ooms += 1
        forever = self.state.alarms >= self.state.oom_limit
        log.warning("deepum: the allocator ran out of memory (%d bytes asked for) while this session was "
                    "not intercepting: its steps had stopped paging, and no room can be made inside an "
                    "operator deepum does not see. Paging starts again at the next module call%s. If the "
                    "program stopped on this error, run it with dormant=False "
                    "(deepum.oversubscribe(..., dormant=False)) to keep paging on throughout.",
                    asked, " and stays on for this session" if forever else "")

    # ------------------------------------------------------------ the session's

    @property
    def paging(self) -> bool:
        return self.state.paging

    def seconds(self) -> float:
        """Seconds paging was on so far."""
        open_ = time.perf_counter() - self.paging_since if self.state.paging else 0.0
        return self.paging_seconds + open_

    def close(self) -> None:
        self.closed = True
        self._remove_hooks()
        if self.regions is not None:
            self.regions.close()
        if self.parking is not None:
            self.parking.close()
        self.signal.close()


def _called_children(module: torch.nn.Module) -> list[torch.nn.Module]:
    """Children that are called: containers that are only indexed (ModuleList, ModuleDict) are looked through."""
    out = []
    for child in module.children():
        if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
            out += _called_children(child)
        else:
            out.append(child)
    return out


def _noop_hook(module, args) -> None:
    return None


def _as_noop() -> object:
    return _noop_hook


class _Hook:
    """The watch's module hook; a module saved whole (pickle, deepcopy) keeps a no-op instead."""

    __slots__ = ("watch",)

    def __init__(self, watch: Watch) -> None:
        self.watch = watch

    def __call__(self, module, args) -> None:
        self.watch._on_module(module, args)

    def __reduce__(self):
        return (_as_noop, ())
