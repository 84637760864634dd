"""When paging is on: the rule that lets a program whose memory is not tight run unintercepted.

[Note: dormancy]
Interception costs host time on every operator, whether or not anything will
ever be evicted. So a session pages only while memory is tight. Between two
*boundaries* (the start of the outermost module call that recurs: a training
step's forward, a generation step) the engine learns the window's peak: while
paging, the page table's peak *demand*, what the window would have held with
nothing paged out ([Note: demand] in core/pages.py), read with the page
planner's recording and the allocator's peak as ``paging_measure`` says;
while dormant, the allocator's.

- A session starts paging, so a first step whose peak passes the budget is
  paged from its start.
- Paging stops at a boundary after ``calm`` windows in a row whose peak stayed
  under ``release`` of the limit. Pages may have moved in them: the page
  planner pages to its own limit, and a step under ``release`` that it paged
  runs unpaged as well.
- Paging starts again at a boundary whose window peaked above ``engage`` of
  the limit, or at any reading (a module call starting) where the memory in
  use passes it. (A prediction of the window's peak from a reading, by the
  last window's peak over its highest reading, was tried and left out: on
  the GPU readings are rate-limited, so their points in the step differ
  from window to window, and a prediction from them can turn paging on
  in a step that stays far below the limit.)

While regions are set ([Note: regions] in core/regions.py) the step's
forward was measured and cut to fit, so ``release`` and ``engage`` become
``Thresholds.region_release`` and ``region_engage`` of the *budget*: the
step then runs unintercepted with its peak closer to the allocator's cap,
which is the budget; what is left of it is the margin for what pages do not
count. Paging stops, though, only for a demand within the limit (the
budget less the reserve): the page planner holds a paged step there, with
the reserve left for what the allocator keeps cached and split, and an
unintercepted step needs that room just as much (a Llama-family step
released at 0.9 of the budget with its demand over the limit ran out of
memory at its loss on the GPU: docs/BENCHMARKS.md, session 25).

[Note: the allocator's overhead at release]
An unintercepted step needs, beyond its allocated bytes, what the caching
allocator holds and cannot hand back: free rests of its mapped pages that
live blocks share (expandable segments map large blocks in pages of tens of
MiB). Under a tight cap that overhead can pass the reserve: a Llama-family
step released at 0.45 of its peak with its demand within the limit raised
the allocator's out-of-memory error in its backward, with more of the cap
held in rests it could not release than the reserve (docs/BENCHMARKS.md,
session 29). A paging window measures the overhead where its allocator flushed its
cache (ran into the cap and handed back all it could): what it still held
above its allocated peak, its reserved peak less its allocated peak, is a
layout's worth of rests. So paging stops only where the window's peak plus
that overhead fits under the allocator's cap (``cap``); a window that did
not flush holds releasable cache in its reserved peak and says nothing of
the rests, and the reserve alone stands for them. A release refused for the
overhead alone leaves ``short`` set, the bytes the step is over by, for the
regions to answer (more recomputed or parked) as they answer a step that
flushes unintercepted. The engine pages on meanwhile. The overhead is
one layout's rests at its allocated peak, not a bound: an unintercepted
step can need more at another moment (docs/DESIGN.md, Dormancy), which
[Note: out of memory while dormant] below answers.

[Note: the release's margin]
The reserve (``Thresholds.reserve`` of the budget, CUDA) is the room the
page planner leaves the allocator under the budget, and a paging step
fills its limit. An unintercepted step is held by the allocator's cap
instead, and what it needs above its demand is measured and answered: the
rests of a flushing window (above), a window that flushes unintercepted
(more regions or more parked, core/regions.py), an out-of-memory error
(below). So with the default reserve, the release shares reach up to
``Thresholds.release_reserve`` of the budget under it (at least
``release_reserve_min``, never under the limit: ``stop``) rather than up
to the limit, and regions and parking aim for the same point; the reserve
itself stays the page planner's. Without it the point of release jumped
with the budget (the reserve is an eighth of the budget up to 2 GiB: a
16 GiB budget released at 0.875 of it, a 24 GiB one at 0.9), and a byte
of demand held back under it is a byte of optimizer state parked, which
crosses the host link twice a step (docs/BENCHMARKS.md, session 31). A
reserve the user gave is kept free unintercepted as well.

[Note: out of memory while dormant]
Where the allocator still runs out of memory while the session does not
intercept (the engine hears of it from the allocator, CUDA), the program
gets the allocator's error: nothing can make room inside an operator that
is not intercepted. What the session can do is page from the next chance
on (``alarm``: the next reading turns paging on), so a program that catches
the error and tries again runs paged, and stay paging for good once it
happened ``oom_limit`` times. The engine says so in a warning, with the
remedy (``dormant=False``).

The one risk: memory that grows, between two readings, from under ``engage``
of the limit to past the limit is allocated with no interceptor to make room.
On CUDA the allocator's cap stops it with an out-of-memory error; on the cpu
tier it is counted as an overshoot at the next boundary. The margin between
``engage`` and the limit (a quarter by default) is what one module call may
add unseen; a program whose steps jump by more than that keeps the session
paging with ``Session(dormant=False)``.

Pure logic: the engine feeds it byte counts and executes what it returns.
"""

from __future__ import annotations

from enum import Enum


def paging_measure(demand: int, recorded: int | None, allocated: int | None, resident_peak: int) -> int:
    """A paging window's peak as dormancy reads it ([Note: dormancy]).

    ``demand``: the page table's peak demand; ``recorded``: the page
    planner's recorded demand of this step (None where it did not record
    it); ``allocated``: the allocator's allocated peak (None on the cpu
    tier, whose counter is the pages'); ``resident_peak``: the pages'
    resident peak. The allocator's peak counts what no page holds
    (workspaces, rounding), which an unintercepted step holds too. But a
    planned step fills the device to the pager's limit with pages beyond the
    program's own (prefetched early, lineage for recipes): there the
    recorded demand plus what the allocator held outside pages is the
    measure, where it is the smaller.
    """
    peak = demand if recorded is None else min(demand, recorded)
    if allocated is None:
        return peak
    held = max(peak, allocated)
    if recorded is not None:
        held = min(held, peak + max(allocated - resident_peak, 0))
    return held


def allocator_overhead(allocated: int | None, reserved: int, flushed: bool, held_out: bool = False) -> int:
    """What a paging window's allocator held above its allocated peak and could not hand back
    ([Note: the allocator's overhead at release]); 0 where the window did not flush its cache
    or there is no caching allocator (the cpu tier: ``allocated`` None), and where asked to
    leave out a window that held pages out at its peak (``held_out``: its evictions' room
    cached counts among its rests)."""
    if allocated is None or not flushed or held_out:
        return 0
    return max(reserved - allocated, 0)


class Turn(Enum):
    """What the engine is to do now."""

    STAY = 0
    ENGAGE = 1  # start intercepting
    RELEASE = 2  # bring every page back and stop intercepting


class Dormancy:
    """The state machine of [Note: dormancy]; ``paging`` is the current state."""

    def __init__(self, limit: int, engage: float, release: float, calm: int, cap: int | None = None,
                 oom_limit: int = 2, stop: int | None = None) -> None:
        self.limit = limit
        # The most a step's demand may be for paging to stop ([Note: the release's margin]).
        self.stop = limit if stop is None else stop
        self.oom_limit = oom_limit
        self.alarms = 0  # times the allocator ran out of memory while dormant
        self.alarmed = False  # one of them not yet answered by paging
        self.answering = False  # the last engage answered one
        self.cap = cap  # what an unintercepted step may reserve (CUDA: the allocator's cap); None: unchecked
        self.retarget(engage, release)
        self.calm_needed = calm
        self.paging = True
        self.calm = 0
        self.short = 0  # bytes the last paging window was over the cap by, its overhead counted
        self.engaged = 0  # times paging started again
        self.released = 0  # times paging stopped

    def retarget(self, engage: float, release: float, of: int | None = None) -> None:
        """New shares of ``of`` bytes (default: the limit) for the two turns; release at most ``stop``."""
        assert 0 < release <= engage <= 1, "release must not exceed engage"
        base = self.limit if of is None else of
        self.engage_bytes = int(base * engage)
        self.release_bytes = min(int(base * release), self.stop)

    def boundary(self, peak: int, overhead: int = 0) -> Turn:
        """A window ended with ``peak`` bytes at most in use (while paging: its peak demand).

        ``overhead``: while paging, what the window's allocator held above
        its allocated peak and could not hand back (``allocator_overhead``).
        """
        if not self.paging:
            if peak > self.engage_bytes or self.alarmed:
                return self._engage()
            return Turn.STAY
        self.short = 0
        if peak > self.release_bytes or self.alarms >= self.oom_limit:
            self.calm = 0
            return Turn.STAY
        self.short = self.over_cap(peak, overhead)
        if self.short:
            self.calm = 0
            return Turn.STAY
        self.calm += 1
        if self.calm < self.calm_needed:
            return Turn.STAY
        self.calm = 0
        self.paging = False
        self.released += 1
        return Turn.RELEASE

    def over_cap(self, peak: int, overhead: int) -> int:
        """Bytes a paging window's peak and its allocator's ``overhead`` pass the cap by (0: none)."""
        return 0 if self.cap is None else max(peak + overhead - self.cap, 0)

    def reading(self, in_use: int) -> Turn:
        """Memory in use now, read while dormant between boundaries."""
        if self.paging or (in_use <= self.engage_bytes and not self.alarmed):
            return Turn.STAY
        return self._engage()

    def alarm(self) -> None:
        """The allocator ran out of memory while dormant ([Note: out of memory while dormant])."""
        if not self.paging:
            self.alarms += 1
            self.alarmed = True

    def deferred(self) -> None:
        """The engine could not turn paging on here (inside a backward pass, a mode on top): dormant still."""
        self.paging = False
        self.engaged -= 1
        self.alarmed = self.answering
        self.answering = False

    def refused(self) -> None:
        """The engine could not release (pages would not fit, another mode on top): stay paging."""
        self.paging = True
        self.released -= 1

    def _engage(self) -> Turn:
        self.paging = True
        self.calm = 0
        self.engaged += 1
        self.answering, self.alarmed = self.alarmed, False  # (deferred() puts an alarm back)
        return Turn.ENGAGE
