"""The online victim choice of recompute-first paging (DTR's heuristic).

Before a plan exists (:mod:`.planner`), and wherever the program departs from
one, victims are chosen online. :class:`DeepUMPolicy` picks the least recently
used page outside the prediction window: it counts neither what the page costs
to bring back nor how many bytes it frees, so it copies a 4 MB matmul output
and a 4 MB cast alike, and both cost the same link time. Most activation bytes
are casts and pointwise outputs that the device rebuilds in microseconds, while
the link is the bottleneck; so :class:`RecomputeFirstPolicy` ranks victims as
DTR does (Kirisame et al., "Dynamic Tensor Rematerialization", 2021)::

    h(page) = cost(page) / (bytes(page) * staleness(page))

lowest first, where staleness is the number of operators since the page was
last used (pages used long ago are likely needed late, as LRU assumes) and::

    cost = min(rebuild_seconds(page),              -> Action.DROP
               d2h(bytes) if dirty + h2d(bytes))   -> Action.COPY

A page that cannot be rebuilt (``rebuild_seconds`` returns None) is always
COPY; a clean page (its host copy is current) costs only the copy back.
Pages the prediction window needs are still protected exactly as DeepUM
protects them, and still go last, furthest next use first.

The glue supplies ``rebuild_seconds(page)``: it knows the page's recipe, the
operator's cost (:class:`~.costs.Costs`) and which of the recipe's inputs are
dropped themselves (DTR's evicted-neighbourhood cost: their rebuilds count
too). It calls :meth:`RecomputeFirstPolicy.note_use` with the pages each
operator uses, and :meth:`RecomputeFirstPolicy.action` for each victim it
evicts.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from .correlation import PageCorrelation, SuccessorTable
from .costs import D2H, H2D, Costs
from .pages import Page, PageTable
from .policy import Action, DeepUMPolicy

RebuildSeconds = Callable[[Page], "float | None"]


class RecomputeFirstPolicy(DeepUMPolicy):
    """DeepUM's prediction and prefetch window, with DTR's victim ranking.

    ``rebuild_seconds(page)`` returns the seconds to compute the page again,
    including dropped inputs that must be rebuilt first, or None if it cannot
    be dropped. ``max_candidates`` bounds the pages ranked per call (the least
    recently used ones; DTR samples for the same reason); None ranks all.
    Pages under ``small_bytes`` are victims only when the others do not hold
    the bytes needed (see choose_victims).
    """

    name = "deepum"  # the option the user chose; its victims are `victims="cost"`

    def __init__(self, table: PageTable, lookahead: int, live: dict[int, Page], costs: Costs,
                 rebuild_seconds: RebuildSeconds, *, max_candidates: int | None = None,
                 small_bytes: int = 0,
                 successors: SuccessorTable | None = None,
                 pages: PageCorrelation | None = None) -> None:
        super().__init__(table, lookahead, live, successors, pages)
        self.costs = costs
        self.rebuild_seconds = rebuild_seconds
        self.max_candidates = max_candidates
        self.small_bytes = small_bytes
        # Operators observed so far; each page keeps when it was last used
        # (Page.last_use): a field, since note_use runs for every operator.
        self.clock = 0
        # The last choice's ranked victims and whether each was cheaper to
        # drop: action() asks for the same victims right after, and pricing
        # them again would walk their rebuilds twice.
        self._decided: dict[Page, Action] = {}

    def observe(self, eid: int) -> None:
        hit = self.predictor.observe(eid)  # DeepUMPolicy.observe, written out: every operator
        self._cursor = max(0, self._cursor - 1) if hit else 0
        self.clock += 1

    def note_use(self, pages: Iterable[Page]) -> None:
        """The operator now running uses ``pages`` (reads or writes)."""
        now = self.clock
        for page in pages:
            page.last_use = now

    def staleness(self, page: Page) -> int:
        """Operators since the page was last used (at least 1); a page never
        noted counts from the start."""
        return self.clock - page.last_use + 1

    def copy_cost(self, page: Page) -> float:
        out = 0.0 if (not page.dirty and page.host is not None) else self.costs.copy_seconds(page.nbytes, D2H)
        return out + self.costs.copy_seconds(page.nbytes, H2D)

    def cost(self, page: Page) -> tuple[float, Action]:
        """The cheaper way to free the page, and what it costs in seconds."""
        copy = self.copy_cost(page)
        rebuild = self.rebuild_seconds(page)
        if rebuild is not None and rebuild <= copy:
            return rebuild, Action.DROP
        return copy, Action.COPY

    def action(self, page: Page) -> Action:
        """How to evict ``page`` (the glue asks this for each victim)."""
        decided = self._decided.pop(page, None)
        return decided if decided is not None else self.cost(page)[1]

    def score(self, page: Page) -> float:
        """DTR's h: seconds to bring it back per byte freed per operator of staleness."""
        return self.cost(page)[0] / (max(page.nbytes, 1) * self.staleness(page))

    def choose_victims(self, need: int, *, protect_window: bool = False) -> list[Page]:
        window, live = self.predictor.window_pages, self.live
        ranked, rest, in_window, small = [], [], [], []
        small_bytes = self.small_bytes
        cap = self.max_candidates
        if cap is None:
            cap = len(self.table)
        found = 0  # bytes among ranked and rest
        n_ranked = 0  # len(ranked), kept by hand
        # score() inline: this loop runs for every eviction under pressure,
        # and the host is what a paged step waits for (docs/DESIGN.md, "What
        # limits the speed"). Same arithmetic as score(); a test holds them equal.
        rebuild_seconds, clock = self.rebuild_seconds, self.clock
        h2d, d2h = self.costs.h2d_Bps, self.costs.d2h_Bps
        decided = self._decided
        decided.clear()  # decisions of an earlier choice are stale now
        for page in self.table.lru():
            if page.pins:
                continue
            # A page that no longer plays its role (an older page of the same
            # stable key, kept only as a recipe's input) is no window page.
            if page.skey in window and live.get(page.skey) is page:
                if not protect_window:  # (else never a victim: no list of them)
                    in_window.append(page)
                continue
            nbytes = page.nbytes
            if nbytes < small_bytes:
                # Normalisation statistics, step counters, biases: the least
                # recently used pages are often many of these, and each would
                # cost a copy out and a fault back for next to no room.
                small.append(page)
                continue
            if n_ranked < cap:
                copy = (0.0 if (not page.dirty and page.host is not None) else nbytes / d2h) + nbytes / h2d
                rebuild = rebuild_seconds(page)
                if rebuild is not None and rebuild <= copy:
                    copy = rebuild
                    decided[page] = Action.DROP
                else:
                    decided[page] = Action.COPY
                ranked.append((copy / ((nbytes if nbytes > 1 else 1) * (clock - page.last_use + 1)), n_ranked, page))
                n_ranked += 1
            elif found >= need:
                break  # enough candidates: the rest of the table is not scanned
            else:
                rest.append(page)  # beyond the ranked ones: least recently used first
            found += nbytes
        # Lowest h first; ties keep LRU order (the index breaks them).
        chosen, got = [], 0
        heapq.heapify(ranked)
        while ranked and got < need:
            page = heapq.heappop(ranked)[2]
            chosen.append(page)
            got += page.nbytes
        for page in rest:
            if got >= need:
                break
            chosen.append(page)
            got += page.nbytes
        taken = 0
        for page in small:
            if got >= need:
                break
            chosen.append(page)
            got += page.nbytes
            taken += 1
        # Small pages stay resident and so gather at the front of the LRU
        # order; moved behind the others (the LRU order, not their last use,
        # which staleness reads), the next scans do not walk past them again.
        self.table.touch_all(small[taken:])
        if got >= need or protect_window:
            return chosen
        return self._window_victims(in_window, chosen, got, need)
