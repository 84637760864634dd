"""The offline planner: keep, drop-and-recompute, or copy-out-and-prefetch-back.

From one recorded step (:class:`~.steptrace.StepTrace`) the planner decides,
for every page at every point of the step, whether it stays on the device, is
dropped and rebuilt from its recipe when next used, or is copied to the host
and prefetched back in time. It is a greedy simulation of the step, in the
spirit of Belady's optimal replacement and of Capuchin (Peng et al., ASPLOS
2020), with DTR's cost per byte.

The rule
--------
Walk the operators in order, keeping the set of resident pages. Before op
``t`` runs, its *working set* must be resident: the pages it uses, the pages
it creates, and, for each dropped page it uses, the pages that page's recipe
reads (rebuilt first if they are dropped too). If that does not fit the limit,
evict pages that op ``t`` does not need, one at a time:

1. Look at the ``candidates`` resident pages whose next use is furthest
   ahead (Belady: a page needed last is the cheapest to be without); pages
   under :data:`SMALL_SHARE` of the limit only when none of those can go.
2. Price each one's two ways out. *Drop*: its rebuild seconds, plus those of
   its dropped ancestors (each once). *Copy*: the seconds the compute would stall because the
   link cannot move the page out and back in before its next use, plus
   ``link_price`` (:data:`LINK_PRICE`: all of it) of the link time the round
   trip takes, plus :data:`MOVE_S` of host time for each copy (out, and back in this step or
   the next). The link is booked as a fluid (:mod:`.linkcap`): the copy out takes capacity
   right after the eviction, the copy in right before the next use; whatever
   does not fit is a stall. The link price is there because the sweep is
   greedy and the fluid is optimistic: link time spent now is link time a
   page evicted later may lack, and a copy that the fluid hides still costs
   the host its launches and the device the memory traffic. So a page that
   rebuilds in less than its round trip takes (a cast, a pointwise output, a
   norm) is dropped even while the link is idle, and one that rebuilds in
   more (most matmul outputs) is copied. A tenth, the price until session
   15, copied more and ran slower on most model families measured
   (docs/BENCHMARKS.md, session 15).
3. Take the page with the least ``cost / (bytes x distance to next use)``
   (ties: furthest next use), the cheaper way (ties: drop). Book its copy on
   the link; its prefetch starts at the first slot its copy in was booked in.

[Note: copies leave early]
A page chosen to be copied out before op ``t`` is evicted right after the
last operator that needed it, not right before op ``t``: on CUDA its memory
is free only once its copy over the link has ended, so a copy started just
before the room is needed makes that operator wait for it (and the plan's
prefetches find no room meanwhile). Started after the last use, the same
copy has the operators in between to end. It joins the first batch of
evictions already planned after its last use, if one comes before op
``t`` (each batch is one launch of copies and one event on the GPU, a
host cost of its own). The plan still counts the page
on the device until op ``t`` (it never counts room the step lacks); a
dropped page frees its memory at once and is dropped right before op ``t``.

A prefetch in flight holds device memory from its start. When room is short
and the only pages left to evict are needed sooner than a page in flight, that
prefetch gives way: it starts again as late as its copy alone allows.

A dropped page holds the pages its recipe reads. Those may then be dropped
themselves (a chain, at most :data:`MAX_DEPTH` deep) but not copied; one
already on the host is booked to come back by the rebuild. If the program
frees an input held so, it stays, holding memory, until no dropped page needs
it (DTR's lineage); a freed page that is itself dropped keeps holding its own
inputs. A page the program frees while live pages' recipes read it is kept
so too (dropped there if resident), unless it would hold on the device a page
the program already freed ([Note: no lineage through freed pages]). A write to a page first rebuilds the dropped pages whose recipes read
it, and ends its own recipe and those of its readers; so a page whose recipe
reads what op ``t`` writes is never dropped to make room for op ``t``.

So recompute time goes where copies would stall the compute or eat link time
that dearer pages need: casts and pointwise outputs first, matmuls and
attention last.

A worked example
----------------
Three ops of 1 s each, a link of 2 bytes/s each way, a limit of 8 bytes.
Op 0 creates A (4 B, a large matmul's output, rebuild 5 s); op 1 reads A
and creates B (4 B, a cast, rebuild 0.01 s); op 2 reads B, creates C (4 B,
no recipe) and frees B; op 3 reads A and C. Before op 2 the working set
{B, C} and A make 12 B, so one page that op 2 does not need must go: only
A. Copying A out and back moves 4 B each way, 4 s of link, with 1 s of
compute (op 2) before its use: about 3 s of stall, plus the link price (4 s
at the default of all of it). Dropping it costs 5 s. So the plan drops A
after op 1 and rebuilds it for op 3 (``evictions == {1: [(A, DROP)]}``).
Put five 1 s ops between op 2 and op 3 and the copy hides (it costs only
its link price, 4 s, under the 5 s rebuild): the plan copies A out after
op 1 and starts its prefetch after op 5, two ops ahead of its use, and
recomputes nothing. With a limit of 6 B, op 1 alone needs 8 B: the plan
records ``short_op == 1, short_bytes == 2``.

Cost: each eviction looks at ``candidates`` pages (a heap keyed by next use,
k of them: O(k log k)) and books the link in O(log n); the whole plan is
O(evictions x k log k + (ops + pages) log n).
A candidate whose price cannot beat the best one so far is not priced in
full: a drop costs at least the page's own rebuild and a copy at least its
link time and moves (:meth:`_Prices.floor_per_byte`), and asking the link's
booking is the dearest part of a price. The plan is the same; more
candidates cost less time to weigh.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from collections.abc import Callable

from .config import Thresholds
from .costs import DEFAULT_LINK_BPS
from .linkcap import LinkCapacity
from .remat_policy import Action
from .replay import NEVER, SimResult, simulate, uses_by_page
from .steptrace import Fetch, OpSpec, PageSpec, Plan, StepTrace

__all__ = ["Action", "Fetch", "OpSpec", "PageSpec", "Plan", "SimResult", "StepTrace", "plan_step",
           "simulate"]

MAX_DEPTH = 8
LINK_PRICE = Thresholds.plan_link_price  # the one config holds the number
CANDIDATES = Thresholds.plan_candidates
# [Note: a plan that fits first]
# The sweep is greedy: each page it drops keeps the inputs its rebuild reads
# (lineage), so a step planned at a high link price, with many drops, can
# find an operator late in the step that no eviction makes fit (a tight limit,
# the synthetic transformer at 0.35 of its peak). Copies hold nothing. So a
# plan that does not fit is made again at this price, and the one that falls
# shorter by fewer bytes is kept: room first, then the price of getting it.
FALLBACK_PRICE = 0.1
# Host seconds the engine spends on one page for each copy (its share of a
# batch's launch, events and bookkeeping), charged even when the link is
# idle: a page of a few bytes (a normalisation layer's step counter) frees
# nothing, and evicted where it is not needed again this step it faults back
# in the next one (ResNet-152's counters, every planned step: docs/BENCHMARKS.md, session 11).
MOVE_S = 15e-6
# Pages under this share of the limit are victims only when no larger page
# can go (as the online choice's Thresholds.victim_small): they free next to
# no room for a copy's fixed cost each way.
SMALL_SHARE = 1 / 65536
# Skip candidates whose price has a lower bound no better than the best so far
# (the Cost paragraph above); False prices every one, for tests of the bound.
PRUNE = True
# A floor and a price may round apart by an ulp: the sweep stops at a floor past
# the best price by more than that, so rounding never changes the choice.
SLACK = 1.0 + 1e-9
NEW, RES, ARR, OUT, DROP, GONE = range(6)


def plan_step(trace: StepTrace, limit: int, h2d_Bps: float = DEFAULT_LINK_BPS,
              d2h_Bps: float = DEFAULT_LINK_BPS, *, candidates: int = CANDIDATES,
              link_price: float = LINK_PRICE, move_s: float = MOVE_S,
              tails: dict[int, int] | None = None, early_copies: bool = True,
              lineage_through_dead: bool = False) -> Plan:
    """Plan one step under ``limit`` bytes with the link's bandwidth each way.

    ``candidates``: pages priced per eviction (the furthest used);
    ``link_price``: the share of a copy's link time charged even when the
    copy hides (see the module's rule, step 2); ``move_s``: host seconds
    each copy of a page costs, however small (:data:`MOVE_S`); ``tails``: for some pages,
    when they are next used after the step (as :func:`~.replay.uses_by_page`
    counts it), where the caller knows better (:func:`plan_repeating`);
    ``early_copies``: copies out leave right after the page's last use
    ([Note: copies leave early]), else right before the room is needed;
    ``lineage_through_dead``: a resident page the program frees may be kept as
    lineage although its recipe reads freed pages (the rule before session 18;
    [Note: no lineage through freed pages]).
    """
    if limit <= 0 or h2d_Bps <= 0 or d2h_Bps <= 0 or candidates < 1 or link_price < 0 or move_s < 0:
        raise ValueError("limit, bandwidths and candidates must be positive, link_price and move_s >= 0")
    trace.validate()
    plan = None
    for price in (link_price, FALLBACK_PRICE) if link_price > FALLBACK_PRICE else (link_price,):
        sweep = _Sweep(trace, limit, h2d_Bps, d2h_Bps, candidates, price, move_s, early_copies,
                       lineage_through_dead)
        if tails:
            sweep.tail.update(tails)
        tried = sweep.run()
        if plan is None or tried.short_bytes < plan.short_bytes:
            plan = tried
        if plan.fits:
            break
    return plan


def carry_over(trace: StepTrace, skeys: dict[int, int]) -> dict[int, int]:
    """For each page the step begins with, the page alive after the last
    operator that plays its role in the next step.

    A page the step does not free plays its own role again (a parameter); one
    it frees hands its role to the newest page alive at the end with the same
    stable key in ``skeys`` (the gradient of the last step, made again in this
    one). Pages with no such heir are left out.
    """
    born = [p for op in trace.ops for p in op.creates]
    freed = {p for op in trace.ops for p in op.frees}
    heirs: dict[int, int] = {}
    for p in born:  # in birth order: the newest wins
        if p not in freed and p in skeys:
            heirs[skeys[p]] = p
    carry = {}
    born_set = set(born)
    for p in trace.pages:
        if p in born_set:
            continue
        if p not in freed:
            carry[p] = p
        elif p in skeys and skeys[p] in heirs:
            carry[p] = heirs.pop(skeys[p])
    return carry


def plan_repeating(trace: StepTrace, skeys: dict[int, int], limit: int, **kw) -> Plan:
    """Plan a step that repeats.

    Two things the recorded step alone does not say follow from its repeating
    (roles matched by :func:`carry_over`):

    * when a page alive at the end is next used: when its predecessor was
      first used in this step, or never if the predecessor was freed unused
      (the intermediates that live until the program lets go of a step's
      outputs early in the next one);
    * where the step begins: each page the step begins with starts on the
      device if the recorded step found it there or the plan leaves its heir
      there (planning from the plan's end alone can swing: a page the first
      plan evicts starts off the device in the second, which then keeps its
      heir). Starting from the union never plans for room the step lacks;
      a page planned as resident that is not is simply not evicted again.
    """
    carry = carry_over(trace, skeys)
    tails = _tails(trace, carry)
    first = plan_step(trace, limit, tails=tails, **kw)
    pages = dict(trace.pages)
    for p, q in carry.items():
        s = pages[p]
        pages[p] = PageSpec(s.nbytes, s.resident or q in first.final, s.rebuild_seconds,
                            s.recipe_inputs, s.dirty, s.pageable)
    return plan_step(StepTrace(trace.ops, pages), limit, tails=tails, **kw)


def held_at(trace: StepTrace, born: set[int] | None = None) -> list[int]:
    """Bytes the program holds at each operator of the step, its outputs made and nothing
    paged: the pages it began with and those born so far, less those it freed
    (its own frees: a page that recipes keep after the program let go is not counted)."""
    if born is None:
        born = {p for op in trace.ops for p in op.creates}
    held = sum(s.nbytes for p, s in trace.pages.items() if p not in born)
    peaks = []
    for op in trace.ops:
        held += sum(trace.pages[p].nbytes for p in op.creates)
        peaks.append(held)
        held -= sum(trace.pages[p].nbytes for p in op.frees)
    return peaks


def demand_of(trace: StepTrace) -> tuple[int, int]:
    """(peak of :func:`held_at`, bytes of the pages the step makes): what a recorded step
    demands unpaged, and a mark of it (a step of other sizes makes other bytes)."""
    return max(held_at(trace), default=0), sum(trace.pages[p].nbytes for op in trace.ops for p in op.creates)


def _tight_from(trace: StepTrace, limit: int, born: set[int]) -> int:
    """The first operator from which on the pages the program holds always fit ``limit``
    (0: the whole step fits; len(ops): not even its last operator).

    A freed page is kept as lineage only before this point: after it no page
    is evicted, so no reader will be dropped and need it (a step that fits
    throughout is then planned without a single eviction, and the session's
    dormancy sees a calm step).
    """
    peaks = held_at(trace, born)
    t = len(peaks)
    while t > 0 and peaks[t - 1] <= limit:
        t -= 1
    return t


def _tails(trace: StepTrace, carry: dict[int, int]) -> dict[int, int]:
    """Next use after the step of each heir born in it (see :func:`plan_repeating`)."""
    n = len(trace.ops)
    first: dict[int, int] = {}
    freed: set[int] = set()
    for t, op in enumerate(trace.ops):
        for p in op.uses:
            first.setdefault(p, t)
        freed.update(op.frees)
    tails = {}
    for p, q in carry.items():
        if p == q:
            continue
        if p in first:
            tails[q] = n + first[p]
        elif p in freed:
            tails[q] = NEVER
    return tails


class _Prices:
    """The pricing half of the sweep: what evicting a page would cost, and the
    link bookings that decide it (the state it reads is :class:`_Sweep`'s)."""

    spec: dict[int, PageSpec]
    state: dict[int, int]
    dirty: dict[int, bool]
    broken: set[int]
    pending: dict[int, set[int]]
    depth: dict[int, int]
    fetch_of: dict[int, Fetch]
    writes_now: set[int]
    n: int
    k: int  # candidates per eviction
    key: dict[int, int]  # page -> the next use its live heap entry has
    plan: Plan
    own_next: Callable[[int], int]

    def __init__(self, trace: StepTrace, h2d: float, d2h: float, link_price: float, move_s: float) -> None:
        seconds = [op.seconds for op in trace.ops]
        self.h2d_Bps, self.d2h_Bps = h2d, d2h
        self.h2d, self.d2h = LinkCapacity(seconds, h2d), LinkCapacity(seconds, d2h)
        self.cum = list(itertools.accumulate(seconds, initial=0.0))
        self.link_price = link_price
        self.move_s = move_s

    def price(self, t: int, p: int, nu: int, bound: float = math.inf) -> tuple[float, Action] | None:
        """(h, action) for evicting p before op t; None if it cannot go, or if its h
        must be over ``bound`` (the best candidate's so far; an equal one may still win its tie)."""
        b = self.spec[p].nbytes
        # Pages not needed again this step are priced as if used two steps on.
        per = max(b, 1) * max(1, min(nu, 2 * self.n) - t)
        drop = self.drop_cost(p, t, nu)
        if min(math.inf if drop is None else drop, self.copy_floor(p, nu)) / per > bound * SLACK:
            # Neither way out can beat the best so far: the link's booking,
            # the dearest part of a price, is not asked (the choice is the same).
            return None
        # A page dropped readers need may be copied too: ``nu`` counts their
        # rebuilds, so its copy in is booked before the first of them.
        copy = self.copy_stall(t, p, nu)
        if drop is not None and drop <= copy:
            cost, action = drop, Action.DROP
        else:
            cost, action = copy, Action.COPY
        return cost / per, action

    def floor_per_byte(self, p: int, nu: int) -> float:
        """A lower bound of price()'s h times the distance to the next use, from the page
        alone: a drop costs at least its own rebuild (nothing if never used again), a copy
        at least copy_floor(). It stays the same at every op until p's next use or its
        dirtiness changes, so the sweep keeps it with p's heap entry."""
        s = self.spec[p]
        drop = 0.0 if nu >= NEVER else (math.inf if s.rebuild_seconds is None else s.rebuild_seconds)
        return min(drop, self.copy_floor(p, nu)) / max(s.nbytes, 1)

    def drop_cost(self, p: int, t: int, nu: int) -> float | None:
        s = self.spec[p]
        if s.rebuild_seconds is None or p in self.broken or self.writes_now.intersection(s.recipe_inputs):
            return None  # (a write by op t would rebuild it at once, and end its recipe)
        if self.own_next(p) >= self.n and nu < NEVER:
            return None  # needed by a later step: its inputs may not last that long
        cost, depth, seen = s.rebuild_seconds, 1, set()
        for q in s.recipe_inputs:
            st = self.state[q]
            if st == DROP:
                cost += self.drop_cost_dropped(q, seen)
                depth = max(depth, self.depth[q] + 1)
            elif st == OUT:
                # On the host: it must come back by nu instead of its own use.
                f = self.fetch_of.get(q)
                if nu < self.n and (f is None or f.use > nu):
                    b = self.spec[q].nbytes
                    cost += max(0, b - self.h2d.free(t + 1, nu)) / self.h2d_Bps
            elif st not in (RES, ARR):
                return None
        if depth > MAX_DEPTH:
            return None
        # Never used again: dropping it costs nothing (a copy would be wasted).
        return 0.0 if nu >= NEVER else cost

    def drop_cost_dropped(self, q: int, seen: set[int]) -> float:
        """Rebuild seconds of dropped q and its dropped ancestors not in ``seen``, each once
        (as a rebuild meets them; a walk per path was exponential in the chains' shared
        ancestors: docs/BENCHMARKS.md, session 11)."""
        if q in seen:
            return 0.0
        seen.add(q)
        cost, stack = 0.0, [q]
        while stack:
            s = self.spec[stack.pop()]
            cost += s.rebuild_seconds or 0.0
            for r in s.recipe_inputs:
                if r not in seen and self.state[r] == DROP:
                    seen.add(r)
                    stack.append(r)
        return cost

    def copy_floor(self, p: int, nu: int) -> float:
        """copy_stall() with no stall: what a copy costs at least, without the link's booking."""
        b = self.spec[p].nbytes
        dirty = self.dirty[p]
        link = (b / self.d2h_Bps if dirty else 0.0) + (b / self.h2d_Bps if nu < self.n else 0.0)
        return self.link_price * link + (int(dirty) + (nu < NEVER)) * self.move_s

    def copy_stall(self, t: int, p: int, nu: int) -> float:
        """Seconds of stall the copy out and back would cause, plus its link price."""
        b = self.spec[p].nbytes
        stall, ready, link = 0.0, t + 1, 0.0
        if self.dirty[p]:
            e, deficit = self.d2h.fill_point(t, b)
            stall += deficit / self.d2h_Bps
            ready = max(ready, e + 1)
            link += b / self.d2h_Bps
        moves = int(self.dirty[p])
        if nu < self.n:
            stall += max(0, b - self.h2d.free(ready, nu)) / self.h2d_Bps
            link += b / self.h2d_Bps
        if nu < NEVER:  # back in this step or the next
            moves += 1
        return stall + self.link_price * link + moves * self.move_s

    def _best_of(self, heap: list, t: int, need: set[int]) -> tuple[int, int, Action] | None:
        """The least ``cost / (bytes x distance)`` among the ``k`` furthest-used of ``heap``
        (ties: the furthest used), as (next use, page, action)."""
        # [Note: a floor kept with the entry]
        # A page's heap entry is made when its next use is known (push), with
        # floor_per_byte() as it is then. Until the page is pushed again its
        # next use stays, and its dirtiness can only have grown (a write, a
        # rebuild), which makes a copy dearer: the kept floor is still a lower
        # bound. The candidates are priced cheapest floor first, so once a
        # floor passes the best price found, no later one can win.
        seen, back, cands = 0, [], []
        state, key, far = self.state, self.key, 2 * self.n
        while heap and seen < self.k:
            entry = heapq.heappop(heap)
            nu, p = -entry[0], entry[2]
            if state[p] != RES or key.get(p) != nu:
                continue
            back.append(entry)
            if p in need:
                continue
            cands.append((entry[3] / max(1, min(nu, far) - t), seen, nu, p))
            seen += 1
        self.plan.stats["candidates"] += seen
        for entry in back:
            heapq.heappush(heap, entry)
        if PRUNE:
            cands.sort()
        best = None  # (h, order in the heap, next use, page, action)
        for floor, order, nu, p in cands:
            if best is not None and PRUNE and floor > best[0] * SLACK:
                break  # (price() would say so of this one and of every one after it)
            priced = self.price(t, p, nu, math.inf if best is None else best[0])
            if priced is not None and (best is None or (priced[0], order) < best[:2]):
                best = (priced[0], order, nu, p, priced[1])
        return None if best is None else best[2:]


class _Lineage(_Prices):
    """The sweep's bookkeeping of dropped pages and the inputs they hold."""

    pending: dict[int, set[int]]
    depth: dict[int, int]
    dead: set[int]
    mem: int
    push: Callable[[int], None]
    evict_at: Callable[[int, int, Action], None]
    readers: dict[int, list[int]]
    plan: Plan

    def next_use(self, p: int) -> int:
        """p's own next use, or sooner that of a dropped page whose rebuild needs it
        (through chains of dropped pages; each page visited once)."""
        return self._next_through(p, dropped_only=False)

    def next_use_dropped(self, r: int) -> int:
        """r's own next use, or sooner that of a *dropped* page whose rebuild needs it.

        Before a write to a recipe input this, not :meth:`next_use`, decides
        whether dropped r is rebuilt or let go: pages still on the device that
        would like r for a later drop of their own (a kept lineage page's
        holders) do not keep it, as the glue and the replay do not.
        """
        return self._next_through(r, dropped_only=True)

    def _next_through(self, p: int, dropped_only: bool) -> int:
        def needing(x: int):
            held = self.pending.get(x, ())
            return [y for y in held if self.state[y] == DROP] if dropped_only else list(held)

        nu = self.own_next(p)
        stack, seen = needing(p), set()
        while stack:
            r = stack.pop()
            if r in seen:
                continue
            seen.add(r)
            nu = min(nu, self.own_next(r))
            stack.extend(needing(r))
        return nu

    def _holds_dead(self, p: int) -> bool:
        """Does dropped p's recipe read, directly or through dropped pages, a page the program freed?"""
        stack, seen = list(self.spec[p].recipe_inputs), set()
        while stack:
            q = stack.pop()
            if q in seen:
                continue
            seen.add(q)
            if q in self.dead:
                return True
            if self.state[q] == DROP:
                stack.extend(self.spec[q].recipe_inputs)
        return False

    def let_go(self, r: int) -> None:
        """Dropped page r and the dropped pages that need it are gone."""
        stack = [r]
        while stack:
            x = stack.pop()
            if self.state[x] != DROP:
                continue
            stack.extend(self.pending.get(x, ()))
            self.depth.pop(x, None)
            self.unhold(x)
            self.release(x)

    def unhold(self, r: int) -> None:
        """Dropped page r was rebuilt or died: its recipe's inputs are free of it."""
        for q in self.spec[r].recipe_inputs:
            held = self.pending.get(q)
            if held is None:
                continue
            held.discard(r)
            if not held:
                del self.pending[q]
                if q in self.dead:
                    # Gone now, dropped or not: a page still on the device can hold
                    # pages too, as a kept lineage page's holder (keep()), and
                    # must let them go as it goes, as a freed page does (retire).
                    self.depth.pop(q, None)
                    self.unhold(q)
                    self.release(q)
                else:
                    self.push(q)

    def release(self, p: int) -> None:
        if self.state[p] in (RES, ARR):
            self.mem -= self.spec[p].nbytes
        if p in self.dead and self.state[p] != GONE:
            # Freed by the program, held until now: the runner lets it go here.
            self.plan.releases.setdefault(self.now, []).append(p)
        self.state[p] = GONE


    def keep(self, t: int, p: int) -> bool:
        """Keep p as lineage where the program frees it, rather than let it go,
        when pages with recipes that read it live on: they can still be
        dropped later instead of copied (DTR's lineage). A resident p is
        dropped here (it holds no memory); one already on the host or
        dropped stays so. Returns whether it was kept."""
        s = self.spec[p]
        st = self.state[p]
        if st not in (RES, OUT, DROP) or not s.pageable or t + 1 >= self.tight:
            return False  # (from t + 1 on, what the program holds fits: no reader will be dropped)
        if (st == DROP or (st == RES and not self.through_dead)) and self._holds_dead(p):
            # [Note: no lineage through freed pages]
            # Kept, a dropped p (or a resident one, dropped here) would hold
            # inputs the program has freed (with their own inputs) for its
            # holders' sake, for as long as any holder may be rebuilt: chains
            # of freed pages pile up behind each kept page. On the recorded
            # ViT-L step a dropped p kept so made the plan copy more (session
            # 7). A resident p kept so did the same on the recorded
            # Llama-family step (session 18): each fp32 gradient's cast read a
            # bf16 gradient kept as lineage, which held the freed activations
            # of its matmul until the optimizer step, gigabytes the plan then
            # lacked for the optimizer's state. A p on the host holds nothing
            # (a holder's rebuild brings it back), so it may still be kept.
            return False
        holders = {r for r in self.readers.get(p, ()) if self.state[r] in (RES, ARR, OUT)
                   and self.spec[r].rebuild_seconds is not None and r not in self.broken
                   and self.own_next(r) < NEVER}
        if not holders:
            return False
        if st == RES:  # dropped here, so its own recipe must work
            if s.rebuild_seconds is None or p in self.broken:
                return False
            if any(self.state[q] not in (RES, ARR, OUT, DROP) for q in s.recipe_inputs):
                return False
            depth = 1 + max((self.depth[q] for q in s.recipe_inputs if self.state[q] == DROP), default=0)
            if depth > MAX_DEPTH:
                return False
            self.evict_at(t, p, Action.DROP)
            self.plan.stats["evictions"] += 1
            self.mem -= s.nbytes
            self.state[p] = DROP
            self.depth[p] = depth
            for q in s.recipe_inputs:
                self.pending.setdefault(q, set()).add(p)
                self.push(q)
        # Already on the host (a holder's rebuild brings it back) or dropped
        # (its inputs already held): it stays so, now for its holders too.
        self.plan.kept[p] = tuple(sorted(holders))
        self.pending[p] = holders
        return True

class _Sweep(_Lineage):
    def __init__(self, trace: StepTrace, limit: int, h2d: float, d2h: float, k: int,
                 link_price: float, move_s: float, early_copies: bool = True,
                 through_dead: bool = False) -> None:
        self.ops, self.spec, self.limit, self.k = trace.ops, trace.pages, limit, k
        self.early_copies = early_copies  # [Note: copies leave early]
        self.through_dead = through_dead  # [Note: no lineage through freed pages]
        self.n = n = len(trace.ops)
        super().__init__(trace, h2d, d2h, link_price, move_s)
        seconds = [op.seconds for op in trace.ops]
        self.plan = Plan(limit, seconds, {p: s.nbytes for p, s in trace.pages.items()}, h2d, d2h,
                         resident=[0] * n,
                         stats={"candidates": 0, "evictions": 0, "demand": 0, "postponed": 0})
        self.uses, self.tail = uses_by_page(trace)
        self.ptr = dict.fromkeys(self.spec, 0)
        born = {p for op in trace.ops for p in op.creates}
        self.state = {p: (NEW if p in born else RES if s.resident or not s.pageable else OUT)
                      for p, s in self.spec.items()}
        self.dirty = {p: s.dirty or p in born for p, s in self.spec.items()}
        self.plan.start = {p for p, st in self.state.items() if st == RES}
        self.broken: set[int] = set()          # recipes ended by a write
        self.dead: set[int] = set()            # freed by the program, held by a dropped reader
        self.now = -1                          # the op being planned
        self.pending: dict[int, set[int]] = {}  # page -> dropped pages whose recipes read it
        self.depth: dict[int, int] = {}
        self.readers: dict[int, list[int]] = {}
        for p, s in self.spec.items():
            for q in s.recipe_inputs:
                self.readers.setdefault(q, []).append(p)
        self.mem = sum(s.nbytes for p, s in self.spec.items() if self.state[p] == RES)
        self.tight = _tight_from(trace, limit, born)
        self.heap: list[tuple[int, int, int, float]] = []  # (-next use, seq, page, floor_per_byte)
        self.small = int(limit * SMALL_SHARE)
        self.smalls: list[tuple[int, int, int, float]] = []  # the heap of pages under ``small`` bytes
        self.key: dict[int, int] = {}
        self.seq = 0
        self.due: dict[int, list[Fetch]] = {}  # op index -> prefetches that start before it
        self.flying: list[tuple[int, int, Fetch]] = []  # started, not yet used; furthest use first
        self.started: dict[int, Fetch] = {}
        self.fetch_of: dict[int, Fetch] = {}
        self.writes_now: set[int] = set()
        self.touched: dict[int, int] = {}  # page -> the last op that needed it, so far
        self.batches: list[int] = []  # positions with evictions planned, in order

    # ------------------------------------------------------------ next uses
    def own_next(self, p: int) -> int:
        u, i = self.uses[p], self.ptr[p]
        return u[i] if i < len(u) else self.tail[p]

    def push(self, p: int) -> None:
        if self.state[p] == RES and self.spec[p].pageable:
            nu = self.key[p] = self.next_use(p)
            self.seq += 1
            # Small pages wait in a heap of their own: victims of last resort (pick).
            # The entry carries the floor of its price per byte, so weighing a candidate
            # that cannot win costs one division (see [Note: a floor kept with the entry]).
            heapq.heappush(self.smalls if self.spec[p].nbytes < self.small else self.heap,
                           (-nu, self.seq, p, self.floor_per_byte(p, nu)))

    # ------------------------------------------------------------ the sweep
    def run(self) -> Plan:
        for p in self.spec:
            if self.state[p] == OUT:
                self.book_fetch(p, -2, 0, self.own_next(p))
            self.push(p)
        for t in range(self.n):
            self.now = t
            self.start_due(t)
            self.writes_now = set(self.ops[t].writes)
            need = self.working_set(t)
            extra = sum(self.spec[p].nbytes for p in need if self.state[p] in (OUT, DROP))
            extra += sum(self.spec[p].nbytes for p in self.ops[t].creates)
            short = self.mem + extra - self.limit
            if short > 0:
                short = self.make_room(t, need, short)
            if short > 0 and self.plan.short_op is None:
                self.plan.short_op, self.plan.short_bytes = t, short
            self.execute(t, need)
            self.plan.resident[t] = self.mem
            self.retire(t, need)
        self.plan.fetches = list(self.started.values())
        self.plan.final = {p for p, st in self.state.items() if st in (RES, ARR)}
        out = {}  # page -> the first op after which the plan evicts it
        for i in sorted(self.plan.evictions, reverse=True):
            out.update((p, i) for p, _ in self.plan.evictions[i])
        uses = self.uses
        self.plan.start_used = {p for p in self.plan.start if uses.get(p) and uses[p][0] <= out.get(p, self.n)}
        # The link serves copies in the order they are issued: soonest needed first.
        use = {(f.start, f.pid): f.use for f in self.plan.fetches}
        for i, pids in self.plan.prefetches.items():
            pids.sort(key=lambda p, i=i: use.get((i, p), self.n))
        return self.plan

    def start_due(self, t: int) -> None:
        for f in self.due.pop(t, ()):
            p = f.pid
            if self.state[p] == OUT and self.fetch_of.get(p) is f:
                self.state[p] = ARR
                self.mem += self.spec[p].nbytes
                self.plan.prefetches.setdefault(t - 1, []).append(p)
                f.start = t - 1
                self.started[id(f)] = f
                self.seq += 1
                heapq.heappush(self.flying, (-f.use, self.seq, f))

    def working_set(self, t: int) -> set[int]:
        op: OpSpec = self.ops[t]
        need = set(op.uses)
        for w in op.writes:
            for r in list(self.pending.get(w, ())):
                if self.state[r] != DROP:
                    continue
                if self.next_use_dropped(r) >= NEVER:
                    # Nobody reads it, nor the dropped pages that need it,
                    # again: let them go, not rebuilt (as the glue does
                    # before a write when no tensor refers to them).
                    self.let_go(r)
                else:
                    need.add(r)
        stack = [p for p in need if self.state[p] == DROP]
        while stack:
            for q in self.spec[stack.pop()].recipe_inputs:
                if q not in need:
                    need.add(q)
                    if self.state[q] == DROP:
                        stack.append(q)
        return need

    def make_room(self, t: int, need: set[int], short: int) -> int:
        while short > 0:
            best = self.pick(t, need)
            flying = self.furthest_flying(need)
            if flying is not None and (best is None or best[0] < flying.use):
                self.cancel(t, flying)
                short -= self.spec[flying.pid].nbytes
                continue
            if best is None:
                break
            self.evict(t, best[1], best[2], best[0])
            short -= self.spec[best[1]].nbytes
        return short

    def furthest_flying(self, need: set[int]) -> Fetch | None:
        """The prefetch in flight whose page is needed last (not by op t)."""
        aside, found = [], None
        while self.flying:
            f = self.flying[0][2]
            if self.state[f.pid] != ARR or self.fetch_of.get(f.pid) is not f:
                heapq.heappop(self.flying)
            elif f.pid in need:
                aside.append(heapq.heappop(self.flying))
            else:
                found = f
                break
        for entry in aside:
            heapq.heappush(self.flying, entry)
        return found

    def cancel(self, t: int, f: Fetch) -> None:
        """A prefetch holds memory that pages needed sooner lack: it starts
        again as late as its copy alone allows."""
        p, b = f.pid, self.spec[f.pid].nbytes
        self.state[p] = OUT
        self.mem -= b
        for j in range(f.start + 1, t):
            self.plan.resident[j] -= b
        self.plan.prefetches[f.start].remove(p)
        del self.started[id(f)]
        target = self.cum[f.use] - b / self.h2d_Bps
        start = min(max(t + 1, bisect.bisect_right(self.cum, target) - 1), f.use)
        self.due.setdefault(start, []).append(f)
        self.plan.stats["postponed"] += 1

    def pick(self, t: int, need: set[int]) -> tuple[int, int, Action] | None:
        """The best victim among the ``k`` furthest-used: (next use, page, action);
        among the small pages only when no larger one can go."""
        best = self._best_of(self.heap, t, need)
        return best if best is not None else self._best_of(self.smalls, t, need)

    def evict(self, t: int, p: int, action: Action, nu: int) -> None:
        b = self.spec[p].nbytes
        # [Note: copies leave early]
        at = t - 1
        if self.early_copies and action != Action.DROP:
            # Joins the first batch of evictions already planned after the
            # page's last use, if any before op t: one batch, one copy launch.
            first = self.touched.get(p, -1)
            i = bisect.bisect_left(self.batches, first)
            at = self.batches[i] if i < len(self.batches) and self.batches[i] < t - 1 else first
        self.evict_at(at, p, action)
        self.plan.stats["evictions"] += 1
        self.mem -= b
        if action == Action.DROP:
            self.state[p] = DROP
            self.depth[p] = 1 + max((self.depth[q] for q in self.spec[p].recipe_inputs
                                     if self.state[q] == DROP), default=0)
            for q in self.spec[p].recipe_inputs:
                self.pending.setdefault(q, set()).add(p)
                self.push(q)
            self.inputs_back_by(t, p, self.next_use(p))
            return
        self.state[p] = OUT
        self.fetch_of.pop(p, None)
        ready = t + 1
        if self.dirty[p]:
            ready = max(ready, self.d2h.take_forward(at + 1, b) + 1)
            self.dirty[p] = False
        if nu < self.n:
            self.book_fetch(p, at, ready, nu)

    def evict_at(self, at: int, p: int, action: Action) -> None:
        """Plan p's eviction after op ``at``, in that position's batch."""
        if at not in self.plan.evictions:
            bisect.insort(self.batches, at)
        self.plan.evictions.setdefault(at, []).append((p, action))

    def inputs_back_by(self, t: int, p: int, nu: int) -> None:
        """The inputs on the host of dropped page p (and of its dropped inputs)
        come back by op nu, when p is rebuilt."""
        for q in self.spec[p].recipe_inputs:
            if self.state[q] == DROP:
                self.inputs_back_by(t, q, nu)
            elif self.state[q] == OUT and nu < self.n:
                f = self.fetch_of.get(q)
                if f is None or f.use > nu:
                    self.book_fetch(q, t - 1, t + 1, nu)

    def book_fetch(self, p: int, evicted: int, ready: int, nu: int) -> None:
        """Book p's copy in before op nu, no earlier than slot ``ready``."""
        if nu >= self.n:
            return
        lo = max(ready, evicted + 2, 0)
        first = self.h2d.take_backward(nu, lo, self.spec[p].nbytes)
        start = min(max(first, lo), nu)
        self.fetch_of[p] = f = Fetch(p, start - 1, nu, evicted)
        self.due.setdefault(start, []).append(f)

    # ----------------------------------------------------- running an op
    def execute(self, t: int, need: set[int]) -> None:
        op = self.ops[t]
        for p in need:
            st = self.state[p]
            if st == DROP:
                self.plan.recompute_seconds += self.spec[p].rebuild_seconds or 0.0
                self.dirty[p] = True
            elif st == OUT:
                # Not brought in by a prefetch in time: fetched on demand.
                self.plan.prefetches.setdefault(t - 1, []).append(p)
                self.plan.stats["demand"] += 1
                f = self.fetch_of.pop(p, None)
                if f is None:
                    f = Fetch(p, t - 1, t, t - 2)
                f.start = t - 1
                self.started[id(f)] = f
            if st in (DROP, OUT):
                self.mem += self.spec[p].nbytes
            self.state[p] = RES
        for p in op.creates:
            self.state[p] = RES
            self.mem += self.spec[p].nbytes
        for w in op.writes:
            self.dirty[w] = True
            self.broken.add(w)
            self.broken.update(r for r in self.readers.get(w, ()) if self.state[r] != NEW)

    def retire(self, t: int, need: set[int]) -> None:
        for p in need:
            if p in self.uses and self.ptr[p] < len(self.uses[p]) and self.uses[p][self.ptr[p]] == t:
                self.ptr[p] += 1
        for p in need:
            if self.depth.pop(p, None) is not None:
                self.unhold(p)
        for p in self.ops[t].frees:
            self.dead.add(p)
            if self.pending.get(p) or self.keep(t, p):
                continue  # a lineage node, holding its own inputs
            self.depth.pop(p, None)
            self.unhold(p)
            self.release(p)
        for p in (*need, *self.ops[t].creates):
            self.touched[p] = t
            self.push(p)

