"""The plan of each recorded step, in a few numbers, to set one planner against another.

    [PYTHONPATH=OTHER/src] python benchmarks/plan_compare.py benchmarks/results/traces/FILE.json.gz [...]

Per recorded step (``plan_repeating`` with the recorded limit and link):
evictions, bytes copied out and back in, the planner's recompute seconds,
its own stats (``demand``: copies in it could not start ahead), and the
seconds planning took. Run it with another commit's ``src/`` first on
PYTHONPATH for the other planner.
"""

from __future__ import annotations

import sys
import time

from plan_offline import load

from deepum.core.planner import plan_repeating


def summary(trace, skeys, limit: int, kw: dict) -> str:
    """The plan of ``trace`` in one line (what main prints per recorded step)."""
    t0 = time.perf_counter()
    plan = plan_repeating(trace, skeys, limit, **kw)
    took = time.perf_counter() - t0
    out = sum(trace.pages[p].nbytes for moves in plan.evictions.values() for p, a in moves if a.name == "COPY")
    back = sum(trace.pages[f.pid].nbytes for f in plan.fetches)
    return (f"{plan.stats['evictions']} evictions, out {out / 1e9:.2f} GB, in {back / 1e9:.2f} GB, "
            f"recompute {plan.recompute_seconds * 1e3:.1f} ms, fits {plan.fits}, "
            f"demand {plan.stats['demand']}, planned in {took:.2f} s")


def main(paths: list[str]) -> None:
    for path in paths:
        print(f"{path.rsplit('/', 1)[-1]}: {summary(*load(path))}")


if __name__ == "__main__":
    main(sys.argv[1:])
