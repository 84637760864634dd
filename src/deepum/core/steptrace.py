"""One recorded training step, and a plan for it (the planner's input and output).

The glue records a step as a :class:`StepTrace`: the operators in order, each
with the page IDs it uses, creates and frees, and per page its size, whether
it was resident when the step began, and, if it can be dropped, what
rebuilding it costs and which pages its recipe reads. Page IDs are small ints
the glue chooses (stable keys interned per step work well); a :class:`Plan`
names pages by the same IDs and operators by their index in the step.

Slots: "after op i" for i in -1 .. n-1, where -1 is "before the first
operator". An eviction after op i frees its bytes for op i + 1; a prefetch
started after op i holds device memory from op i + 1 on and moves while ops
i + 1, i + 2, ... compute.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .remat_policy import Action


@dataclass(frozen=True)
class PageSpec:
    """One page of the step.

    ``resident``: on the device when the step begins (pages the step creates
    ignore it). ``rebuild_seconds``: seconds to compute the page again from
    ``recipe_inputs`` (page IDs, which must be on the device, or rebuilt
    first, when it is rebuilt); None: it cannot be dropped. ``dirty``: no
    current host copy at step start. ``pageable``: False for pages that never
    leave the device.
    """

    nbytes: int
    resident: bool = True
    rebuild_seconds: float | None = None
    recipe_inputs: tuple[int, ...] = ()
    dirty: bool = True
    pageable: bool = True


@dataclass(frozen=True)
class OpSpec:
    """One operator: its execution ID, device seconds, and its pages.

    ``uses``: pages it reads or writes (they must be resident while it runs);
    ``writes``: those of ``uses`` it writes in place (a write breaks the
    recipes that read the page and the page's own); ``creates``: its new
    output pages; ``frees``: pages the program frees after it.
    """

    eid: int
    seconds: float
    uses: tuple[int, ...] = ()
    creates: tuple[int, ...] = ()
    frees: tuple[int, ...] = ()
    writes: tuple[int, ...] = ()


@dataclass
class StepTrace:
    ops: list[OpSpec]
    pages: dict[int, PageSpec]

    def validate(self) -> None:
        """Raise ValueError naming the first operator and page that do not add up."""
        born = {pid for op in self.ops for pid in op.creates}
        alive = {pid for pid in self.pages if pid not in born}
        for i, op in enumerate(self.ops):
            for pid in (*op.uses, *op.creates, *op.frees):
                if pid not in self.pages:
                    raise ValueError(f"op {i} (eid {op.eid}) names page {pid}, which has no PageSpec")
            for pid in op.uses:
                if pid not in alive:
                    raise ValueError(f"op {i} (eid {op.eid}) uses page {pid} before it exists or after it is freed")
            bad = set(op.writes) - set(op.uses)
            if bad:
                raise ValueError(f"op {i} (eid {op.eid}) writes pages {sorted(bad)} it does not list in uses")
            for pid in op.creates:
                if pid in alive:
                    raise ValueError(f"op {i} (eid {op.eid}) creates page {pid}, which already exists")
                alive.add(pid)
            for pid in op.frees:
                if pid not in alive:
                    raise ValueError(f"op {i} (eid {op.eid}) frees page {pid}, which is not alive")
                alive.discard(pid)
        for pid, spec in self.pages.items():
            if spec.nbytes < 0:
                raise ValueError(f"page {pid} has negative size {spec.nbytes}")


@dataclass
class Fetch:
    """One planned copy in: started after op ``start``, needed by op ``use``;
    its copy out was started after op ``evicted`` (-2: it began the step on the host)."""

    pid: int
    start: int
    use: int
    evicted: int


@dataclass
class Plan:
    """What to do after each operator of the step.

    ``evictions[i]``: (page ID, Action) pairs to evict after op i;
    ``prefetches[i]``: page IDs whose copy in starts after op i (i = -1:
    before the first op); ``fetches``: the same copies in as :class:`Fetch`
    records (what :meth:`note_late` moves). ``resident[i]``: planned bytes on
    the device while op i runs. ``short_op``/``short_bytes``: the first operator whose working
    set does not fit the limit, and by how much (None/0 when the plan fits).
    """

    limit: int
    seconds: list[float]
    nbytes: dict[int, int]
    h2d_Bps: float
    d2h_Bps: float
    evictions: dict[int, list[tuple[int, Action]]] = field(default_factory=dict)
    prefetches: dict[int, list[int]] = field(default_factory=dict)
    fetches: list[Fetch] = field(default_factory=list)
    resident: list[int] = field(default_factory=list)
    recompute_seconds: float = 0.0
    short_op: int | None = None
    short_bytes: int = 0
    stats: dict[str, int] = field(default_factory=dict)
    # Pages on the device (or arriving) after the last operator.
    final: set[int] = field(default_factory=set)
    # Pages on the device before the first operator (the plan's start).
    start: set[int] = field(default_factory=set)
    # Those of ``start`` the plan keeps on the device until their first use:
    # one that the step before left on the host must come back as the step
    # begins (the runner prefetches it), or it faults where first used.
    start_used: set[int] = field(default_factory=set)
    # Pages dropped where the program frees them, kept (holding no memory)
    # for the recipes of the pages listed, which may be dropped later.
    kept: dict[int, tuple[int, ...]] = field(default_factory=dict)
    # Pages the program has freed, let go after op i: where it freed them, or
    # later, once no dropped page needs them (the runner lets go there).
    releases: dict[int, list[int]] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        return self.short_op is None

    def dropped(self) -> set[int]:
        """Page IDs the plan drops anywhere in the step (evicted by dropping, or kept
        as lineage where the program frees them): the pages that need recipes."""
        out = {pid for evs in self.evictions.values() for pid, action in evs if action == Action.DROP}
        out.update(self.kept)
        return out

    def evictions_after(self, i: int) -> list[tuple[int, Action]]:
        return self.evictions.get(i, [])

    def prefetches_after(self, i: int) -> list[int]:
        return self.prefetches.get(i, [])

    def note_late(self, pid: int, seconds: float | None = None) -> bool:
        """A prefetch of ``pid`` arrived ``seconds`` late (Capuchin's feedback):
        start each of its copies in earlier by that much compute (default: its
        lead again), as far as the limit allows at every op it now spans and
        no earlier than its copy out. Returns whether any moved."""
        moved = False
        for f in self.fetches:
            if f.pid == pid:
                moved |= self._advance(f, seconds)
        return moved

    def _advance(self, f: Fetch, seconds: float | None) -> bool:
        b = self.nbytes[f.pid]
        want = seconds if seconds is not None else sum(self.seconds[f.start + 1:f.use])
        new, got = f.start, 0.0
        while got < want and new - 1 > f.evicted and self.resident[new] + b <= self.limit:
            got += self.seconds[new]
            new -= 1
        if new == f.start:
            return False
        for j in range(new + 1, f.start + 1):
            self.resident[j] += b
        self.prefetches[f.start].remove(f.pid)
        self.prefetches.setdefault(new, []).append(f.pid)
        f.start = new
        return True


class TraceBuilder:
    """Builds a :class:`StepTrace` from the glue's events while the step runs.

    The glue names pages by IDs it never reuses. A page it mentions before
    saying how it came to be is one that existed when the step began
    (:meth:`existing`); :meth:`op` records one operator with the pages it
    made; :meth:`free` is the program letting a page go after the last
    operator recorded. Operator seconds are filled in by :meth:`build`, when
    the timings of the whole step are in.
    """

    def __init__(self) -> None:
        self.eids: list[int] = []
        self.uses: list[tuple[int, ...]] = []
        self.writes: list[tuple[int, ...]] = []
        self.creates: list[tuple[int, ...]] = []
        self.frees: list[list[int]] = []
        self.pages: dict[int, PageSpec] = {}
        self.skeys: dict[int, int] = {}
        self.gone: set[int] = set()
        # Freed before the first operator ended: freed after it, for the trace.
        self.early: list[int] = []
        # page ID -> (execution ID of its recipe, the page IDs the recipe reads)
        self.recipes: dict[int, tuple[int, tuple[int, ...]]] = {}

    def knows(self, pid: int) -> bool:
        return pid in self.pages

    def existing(self, pid: int, skey: int, nbytes: int, *, resident: bool, dirty: bool,
                 pageable: bool) -> None:
        """A page alive when the step began."""
        self.pages[pid] = PageSpec(nbytes, resident=resident, dirty=dirty, pageable=pageable)
        self.skeys[pid] = skey

    def op(self, eid: int, uses: tuple[int, ...], writes: tuple[int, ...],
           creates: list[tuple[int, int, int, bool]]) -> None:
        """An operator ran: ``creates`` holds (page ID, stable key, bytes, pageable) per new page."""
        for pid, skey, nbytes, pageable in creates:
            self.pages[pid] = PageSpec(nbytes, pageable=pageable)
            self.skeys[pid] = skey
        self.eids.append(eid)
        self.uses.append(uses)
        self.writes.append(writes)
        self.creates.append(tuple(c[0] for c in creates))
        self.frees.append([])
        if self.early:  # (those the operator itself used are freed after it all the same)
            self.frees[0].extend(self.early)
            self.early = []

    def recipe(self, pid: int, eid: int, inputs: tuple[int, ...]) -> None:
        """Page ``pid`` can be rebuilt by running execution ID ``eid`` on ``inputs``."""
        if all(q in self.pages for q in inputs):
            self.recipes[pid] = (eid, inputs)

    def free(self, pid: int) -> None:
        """The program let the page go after the last operator recorded (before the
        first: it counts as freed after the first, the step's earliest slot)."""
        if pid in self.pages and pid not in self.gone:
            self.gone.add(pid)
            (self.frees[-1] if self.eids else self.early).append(pid)

    def build(self, op_seconds, rebuild_seconds) -> StepTrace:
        """The trace; ``op_seconds(eid)`` and ``rebuild_seconds(eid)`` price operators."""
        pages = dict(self.pages)
        for pid, (eid, inputs) in self.recipes.items():
            s = pages[pid]
            pages[pid] = PageSpec(s.nbytes, s.resident, rebuild_seconds(eid), inputs, s.dirty, s.pageable)
        ops = [OpSpec(eid, op_seconds(eid), u, c, tuple(f), w)
               for eid, u, c, f, w in zip(self.eids, self.uses, self.creates, self.frees, self.writes)]
        return StepTrace(ops, pages)
