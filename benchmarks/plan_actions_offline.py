"""How a plan's evictions fall: how many, where, how large, and how deep its chains of drops (offline).

    python benchmarks/plan_actions_offline.py TRACE.json.gz [TRACE.json.gz ...]

Plans each recorded step (plan_offline.py's traces) at its own limit and
prints: the evictions and the operators they follow (and the most after one
operator), the dropped and the copied pages with the median size of each,
and the chains among dropped pages (a dropped page whose recipe reads
another dropped page; depth 1 is a page whose inputs all stay). Each
eviction and each rebuild is a Python call tree on the operator path
(docs/DESIGN.md, "Where it stands after session 21"): these are the counts
a plan with fewer, larger actions would have to beat.
"""

from __future__ import annotations

import collections
import statistics
import sys

from plan_offline import load

from deepum.core.planner import plan_repeating
from deepum.core.remat_policy import Action


def chain_depths(trace, dropped: set[int]) -> list[int]:
    """For each dropped page, the longest chain of dropped pages its rebuild may run."""
    memo: dict[int, int] = {}

    def depth(pid: int) -> int:
        if pid in memo:
            return memo[pid]
        memo[pid] = 0  # (a cycle through recorded recipes counts no further)
        spec = trace.pages.get(pid)
        if spec is not None and pid in dropped:
            memo[pid] = 1 + max((depth(q) for q in spec.recipe_inputs), default=0)
        return memo[pid]

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(dropped) + 1000))
    return [depth(p) for p in dropped]


def main(paths: list[str]) -> None:
    for path in paths:
        trace, skeys, limit, kw = load(path)
        plan = plan_repeating(trace, skeys, limit, **kw)
        moves = [(t, pid, action) for t, m in plan.evictions.items() for pid, action in m]
        drops = [trace.pages[p].nbytes for _, p, a in moves if a == Action.DROP]
        copies = [trace.pages[p].nbytes for _, p, a in moves if a != Action.DROP]
        after = collections.Counter(t for t, _, _ in moves)
        depths = chain_depths(trace, plan.dropped())

        def median_mb(sizes: list[int]) -> str:
            return f"{statistics.median(sizes) / 1e6:.1f} MB" if sizes else "-"

        print(f"{path}: {len(moves)} evictions after {len(after)} operators (at most {max(after.values())} "
              f"after one); {len(drops)} drops (median {median_mb(drops)}), {len(copies)} copies (median "
              f"{median_mb(copies)}); {sum(d > 1 for d in depths)} of {len(depths)} dropped pages need "
              f"another dropped page rebuilt first, the longest chain {max(depths, default=0)}")


if __name__ == "__main__":
    main(sys.argv[1:])
