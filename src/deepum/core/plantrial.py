"""Does the planned step pay on this program? Timed against the online choice (``plan="auto"``).

A planned step spends less host time per operator than the online choice
(no victim ranking), but its plan can move more bytes over the link; which
of the two wins depends on the model (docs/BENCHMARKS.md, sessions 10 and 11:
on an H100 the plan ran the Llama-family model faster than the online choice
and BERT-large slower). So with ``plan="auto"`` the session times both on
the program itself. After the recorded step (no sample: recording costs
extra) and ``settle`` planned steps (no samples either: see below),
planned and online steps take turns in pairs, planned first, until each
way has ``samples`` timed steps; the plan stays if its fastest step is no
slower than the fastest online step times ``1 + margin``, otherwise the
session goes back to the online choice for good.

Why turns, and why pairs. Step times drift on a shared machine, and the
first steps under pressure run slower while costs are still sampled, so
timing one way after the other favours whichever runs second (session 11:
two online steps timed before the recording made a slower plan win on
GPT-2 medium). But a step begins from the residency the step before left,
so only the second step of a pair is timed: it begins where its own kind
leaves memory. Timed right after an online step, a planned step on
ResNet-152 began with the BatchNorm counters the online choice keeps on the
device and faulted nothing, while every planned step after a planned one
faulted them all back in; the trial kept that slower plan (docs/BENCHMARKS.md,
session 11). Steps that left the plan are no samples, but count against
it: a program that leaves the plan ``samples`` times before the verdict
(shapes that change from step to step) is paged online, since each
departure means recording the next step again.

Why settle, and why the fastest. A plan's first steps can pay once for
what later steps reuse (pinned buffers and device segments of sizes the
online steps did not use, prefetches moved earlier after arriving late). On
ResNet-152 on the GPU the trial's planned steps ran well slower than the
same plan's steps later, and one trial kept an online choice that ran
slower than those later steps (docs/BENCHMARKS.md, session 17; which one-time cost it was is
not measured). So the first planned steps are not samples, and a one-off cost
in a sampled step (a collector pass) does not decide: each way is judged by
its fastest step.
"""

from __future__ import annotations

ONLINE, PLANNED = "online", "planned"


class PlanTrial:
    """Step times of both ways of paging, and the verdict once both have ``samples``."""

    def __init__(self, samples: int, margin: float, settle: int = 0) -> None:
        if samples < 1:
            raise ValueError("samples must be at least 1")
        if settle < 0:
            raise ValueError("settle must be 0 or more")
        self.samples = samples
        self.margin = margin
        self.settle = settle  # planned steps still to run before the first sample
        self.times: dict[str, list[float]] = {ONLINE: [], PLANNED: []}
        self.verdict: bool | None = None  # True: keep the plan; False: online for good
        self.departures = 0
        self.last: str | None = None  # how the step before the one ending paged (None: neither way)

    def wants(self, kind: str) -> bool:
        """More steps of ``kind`` are needed before the verdict."""
        return self.verdict is None and len(self.times[kind]) < self.samples

    def next_kind(self) -> str:
        """How the next step pages while the trial runs: planned while it settles, then
        the way with fewer samples, planned first (with :meth:`ended`'s rule, pairs of
        each in turn)."""
        if self.settle:
            return PLANNED
        return PLANNED if len(self.times[PLANNED]) <= len(self.times[ONLINE]) else ONLINE

    def online_next(self) -> bool:
        """Is the next step one of the trial's online steps?"""
        return self.verdict is None and self.next_kind() == ONLINE

    def ended(self, kind: str | None, seconds: float) -> bool | None:
        """A step of ``kind`` (None: recorded, or it left the plan) took ``seconds``; a sample
        only if the step before it paged the same way. Returns the verdict once there is one."""
        settled = kind is not None and kind == self.last
        self.last = kind
        if kind == PLANNED and self.settle:
            self.settle -= 1
            return self.verdict
        return self.note(kind, seconds) if settled else self.verdict

    def note(self, kind: str, seconds: float) -> bool | None:
        """One step of ``kind`` took ``seconds``; returns the verdict once there is one."""
        if self.wants(kind):
            self.times[kind].append(seconds)
            if not (self.wants(ONLINE) or self.wants(PLANNED)):
                online, planned = min(self.times[ONLINE]), min(self.times[PLANNED])
                self.verdict = planned <= online * (1 + self.margin)
        return self.verdict

    def departed(self) -> bool | None:
        """A planned step left the plan; returns the verdict (False after ``samples`` of them)."""
        if self.verdict is None:
            self.departures += 1
            if self.departures >= self.samples:
                self.verdict = False
        return self.verdict
