"""Block recompute: which module calls run again in the backward pass instead of keeping what they save.

[Note: regions]
A page-by-page plan rebuilds or copies hundreds of pages a step, each an
action of the engine's on the host. Activation checkpointing moves the same
bytes in a few large actions: a block of the model (a transformer layer, a
bottleneck) keeps only its inputs, and the backward pass runs the block
again, by the model's own code, when it needs what the block saved. A
*region* is one such module call. The planner here chooses the regions; the
engine (engine/regions.py) runs them through PyTorch's checkpointing, so the
rebuild is the block's own kernels launched by the model's own Python, with
no page action per tensor.

What a region frees. The bytes autograd saves inside a call for its
backward (measured in one *census* window, less the call's own arguments,
which a region keeps) live until that backward. Checkpointed, the call keeps
none of them; its backward makes them again, and they live until that
backward ends. The forward's peak is measured the same way in every window
that chooses: the bytes the program held as the root call began (paged out
or not) plus what autograd saved during it. Backward passes
run one region at a time, so regions ``R`` lower the forward's peak by

    freed(R) = sum(saved[r] for r in R) - max(saved[r] for r in R)

Which first. Each region costs its forward again, so the planner takes
regions by bytes per second of forward, most first (the rule compile's
partitioner and DTR use at the operator level), until ``freed`` covers the
forward's excess over the target. The target is a share of the budget
(``Thresholds.region_target``), under the share at which a session stops
intercepting while regions are set (``region_release``, [Note: dormancy]):
a step whose forward fits with room to spare can then run unintercepted,
held by the allocator's cap (the budget).

All or nothing. Regions pay off when they let the step run unintercepted; a
step that would page anyway would pay their forwards again on top of the
page planner's work. So when even every candidate cannot bring the
forward's peak under the target, none is set (the census's bytes are the
prediction), and when every candidate is set and the step still pages, all
are unset again.

Feedback. The census is of one window (the first step, before the
optimizer has made its state, so the first choice waits for the next
window's peak); the next window with the regions set measures the forward's
peak again, and if it is still over the target, or the engine still had to
page bytes out (what the measure misses: a loss's transient upcast, the
backward's own peak), more regions are added, for at most
``region_rounds`` rounds (a region once set stays: a plan that shrinks and
grows again would pay each change twice). The two windows after a change
do not count the bytes they paged: the page planner, started over by the
engine, records and plans the new step in them. The regions are decided in
a program's first steps: a program whose steps later grow is left to the
page planner for what they add.

Pure logic: the engine feeds it byte counts and seconds, and sets what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Census:
    """One candidate module call of the census window, in call order.

    ``saved``: bytes the call left alive beyond its outputs; ``seconds``:
    its forward's duration; ``safe``: its arguments can be kept and passed
    again (tensors and plain values, none written by the call).
    """

    saved: int
    seconds: float
    safe: bool = True


def freed(saved: Sequence[int]) -> int:
    """Bytes off the forward's peak when the regions of ``saved`` are recomputed (see the Note)."""
    return sum(saved) - max(saved) if saved else 0


def choose(census: Sequence[Census], excess: int, chosen: Sequence[int] = ()) -> list[int]:
    """Indices to add to ``chosen`` so that the regions free ``excess`` bytes, cheapest per byte first.

    Returns every remaining useful candidate when even all of them fall short
    (the page planner takes the rest), and nothing when ``excess`` is not positive.
    """
    if excess <= 0:
        return []
    have = set(chosen)
    pool = [i for i, c in enumerate(census) if c.safe and c.saved > 0 and i not in have]
    # Most bytes per second first; among equals the earlier call (stable sort).
    pool.sort(key=lambda i: -census[i].saved / max(census[i].seconds, 1e-9))
    saved = [census[i].saved for i in have]
    added: list[int] = []
    for i in pool:
        if freed(saved) >= excess:
            break
        saved.append(census[i].saved)
        added.append(i)
    return added


class RegionPlan:
    SETTLE = 2  # windows after a change before the bytes moved count (the page planner records again)

    """The regions' state across windows: census, then up to ``rounds`` rounds of choosing.

    ``window(forward_peak, moved)`` is called at each boundary with the
    measured peak of the window's forward pass and the bytes it still paged
    out; it returns the census indices to set from now on (possibly none).
    """

    def __init__(self, budget: int, target: float, rounds: int) -> None:
        assert 0 < target <= 1 and rounds >= 1
        self.target_bytes = int(budget * target)
        self.rounds_left = rounds
        self.census: list[Census] | None = None
        self.chosen: list[int] = []
        self.dropped = False  # every region was set, the step still paged, and they were all unset
        self.settling = 0  # windows left whose bytes moved do not count (see window)

    def take_census(self, census: Sequence[Census]) -> None:
        self.census = list(census)

    @property
    def done(self) -> bool:
        return self.rounds_left == 0 or (self.census is not None and not self.chosen and not self._remaining())

    def window(self, forward_peak: int, moved: int = 0) -> list[int]:
        """``moved``: bytes the window still paged out with the regions set (what they left over)."""
        if self.census is None or self.done:
            return []
        settling = self.settling > 0
        if settling:
            # The windows right after a change page by the page planner's
            # older plans (it departs and records again): their bytes moved
            # are not the regions' to answer for.
            self.settling -= 1
            moved = 0
        excess = max(forward_peak - self.target_bytes, moved if self.chosen else 0)
        if excess <= 0:
            # This window fits and paged nothing. Another may still page (a
            # page plan's trial alternates two ways of paging): the rounds
            # stay open until they run out or the session stops paging.
            return []
        if self.chosen and not self._remaining():
            # Every region is set and the step still pages: regions and paging
            # together cost more than paging alone. All of them go.
            self.chosen = []
            self.rounds_left = 0
            self.dropped = True
            return []
        if not self.chosen and freed([self.census[i].saved for i in self._remaining()]) < excess:
            # Even every region would leave the step paging: each would then
            # add its forward again to a step the page planner already pays
            # for, so the step is left to the page planner whole.
            self.rounds_left = 0
            return []
        self.rounds_left -= 1
        # The regions set already freed what they could, and the window's
        # peak shows what is over the target still: the new ones must free
        # that on top of what the set frees now.
        added = choose(self.census, excess + freed([self.census[i].saved for i in self.chosen]), self.chosen)
        self.chosen += added
        if added:
            self.settling = self.SETTLE
        return added

    def _remaining(self) -> list[int]:
        have = set(self.chosen)
        return [i for i, c in enumerate(self.census or ()) if c.safe and c.saved > 0 and i not in have]
