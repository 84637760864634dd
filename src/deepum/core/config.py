"""Every policy knob of the engine, in one place.

:class:`Thresholds` holds the numbers the engine decides by (each documented
where it is declared); :class:`Config` holds a session's options, validated
once at construction so that a wrong type or value is refused with one clear
message before anything runs. Both are pure data: the engine reads them, it
never writes them.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field, fields

from .errors import OptionError

POLICIES = ("deepum", "lru")
VICTIMS = ("cost", "age")
RECIPES = ("all", "pointwise")


@dataclass(frozen=True)
class Thresholds:
    """The engine's thresholds, as fractions of the limit (budget minus reserve) or counts."""

    # Room kept free after each operator (pre-eviction), so the next one's
    # outputs rarely have to evict on the critical path. Session(headroom=)
    # overrides it in bytes.
    headroom: float = 1 / 16
    # Room is made at least this share of the limit at a time: one victim
    # choice and one eviction batch for several operators' outputs, since
    # each choice ranks candidates and each batch has a host cost of its own,
    # and the host is what a paged step waits for.
    evict_batch: float = 1 / 64
    # Bytes prefetched and not yet used may not pass this share of the limit:
    # the window can need more than the budget holds, and then each page
    # fetched far ahead pushes out one needed sooner, which is fetched again
    # (benchmarks/prefetch_cap_cpu.py; figures in docs/BENCHMARKS.md).
    prefetch_cap: float = 1 / 8
    # Prediction and prefetching start once this share of the limit is
    # resident (or anything is evicted); below it operators take the quiet path.
    pressure: float = 3 / 4
    # Window operators the prefetcher examines per operator (bounds its CPU cost).
    scan_ops: int = 8
    # After an allocator out-of-memory error an operator evicts at least this
    # share of the limit before it retries.
    oom_retry: float = 1 / 16
    # A foreach or fused operator is split into slices of at most this share
    # of the pageable limit. No more than prefetch_cap: the next slice's pages
    # are then fetched while one slice runs, instead of each slice faulting
    # its pages in after the last (an optimizer step streams every parameter,
    # gradient and state through; benchmarks/fault_probe.py, docs/BENCHMARKS.md
    # session 10).
    chunk: float = 1 / 8
    # Outputs smaller than this get no recipe: a copy is cheap for them.
    recipe_min_bytes: int = 64 << 10
    # A dropped page's recipe may read dropped pages at most this deep, so
    # that rebuilding one page rebuilds a bounded number of others first.
    recipe_max_depth: int = 8
    # Victims ranked per eviction by the recompute-first policy (the least
    # recently used ones; DTR samples candidates for the same reason).
    victim_candidates: int = 16
    # Pages under this share of the limit are victims only when larger ones
    # do not free enough: each costs a copy out and a fault back for next to
    # no room (normalisation statistics, step counters, biases).
    victim_small: float = 1 / 65536
    # Host time a rebuild costs beyond its kernels (recording, views, the
    # copy into the page), added to each operator's device time.
    rebuild_host_s: float = 30e-6
    # The host link the cpu tier prices copies at. Its test models are small,
    # so a slow modelled link makes them take the decisions (drop rather than
    # copy) that a GPU's host link makes for the pages of large models.
    cpu_link_Bps: float = 1e9
    # A native extension's build lock older than this was left by a killed
    # build and is removed (engine/build.py, [Note: a build lock left behind]).
    native_lock_stale_s: float = 600.0
    # On the cpu tier a copy out is done when it returns; on CUDA the page's
    # memory is free only once the copy on its stream has ended, and the
    # pager counts it as leaving until then. A positive value makes the cpu
    # tier's copies out hold their memory (in a holder storage) for that many
    # operators, so the paths CUDA takes with leaving memory (waits for
    # copies, room that comes later) run where CI runs (tests,
    # benchmarks/copy_lag_cpu.py).
    cpu_copy_lag: int = 0
    # On CUDA the allocator is capped this many bytes under the budget: it
    # rounds segment growth up, and reserved memory must never pass the budget.
    cap_slack: int = 64 << 20
    # Default reserve on CUDA: this share of the budget, at most reserve_max bytes.
    reserve: float = 1 / 8
    reserve_max: int = 2 << 30
    # CUDA, default reserve: the release shares may reach a demand that leaves
    # this share of the budget free (at least release_reserve_min bytes, at
    # most the reserve) ([Note: the release's margin] in core/dormancy.py).
    release_reserve: float = 1 / 16
    release_reserve_min: int = 512 << 20
    # Dormancy (core/dormancy.py): paging starts again when memory in use
    # would pass ``engage`` of the limit, and stops after ``calm_windows``
    # windows in a row whose peak demand stayed under ``release`` of it.
    engage: float = 3 / 4
    release: float = 2 / 3
    calm_windows: int = 2
    # CUDA: the allocator ran out of memory while dormant this many times:
    # the session pages to its end ([Note: out of memory while dormant]).
    dormant_oom_limit: int = 2
    # Regions ([Note: regions] in core/regions.py): the forward's peak is cut
    # to ``region_target`` of the *budget* by recomputing module calls, in at
    # most ``region_rounds`` rounds; while regions are set, dormancy stops
    # intercepting under ``region_release`` of the budget and starts again
    # over ``region_engage`` of it. Shares of the budget, not of the limit:
    # an unintercepted step is held by the allocator's cap, which is the
    # budget, and the rest of the budget is the margin for what the pages do
    # not count (allocator rounding, workspaces, the backward's recompute).
    region_target: float = 0.85
    region_release: float = 0.9
    region_engage: float = 0.95
    region_rounds: int = 3
    # An unintercepted step that flushes the allocator's cache waits on every
    # stream each time; regions answer it (engine/regions.py, _Unintercepted)
    # only after this many windows in a row flushed: one flush can be a
    # passing layout, and each answer (one more region whole, a margin more
    # parked) costs every step after it.
    flush_windows: int = 2
    # CUDA: paging stops only where a paging window's demand plus its
    # allocator's rests fits under the cap ([Note: the allocator's overhead
    # at release] in core/dormancy.py): the rests of every window that
    # flushed ("flushed"), of those that held no pages out at their peak
    # ("clean": where the pager held pages out, the room its evictions left
    # cached counts among the rests), or none ("off": the reserve stands for
    # them, the rule before session 30). "clean" and "off" are for A/Bs
    # (docs/BENCHMARKS.md, session 31).
    release_rests: str = "flushed"
    # Where a region keeps its call's tensor arguments until its recompute
    # ([Note: a region's inputs on the host] in engine/inputs_host.py):
    # "device", or "host" (copied out when the region starts, back for its
    # recompute); arguments under ``region_inputs_min`` bytes stay on the device.
    region_inputs: str = "device"
    region_inputs_min: int = 1 << 20
    # Parking ([Note: a step over parked state] in engine/parkstep.py): the
    # optimizer's step runs its operators over parked state in slices holding
    # at most this share of the limit of it.
    park_slice: float = 1 / 16
    # On CUDA the parked step pipelines its copies in slices of
    # ``park_slice / park_pipeline`` (at least 3), three of them on the device
    # at most: smaller slices shorten the pipeline's fill and drain, and
    # each costs a launch and a wait on the host (docs/BENCHMARKS.md,
    # session 27, compares 3 and 6).
    park_pipeline: int = 6
    # Parking's first change parks this share of the limit past what a window
    # showed over, and each later one at least this share ([Note: parking] in
    # core/regions.py).
    park_margin: float = 1 / 32
    # Two changes in parking in a row that each lowered the next window's
    # excess by less than this share of the bytes they parked drop regions
    # and parking ([Note: parking]).
    park_effect: float = 0.25
    # CUDA, while dormant: host seconds between two readings of the
    # allocator's statistics (each costs tens of microseconds), and the
    # shortest window: a root module call sooner than this after the last
    # boundary is a reading (generation steps of a few milliseconds share a
    # window). The cpu tier's counter is cheap: no limit there.
    reading_interval_s: float = 2e-3
    window_min_s: float = 2e-2
    # NVML's energy counter is slow to read on some drivers; session.stats()
    # reuses a reading younger than this (a program that reads the stats
    # every phase of every step pays one query per interval, not three a step).
    energy_read_s: float = 1.0
    # While dormant, module calls are watched on the root module and its
    # upper levels, at most this many modules (engine/watch.py): each hooked
    # module's call takes PyTorch's slower call path.
    watched_modules: int = 16
    # plan="auto" (core/plantrial.py): steps timed each way (the second of
    # each pair, pairs in turn) before the verdict, and how much slower than the online choice the planned
    # step may be and still stay (the fastest of each way compared). Step times of one process move by a tenth
    # from step to step on the GPU machines: three of each. The margin leans
    # to the plan: in-process A/Bs found the planned step faster on every
    # model measured, while a trial with no margin often chose the online
    # choice on the same models (docs/BENCHMARKS.md, session 13), and the
    # plan moves fewer pages, so where the two are within the noise, it stays.
    plan_trial_steps: int = 3
    plan_trial_margin: float = 0.1
    # Planned steps run before the trial's first sample: a plan's first steps
    # pay one-time costs its later steps do not (core/plantrial.py).
    plan_trial_settle: int = 2
    # The optimizer hooks look up every parameter's, gradient's and state's
    # page to class it (api/kinds.py), a few microseconds each. Pages born
    # again each step take their class from their stable key at birth, so
    # once a look-up round changes nothing for this many optimizer steps in
    # a row, the rounds run only every kinds_every-th step (and whenever
    # the optimizer's state grows).
    kinds_settle: int = 2
    kinds_every: int = 64
    # Views run at once, outside paging ([Note: views] in engine/intercept/
    # mode.py). False sends them down the full path as operators of their
    # own, as before: for measuring the difference in one process
    # (benchmarks/ab_inprocess.py).
    view_fast_path: bool = True
    # Share of the allocator's cap past which PyTorch's caching allocator
    # frees cached blocks it has not reused, oldest first, without the
    # synchronize-and-free-everything of a retry at the cap
    # (garbage_collection_threshold); 0 leaves it alone. Off: with
    # expandable segments it did not cut the retries, since it frees only
    # blocks that are not split and a segment's free blocks all are
    # (docs/BENCHMARKS.md, session 13). PyTorch has no value that turns it
    # off again, so it stays set after the session.
    allocator_gc: float = 0.0
    # On CUDA a page copied out holds its memory until the copy has ended,
    # which the planner does not model: a planned prefetch then finds no
    # room (stats: plan_prefetch_no_room) and its page faults. True plans
    # under a limit less the most bytes copies out held at once in the
    # recorded step; more pages then move. Off until measured on the GPU.
    plan_leaving_room: bool = False
    # A planned prefetch whose room copies out still hold waits for them
    # (the host blocks) instead of leaving its page to fault where used.
    # Off: on a step bound by the host a wait there may cost more than the
    # fault's copy on the compute stream; for the GPU to decide
    # (docs/BENCHMARKS.md, session 13).
    plan_prefetch_waits: bool = False
    # A planned prefetch that found no room is tried once more after the
    # next operator, when the program has let go of what that operator's
    # autograd node saved (engine/stepplan.py, [Note: prefetches that wait
    # for frees]); False leaves it to fault at once, as before.
    plan_prefetch_retry: bool = True
    # Seconds of sleep on the stream before each operator timed for its
    # cost, so that the events time the operator's kernels and not the
    # host's launch of them (engine/timing.py, [Note: gated timing]); 0 times
    # without the gate, as before.
    timing_gate_s: float = 100e-6
    # The share of a copy's link time the planner charges even where the
    # link has room to hide it (core/planner.py's LINK_PRICE is this, and its
    # rule says why all of it): lower moves the plan from rebuilds to copies.
    plan_link_price: float = 1.0
    # The plan evicts a page it copies out right after the page's last use,
    # so the copy ends before its room is needed (core/planner.py, [Note:
    # copies leave early]); False evicts it right before, as until session
    # 13 (for measuring the difference in one process).
    plan_early_copies: bool = True
    # True lets the planner keep a resident page the program frees as lineage
    # although its recipe reads pages the program already freed (core/planner.py,
    # [Note: no lineage through freed pages]): the rule until session 18, kept for A/Bs.
    plan_lineage_through_dead: bool = False
    # Pages the planner prices for each eviction, the furthest used (core/planner.py's
    # rule, step 1). Model state used only by the optimizer is always the furthest, so
    # with few candidates the plan copies it out before it weighs dropping an activation;
    # more make fewer evictions and copies for more planning time, once per plan
    # (docs/BENCHMARKS.md, sessions 16 and 17).
    plan_candidates: int = 1024

    def __post_init__(self) -> None:
        if self.cpu_copy_lag < 0:
            raise OptionError(f"Thresholds.cpu_copy_lag={self.cpu_copy_lag!r}: give 0 or a number of operators")
        if self.plan_trial_settle < 0:
            raise OptionError(f"Thresholds.plan_trial_settle={self.plan_trial_settle!r}: give 0 or more steps")
        if not 0 < self.region_target <= self.region_release <= self.region_engage <= 1:
            raise OptionError("Thresholds: give 0 < region_target <= region_release <= region_engage <= 1")
        if self.region_rounds < 1:
            raise OptionError(f"Thresholds.region_rounds={self.region_rounds!r}: give 1 or more")
        if self.region_inputs not in ("device", "host"):
            raise OptionError(f"Thresholds.region_inputs={self.region_inputs!r}: give 'device' or 'host'")
        if not isinstance(self.region_inputs_min, int) or self.region_inputs_min < 1:
            raise OptionError(f"Thresholds.region_inputs_min={self.region_inputs_min!r}: give bytes, 1 or more")
        if self.release_rests not in ("flushed", "clean", "off"):
            raise OptionError(f"Thresholds.release_rests={self.release_rests!r}: give 'flushed', 'clean' or 'off'")
        if self.plan_candidates < 1:
            raise OptionError(f"Thresholds.plan_candidates={self.plan_candidates!r}: give 1 or more pages")
        if self.plan_link_price < 0:
            raise OptionError(f"Thresholds.plan_link_price={self.plan_link_price!r}: give a share, 0 or more")
        if not 0.0 <= self.timing_gate_s < 0.01:
            raise OptionError(f"Thresholds.timing_gate_s={self.timing_gate_s!r}: give seconds of sleep "
                              "before a timed operator, under 0.01, or 0 for none")
        if not (self.allocator_gc == 0 or 0.0 < self.allocator_gc < 1.0):
            raise OptionError(f"Thresholds.allocator_gc={self.allocator_gc!r}: give a share of the "
                              "allocator's cap between 0 and 1, or 0 to leave the allocator's own setting")

    def of(self, share: float, limit: int) -> int:
        """``share`` of ``limit`` in whole bytes (exact for the powers-of-two shares above)."""
        return int(limit * share)


THRESHOLDS = Thresholds()


@dataclass(frozen=True)
class Config:
    """A session's options (see :class:`deepum.Session` for what each does)."""

    policy: str = "deepum"
    prefetch: bool = True
    lookahead: int = 64
    recompute: bool = True
    # Bytes, or a size string such as "256MiB"; None: the default for the device.
    reserve: int | str | None = None
    headroom: int | None = None
    expandable_segments: bool = True
    adopt: bool | None = None
    freeze_gc: bool = False
    trace: bool = False
    track_kinds: bool | None = None
    stress: bool = False
    strict: bool = False
    # How the deepum policy picks victims: "cost" ranks them by rebuild or
    # copy time per byte and staleness (DTR's h, core/remat_policy.py) and
    # copies a page only when that is cheaper than a rebuild; "age" takes the
    # least recently used outside the prediction window and drops every page
    # whose recipe allows (DeepUM's choice, core/policy.py).
    victims: str = "cost"
    # Which operators' outputs get recipes: "all" deterministic ones
    # (matmuls, norms, attention, ...), or "pointwise" (elementwise operators
    # and dtype casts only).
    recipes: str = "all"
    # Watch code that reads or writes tensor memory without an operator
    # (torch.save, pickle, deepcopy, print, numpy, data pointers) and bring
    # pages in for it (engine/intercept/host_access.py). Off leaves a dozen
    # tensor methods unwrapped, for programs that never read so inside a session.
    host_access: bool = True
    # True: record one training step, plan it (core/planner.py) and execute
    # the plan in the steps after (engine/stepplan.py). It is faster than
    # the online choice on some models and slower on others, so the default
    # "auto" times both on the program and keeps the faster
    # (core/plantrial.py); False: online only.
    plan: bool | str = "auto"
    # Stop intercepting while memory is not tight (core/dormancy.py). Off
    # keeps every operator intercepted for the whole session.
    dormant: bool = True
    # Recompute module calls (a transformer's layers, a CNN's blocks) in the
    # backward pass where the forward's peak passes the limit, through
    # PyTorch's checkpointing ([Note: regions] in core/regions.py): True
    # (or "whole") runs a chosen call again whole; "selective" may instead
    # keep its matmul and attention outputs and run the rest again (PyTorch's
    # selective checkpointing, whose dispatch mode costs host time on every
    # operator of the call). Needs ``dormant`` (its module hooks find the blocks).
    recompute_blocks: bool | str = True
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if self.recipes not in RECIPES:
            raise OptionError(f"recipes {self.recipes!r} is unknown; choose one of {', '.join(RECIPES)}")
        if self.victims not in VICTIMS:
            raise OptionError(f"victims {self.victims!r} is unknown; choose one of {', '.join(VICTIMS)}")
        if self.policy not in POLICIES:
            raise OptionError(f"policy {self.policy!r} is unknown; choose one of {', '.join(POLICIES)}")
        for name in ("prefetch", "recompute", "expandable_segments", "freeze_gc", "trace", "stress",
                     "strict", "host_access", "dormant"):
            _check_bool(name, getattr(self, name), optional=False)
        if not (isinstance(self.recompute_blocks, bool) or self.recompute_blocks in ("whole", "selective")):
            raise OptionError(f"option recompute_blocks={self.recompute_blocks!r} must be True, False, 'whole' "
                              "or 'selective'")
        if not (isinstance(self.plan, bool) or self.plan == "auto"):
            raise OptionError(f"option plan={self.plan!r} must be True, False or 'auto'")
        for name in ("adopt", "track_kinds"):
            _check_bool(name, getattr(self, name), optional=True)
        object.__setattr__(self, "lookahead", _check_int("lookahead", self.lookahead, 1))
        if self.headroom is not None:
            object.__setattr__(self, "headroom", _check_int("headroom", self.headroom, 0))
        reserve = self.reserve
        if reserve is not None and not isinstance(reserve, str):
            object.__setattr__(self, "reserve", _check_int("reserve", reserve, 0, sizes=True))
        if not isinstance(self.thresholds, Thresholds):
            raise OptionError(f"thresholds must be a deepum.core.config.Thresholds, not "
                              f"{type(self.thresholds).__name__}")

    @classmethod
    def from_options(cls, **options: object) -> Config:
        """The options given as keywords; an unknown name is refused, naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise OptionError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                              f"the options are {', '.join(sorted(known))}")
        return cls(**options)  # type: ignore[arg-type]


def _check_bool(name: str, value: object, optional: bool) -> None:
    if isinstance(value, bool) or (optional and value is None):
        return
    allowed = "True, False or None" if optional else "True or False"
    raise OptionError(f"option {name}={value!r} must be {allowed}, not {type(value).__name__}")


def _check_int(name: str, value: object, least: int, sizes: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        also = ", or a size string such as '256MiB'" if sizes else ""
        raise OptionError(f"option {name}={value!r} must be a whole number of at least {least}{also}, "
                          f"not {type(value).__name__}")
    if value < least:
        raise OptionError(f"option {name}={value!r} must be at least {least}")
    return int(value)
