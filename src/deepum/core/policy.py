"""Eviction and prefetch policy: which pages leave the device, which come early.

Two policies share one interface, so the pager never asks which one it has:

* :class:`LruPolicy` is demand paging: nothing is prefetched, and the victim is
  the least recently used page. It is the analogue of plain Unified Memory.
* :class:`DeepUMPolicy` adds DeepUM's correlation prefetching and
  pre-eviction. After each operator it slides a window of the next N
  predicted operators (:class:`~.correlation.Predictor`). Prefetching walks
  that window in order of need, like DeepUM's chaining, and asks for every
  page that is not resident, until the pager runs out of room; victims are
  chosen among pages no window operator touches, least recently used first,
  and only then among window pages, the one used furthest ahead first.

Both return candidates; the pager skips pages that are pinned by a running
operator and decides how many it needs.
"""

from __future__ import annotations

from enum import IntEnum

from .correlation import PageCorrelation, Predictor, SuccessorTable
from .pages import EVICTED, Page, PageTable


class Action(IntEnum):
    """How a victim leaves the device."""

    DROP = 0  # free it now, run its recipe again when it is next used
    COPY = 1  # write it back to the host if dirty, then free it; copy it in later


class LruPolicy:
    name = "lru"
    prefetches = False
    # Operators observed so far, where the policy weighs staleness (Page.last_use
    # then holds the clock at the page's last use, as note_use writes it); None: it does not.
    clock: int | None = None

    def __init__(self, table: PageTable) -> None:
        self.table = table

    def observe(self, eid: int) -> None:
        """An operator with execution ID ``eid`` ran."""

    def prefetch_plan(self, max_ops: int) -> list[tuple[int, Page]]:
        """(distance, page) pairs to prefetch now; demand paging has none."""
        return []

    def advance(self, eid: int, max_ops: int) -> list[tuple[int, Page]]:
        """:meth:`observe` then :meth:`prefetch_plan`: what the pager asks after every operator."""
        self.observe(eid)
        return self.prefetch_plan(max_ops)

    def rewind(self, distance: int) -> None:
        pass


    def on_evict(self, page: Page) -> None:
        pass

    def note_use(self, pages) -> None:
        """The operator now running uses ``pages`` (policies that weigh staleness keep it)."""

    def action(self, page: Page) -> Action:
        """How to evict ``page``: drop it whenever its recipe allows (the engine checks that)."""
        return Action.DROP

    def choose_victims(self, need: int, *, protect_window: bool = False) -> list[Page]:
        """Unpinned resident pages, in the order they should go, totalling >= ``need``.

        Returns fewer bytes than ``need`` only when no more pages can go.
        ``protect_window`` asks to leave pages that predicted operators need
        (pre-eviction and prefetch never push those out).
        """
        chosen, got = [], 0
        for page in self.table.lru():
            if got >= need:
                break
            if page.pins == 0:
                chosen.append(page)
                got += page.nbytes
        return chosen

    @property
    def accuracy(self) -> float:
        return 0.0


class DeepUMPolicy(LruPolicy):
    name = "deepum"
    prefetches = True

    def __init__(self, table: PageTable, lookahead: int, live: dict[int, Page],
                 successors: SuccessorTable | None = None,
                 pages: PageCorrelation | None = None) -> None:
        super().__init__(table)
        self.successors = successors if successors is not None else SuccessorTable()
        self.pages = pages if pages is not None else PageCorrelation()
        self.predictor = Predictor(self.successors, self.pages, lookahead)
        # Stable key -> the live page that now plays that role (kept by the glue).
        self.live = live
        # Window operators before this position have had their pages fetched.
        self._cursor = 0

    def observe(self, eid: int) -> None:
        hit = self.predictor.observe(eid)
        # The window slid by one (or was rebuilt): so does the scan position.
        self._cursor = max(0, self._cursor - 1) if hit else 0

    def prefetch_plan(self, max_ops: int) -> list[tuple[int, Page]]:
        """Evicted pages of the next window operators not yet scanned, in order of need.

        Returns (distance, page) pairs; the scan goes ``max_ops`` operators
        further each call, so the work per operator stays small. A pager that
        cannot fit a page calls :meth:`rewind` so the scan resumes there.
        """
        window, live = self.predictor.window, self.live
        pages = self.pages.get  # PageCorrelation.pages, written out: once per window operator
        end = min(len(window), self._cursor + max_ops)
        wanted = []
        for d in range(self._cursor, end):
            for page in map(live.get, pages(window[d], ())):
                if page is not None and page.state == EVICTED:
                    wanted.append((d, page))
        self._cursor = end
        return wanted

    def advance(self, eid: int, max_ops: int) -> list[tuple[int, Page]]:
        # observe() and prefetch_plan() written out (and a clock's tick where
        # a subclass keeps one): once per operator under pressure. A change to
        # either must be made here too (tests/test_core.py calls them apart).
        hit = self.predictor.observe(eid)
        if self.clock is not None:
            self.clock += 1
        cursor = self._cursor
        cursor = (cursor - 1 if cursor > 0 else 0) if hit else 0
        window, live = self.predictor.window, self.live
        pages = self.pages.get
        end = len(window)
        if cursor + max_ops < end:
            end = cursor + max_ops
        wanted = []
        for d in range(cursor, end):
            for page in map(live.get, pages(window[d], ())):  # (the look-ups in C)
                if page is not None and page.state == EVICTED:
                    wanted.append((d, page))
        self._cursor = end
        return wanted

    def rewind(self, distance: int) -> None:
        self._cursor = min(self._cursor, distance)


    def on_evict(self, page: Page) -> None:
        # A page a window operator needs went out, or one a window page's
        # recipe reads (its rebuild would fault it in): scan again from the front.
        window = self.predictor.window_pages
        if page.skey in window or (page.readers and any(r.skey in window for r in page.readers)):
            self._cursor = 0

    def choose_victims(self, need: int, *, protect_window: bool = False) -> list[Page]:
        window, live = self.predictor.window_pages, self.live
        chosen, got, in_window = [], 0, []
        for page in self.table.lru():
            if got >= need:
                return chosen
            if page.pins:
                continue
            # A page that no longer plays its role (an older page of the same
            # stable key, kept only as a recipe's input) is no window page.
            if page.skey in window and live.get(page.skey) is page:
                in_window.append(page)
            else:
                chosen.append(page)
                got += page.nbytes
        if got >= need or protect_window:
            return chosen
        return self._window_victims(in_window, chosen, got, need)

    def _window_victims(self, in_window: list[Page], chosen: list[Page], got: int,
                        need: int) -> list[Page]:
        """Every other page is needed soon: give up window pages, those needed last first."""
        far = self.predictor.lookahead + 1
        first = self.predictor.first_uses()
        in_window.sort(key=lambda p: -first.get(p.skey, far))
        for page in in_window:
            if got >= need:
                break
            chosen.append(page)
            got += page.nbytes
        return chosen

    @property
    def accuracy(self) -> float:
        return self.predictor.accuracy


def make_policy(name: str, table: PageTable, lookahead: int, live: dict[int, Page]) -> LruPolicy:
    if name == "lru":
        return LruPolicy(table)
    if name == "deepum":
        return DeepUMPolicy(table, lookahead, live)
    raise ValueError(f"unknown policy {name!r}; choose 'deepum' or 'lru'")
