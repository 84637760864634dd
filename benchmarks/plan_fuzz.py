"""The planner against the core's replay on many random traces: plans that say they fit must replay.

    python benchmarks/plan_fuzz.py [SEEDS] [step|repeating]

For each seed, a random lineage-heavy trace (tests/test_planner.py's
``random_lineage_trace``: chains of recomputable pages, many freed while their
readers live, with writes in place and pages that never leave the device),
planned at four limits with a random candidate count, link speed and
early-copies setting. ``step`` plans one step (``plan_step``); ``repeating``
plans it as a repeating step (``plan_repeating``, the pages alive at the start
keeping their roles), replayed from the residency the plan starts from. Prints
each seed whose plan the replay refused, or that went over the limit while
saying it fit, and the count. Session 17 found a lineage defect this way
(docs/BENCHMARKS.md); the test suite keeps 200 seeds of the plain kind.
"""

from __future__ import annotations

import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deepum.core.planner import plan_repeating, plan_step  # noqa: E402
from deepum.core.replay import simulate  # noqa: E402
from deepum.core.steptrace import PageSpec, StepTrace  # noqa: E402
from tests.test_planner import random_lineage_trace, unconstrained_peak  # noqa: E402


def one(seed: int, repeating: bool) -> str | None:
    """Why the replay refused seed's plans (None: every plan replayed within its limit)."""
    rng = random.Random(seed)
    trace = random_lineage_trace(rng, rng.choice([20, 40, 80]), write_share=rng.choice([0.0, 0.05, 0.2]),
                                 unpageable_share=rng.choice([0.0, 0.3]))
    born = {p for op in trace.ops for p in op.creates}
    skeys = {p: p for p in trace.pages}  # only the pages alive at the start have heirs (themselves)
    skeys.update({p: -1 - p for p in born})
    peak = unconstrained_peak(trace)
    for fraction in (0.7, 0.5, 0.35, 0.25):
        limit = max(1, int(peak * fraction))
        kw = {"h2d_Bps": rng.choice([10.0, 1000.0]), "d2h_Bps": 1000.0, "candidates": rng.choice([2, 16, 1024]),
              "early_copies": rng.random() < 0.7}
        if repeating:
            plan = plan_repeating(trace, skeys, limit, **kw)
            # (The plan starts where the recorded step or its own end leaves each page.)
            start = StepTrace(trace.ops, {p: PageSpec(s.nbytes, s.resident or p in plan.start, s.rebuild_seconds,
                                                      s.recipe_inputs, s.dirty, s.pageable)
                                          for p, s in trace.pages.items()})
        else:
            plan = plan_step(trace, limit, kw.pop("h2d_Bps"), kw.pop("d2h_Bps"), **kw)
            start = trace
        try:
            sim = simulate(start, plan, limit)
        except ValueError as e:
            return f"at {fraction} of the peak, {kw}: {e}"
        if plan.fits and (sim.over_limit or max(plan.resident) > limit):
            return f"at {fraction} of the peak, {kw}: over the limit at {sim.over_limit[:3]}"
    return None


def main() -> None:
    seeds = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeating = len(sys.argv) > 2 and sys.argv[2] == "repeating"
    refused = 0
    for seed in range(seeds):
        why = one(seed, repeating)
        if why is not None:
            refused += 1
            print(f"seed {seed}: {why}")
    print(f"{refused} of {seeds} seeds refused ({'plan_repeating' if repeating else 'plan_step'})")


if __name__ == "__main__":
    main()
