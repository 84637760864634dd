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
or not) plus what autograd saved during it, and what the regions set keep
(their inputs, a selective region's cache). Backward passes run one region
at a time, so regions ``R`` lower the forward's peak by

    freed(R) = sum(saved[r] for r in R) - max(saved[r] for r in R)

and a window measured with regions set adds that largest one back: the
step holds it again when its backward runs it.

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
prediction), and when every candidate is set whole and the step still
pages, all are unset again.

Feedback. The census is of one window (the first step, before the
optimizer has made its state, so the first choice waits for the next
window's peak); the next window with the regions set measures the forward's
peak again, and if it is still over the target, or the whole step's peak
demand (what it would hold with nothing paged, [Note: demand] in
core/pages.py: a loss's transient upcast, the backward's own peak, the
optimizer's step) is over the point at which paging stops
(``region_release`` of the budget, at most the pager's limit:
``stop_bytes``), more regions are added, for at most
``region_rounds`` rounds, the last of which sets every candidate whole (a region once set stays, though its level may
rise: a plan that shrinks and grows again would pay each change twice).
Bytes the engine still pages do not count: the page planner keeps a
headroom under the limit, so a step that will fit unintercepted may still
page until dormancy stops it. The two windows after a change do not count their step's peak: the
page planner, started over by the engine, records and plans the new step in them. The regions are decided in
a program's first steps: a program whose steps later grow is left to the
page planner for what they add.

Two levels. A region at ``WHOLE`` keeps nothing of what the call saved
and runs all of the call again. Most of a transformer layer's saved bytes
are casts and pointwise outputs (norms, activations, dropout masks) that the
device makes again in a small share of the call's time, while its matmuls
and attention take most of the time and save a small share of the bytes. A
region at ``SELECTIVE`` keeps the outputs of the operators in ``KEEP_OPS``
(matmuls, convolutions, attention) and runs only the others again
(PyTorch's selective checkpointing, with ``keeps`` as its policy). Its
census is the call's ``kept`` bytes and ``cheap`` seconds (the share of the
call's time outside those operators). A region at ``SELECTIVE`` drops
``saved - kept``; one at ``WHOLE`` drops ``saved``; ``freed`` above holds
with these drops in place of ``saved``. The choice goes by steps, each a
call's next level, best bytes per second first: a call goes to
``SELECTIVE`` or straight to ``WHOLE``, whichever frees more per second, and
from ``SELECTIVE`` it may later go to ``WHOLE`` (its kept bytes for the rest
of its time). On a transformer that is every layer selective first, and
whole layers only for what is still over.

Lowering, once. The forward's measure is an estimate; once the step runs
unintercepted, the allocator's peak of a whole step is a measurement. If
it leaves room under ``region_release``, whole regions are lowered while
the bytes they would keep fit in that room: unset (``NONE``: the region's
saved bytes come back) or, where the SELECTIVE level is on, selective (its
kept bytes), whichever saves more seconds per byte, most first. This
happens once: if the step then pages again, the rounds go on as before,
and the last round sets every candidate whole. The measure is the
allocator's reserved peak (its cap is on reserved bytes); if the lowered
step still makes the allocator flush its cache to find a block, the
lowering is undone; where nothing lowered is left to undo, one more region
is set whole (``raise_one``) for each unintercepted window that flushes,
and where every region is whole and state is parked, ``park_margin`` more
is parked (``park_more``): a flush waits on every stream, each step
(GPT-2 medium at 1/2 on the GPU; docs/BENCHMARKS.md, session 26).

The SELECTIVE level is off unless asked for (``recompute_blocks=
"selective"``): PyTorch's selective checkpointing runs the region's forward
and its recompute under a Python dispatch mode, and on the GPU that costs
more than the whole recompute it saves (docs/BENCHMARKS.md, session 24).
The census then has no SELECTIVE level (``kept`` is -1).

[Note: parking]
A model whose parameters, gradients and optimizer state fill most of the
budget (a large model at a small batch) has too little room for
activations even with every region whole. Its optimizer state is read
and written only by the optimizer's step, so between two steps it can
wait on the host: copied out after a step, while the program goes on, and
back before the next, with no operator intercepted (engine/parking.py).
When every region whole still leaves the forward over its target by
``short`` bytes and ``parkable`` (the optimizer state on the device)
covers it, every region is set whole and ``park = short``; but not where
the optimizer's step itself (``step_floor``: parameters, gradients and one
slice of the state, which the step reads where it is parked; [Note: a step
over parked state] in engine/parkstep.py) passes ``stop_bytes``, since the
step could then never stop paging. Parked state leaves the device only at
the next optimizer step, so the windows that settle after a change in
parking are not read at all. A window still
over with every region whole parks more, up to ``parkable``; only then
are regions and parking dropped for the page planner. The first change
parks ``park_margin`` past what the window showed over, and each later
one at least ``park_margin`` (the larger of it and the excess): a step that pages holds
its residency near the limit whatever is parked, so its measured demand
falls only a little with each change, and a window over by a few bytes
would otherwise park a few bytes more, settle, and page again, step after
step (the Llama-family model at 1/2 on the GPU; docs/BENCHMARKS.md,
session 26). The changes must also show: where two changes in a row,
since the last window that fit, each lowered the window's excess by less
than ``park_effect`` of the bytes they parked, the measure does not follow
what is parked, and parking more would only page on with more to copy
each step (a step that pages over parked state costs several times one
that pages alone; session 26 measured a run that parked a margin more
every few windows through its whole warm-up), so regions and parking are
dropped then, as when all of the state is parked. One weak change is let
pass: a change of a margin where the window was over by less can leave
it over while the measure follows what is parked only in part. Regions
are not lowered while state is parked: the step needed all of them and
more.

Pure logic: the engine feeds it byte counts and seconds, and sets what it returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

NONE, SELECTIVE, WHOLE = 0, 1, 2  # a call's level: kept as is, recomputed but for KEEP_OPS, recomputed whole

# What a SELECTIVE region keeps: operators whose time is large next to the
# bytes they write (matmuls, convolutions, fused attention), by aten name.
# Random operators are not here: they run again with the RNG state restored,
# and an attention with dropout is one (a kept one would leave the generator
# behind in the recompute, and every later mask would differ).
KEEP_OPS = frozenset({
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "_int_mm", "_scaled_mm",
    "convolution", "_convolution", "convolution_overrideable", "cudnn_convolution", "mkldnn_convolution",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward",
    "_efficient_attention_forward",
})


def keeps(op_name: str, dropout_p: float = 0.0) -> bool:
    """The SELECTIVE policy: whether a region keeps this operator's outputs rather than running it again."""
    return op_name in KEEP_OPS and not dropout_p


@dataclass(frozen=True)
class Census:
    """One candidate module call of the census window, in call order.

    ``saved``: bytes the call left alive beyond its outputs; ``seconds``:
    its forward's duration; ``safe``: its arguments can be kept and passed
    again (tensors and plain values, none written by the call); ``kept``:
    bytes of its ``KEEP_OPS`` outputs (-1: no SELECTIVE level); ``cheap``:
    seconds of its forward outside those operators.
    """

    saved: int
    seconds: float
    safe: bool = True
    kept: int = -1
    cheap: float = 0.0

    def drops(self, level: int) -> int:
        """Bytes of ``saved`` a region at ``level`` does not keep."""
        if level == WHOLE:
            return self.saved
        if level == SELECTIVE:
            return max(self.saved - self.kept, 0)
        return 0

    def cost(self, level: int) -> float:
        return self.seconds if level == WHOLE else self.cheap if level == SELECTIVE else 0.0

    @property
    def usable(self) -> bool:
        return self.safe and self.saved > 0


def freed(drops: Sequence[int]) -> int:
    """Bytes off the forward's peak when regions dropping ``drops`` are recomputed (see the Note)."""
    return sum(drops) - max(drops) if drops else 0


def freed_by(census: Sequence[Census], levels: Mapping[int, int]) -> int:
    """``freed`` of the regions ``levels`` (census index to level)."""
    return freed([census[i].drops(level) for i, level in levels.items() if level])


def _next_step(c: Census, level: int) -> tuple[float, int] | None:
    """A call's next level from ``level`` and its bytes per second, or None at WHOLE."""
    if level == WHOLE:
        return None
    options = [WHOLE]
    if level == NONE and c.kept >= 0 and c.drops(SELECTIVE) > 0:
        options.append(SELECTIVE)
    best = None
    for to in options:
        ratio = (c.drops(to) - c.drops(level)) / max(c.cost(to) - c.cost(level), 1e-9)
        if best is None or ratio > best[0]:
            best = (ratio, to)
    return best


def choose(census: Sequence[Census], excess: int, chosen: Mapping[int, int] | None = None) -> dict[int, int]:
    """Levels to change (index to new level) so that the regions free ``excess`` bytes, best per second first.

    Returns every remaining step when even all of them fall short (the page
    planner takes the rest), and nothing when ``excess`` is not positive.
    """
    levels = dict(chosen or {})
    changes: dict[int, int] = {}
    if excess <= 0:
        return changes
    while freed_by(census, levels) < excess:
        best = None
        for i, c in enumerate(census):
            step = _next_step(c, levels.get(i, NONE)) if c.usable else None
            # Most bytes per second first; among equals the earlier call.
            if step is not None and (best is None or step[0] > best[0]):
                best = (step[0], i, step[1])
        if best is None:
            break
        levels[best[1]] = changes[best[1]] = best[2]
    return changes


class RegionPlan:
    """The regions' state across windows: census, then up to ``rounds`` rounds of choosing.

    ``window(forward_peak, step_peak)`` is called at each paging
    window's boundary with the measured peak of its forward pass and its
    whole peak demand; ``lower(step_peak)`` at a window
    that ran unintercepted. Both return the levels to change from now on
    (census index to level; possibly none). ``chosen`` holds every region
    set, with its level.
    """

    SETTLE = 2  # windows after a change before the step's peak counts (the page planner records again)

    def __init__(self, budget: int, target: float, rounds: int, release: float = 1.0, limit: int = 0) -> None:
        assert 0 < target <= release <= 1 and rounds >= 1
        self.target_bytes = int(budget * target)
        self.release_bytes = int(budget * release)
        # Paging stops only for a step whose demand is within the limit too
        # ([Note: dormancy]); ``limit``: the pager's (0: the budget).
        self.stop_bytes = min(self.release_bytes, limit or budget)
        self.rounds_left = rounds
        self.census: list[Census] | None = None
        self.chosen: dict[int, int] = {}
        self.dropped = False  # every region was set whole, the step still paged, and they were all unset
        self.settling = 0  # windows left whose step peak does not count (see window)
        self.lowered = False  # the one lowering is spent (see lower)
        self.lowered_from: dict[int, int] = {}  # the regions lowered, at the level each had (see undo_lower)
        self.parkable = 0  # bytes of optimizer state that could be parked (the engine sets it; [Note: parking])
        self.park = 0  # bytes of it to park
        self.step_floor = 0  # bytes the optimizer's step holds at least: parameters, gradients, a slice of state
        self.park_margin = 0  # bytes parked past what a window showed over (the engine sets it; [Note: parking])
        self.park_effect = 0.25  # share of a parking change's bytes its window should fall by (the engine sets it)
        self.parked_at: tuple[int, int] | None = None  # (the window's excess, bytes added) at the last change
        self.weak_parks = 0  # changes in a row whose window fell by less than that

    def take_census(self, census: Sequence[Census]) -> None:
        self.census = list(census)

    @property
    def done(self) -> bool:
        return self.rounds_left == 0 or (self.census is not None and not self.chosen and not self._remaining())

    def window(self, forward_peak: int, step_peak: int = 0, short: int = 0) -> dict[int, int]:
        """``step_peak``: the window's whole peak demand as dormancy reads it (what the step
        would hold with nothing paged; [Note: demand] in core/pages.py); ``short``: bytes it and
        its allocator's rests passed the cap by (core/dormancy.py), for the regions to free too."""
        if self.census is None or self.done:
            return {}
        if self.settling > 0:
            # The windows right after a change run partly by the page planner's
            # older plans (it departs and records again), and the first began
            # before the change: their peaks are not the regions' to answer for.
            self.settling -= 1
            if self.park:
                # Parked state leaves the device only after the next
                # optimizer step: these windows' forwards still hold it.
                return {}
            step_peak = short = 0
        census = self.census
        if self.chosen:
            # With regions set, the measured forward holds what they keep;
            # the backward then runs one of them again, up to the largest
            # one's drops on top (the census's ``freed`` counts it too).
            forward_peak += max(census[i].drops(level) for i, level in self.chosen.items())
        excess = forward_peak - self.target_bytes
        if self.chosen:
            # The step is over the point at which paging stops with regions
            # set: what the forward's measure missed (the backward's own
            # transients, the optimizer's step) is that much. Bytes the page
            # planner moved do not count: it keeps a headroom under the
            # limit, so a step that fits unintercepted may page. Or it is
            # over by what its allocator's rests pass the cap by (``short``).
            excess = max(excess, step_peak - self.stop_bytes, short)
        if excess <= 0:
            # This window fits. Another may still be over (a page plan's
            # trial alternates two ways of paging): the rounds stay open
            # until they run out or the session stops paging. What parking
            # did so far did its part: a later window over (a longer batch)
            # is weighed afresh.
            self.parked_at, self.weak_parks = None, 0
            return {}
        if self.chosen and not self._remaining():
            if self.park < self.parkable and self.step_floor <= self.stop_bytes and self._parking_lowered(excess):
                # Every region is whole: park more of the optimizer's state.
                added = min(self.parkable, self.park + max(excess, self.park_margin)) - self.park
                self.park += added
                self.parked_at = (excess, added)
                self.settling = self.SETTLE
                return {}
            # Every region is set whole, as much state parked as there is,
            # and the step still pages: regions and paging together cost
            # more than paging alone. All of them go.
            self.chosen = {}
            self.park = 0
            self.rounds_left = 0
            self.dropped = True
            return {}
        if not self.chosen:
            short = excess - freed_by(census, dict.fromkeys(self._remaining(), WHOLE))
            if short > 0:
                changes = self._whole_and_parked(short)
                self.parked_at = (excess, self.park) if self.park else None
                return changes
        self.rounds_left -= 1
        if self.rounds_left == 0 and self.chosen:
            # The last round: every candidate whole, the most the regions can
            # free. The step then fits and stops paging, or it still pages
            # and the next window unsets them all: it never ends paging with
            # regions set, paying for both.
            self.rounds_left = 1
            changes = dict.fromkeys(self._remaining(), WHOLE)
            self.chosen.update(changes)
            self.settling = self.SETTLE
            return changes
        # The regions set already freed what they could, and the window's
        # peak shows what is over the target still: the new levels must free
        # that on top of what the set frees now.
        changes = choose(census, excess + freed_by(census, self.chosen), self.chosen)
        self.chosen.update(changes)
        if changes:
            self.settling = self.SETTLE
        return changes

    def _whole_and_parked(self, short: int) -> dict[int, int]:
        """Every region whole leaves the forward ``short`` bytes over: park them, or leave the step to the pages."""
        if short > self.parkable or self.step_floor > self.stop_bytes:
            # Even every region whole, with all the state parked, would
            # leave the step paging (its forward, or the optimizer's step,
            # which holds all of the state back): each region would then
            # add its forward again to a step the page planner already pays
            # for, so the step is left to the page planner whole.
            self.rounds_left = 0
            return {}
        # Every region whole and the rest parked ([Note: parking]).
        self.rounds_left = max(self.rounds_left - 1, 1)
        self.park = min(self.parkable, short + self.park_margin)
        changes = dict.fromkeys(self._remaining(), WHOLE)
        self.chosen.update(changes)
        self.settling = self.SETTLE
        return changes

    def lower(self, step_peak: int) -> dict[int, int]:
        """Whole regions to set lower, given an unintercepted step's measured peak (once; see the Note).

        A region goes to ``NONE`` (it keeps what it saves) or, where the
        census has a SELECTIVE level, to that (it keeps its ``kept`` bytes),
        whichever saves more seconds per byte it adds; most seconds per byte
        first, while the bytes fit the room the step left under the release
        share. A region lowered to ``NONE`` leaves ``chosen``.
        """
        if self.lowered or self.census is None or not self.chosen:
            return {}
        self.lowered = True
        if self.dropped or self.done or self.park:
            # (done: no round would be left to raise them again if the step
            # then paged; parking: the step needed every region and more)
            return {}
        room = self.release_bytes - step_peak
        options = sorted((o for i, level in self.chosen.items() if level == WHOLE
                          for o in [self._lower_option(i)] if o is not None), key=lambda o: (-o[0], o[1]))
        changes: dict[int, int] = {}
        for _, i, to, added in options:
            if added > room:
                continue
            room -= added
            changes[i] = to
        for i, to in changes.items():
            self.lowered_from[i] = self.chosen[i]
            if to == NONE:
                del self.chosen[i]
            else:
                self.chosen[i] = to
        return changes

    def undo_lower(self) -> dict[int, int]:
        """The lowering's regions back at their levels (once): the lowered step made the allocator flush its cache.

        A measured peak under the cap can still leave the cap's allocator
        no free block that fits: it then hands its cached blocks back and
        asks again, a wait on every stream, each step. Recomputing the
        lowered regions again costs less than that.
        """
        changes, self.lowered_from = self.lowered_from, {}
        self.chosen.update(changes)
        return changes

    def raise_one(self) -> dict[int, int]:
        """One more region whole, the most bytes per second first: an unintercepted step with
        nothing lowered to undo made the allocator flush its cache (see ``undo_lower``)."""
        census = self.census
        steps = [((census[i].drops(WHOLE) - census[i].drops(level))
                  / max(census[i].cost(WHOLE) - census[i].cost(level), 1e-9), -i)
                 for i in self._remaining() for level in [self.chosen.get(i, NONE)]]
        if not steps:
            return {}
        i = -max(steps)[1]
        self.chosen[i] = WHOLE
        return {i: WHOLE}

    def park_more(self) -> int:
        """``park_margin`` more bytes parked, within ``parkable``, where state is parked and
        every region is whole: the unintercepted step made the allocator flush its cache
        (see ``raise_one``). Returns the bytes added."""
        if not self.park or self._remaining() or self.park >= self.parkable:
            return 0
        added = min(self.parkable, self.park + max(self.park_margin, 1)) - self.park
        self.park += added
        self.parked_at = None  # (no window's excess to weigh it by: the step ran unintercepted)
        return added

    def _parking_lowered(self, excess: int) -> bool:
        """False once two changes in parking in a row each lowered the window's excess by less
        than ``park_effect`` of the bytes they added ([Note: parking])."""
        if self.parked_at is not None:
            before, added = self.parked_at
            self.weak_parks = self.weak_parks + 1 if before - excess < self.park_effect * added else 0
        return self.weak_parks < 2

    def _lower_option(self, i: int) -> tuple[float, int, int, int] | None:
        """(seconds saved per byte added, index, level, bytes added) of a whole region's best lower level."""
        c = self.census[i]
        best = None
        for to in (NONE, SELECTIVE):
            if to == SELECTIVE and (c.kept < 0 or c.drops(SELECTIVE) <= 0):
                continue
            added = c.drops(WHOLE) - c.drops(to)
            ratio = (c.cost(WHOLE) - c.cost(to)) / max(added, 1)
            if best is None or ratio > best[0]:
                best = (ratio, i, to, added)
        return best

    def _remaining(self) -> list[int]:
        """Candidates not yet at WHOLE."""
        return [i for i, c in enumerate(self.census or ()) if c.usable and self.chosen.get(i, NONE) != WHOLE]
