"""What the plan moves when the frees of lineage pages are placed one operator earlier.

    python benchmarks/plan_frees.py benchmarks/results/traces/FILE.json.gz [...]

Until f807910 the recording placed the program's letting go of a page that
recipes read (a lineage page: only its use count tells) after the operator
that noticed it, one operator late. This replans a step recorded before
then twice, as recorded and with each such free moved to the operator
before (where the page was last used no later), and prints
plan_compare.py's line for each.
"""

from __future__ import annotations

import sys

from plan_compare import summary
from plan_offline import load

from deepum.core.replay import uses_by_page
from deepum.core.steptrace import OpSpec, StepTrace


def frees_earlier(trace: StepTrace) -> tuple[StepTrace, int]:
    uses, _ = uses_by_page(trace)
    read = {q for s in trace.pages.values() for q in s.recipe_inputs}
    frees = [list(op.frees) for op in trace.ops]
    moved = 0
    for t in range(1, len(frees)):
        for p in list(frees[t]):
            if p in read and p not in trace.ops[t].uses and max(
                    (u for u in uses.get(p, ()) if u <= t), default=-1) <= t - 1:
                frees[t].remove(p)
                frees[t - 1].append(p)
                moved += 1
    ops = [OpSpec(op.eid, op.seconds, op.uses, op.creates, tuple(f), op.writes) for op, f in zip(trace.ops, frees)]
    return StepTrace(ops, trace.pages), moved


def main(paths: list[str]) -> None:
    for path in paths:
        trace, skeys, limit, kw = load(path)
        print(f"{path}\n  as recorded:       {summary(trace, skeys, limit, kw)}")
        earlier, moved = frees_earlier(trace)
        print(f"  {moved} frees earlier: {summary(earlier, skeys, limit, kw)}")


if __name__ == "__main__":
    main(sys.argv[1:])
