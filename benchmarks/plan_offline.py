"""Run the core planner on a step recorded on a GPU, without a GPU.

    python benchmarks/plan_offline.py benchmarks/results/traces/FILE.json.gz [LINK_PRICE[@CANDIDATES] ...]

Each file holds one step recorded by benchmarks/plan_probe.py (the trace the
engine's planned step gave the planner, its stable keys, the limit and the
link speeds measured on that machine), converted to JSON. Prints the step's
make-up, then for each link price (``1.0@256``: with 256 candidates per
eviction, Thresholds.plan_candidates): planning time, whether the plan fits,
its evictions and prefetches, its replay (bytes each way, recompute, stall and
step seconds as the planner sees them), and its evictions by action and kind
of page. This is how the planner's choices were studied in sessions 5 and 16
(docs/BENCHMARKS.md).

    python benchmarks/plan_offline.py --convert plan_input.pkl OUT.json.gz
converts a probe's pickle.
"""

from __future__ import annotations

import collections
import gzip
import json
import pickle
import sys
import time

from deepum.core.planner import plan_repeating, simulate
from deepum.core.steptrace import OpSpec, PageSpec, StepTrace


def save(pkl: str, out: str) -> None:
    with open(pkl, "rb") as f:
        d = pickle.load(f)  # a file this project's probe wrote
    tr = d["trace"]
    doc = {"limit": d["limit"], "kw": d["kw"], "skeys": {str(k): v for k, v in d["skeys"].items()},
           "ops": [[o.eid, o.seconds, o.uses, o.creates, o.frees, o.writes] for o in tr.ops],
           "pages": {str(p): [s.nbytes, s.resident, s.rebuild_seconds, s.recipe_inputs, s.dirty, s.pageable]
                     for p, s in tr.pages.items()}}
    with gzip.open(out, "wt") as f:
        json.dump(doc, f)


def load(path: str) -> tuple[StepTrace, dict, int, dict]:
    with gzip.open(path, "rt") as f:
        d = json.load(f)
    ops = [OpSpec(e, s, tuple(u), tuple(c), tuple(fr), tuple(w)) for e, s, u, c, fr, w in d["ops"]]
    pages = {int(p): PageSpec(b, r, rs, tuple(i), dt, pg) for p, (b, r, rs, i, dt, pg) in d["pages"].items()}
    return StepTrace(ops, pages), {int(k): v for k, v in d["skeys"].items()}, d["limit"], d["kw"]


def started(trace: StepTrace, plan) -> StepTrace:
    """``trace`` beginning where ``plan`` begins (plan_repeating may start a page on the
    device that the recorded step found on the host): the trace to replay the plan on."""
    return StepTrace(trace.ops, {p: PageSpec(s.nbytes, s.resident or p in plan.start, s.rebuild_seconds,
                                             s.recipe_inputs, s.dirty, s.pageable)
                                 for p, s in trace.pages.items()})


def main(argv: list[str]) -> None:
    if argv[:1] == ["--convert"]:
        save(argv[1], argv[2])
        return
    trace, skeys, limit, kw = load(argv[0])
    born = {p for op in trace.ops for p in op.creates}
    print(f"{len(trace.ops)} ops, {len(trace.pages)} pages, {sum(o.seconds for o in trace.ops):.3f} s of "
          f"operators, limit {limit / 1e9:.2f} GB, link {kw['h2d_Bps'] / 1e9:.1f}/{kw['d2h_Bps'] / 1e9:.1f} GB/s")
    for arg in argv[1:] or ["1.0"]:
        price, _, k = arg.partition("@")
        extra = {"candidates": int(k)} if k else {}
        t0 = time.perf_counter()
        plan = plan_repeating(trace, skeys, limit, link_price=float(price), **kw, **extra)
        took = time.perf_counter() - t0
        sim = simulate(started(trace, plan), plan, limit)
        moves = sum(len(v) for v in plan.evictions.values())
        print(f"link price {arg}: planned in {took:.2f} s, fits {plan.fits} "
              f"(short {plan.short_bytes / 1e9:.2f} GB at op {plan.short_op}), {moves} evictions, "
              f"{len(plan.fetches)} prefetches, {plan.stats}")
        print(f"  replay: {sim.h2d_bytes / 1e9:.2f} GB in, {sim.d2h_bytes / 1e9:.2f} GB out, recompute "
              f"{sim.recompute_seconds * 1e3:.1f} ms, stall {sim.stall_seconds * 1e3:.1f} ms, step "
              f"{sim.step_seconds * 1e3:.1f} ms, peak {sim.peak_bytes / 1e9:.2f} GB")
        count, size = collections.Counter(), collections.Counter()
        for moves in plan.evictions.values():
            for pid, action in moves:
                s = trace.pages[pid]
                key = (action.name, "made in the step" if pid in born else "alive at its start",
                       "recipe" if s.rebuild_seconds is not None else "no recipe")
                count[key] += 1
                size[key] += s.nbytes
        for key in sorted(count):
            print(f"  {' / '.join(key):50s} {count[key]:6d} pages {size[key] / 1e9:8.2f} GB")


if __name__ == "__main__":
    main(sys.argv[1:])
