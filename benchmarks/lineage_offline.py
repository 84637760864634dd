"""The planner's lineage rule on steps recorded on a GPU, without a GPU: old against new.

    python benchmarks/lineage_offline.py benchmarks/results/traces/FILE.json.gz [...]

For each recorded step (benchmarks/plan_probe.py's, converted by
plan_offline.py), plans it as the engine would (``plan_repeating``, default
thresholds) twice: with ``lineage_through_dead=True`` (a freed page may be kept
as lineage although its recipe reads pages the program already freed: the
rule until session 18) and with the default. For each plan, the replay's
bytes each way, recompute, stall and step seconds as the planner sees them,
and the most bytes of pages the program had freed that the plan still held
on the device while an operator ran ([Note: no lineage through freed
pages] in core/planner.py).
"""

from __future__ import annotations

import sys
import time

from plan_offline import load

import deepum.core.planner as planner
from deepum.core import replay


def held_freed_peak(trace, plan, limit) -> tuple[int, int]:
    """(bytes, op): the most bytes of freed pages the plan holds on the device at an operator
    (watched in the replay)."""
    best = [0, -1]

    def watch(t, sim) -> None:
        held = sum(trace.pages[p].nbytes for p in sim.res if p in sim.dead)
        if held > best[0]:
            best[:] = [held, t]

    replay.simulate(trace, plan, limit, watch=watch)
    return best[0], best[1]


def main(paths: list[str]) -> None:
    planned = {}
    original = planner.plan_step

    def plan_step(trace, limit, *a, **kw):  # the trace the final plan is made from
        planned["trace"] = trace
        return original(trace, limit, *a, **kw)

    planner.plan_step = plan_step
    for path in paths:
        trace, skeys, limit, kw = load(path)
        print(f"{path}: {len(trace.ops)} ops, limit {limit / 1e9:.2f} GB")
        for through_dead in (True, False):
            t0 = time.perf_counter()
            plan = planner.plan_repeating(trace, skeys, limit, lineage_through_dead=through_dead, **kw)
            took = time.perf_counter() - t0
            step = planned["trace"]
            r = replay.simulate(step, plan, limit)
            held, at = held_freed_peak(step, plan, limit)
            print(f"  {'old rule' if through_dead else 'new rule'}: fits {plan.fits}, in {r.h2d_bytes / 1e9:.2f} GB, "
                  f"out {r.d2h_bytes / 1e9:.2f} GB, recompute {r.recompute_seconds * 1e3:.1f} ms, "
                  f"stall {r.stall_seconds * 1e3:.1f} ms, step {r.step_seconds * 1e3:.1f} ms, "
                  f"kept {len(plan.kept)}, freed pages held at most {held / 1e9:.2f} GB (op {at}), "
                  f"planned in {took:.1f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
