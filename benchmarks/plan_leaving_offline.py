"""How far a plan overruns its limit when copies out hold their memory until they end, as on CUDA.

    python benchmarks/plan_leaving_offline.py benchmarks/results/traces/FILE.json.gz [FRACTION ...]

The replay (core/replay.py) frees a copied page's memory when the plan
evicts it; on CUDA the memory is free only once the copy on its stream has
ended (the pager counts it as leaving until then). This plans a recorded
step as the engine would (``plan_repeating``) at FRACTION of its recorded
limit (default 1.0), replays it, and at each operator adds the bytes of
copies out that the replay's link has not yet finished (their ``out_done``
is after the operator starts). Prints, per fraction: the replay's step and
stall, the same with ``simulate(copy_wait=True)`` (an operator that would pass
the limit waits for copies to end, as on CUDA), the most bytes such copies held at once, how many operators within
the limit in the replay would run over it with them counted and by how
much at most (and how many the replay itself has over the limit), and the
worst ten, each with its share of the step (where in the step the overrun
falls). An operator over the limit on CUDA waits for
copies to end, or its prefetches find no room and fault
(``leaving_waits``, ``plan_prefetch_no_room``): costs the replay does not see.
"""

from __future__ import annotations

import sys

from plan_offline import load, started

from deepum.core.planner import plan_repeating, simulate


def leaving_overrun(trace, plan, limit: int) -> tuple[object, list[tuple[int, int, int, int]]]:
    """(replay result, [(op, bytes in flight out, bytes the replay itself has over the
    limit, bytes over it with those in flight counted)] for every operator)."""
    rows = []

    def watch(t: int, sim) -> None:
        now, spec = sim.now, sim.spec
        held = sum(spec[p].nbytes for p, done in sim.out_done.items() if done > now and p not in sim.res)
        rows.append((t, held, sim.mem - limit, sim.mem + held - limit))

    return simulate(started(trace, plan), plan, limit, watch=watch), rows


def main(argv: list[str]) -> None:
    trace, skeys, limit, kw = load(argv[0])
    n = len(trace.ops)
    for frac in [float(a) for a in argv[1:]] or [1.0]:
        lim = int(limit * frac)
        plan = plan_repeating(trace, skeys, lim, **kw)
        sim, rows = leaving_overrun(trace, plan, lim)
        own = [r for r in rows if r[2] > 0]  # over in the replay itself
        over = [r for r in rows if r[2] <= 0 < r[3]]  # over only with copies in flight
        worst = sorted(over, key=lambda r: -r[3])[:10]
        waited = simulate(started(trace, plan), plan, lim, copy_wait=True)
        print(f"{frac:.3f} of the limit ({lim / 1e9:.2f} GB): step {sim.step_seconds * 1e3:.1f} ms, stall "
              f"{sim.stall_seconds * 1e3:.1f} ms (waiting for copies out: step {waited.step_seconds * 1e3:.1f} ms, "
              f"stall {waited.stall_seconds * 1e3:.1f} ms); copies out held at most {max(r[1] for r in rows) / 1e9:.2f} GB; "
              f"{len(over)} of {n} operators over the limit only with them, by at most "
              f"{max((r[3] for r in over), default=0) / 1e9:.2f} GB; {len(own)} over in the replay itself")
        if worst:
            print("  worst: " + ", ".join(f"op {r[0]} ({r[0] / n:.0%}) {r[3] / 1e9:.2f} GB" for r in worst))


if __name__ == "__main__":
    main(sys.argv[1:])
