"""Pages, their states, and the accounting of device bytes against the budget.

A page is one tensor storage. Every view of a tensor, and every reference that
autograd saved for backward, points at the same storage, so moving the storage
moves all of them at once and none of them notices.

[Note: page states]
A page is in exactly one state::

    RESIDENT --evict--> EVICTED --fault or prefetch--> ARRIVING --first use--> RESIDENT
       |                   |                               |
       +-------------------+------ storage freed ----------+--> DEAD

* RESIDENT: the device copy is the truth; ``host`` may hold a copy that is
  still current (``dirty`` is False), which makes the next eviction free.
* ARRIVING: device memory is allocated and a copy in is queued; it counts as
  resident for the budget. On a device without streams a page passes through
  this state instantly.
* EVICTED: device memory is freed; ``host`` holds the only copy, or, for a
  page *dropped* rather than copied, ``recipe`` says how to compute it again
  (:attr:`Page.dropped`). Both come back through ARRIVING; the table does
  not care which way.
* DEAD: the program freed the storage; the host copy is released, never copied
  back. The table forgets the page.

[Note: budget accounting]
``resident_bytes`` counts every page whose device memory is allocated
(RESIDENT or ARRIVING), pageable or not. The engine keeps it at or below
``limit``; the budget minus ``limit`` is the headroom left for memory that
deepum cannot see (kernel workspaces, allocator rounding).

[Note: demand]
``live_bytes`` counts every page the table holds, resident or not: what the
program would hold with nothing paged out. It changes only when a page is
born, resized or dies; evictions, drops and arrivals leave it alone. Its
peak over a window (``window_demand_bytes``) is therefore what that window
would have peaked at unintercepted, as far as pages go, however much the
engine paged in it; the resident peak cannot tell that, since the engine
keeps it under the limit. It counts high by the lineage nodes recipes keep
([Note: lineage] in engine/remat.py), which an unintercepted step would
have freed: a measure that errs toward paging on.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from enum import IntEnum
from typing import Any


class State(IntEnum):
    RESIDENT = 0
    ARRIVING = 1
    EVICTED = 2
    DEAD = 3


# Module-level names for the members: reading a member through its enum
# class is a descriptor call, and the operator path reads several a step.
RESIDENT, ARRIVING, EVICTED, DEAD = State


class Kind(IntEnum):
    """What a page holds, as far as the engine can tell (see the glue's classifier)."""

    OTHER = 0
    PARAMETER = 1
    GRADIENT = 2
    OPTIMIZER_STATE = 3
    ACTIVATION = 4


OTHER, PARAMETER, GRADIENT, OPTIMIZER_STATE, ACTIVATION = Kind


class Page:
    """One storage under management.

    ``key`` identifies the live storage; ``skey`` is the stable key that names
    the same role across training iterations (see :mod:`.correlation`).
    ``ref`` and ``host`` are opaque to the core: the glue keeps a weak
    reference to the storage and a host buffer there.
    """

    __slots__ = (
        "key", "skey", "nbytes", "state", "dirty", "pageable", "pins",
        "ref", "host", "ready", "prefetched", "kind", "recipe", "readers", "last_use", "pid",
        "__weakref__",
    )

    def __init__(self, key: int, nbytes: int, skey: int = -1, pageable: bool = True) -> None:
        self.key = key
        self.skey = skey
        self.nbytes = nbytes
        self.state = RESIDENT
        # A page born on the device has no host copy, so it is dirty.
        self.dirty = True
        self.pageable = pageable
        # Number of operators now using the page; a pinned page is never a victim.
        self.pins = 0
        self.ref: Any = None
        self.host: Any = None
        # Transfer-engine event of the last copy that touched the page or its
        # host buffer; compute waits on it before the first use of an ARRIVING
        # page, and the host buffer is reused only after it. None: nothing pending.
        self.ready: Any = None
        # Brought in by a prefetch and not used since: a hit or a waste to come.
        self.prefetched = False
        self.kind = OTHER
        # How to compute the page again from other pages (opaque here), and
        # the pages whose recipes read this one.
        self.recipe: Any = None
        self.readers: list[Page] | None = None
        # When an operator last used the page (the victim policy's clock).
        self.last_use = 0
        # The page's ID in the recorded or planned step (engine/stepplan.py).
        self.pid = 0

    @property
    def resident(self) -> bool:
        return self.state <= ARRIVING

    @property
    def dropped(self) -> bool:
        """Evicted without a copy: only its recipe can bring it back."""
        return self.state == EVICTED and self.host is None

    def __repr__(self) -> str:
        return (f"Page(key={self.key:#x}, skey={self.skey}, {self.nbytes}B, {self.state.name}, "
                f"dirty={self.dirty}, pins={self.pins})")


class PageTable:
    """All managed pages, the resident ones in least-recently-used order."""

    def __init__(self, limit: int) -> None:
        if limit <= 0:
            raise ValueError("limit must be positive")
        self.limit = limit
        self.pages: dict[int, Page] = {}
        # Resident pageable pages, least recently used first.
        self._lru: OrderedDict[int, Page] = OrderedDict()
        # touch() by key, in one C call (the engine's operator path; the caller checks pageable).
        self.to_end = self._lru.move_to_end
        self.resident_bytes = 0
        # Room promised to the outputs of operators now running. With one
        # thread it is the current operator's; with several, a second
        # operator must not count the first one's outputs as free room.
        self.reserved_bytes = 0
        # Device memory of pages evicted by a copy still running: not any
        # page's, and not free until the copy ends (engine/movers.py).
        self.leaving_bytes = 0
        self.peak_resident_bytes = 0
        # The peak since the last dormancy boundary (core/dormancy.py), reset there.
        self.window_peak_bytes = 0
        # Bytes of every live page, resident or not: what the program would
        # hold with nothing paged ([Note: demand]); and its peak since the
        # last boundary, reset there.
        self.live_bytes = 0
        self.window_demand_bytes = 0
        self.window_born_bytes = 0  # bytes of the pages born since the last boundary
        self.unpageable_bytes = 0
        # Resident bytes by page kind (indexed by Kind).
        self.kind_bytes = [0] * len(Kind)

    def __len__(self) -> int:
        return len(self.pages)

    def get(self, key: int) -> Page | None:
        return self.pages.get(key)

    def add(self, page: Page, count_peak: bool = True) -> None:
        """A page appears, resident (a new storage, or one first seen by an operator).

        ``count_peak=False`` for memory that existed before the engine saw it
        (a storage allocated where no operator was intercepted): the peak is
        taken once the engine has had the chance to make room (note_peak).
        """
        assert page.key not in self.pages, "the glue retires a stale page before reusing its key"
        self.pages[page.key] = page
        page.state = RESIDENT
        # _grow, written out: every operator's outputs come through here.
        self.kind_bytes[page.kind] += page.nbytes
        self.resident_bytes += page.nbytes
        if count_peak and self.resident_bytes > self.window_peak_bytes:
            self.note_peak()
        self.live_bytes += page.nbytes
        self.window_born_bytes += page.nbytes
        if self.live_bytes > self.window_demand_bytes:
            self.window_demand_bytes = self.live_bytes
        if page.pageable:
            self._lru[page.key] = page
        else:
            self.unpageable_bytes += page.nbytes

    def touch(self, page: Page) -> None:
        """The page, resident, was used now: it becomes the most recently used."""
        if page.pageable:
            self._lru.move_to_end(page.key)

    def touch_all(self, pages: Iterable[Page]) -> None:
        """touch() for each of ``pages``: they go to the most recently used end, in order."""
        move = self._lru.move_to_end
        for page in pages:
            if page.pageable:
                move(page.key)

    def arriving(self, page: Page) -> None:
        assert page.state == EVICTED, page
        page.state = ARRIVING
        self._grow(page.nbytes, page.kind)
        self._lru[page.key] = page

    def arrived(self, page: Page) -> None:
        assert page.state == ARRIVING, page
        page.state = RESIDENT

    def cancel_arrival(self, page: Page) -> None:
        """A copy in failed before it started: the page is evicted again."""
        assert page.state == ARRIVING, page
        page.state = EVICTED
        self._shrink(page.nbytes, page.kind)
        del self._lru[page.key]

    def resize(self, page: Page, nbytes: int) -> None:
        """An operator resized a resident storage in place (resize_, out= arguments)."""
        assert page.resident, page
        delta = nbytes - page.nbytes
        page.nbytes = nbytes
        if not page.pageable:
            self.unpageable_bytes += delta
        self._grow(delta, page.kind)
        self.live_bytes += delta
        if self.live_bytes > self.window_demand_bytes:
            self.window_demand_bytes = self.live_bytes

    def set_kind(self, page: Page, kind: Kind) -> None:
        """Reclassify a page (the glue learns what a page holds as it is used)."""
        if page.kind == kind:
            return
        if page.resident and page.state != DEAD:
            self.kind_bytes[page.kind] -= page.nbytes
            self.kind_bytes[kind] += page.nbytes
        page.kind = kind

    def make_unpageable(self, page: Page) -> None:
        """Memory the engine cannot see now aliases the page (a numpy array
        sharing it): it stays resident until its storage dies."""
        assert page.resident, page
        if page.pageable:
            page.pageable = False
            del self._lru[page.key]
            self.unpageable_bytes += page.nbytes

    def evicted(self, page: Page) -> None:
        assert page.state <= ARRIVING and page.pageable and page.pins == 0, page
        page.state = EVICTED
        self.resident_bytes -= page.nbytes  # _shrink, written out: every eviction
        self.kind_bytes[page.kind] -= page.nbytes
        del self._lru[page.key]

    def retire(self, page: Page) -> None:
        """The storage died: forget the page and give back its bytes."""
        if self.pages.get(page.key) is page:
            del self.pages[page.key]
            self.live_bytes -= page.nbytes
        if page.state <= ARRIVING:  # resident; _shrink written out (every dead output)
            self.resident_bytes -= page.nbytes
            self.kind_bytes[page.kind] -= page.nbytes
            if page.pageable:
                self._lru.pop(page.key, None)
            else:
                self.unpageable_bytes -= page.nbytes
        page.state = DEAD

    def lru(self) -> Iterator[Page]:
        """Resident pageable pages, least recently used first.

        A live view: do not evict while iterating it.
        """
        return iter(self._lru.values())

    def room(self) -> int:
        return self.limit - self.resident_bytes - self.reserved_bytes - self.leaving_bytes

    def _shrink(self, nbytes: int, kind: Kind) -> None:
        self.resident_bytes -= nbytes
        self.kind_bytes[kind] -= nbytes

    def _grow(self, nbytes: int, kind: Kind, count_peak: bool = True) -> None:
        self.kind_bytes[kind] += nbytes
        self.resident_bytes += nbytes
        # The window's peak never exceeds the session's, so one test covers both.
        if count_peak and self.resident_bytes > self.window_peak_bytes:
            self.note_peak()

    def new_window(self) -> None:
        """A dormancy boundary: the window's peaks start again from what is held now."""
        self.window_peak_bytes = self.resident_bytes
        self.window_demand_bytes = self.live_bytes
        self.window_born_bytes = 0

    def note_peak(self) -> None:
        if self.resident_bytes > self.window_peak_bytes:
            self.window_peak_bytes = self.resident_bytes
        if self.resident_bytes > self.peak_resident_bytes:
            self.peak_resident_bytes = self.resident_bytes

    def check(self) -> None:
        """Assert the accounting invariants (tests call this)."""
        resident = [p for p in self.pages.values() if p.resident]
        assert self.resident_bytes == sum(p.nbytes for p in resident), "resident bytes drifted"
        assert set(self._lru) == {p.key for p in resident if p.pageable}, "LRU out of step"
        assert self.unpageable_bytes == sum(p.nbytes for p in resident if not p.pageable)
        assert self.live_bytes == sum(p.nbytes for p in self.pages.values()), "live bytes drifted"
        assert self.reserved_bytes >= 0, "an operator's output reservation was released twice"
        assert self.leaving_bytes >= 0, "memory of a copy out was released twice"
        for kind in Kind:
            assert self.kind_bytes[kind] == sum(p.nbytes for p in resident if p.kind == kind)
