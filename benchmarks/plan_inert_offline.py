"""How many pages a planned step makes that its plan never acts on (offline, no GPU).

    python benchmarks/plan_inert_offline.py TRACE.json.gz [FRACTION ...]

Plans a recorded step (plan_offline.py's traces) at FRACTION of its limit
(default 1.0) and sorts the pages made in the step: those the plan acts on
(evicts or drops, prefetches, keeps as lineage or lets go, or whose bytes a
dropped page's recipe reads) and the rest, which the engine only registers
at birth and retires at death. Each inert page still costs a page object, a
weak reference, a table entry and its retirement on the operator path
(docs/DESIGN.md, "Where it stands after session 21"): the share printed is
what a design that makes page objects only for pages a plan touches would
leave out of that cost. Also prints the bytes of inert pages and how many
operators make no page the plan touches.
"""

from __future__ import annotations

import sys

from plan_offline import load

from deepum.core.planner import plan_repeating


def touched(trace, plan) -> set[int]:
    """Page IDs the plan acts on, or whose bytes a dropped page's recipe reads."""
    out = {pid for moves in plan.evictions.values() for pid, _ in moves}
    out.update(pid for pids in plan.prefetches.values() for pid in pids)
    out.update(plan.kept)
    out.update(pid for pids in plan.releases.values() for pid in pids)
    for pid in plan.dropped():
        spec = trace.pages.get(pid)
        if spec is not None:
            out.update(spec.recipe_inputs)
    return out


def main(argv: list[str]) -> None:
    trace, skeys, limit, kw = load(argv[0])
    born = [p for op in trace.ops for p in op.creates]
    print(f"{argv[0]}: {len(trace.ops)} operators, {len(born)} pages made in the step")
    for arg in argv[1:] or ["1.0"]:
        fraction = float(arg)
        plan = plan_repeating(trace, skeys, int(limit * fraction), **kw)
        hit = touched(trace, plan)
        inert = [p for p in born if p not in hit]
        inert_bytes = sum(trace.pages[p].nbytes for p in inert)
        calm_ops = sum(1 for op in trace.ops if not any(p in hit for p in op.creates))
        print(f"  at {fraction:.3f} of the limit: {len(inert)} of {len(born)} pages made "
              f"({len(inert) / max(1, len(born)):.0%}) are never acted on, {inert_bytes / 1e9:.2f} GB; "
              f"{calm_ops} of {len(trace.ops)} operators make no page the plan touches")


if __name__ == "__main__":
    main(sys.argv[1:])
