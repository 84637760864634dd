"""Replaying a plan: what it would cost, checked independently of the planner.

:func:`simulate` runs the step as the engine would execute the plan: each
link direction is one queue (a copy starts when the link is free, the page's
copy out is done, and its slot has come), compute waits for a prefetch that
has not arrived, a page used while on the host is faulted in on demand, and a
dropped page is rebuilt (its dropped inputs first) when used. It reports the
peak residency, the bytes moved each way, the recompute seconds and the stall,
and raises ValueError for a plan that cannot be carried out (evicting a page
the operator needs, dropping a page that cannot be rebuilt).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field

from .remat_policy import Action
from .steptrace import Plan, StepTrace

NEVER = 1 << 60  # never used again


def uses_by_page(trace: StepTrace) -> tuple[dict[int, list[int]], dict[int, int]]:
    """Per page, the ops that use it in order, and its next use after the last
    one: NEVER if freed in the step, else the next step's first use (n + first
    use) for a page the step begins with, else FAR (some later step)."""
    n = len(trace.ops)
    uses: dict[int, list[int]] = {p: [] for p in trace.pages}
    born, freed = set(), set()
    for t, op in enumerate(trace.ops):
        for p in op.uses:
            uses[p].append(t)
        born.update(op.creates)
        freed.update(op.frees)
    tail = {}
    for p, u in uses.items():
        if p in freed:
            tail[p] = NEVER
        elif p not in born and u:
            tail[p] = n + u[0]
        else:
            tail[p] = FAR if n else NEVER
    return uses, tail


FAR = NEVER - 1


@dataclass
class SimResult:
    peak_bytes: int = 0
    h2d_bytes: int = 0
    d2h_bytes: int = 0
    recompute_seconds: float = 0.0
    stall_seconds: float = 0.0
    step_seconds: float = 0.0
    demand_faults: int = 0
    late: list[tuple[int, int]] = field(default_factory=list)   # (op, page) waited on
    over_limit: list[tuple[int, int]] = field(default_factory=list)  # (op, bytes over)
    resident: list[int] = field(default_factory=list)


class _Replay:
    def __init__(self, trace: StepTrace, plan: Plan, limit: int) -> None:
        self.trace, self.plan, self.limit = trace, plan, limit
        self.spec = trace.pages
        born = {p for op in trace.ops for p in op.creates}
        self.res = {p for p, s in self.spec.items() if p not in born and (s.resident or not s.pageable)}
        self.unborn = set(born)
        self.dropped: set[int] = set()
        self.broken: set[int] = set()
        self.dead: set[int] = set()
        # Rebuilt this op: they let go of their recipes' inputs once it ran.
        self.rebuilt: list[int] = []
        self.dirty = {p: s.dirty or p in born for p, s in self.spec.items()}
        self.arrive: dict[int, float] = {}
        self.out_done: dict[int, float] = {}
        self.holders: dict[int, set[int]] = {}
        self.mem = sum(self.spec[p].nbytes for p in self.res)
        self.now = self.h2d_free = self.d2h_free = 0.0
        self.r = SimResult()
        self.h2d_Bps = self.d2h_Bps = 1.0
        self.uses, self.tail = uses_by_page(trace)
        self.kept: set[int] = set()

    def bandwidth(self, h2d: float, d2h: float) -> None:
        self.h2d_Bps, self.d2h_Bps = h2d, d2h

    def slot(self, i: int, need: set[int]) -> None:
        for p, action in self.plan.evictions_after(i):
            if p in self.kept and p not in self.res:
                continue  # dropped where the program freed it (keep()); back later, it leaves again
            if p in need or p not in self.res or p in self.arrive:
                raise ValueError(f"plan evicts page {p} after op {i}, which is not resident or is needed next")
            self.res.discard(p)
            self.mem -= self.spec[p].nbytes
            if action == Action.DROP:
                self.dropped.add(p)
                for q in self.spec[p].recipe_inputs:
                    self.holders.setdefault(q, set()).add(p)
            elif self.dirty[p]:
                self.d2h_free = max(self.now, self.d2h_free) + self.spec[p].nbytes / self.d2h_Bps
                self.out_done[p] = self.d2h_free
                self.r.d2h_bytes += self.spec[p].nbytes
                self.dirty[p] = False
        for p in self.plan.prefetches_after(i):
            if p in self.res or p in self.dropped:
                raise ValueError(f"plan prefetches page {p} after op {i}, which is not on the host")
            b = self.spec[p].nbytes
            self.h2d_free = max(self.now, self.h2d_free, self.out_done.get(p, 0.0)) + b / self.h2d_Bps
            self.arrive[p] = self.h2d_free
            self.res.add(p)
            self.mem += b
            self.r.h2d_bytes += b

    def wait_for_copies(self, t: int) -> None:
        """Op t begins only when the copies out still in flight leave it room (oldest first)."""
        flying = sorted((done, p) for p, done in self.out_done.items() if done > self.now and p not in self.res)
        held = sum(self.spec[p].nbytes for _, p in flying)
        for done, p in flying:
            if self.mem + held <= self.limit:
                break
            self.r.stall_seconds += done - self.now
            self.r.late.append((t, p))
            self.now = done
            held -= self.spec[p].nbytes

    def bring(self, p: int, t: int) -> None:
        """Make p resident for op t: wait for its arrival, fault it in, or rebuild it."""
        if p in self.arrive:
            at = self.arrive.pop(p)
            if at > self.now:
                self.r.stall_seconds += at - self.now
                self.r.late.append((t, p))
                self.now = at
            return
        if p in self.res:
            return
        b = self.spec[p].nbytes
        if p in self.dropped:
            s = self.spec[p]
            if s.rebuild_seconds is None or p in self.broken:
                raise ValueError(f"op {t} needs page {p}, which was dropped but cannot be rebuilt")
            for q in s.recipe_inputs:
                self.bring(q, t)
            self.dropped.discard(p)
            self.rebuilt.append(p)
            self.r.recompute_seconds += s.rebuild_seconds
            self.now += s.rebuild_seconds
            self.dirty[p] = True
        else:
            start = max(self.now, self.h2d_free, self.out_done.get(p, 0.0))
            self.h2d_free = start + b / self.h2d_Bps
            self.r.stall_seconds += self.h2d_free - self.now
            self.now = self.h2d_free
            self.r.h2d_bytes += b
            self.r.demand_faults += 1
        self.res.add(p)
        self.mem += b

    def unhold(self, r: int) -> None:
        for q in self.spec[r].recipe_inputs:
            held = self.holders.get(q)
            if held is not None:
                held.discard(r)
                if not held:
                    del self.holders[q]
                    if q in self.dead:
                        self.free(q)

    def unused_from(self, r: int, t: int) -> list[int] | None:
        """Dropped page r and the dropped pages that need it, if none is used
        from op t on (nor after the step); else None."""
        out, stack, seen = [], [r], {r}
        while stack:
            x = stack.pop()
            u = self.uses[x]
            if bisect.bisect_left(u, t) < len(u) or self.tail[x] < NEVER:
                return None
            out.append(x)
            for y in self.holders.get(x, ()):
                if y in self.dropped and y not in seen:
                    seen.add(y)
                    stack.append(y)
        return out

    def let_go(self, pages: list[int]) -> None:
        for x in pages:
            self.dropped.discard(x)
            self.unhold(x)

    def keep(self, p: int, holders: tuple[int, ...]) -> None:
        """The plan drops p where the program frees it, for ``holders``' recipes."""
        self.kept.add(p)
        if p in self.res:  # dropped where it is freed
            self.res.discard(p)
            self.mem -= self.spec[p].nbytes
            self.dropped.add(p)
            for q in self.spec[p].recipe_inputs:
                self.holders.setdefault(q, set()).add(p)
        # (On the host or dropped already: it stays so, for its holders too.)
        self.holders[p] = set(holders)

    def free(self, p: int) -> None:
        if p in self.res:
            self.res.discard(p)
            self.mem -= self.spec[p].nbytes
        self.dropped.discard(p)
        self.unhold(p)  # (a page no dropped page reads holds nothing: a no-op)
        self.arrive.pop(p, None)


def _needs(trace: StepTrace, t: int, sim: _Replay) -> set[int]:
    op = trace.ops[t]
    need = set(op.uses)
    for w in op.writes:
        for r in list(sim.holders.get(w, ())):
            if r not in sim.dropped:
                continue
            gone = sim.unused_from(r, t)
            if gone is None:
                need.add(r)  # rebuilt before the write
            else:
                sim.let_go(gone)  # nobody reads them again: not rebuilt (as the planner and glue do)
    return need


def simulate(trace: StepTrace, plan: Plan, limit: int, h2d_Bps: float | None = None,
             d2h_Bps: float | None = None, watch: Callable[[int, _Replay], None] | None = None,
             copy_wait: bool = False) -> SimResult:
    """Replay ``plan`` on ``trace`` under ``limit`` (bandwidths default to the plan's);
    ``watch(t, replay)`` sees the replay's state while op t runs (for studies of a plan).
    ``copy_wait``: a page copied out holds its memory until its copy has ended, and an
    operator that would pass the limit with such memory counted waits for copies to end
    (as on CUDA, where the planner does not model it: docs/BENCHMARKS.md, session 20)."""
    sim = _Replay(trace, plan, limit)
    sim.bandwidth(h2d_Bps or plan.h2d_Bps, d2h_Bps or plan.d2h_Bps)
    r = sim.r
    readers: dict[int, list[int]] = {}
    for p, s in trace.pages.items():
        for q in s.recipe_inputs:
            readers.setdefault(q, []).append(p)
    for t, op in enumerate(trace.ops):
        sim.slot(t - 1, _needs(trace, t, sim))
        for p in _needs(trace, t, sim):
            sim.bring(p, t)
        for p in op.creates:
            sim.unborn.discard(p)
            sim.res.add(p)
            sim.mem += trace.pages[p].nbytes
        if copy_wait:
            sim.wait_for_copies(t)
        r.resident.append(sim.mem)
        if watch is not None:
            watch(t, sim)
        r.peak_bytes = max(r.peak_bytes, sim.mem)
        if sim.mem > limit:
            r.over_limit.append((t, sim.mem - limit))
        sim.now += op.seconds
        for w in op.writes:
            sim.dirty[w] = True
            sim.broken.add(w)
            sim.broken.update(q for q in readers.get(w, ()) if q not in sim.unborn)
        for p in sim.rebuilt:
            sim.unhold(p)
        sim.rebuilt.clear()
        for p in op.frees:
            if p in plan.kept:
                sim.keep(p, plan.kept[p])
        for p in op.frees:
            sim.dead.add(p)
            if not sim.holders.get(p):
                sim.free(p)
    r.step_seconds = sim.now
    return r
