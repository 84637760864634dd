"""The planned step: record one training step, plan it in the core, execute the plan after.

[Note: the planned step]
Training repeats one step. The online victim choice (core/remat_policy.py)
sees only the past, so it drops a page that is needed two operators later or
copies one it could have rebuilt for free. With one recorded step the core
planner (core/planner.py) knows every page's next use, and decides for each
page where it leaves the device, whether it is dropped or copied, and where
its copy back starts. This file is the glue:

* **Steps** are the spans between optimizer steps (the session's step hook
  calls :meth:`StepPlans.boundary`). Positions in a step are the operators
  the pager sees end, counted from the boundary.
* **Recording** (the first step that runs under pressure, and every step
  after one that left the plan): each operator's execution ID, the pages it
  used, wrote and made, the recipes of those it made, and the pages the
  program freed. Page IDs are a counter never reused; pages alive at the
  boundary get theirs there.
* **Planning** at the next boundary: the core's ``plan_repeating`` under the
  limit less the headroom, operator seconds from the sampled timings
  (engine/timing.py) or the fallback of core/costs.py.
* **Running**: at each position the execution ID should be the recorded
  one; the pages an operator makes take the planned IDs in order, and each
  page alive at the boundary takes the ID of the page whose role it plays
  (core/planner.py ``carry_over``: the same page, or its successor by stable
  key). After operator ``t`` the planned evictions happen (dropped or copied
  as planned; a page that cannot be dropped is copied) and the planned
  prefetches start. Only the operators that make pages the plan drops (in
  this step, or carried over, in the next) record recipes: a recipe on a page
  kept or copied would only hold its inputs as lineage for the plan to let
  go, host time each step for nothing; once the program leaves the plan,
  every output gets one again, for the online choice. Faults and rebuilds on use stay as they are; an operator
  still short of room evicts by Belady's rule over the recorded next uses
  (:meth:`StepPlans.victims`).
* **Leaving the plan**: more than ``MISMATCHES`` different execution IDs,
  or a different number of pages made, ends the plan for the rest of the step (the online choice
  takes over: variable shapes, a validation pass) and the next step is
  recorded again. A prefetch that arrives late is started earlier in the
  next step (Capuchin's feedback, ``Plan.note_late``).
"""

from __future__ import annotations

import bisect
import logging
import statistics
import time

import torch

from ..core.pages import ARRIVING, DEAD, EVICTED, RESIDENT, Page
from ..core.planner import carry_over, demand_of, plan_repeating
from ..core.plantrial import ONLINE, PLANNED, PlanTrial
from ..core.remat_policy import Action
from ..core.replay import NEVER, uses_by_page
from ..core.steptrace import Plan, TraceBuilder
from .telemetry import now_us

log = logging.getLogger("deepum")
_use_count = torch._C._storage_Use_Count

OFF, RECORDING, RUNNING = range(3)
_median = statistics.median
# Operators per step whose execution ID may differ from the recorded one
# before the step counts as leaving the plan (see after()).
MISMATCHES = 8
# Operators after its recorded free during which a page the program still
# holds is tried again (see _Letting).
RETRIES = 4


class StepPlans:
    """Owned by the pager: records steps, asks the core for a plan, runs it."""

    def __init__(self, pager) -> None:
        self.pager = pager
        self.mode = OFF
        config = pager.config  # (lru is demand paging, the baseline: it never plans)
        self.enabled = bool(config.plan) and config.policy == "deepum"
        self.trial = _Trial(config.thresholds) if self.enabled and config.plan == "auto" else None
        self.fetches = pager.config.prefetch  # False: the plan's evictions only; pages come back on use
        self.next_pid = self.t = 0
        self.builder: TraceBuilder | None = None
        self.plan: Plan | None = None
        self.eids: list[int] = []
        self.births: list[tuple[int, ...]] = []
        # Page ID the step begins with -> page ID of its heir at the step's end.
        self.carry: dict[int, int] = {}
        self.by_pid: dict[int, Page] = {}
        self.using: list[Page] = []
        self.views: list[Page] = []  # pages of views since the last operator (recording only)
        self.leaving_peak = 0  # most bytes held by copies out at once in the recorded step
        self.written: list[Page] | tuple = ()
        # The planned step's uses of each page ID and its next use after the step (victims while steering).
        self.uses: dict[int, list[int]] = {}
        self.tail: dict[int, int] = {}
        self.made: list[Page] = []
        # Pages that recipes read, used in the recorded step, not yet let go by the program (_record).
        self.watch: dict[int, Page] = {}
        self.letting = _Letting(pager)  # the pages the plan lets go (see the class)
        self.frees: list[tuple[int, ...]] = []  # per planned operator, the page IDs freed after it
        self.busy: set[int] = set()  # planned operators after which the plan acts (_busy)
        self.left = False  # the program left the plan in this step
        self.shadow = False  # plan="auto": a trial's online step, keeping the plan's page IDs
        self.mismatches = 0
        self.plan_seconds = 0.0  # host time spent planning
        self.recipes_for: set[int] = set()  # page IDs born with a recipe while steering
        self.waiting: list[Page] = []  # planned prefetches that found no room after the last operator
        self.demand = self.demand_born = 0  # the recording's peak held and bytes born (planner.demand_of)

    @property
    def recording(self) -> bool:
        return self.mode == RECORDING and self.builder is not None

    @property
    def steering(self) -> bool:
        """A plan is in force at this operator (pre-eviction and DeepUM's window stand down)."""
        return self.mode == RUNNING and not self.left and not self.shadow

    # ------------------------------------------------------------ boundaries
    def boundary(self) -> None:
        """An optimizer step ended: plan what was recorded, or go on with the plan."""
        pager = self.pager
        if pager.trace is not None:  # the step's end on the trace's time line, and how it paged
            pager.trace.step(now_us(), _paged_as(self))
        if not (self.enabled and pager.pressure):
            if self.trial is not None:
                self.trial.began = None  # only steps wholly under pressure are timed
            return
        if self.trial is not None and not self._trial_step():
            return  # online: timing the online choice, or the plan lost
        st = pager.counters
        if self.mode == RECORDING and self.builder is not None and self.builder.eids:
            self._make_plan()
        elif self.mode == RUNNING and not self.left and self.t == len(self.eids):
            st.planned_steps += not self.shadow
        elif self.mode == RUNNING:
            st.plan_departures += 1
            self.mode, self.demand = RECORDING, 0
        else:
            self.mode = RECORDING
        self.shadow = self.mode == RUNNING and self.trial is not None and self.trial.online_next()
        self.t = 0
        self.left = False
        self.mismatches = 0
        self.waiting = []
        self.made, self.views = [], []
        self.watch = {}
        self.letting = _Letting(self.pager)
        if self.mode == RECORDING:
            self._start_recording()
        else:
            self._start_running()

    def _trial_step(self) -> bool:
        """plan="auto": time the step that just ended; whether plans go on (core/plantrial.py)."""
        completed = self.mode == RUNNING and not self.left and self.t == len(self.eids)
        self.trial.step_ended((ONLINE if self.shadow else PLANNED) if completed else None)
        left = self.mode == RUNNING and not completed
        if left:
            self.trial.departed()
        if self.trial.verdict is False:  # the online choice for good
            self.pager.counters.planned_steps += completed and not self.shadow
            self.pager.counters.plan_departures += left
            self.enabled, self.mode, self.plan, self.builder = False, OFF, None, None
            self.left = self.shadow = False
            self.watch, self.letting = {}, _Letting(self.pager)
            return False
        return True

    def _start_recording(self) -> None:
        builder = self.builder = TraceBuilder()
        self.leaving_peak = 0
        for page in self.pager.table.pages.values():
            pid = page.pid = self._new_pid()
            builder.existing(pid, page.skey, page.nbytes, resident=page.state <= ARRIVING,
                             dirty=page.dirty or page.host is None, pageable=page.pageable)

    def _make_plan(self) -> None:
        pager, builder = self.pager, self.builder
        costs = pager.costs
        t0 = time.perf_counter()
        trace = _trace(builder, costs, pager.rebuild_overhead_s)
        self.demand, self.demand_born = demand_of(trace)
        th = pager.config.thresholds
        limit = (pager.table.limit - pager.headroom - pager.table.unpageable_bytes
                 - (self.leaving_peak if th.plan_leaving_room else 0))
        try:
            plan = plan_repeating(trace, builder.skeys, limit, h2d_Bps=costs.h2d_Bps, d2h_Bps=costs.d2h_Bps,
                                  early_copies=th.plan_early_copies, link_price=th.plan_link_price,
                                  lineage_through_dead=th.plan_lineage_through_dead, candidates=th.plan_candidates)
        except ValueError as e:  # a trace that does not add up: stay online, record again
            log.info("deepum: step not planned (%s)", e)
            self.builder = None
            return
        self.plan, self.eids, self.births = plan, builder.eids, builder.creates
        self.uses, self.tail = uses_by_page(trace)
        self.frees = [op.frees for op in trace.ops]
        self.busy = _busy(plan, self.frees)
        self.carry = carry_over(trace, builder.skeys)
        drops = plan.dropped()
        self.recipes_for = drops | {self.carry[p] for p in drops if p in self.carry}
        self.builder, self.mode = None, RUNNING
        pager.counters.plans += 1
        self.plan_seconds += time.perf_counter() - t0
        log.info("deepum: planned a step of %d operators in %.2f s (%d evictions, %d prefetches, "
                 "%.1f ms of recompute, fits: %s)", len(self.eids), time.perf_counter() - t0,
                 plan.stats.get("evictions", 0), len(plan.fetches), plan.recompute_seconds * 1e3,
                 plan.fits)

    def _start_running(self) -> None:
        # The pages alive now carry the page IDs of the step that just ended
        # (recorded or planned); each heir takes its planned role.
        now = {page.pid: page for page in self.pager.table.pages.values()}
        by_pid = self.by_pid = {}
        for pid, heir in self.carry.items():
            page = now.get(heir)
            if page is not None:
                by_pid[pid] = page
        for pid, page in by_pid.items():
            page.pid = pid
        if self.shadow:  # the online choice pages this step
            return
        # The plan starts from where the recorded step or the plan left each page: those it
        # expects on the host go there, those it keeps on the device until used come back.
        start = self.plan.start
        away = [page for pid, page in by_pid.items()
                if pid not in start and page.state <= ARRIVING and page.pageable and not page.pins]
        if away:
            self.pager.evict(away, lambda p: Action.COPY)
        used = self.plan.start_used if self.fetches else ()
        self.pager.prefetch_pages([p for pid, p in by_pid.items() if pid in used and p.state == EVICTED])
        self._execute(-1)

    def _new_pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    # ------------------------------------------------------- per operator
    def begin(self, pages: list[Page], written) -> bool:
        """An operator on ``pages`` is about to run; returns whether the plan steers it."""
        self.using, self.written = pages, written
        steering = self.mode == RUNNING and not self.left and not self.shadow  # (steering, inlined)
        if steering and self.letting.trying:
            self.letting.before(self.by_pid)
        return steering

    def recipe_wanted(self) -> bool:
        """Whether the operator about to run records recipes for its outputs ([Note: the planned step])."""
        t, births = self.t, self.births
        if not (self.mode == RUNNING and not self.left and not self.shadow) or t >= len(births):  # (steering)
            return True
        return not self.recipes_for.isdisjoint(births[t])

    def viewed(self, pages: list[Page]) -> None:
        """Views took ``pages`` before the next operator ([Note: views] in intercept/mode.py)."""
        self.views.extend(pages)

    def freed(self, page: Page) -> None:
        if self.mode == RECORDING and self.builder is not None:
            self.builder.free(page.pid)

    def after(self, eid: int) -> None:
        """Operator ``eid`` ended (the pager's end()): record it, or run the plan after it."""
        made, uses, written = self.made, self.using, self.written
        self.made, self.using, self.written = [], [], ()
        t = self.t
        self.t = t + 1
        if self.mode == RECORDING:
            if self.views:
                uses = list(dict.fromkeys([*uses, *self.views]))
                self.views = []
            self._record(eid, made, uses, written)
        elif not self.left:
            planned = self.births[t] if t < len(self.eids) else None
            if planned is not None and self.eids[t] != eid:
                # The same operator on pages named otherwise (a page made
                # before paging began, say) still follows the plan; many do not.
                self.mismatches += 1
                if self.mismatches > MISMATCHES:
                    planned = None
            if planned is None or len(planned) != len(made):
                self.left = True
                return
            for page, pid in zip(made, planned):
                page.pid = pid
                self.by_pid[pid] = page
            if self.shadow:
                return
            over = self.pager.table.resident_bytes - self.plan.resident[t]
            if over > self.plan.limit // 64:
                # The engine holds more than the plan counted here: what makes
                # the step short of room despite the plan (plan_short_evictions).
                self.pager.counters.plan_over_ops += 1
            if t in self.busy or self.waiting or self.letting.trying or (self.letting.waiting and self.letting.due()):
                self._execute(t, uses)  # (else nothing to do: see _busy and _Letting)

    def _record(self, eid: int, made: list[Page], uses: list[Page], written) -> None:
        builder = self.builder
        leaving = self.pager.table.leaving_bytes
        if leaving > self.leaving_peak:
            self.leaving_peak = leaving
        # The program's frees, not the storages' deaths: a page that recipes
        # read outlives the program's last reference to it (a lineage node),
        # and dies only when they let go. Recording when the program let go
        # (its storage's use count falls to the recipes' one reference) lets
        # the plan count that memory as the program does; the runner then
        # lets such a page go at that point (see _Letting). Autograd lets go
        # of a saved tensor when its node ends, which can be many operators
        # after the tensor's last use, so every such page used in the step is
        # watched until it is let go (the recording step only). One found let
        # go now went before this operator ran (frees fall between operators).
        watch = self.watch
        if watch:
            gone = [pid for pid, page in watch.items()
                    if page.state == DEAD or page.pid != pid or _use_count(page.key) == 1]
            for pid in gone:
                page = watch.pop(pid)
                if page.state != DEAD and page.pid == pid:
                    builder.free(pid)
        for page in uses:
            if not builder.knows(page.pid):
                page.pid = self._new_pid()  # made outside any operator seen (adopted mid-step)
                builder.existing(page.pid, page.skey, page.nbytes, resident=True, dirty=True,
                                 pageable=page.pageable)
        creates = []
        for page in made:
            page.pid = self._new_pid()
            creates.append((page.pid, page.skey, page.nbytes, page.pageable))
        builder.op(eid, tuple(p.pid for p in uses), tuple(p.pid for p in written), creates)
        for page in made:
            r = page.recipe
            if r is not None:
                builder.recipe(page.pid, r.eid, tuple(q.pid for q in r.inputs))
        for page in uses:
            if page.readers:
                watch[page.pid] = page

    def _execute(self, t: int, used=()) -> None:
        """The plan's evictions after operator ``t``, then its prefetches."""
        plan, by_pid = self.plan, self.by_pid
        if t >= 0:
            self.letting.after(by_pid, self.frees[t], plan.kept, plan.releases.get(t, ()))
        out = plan.evictions.get(t)
        if out:
            victims, drop = [], set()
            for pid, action in out:
                page = by_pid.get(pid)
                if page is None or page.pins or page.state != RESIDENT or page.pid != pid:
                    continue
                victims.append(page)
                if action == Action.DROP:
                    drop.add(page)
            if victims:
                self.pager.evict(victims, lambda p: Action.DROP if p in drop else Action.COPY)
                self.pager.counters.planned_evictions += len(victims)
        fetch = plan.prefetches.get(t) if self.fetches else None
        if fetch or self.waiting:
            self.waiting = _fetch(self.pager, self.waiting, [by_pid.get(pid) for pid in fetch or ()], used)

    def victims(self, need: int, scan: int = 64) -> list[Page]:
        """Pages to evict for ``need`` bytes when the step is short of room
        despite the plan: Belady's choice, the ones the recorded step uses
        furthest ahead (pages it does not know go first), among the ``scan``
        least recently used unpinned pages, then the rest in LRU order."""
        return _furthest_used(self.pager.table.lru(), self.by_pid, self.uses, self.tail, self.t, need, scan)

    def late(self, page: Page) -> None:
        """A planned prefetch was waited for: start it earlier next step."""
        if self.steering and self.by_pid.get(page.pid) is page and self.plan.note_late(page.pid):
            self.busy.update(self.plan.prefetches)  # the prefetch starts after another operator now


def _paged_as(plans: StepPlans) -> str:
    """How the step now ending paged: "recorded", "planned", "left the plan", "trial online"
    (plan="auto" timing the online choice) or "online"."""
    if plans.mode == RECORDING and plans.builder is not None and plans.pager.pressure:
        return "recorded"
    if plans.mode == RUNNING:
        if plans.shadow:
            return "trial online"
        return "left the plan" if plans.left or plans.t != len(plans.eids) else "planned"
    return "online"


def _busy(plan: Plan, frees: list) -> set[int]:
    """The planned operators after which _execute has something to do: evictions,
    prefetches, pages the program freed there (some may be let go) or the plan releases.

    After any other operator it runs only while pages wait to be let go or
    prefetches wait for room: with nothing planned there it would only walk
    empty lists.
    """
    busy = {t for t, moves in plan.evictions.items() if moves}
    busy.update(t for t, pids in plan.prefetches.items() if pids)
    busy.update(t for t, pids in plan.releases.items() if pids)
    busy.update(t for t, pids in enumerate(frees) if pids)
    return busy


def _fetch(pager, waiting: list[Page], pages: list, used) -> list[Page]:
    """The plan's prefetches after an operator (``used``: its pages); returns those that
    found no room, to be tried again after the next one.

    [Note: prefetches that wait for frees]
    The plan counts a page prefetched after operator t as resident from t + 1
    on, and the room it counts there is often made by the program's own frees
    after t: autograd lets go of a node's saved tensors once the node's
    operator has returned, after the engine's end of that operator. So a
    prefetch that found no room is tried once more after the next operator,
    with the room that operator's own prefetches leave, and only then left
    to fault where used (counted in plan_prefetch_no_room). One that the next
    operator used came in by its fault and is not tried again: the plan may
    evict it right after. Room that copies out still hold is a different
    cause (Thresholds.plan_leaving_room).
    """
    short = pager.prefetch_pages(pages) if pages else []
    if waiting:
        faulted = set(used)
        again = pager.prefetch_pages([p for p in waiting if p not in faulted])
        pager.counters.plan_prefetch_no_room += len(again) + sum(p in faulted for p in waiting)
    if pager.config.thresholds.plan_prefetch_retry:
        return short
    pager.counters.plan_prefetch_no_room += len(short)
    return []


def _trace(builder: TraceBuilder, costs, overhead: float):
    """The recorded step as the core's trace, each operator priced by its sampled device
    time (or the fallback), each rebuild by that plus ``overhead`` of host time."""

    def op_seconds(eid: int) -> float:
        s = costs.recompute_seconds(eid)
        return s if s is not None else costs.launch_s

    return builder.build(op_seconds, lambda eid: overhead + op_seconds(eid))


class _Trial(PlanTrial):
    """plan="auto" in the glue: each step's host time, from boundary to boundary."""

    def __init__(self, th) -> None:
        super().__init__(th.plan_trial_steps, th.plan_trial_margin, th.plan_trial_settle)
        self.clock = time.perf_counter
        self.began: float | None = None  # None: the step began before pressure did

    def step_ended(self, kind: str | None) -> None:
        """A step of ``kind`` (None: recorded, or it left the plan: no sample) ended now."""
        now = self.clock()
        began, self.began = self.began, now
        if began is None:  # (the step began before pressure did)
            self.last = None
        elif self.ended(kind, now - began) is False and kind is not None:
            log.info("deepum: the planned step was slower than the online choice (median %.1f "
                     "against %.1f ms); paging online from here",
                     *(1e3 * _median(self.times[k]) for k in (PLANNED, ONLINE)))

    def departed(self) -> bool | None:
        if super().departed() is False:
            log.info("deepum: the program left the planned step %d times; paging online from here",
                     self.departures)
        return self.verdict

    @property
    def code(self) -> int:
        """For stats: 1 the plan stays, 0 online for good, -1 not decided."""
        return -1 if self.verdict is None else int(self.verdict)

    def ms(self) -> dict[str, list[float]]:
        """For stats: the trial's timed steps of each way, in milliseconds (why the verdict)."""
        return {k: [round(1e3 * t, 1) for t in v] for k, v in self.times.items()}


class _Letting:
    """Pages the plan lets go after an operator, until the engine can.

    Pages the program let go there in the recorded step, and no dropped page
    needs, are let go (their readers keep their bits, not their recipes), as
    the plan counted them; those the plan keeps as lineage (``kept``) are
    dropped by its evictions instead, and let go where the plan releases
    them (``released``: no dropped page needs them any more).

    Two waits keep the cost per operator small. The recording notes a
    storage's death at the next operator, so the program may still hold a
    page there: it is tried again after each of the next ``RETRIES``
    operators (``trying``). A page a dropped page still needs waits in
    ``waiting`` until that page is rebuilt or dies, looked at again only
    after an operator that rebuilt or released something (a dropped reader
    that died instead is noticed at the next one).
    """

    def __init__(self, pager) -> None:
        self.pager = pager
        self.trying: dict[int, int] = {}  # page ID -> tries left
        self.waiting: dict[int, Page] = {}
        self.stamp = -1

    def now(self) -> int:
        """What moves when a page in ``waiting`` may have become free to go: rebuilds and
        releases so far (after an operator that did neither, ``waiting`` is not looked at)."""
        st = self.pager.counters
        return st.recomputes + st.lineage_released

    def due(self) -> bool:
        """Whether ``waiting`` is to be looked at after this operator (something moved)."""
        return self.stamp != self.now()

    def before(self, by_pid: dict[int, Page]) -> None:
        """An operator is about to run: pages the program let go since the last one go now
        (the recording places those frees after the last one: the plan counts them gone)."""
        trying = self.trying
        for pid in list(trying):
            page = by_pid.get(pid)
            if _letting(page, pid) == _GO:
                self.pager._let_go(page)
                del trying[pid]

    def after(self, by_pid: dict[int, Page], pids, kept, released=()) -> None:
        trying, waiting = self.trying, self.waiting
        for pid in (*pids, *released):
            if pid not in kept or pid in released:
                page = by_pid.get(pid)
                if page is not None and page.readers and page.state != DEAD:
                    trying[pid] = RETRIES
        stamp = self.now()
        if waiting and stamp != self.stamp:
            for pid in list(waiting):
                page = waiting[pid]
                if page.state == DEAD or page.pid != pid or not page.readers:
                    del waiting[pid]
                elif not any(r.dropped for r in page.readers):
                    del waiting[pid]
                    trying[pid] = RETRIES
        self.stamp = stamp
        for pid, left in list(trying.items()):
            page = by_pid.get(pid)
            now = _letting(page, pid)
            if now == _GO:
                self.pager._let_go(page)
            elif now == _WAIT:
                waiting[pid] = page
            elif now == _HELD and left > 1:
                trying[pid] = left - 1
                continue
            del trying[pid]


# Where a page the plan lets go stands (_letting).
_GONE, _WAIT, _HELD, _GO = range(4)


def _letting(page: Page | None, pid: int) -> int:
    """Whether the engine can let ``page`` (planned ID ``pid``) go now.

    _GONE: dead, playing another role, or no recipe reads it any more;
    _WAIT: a dropped page needs it to be rebuilt; _HELD: an operator or the
    program still holds it; _GO: only recipes hold it and none is needed.
    """
    if page is None or page.state == DEAD or page.pid != pid or not page.readers:
        return _GONE
    if any(r.dropped for r in page.readers):
        return _WAIT
    if page.pins or _use_count(page.key) != 1:
        return _HELD
    return _GO


def _furthest_used(lru, by_pid: dict[int, Page], uses: dict[int, list[int]], tail: dict[int, int], t: int,
                   need: int, scan: int) -> list[Page]:
    """StepPlans.victims: from pages in LRU order, about ``need`` bytes, furthest next use first."""
    ranked, rest, found = [], [], 0
    for page in lru:
        if page.pins:
            continue
        if len(ranked) < scan:
            pid = page.pid
            if by_pid.get(pid) is page and pid in uses:
                u = uses[pid]
                i = bisect.bisect_left(u, t)
                nu = u[i] if i < len(u) else tail.get(pid, NEVER)
            else:
                nu = NEVER + 1
            ranked.append((-nu, len(ranked), page))
        elif found >= need:
            break
        else:
            rest.append(page)
        found += page.nbytes
    ranked.sort()
    chosen, got = [], 0
    for page in [r[2] for r in ranked] + rest:
        if got >= need:
            break
        chosen.append(page)
        got += page.nbytes
    return chosen
