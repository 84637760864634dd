"""The pager: the fault path, eviction and prefetch, in one place.

The interceptor calls :meth:`Pager.begin` before an operator runs and
:meth:`Pager.end` after. Everything else here serves those two calls:

``begin(op, pages, out_bytes)``
    pins the operator's pages, makes room for the pages that are not resident
    plus the operator's outputs (evicting victims the policy picks), then
    faults the missing pages in and waits for pages still arriving.
``end(...)``
    unpins, records what the operator wrote, tells the policy which operator
    ran, prefetches what the policy predicts, and pre-evicts to keep headroom.

Pages come and go through lifecycle.py (birth, death, restore at exit),
recipes through remat.py, counters through telemetry.py; this file is the
operator path and the movement of pages.
"""

from __future__ import annotations

import logging
import threading
from collections import deque

import torch

from ..core.config import Config
from ..core.costs import Costs
from ..core.pages import ARRIVING, EVICTED, RESIDENT, Kind, Page, PageTable
from ..core.policy import make_policy
from ..core.remat_policy import RecomputeFirstPolicy
from ..errors import BudgetTooSmallError
from .energy import Energy
from .evict import Evictor
from .lifecycle import Lifecycle, StorageRef
from .movers import make_transfers
from .prefetch import Prefetcher
from .remat import Remat
from .stepplan import RUNNING, StepPlans
from .telemetry import Stats, Telemetry, TraceRecorder, now_us
from .timing import OpTimer

log = logging.getLogger("deepum")


class Pager(Evictor, Prefetcher, Lifecycle, Remat, Telemetry):
    """The fault path: begin/end of an operator, eviction, faults and prefetches."""

    def __init__(self, device: torch.device, budget: int, limit: int, config: Config) -> None:
        self.device = device
        self.budget = budget
        self.config = config
        th = config.thresholds
        self.table = PageTable(limit)
        # The most a step's demand may be for paging to stop (the session may set it
        # nearer the budget: [Note: the release's margin] in core/dormancy.py).
        self.stop_bytes = limit
        # Stable key -> the live page now playing that role (for the predictor).
        self.live: dict[int, Page] = {}
        self.costs = Costs()
        self.policy = _victim_policy(config, self.table, self.live, self.costs, self.rebuild_seconds)
        self.prefetch_enabled = config.prefetch and self.policy.prefetches
        self.transfers = make_transfers(device, th.cpu_copy_lag)
        self.prefetch_waits = th.plan_prefetch_waits  # (prefetch.py, prefetch_pages)
        self.costs.h2d_Bps, self.costs.d2h_Bps = _link(device, self.transfers, th)
        self.counters = Stats()
        self.max_working_set_op = ""
        # The thresholds in bytes, computed once (see core/config.py for each).
        self.headroom = th.of(th.headroom, limit) if config.headroom is None else config.headroom
        self.scan_ops = th.scan_ops
        self.prefetch_cap = th.of(th.prefetch_cap, limit)
        self.pressure_bytes = th.of(th.pressure, limit)
        self.oom_retry_bytes = th.of(th.oom_retry, limit)
        self.evict_batch = th.of(th.evict_batch, limit)
        self.recompute = config.recompute
        self.recompute_min_bytes = th.recipe_min_bytes
        self.recipe_max_depth = th.recipe_max_depth
        self.rebuild_overhead_s = th.rebuild_host_s
        # Device seconds of each execution ID, sampled (what a rebuild costs).
        self.timer = OpTimer(device, self.costs.note_time, th.timing_gate_s)
        self.writeback_bytes: dict[str, int] = {}
        self.unused_prefetch_bytes = 0
        # Raise on an overshoot instead of counting it (Session(strict=True)).
        self.strict = config.strict
        self.unpageable_warned = False  # the warning that memory it cannot page passed the budget, once
        # Called with each operator's pages while a pointer pins pages (host_access.py).
        self.host_holds = None
        self.lock = threading.RLock()
        self.dead: deque[StorageRef] = deque()
        # (work, pages) of collectives still communicating: the pages stay pinned.
        self.held: list[tuple[object, list[Page]]] = []
        self.closed = False
        self.restored = 0
        # GPU energy since the session began, where NVML can tell (CUDA only).
        self.energy = Energy.open(device)
        # Evict every unpinned page after every operator (tests).
        self.stress = config.stress
        self.trace: TraceRecorder | None = TraceRecorder(budget, limit) if config.trace else None
        # What each stable key held last time, so a page born again in the
        # next iteration is classified at birth (see set_kind).
        self.skey_kind: dict[int, Kind] = {}
        # Prediction and prefetching start once memory is tight; until then
        # the per-operator path skips them (nothing is off the device to fetch).
        self.pressure = False
        self.on_pressure = None  # set by the interceptor (names pages made before pressure)
        # Record a step, plan it in the core, execute the plan (stepplan.py).
        self.plans = StepPlans(self)
        # Between an optimizer step's pre- and post-hooks (set by the session's
        # hooks): the state it makes on its first step is numbered among
        # siblings (intercept/register.py).
        self.in_optimizer_step = False

    # --------------------------------------------------------- operator path

    def note_working(self, op: object, working: int) -> None:
        """The bytes of an operator's inputs and outputs at once: the largest is the smallest
        budget that would do (deepum estimate)."""
        if working > self.counters.max_working_set_bytes:
            self.counters.max_working_set_bytes = working
            self.max_working_set_op = str(op)

    def begin(self, op: object, pages: list[Page], out_bytes: int, written: list[Page] | tuple = (),
              guessed: bool = False) -> None:
        """Make ``pages`` resident and leave room for ``out_bytes`` of outputs.

        ``written``: the pages among them the operator will write. ``guessed``:
        ``out_bytes`` is all the room there is, not a size (the operator's
        working set is then noted after it ran, ``note_working``).
        """
        table = self.table
        working = out_bytes
        calm = True  # every page resident: no rebuild, fault or arrival to wait for
        for p in pages:
            working += p.nbytes
            if p.state != RESIDENT:
                calm = False
        if not guessed:
            self.note_working(op, working)
        if working > table.limit:
            raise BudgetTooSmallError(str(op), working, table.limit, self.budget,
                                      [(p.kind.name.lower(), p.nbytes) for p in pages],
                                      self.in_optimizer_step)
        if not calm or any(p.readers for p in written):
            self._rebuild_first(pages, written)
            calm = all(p.state == RESIDENT for p in pages)
        for p in pages:
            p.pins += 1
        # While a plan steers, the victim policy's clock stands still (it
        # observes no operator), so its uses need no noting.
        now = None
        if not (self.plans.mode and self.plans.begin(pages, written)):
            now = self.policy.clock  # (note_use, written out below where the policy keeps a clock)
            if now is None or not calm:
                self.policy.note_use(pages)
        try:
            if calm:
                # The usual operator: the loops below in one, and no fault. The
                # uses are noted after the room is made: pinned pages are no
                # victims, so no choice reads them before.
                for p in written:
                    if p.readers or p.recipe is not None:
                        self.before_write(p)
                short = out_bytes - (table.limit - table.resident_bytes - table.reserved_bytes - table.leaving_bytes)
                if short > 0:
                    self.make_room(short)
                to_end = table.to_end
                for p in pages:
                    if now is not None:
                        p.last_use = now
                    if p.prefetched:  # arrived earlier, first use now
                        self._prefetch_used(p)
                    if p.pageable:
                        to_end(p.key)
            else:
                self._bring_in(pages, written, out_bytes)
            if table.resident_bytes > table.window_peak_bytes:
                table.note_peak()
        except BaseException:
            self.unpin(pages)
            raise
        table.reserved_bytes += out_bytes

    def _rebuild_first(self, pages: list[Page], written: list[Page] | tuple) -> None:
        """Rebuilds the operator will need, done before it pins its pages: its dropped pages,
        and the dropped readers of the pages it writes (before_write rebuilds them).

        A rebuild needs room for the page and for its recipe's inputs, which
        are not the operator's. Made with the operator's other pages pinned,
        that room could only come from elsewhere, and where there was none
        the rebuild passed the budget (Adam's first operator on a dropped
        gradient, with the moment it writes pinned; MAML's fast weights,
        read by the weights Adam writes; session 28's sweep). Done first,
        the room may come from those pages, which the operator's faults
        bring back. Each rebuilt page is held while the next are rebuilt, so
        those whose recipes read the most go first, when the least is held.
        Nothing is voided here: a page dropped again before the pins is
        rebuilt after them as before, so the writes' rules stay where they were.
        """
        todo = [p for p in pages if p.state == EVICTED and p.host is None]  # (Page.dropped, written out)
        for w in written:
            if w.readers:
                todo.extend(r for r in self.live_dropped_readers(w) if r not in todo)
        if len(todo) > 1:
            todo.sort(key=lambda p: -sum(q.nbytes for q in p.recipe.inputs) if p.recipe is not None else 0)
        rebuilt = []
        try:
            for p in todo:
                if p.state == EVICTED and p.host is None and p.recipe is not None:  # (may be rebuilt by now)
                    self.rebuild(p)
                    p.pins += 1
                    rebuilt.append(p)
        finally:
            for p in rebuilt:
                p.pins -= 1

    def _bring_in(self, pages: list[Page], written: list[Page] | tuple, out_bytes: int) -> None:
        """begin() where a page is off the device or still arriving: rebuild, fault, wait."""
        table = self.table
        missing = 0
        for p in pages:
            if p.state == EVICTED:
                if p.host is None:  # dropped: computed again, its inputs first
                    self.rebuild(p)
                else:
                    missing += p.nbytes
        for p in written:
            if p.readers or p.recipe is not None:
                self.before_write(p)
        short = missing + out_bytes - table.room()
        if short > 0:
            self.make_room(short)
        faults, arriving = [], []
        for p in pages:
            state = p.state
            if state == EVICTED:
                faults.append(p)
            elif state == ARRIVING:
                arriving.append(p)
            elif p.prefetched:  # arrived earlier, first use now
                self._prefetch_used(p)
        if faults:
            self.fault(faults)
        if arriving:
            self._arrive(arriving)
        table.touch_all(pages)

    def unpin(self, pages: list[Page], out_bytes: int = 0) -> None:
        """After an operator: its pages may be evicted again; ``out_bytes`` is begin()'s reservation."""
        self.table.reserved_bytes -= out_bytes
        for p in pages:
            p.pins -= 1

    def end(self, eid: int, written: list[Page], op: str = "an operator", pages: list[Page] | tuple = (),
            out_bytes: int = 0) -> None:
        """After an operator: unpin ``pages`` (begin()'s, with its ``out_bytes``), record
        writes, prefetch ahead, keep headroom.

        Raises BudgetOvershootError under ``strict`` when ``op``'s outputs
        passed the limit (after room was made again: nothing is lost).
        """
        self.table.reserved_bytes -= out_bytes  # unpin(), written out: every operator
        for p in pages:
            p.pins -= 1
        for p in written:
            storage = p.ref()
            if storage is not None and storage.nbytes() != p.nbytes:
                self.table.resize(p, storage.nbytes())
            if not p.dirty:
                p.dirty = True
                # The host copy is stale now; its buffer can serve another page.
                self.transfers.release_host(p)
        table = self.table
        if table.resident_bytes > table.limit:
            # The operator's outputs were larger than estimated.
            self._overshoot(op, table.resident_bytes - table.limit)
        if not self.pressure and table.resident_bytes > self.pressure_bytes:
            self._pressure_begins()
        if self.pressure:  # what finished copies held, before the plan's prefetches look for room
            table.leaving_bytes -= self.transfers.release_finished()
        plans = self.plans
        steering = False
        if plans.mode:
            plans.after(eid)
            steering = plans.mode == RUNNING and not plans.left and not plans.shadow  # (plans.steering)
        if self.prefetch_enabled and self.pressure and not steering:
            wanted = self.policy.advance(eid, self.scan_ops)  # the window slides, its new pages scanned
            if wanted:
                self._prefetch_ahead(wanted)
        elif self.pressure and self.policy.prefetches and not steering:
            # prefetch=False keeps the policy's victim choice, which needs
            # the prediction window: it observes without fetching. A planned
            # step does not: the plan chooses, and when the program leaves
            # it the window refills within the operators it spans.
            self.policy.observe(eid)
        # A planned step keeps no headroom of its own: the plan left room
        # for what comes next (see [Note: the planned step]).
        short = ((0 if steering else self.headroom)  # - table.room(), written out: every operator
                 - (table.limit - table.resident_bytes - table.reserved_bytes - table.leaving_bytes))
        if short > 0:
            self.make_room(short, protect_window=True, wait=False)
        if self.stress:
            # Testing aid: every page leaves after every operator, so every
            # input of the next one is faulted back in.
            self.evict_unpinned()
        if self.trace is not None:
            self.trace.counter(now_us(), table.kind_bytes)

    def _pressure_begins(self) -> None:
        log.info("memory pressure: %d bytes resident against a limit of %d; prediction and "
                 "paging start", self.table.resident_bytes, self.table.limit)
        self.pressure = True
        if self.on_pressure is not None:
            self.on_pressure()


def _victim_policy(config: Config, table, live: dict, costs: Costs, rebuild_seconds):
    """The victim and prefetch policy the options name (core/policy.py, core/remat_policy.py)."""
    th = config.thresholds
    if config.policy == "deepum" and config.recompute and config.victims == "cost":
        return RecomputeFirstPolicy(table, config.lookahead, live, costs, rebuild_seconds,
                                    max_candidates=th.victim_candidates,
                                    small_bytes=th.of(th.victim_small, table.limit))
    return make_policy(config.policy, table, config.lookahead, live)


def _link(device: torch.device, transfers, th) -> tuple[float, float]:
    """Bytes per second each way (to the device, back): the link's speed decides copy against
    rebuild (on the cpu tier a modelled one: see Thresholds.cpu_link_Bps and timing.py)."""
    if device.type == "cuda":
        return transfers.measure_link()
    return th.cpu_link_Bps, th.cpu_link_Bps
