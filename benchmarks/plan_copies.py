"""Which pages with recipes the planner copies instead of dropping, on a step recorded on a GPU.

    python benchmarks/plan_copies.py benchmarks/results/traces/FILE.json.gz [LINK_PRICE]

Plans the recorded step as the engine would (``plan_repeating``, the
default link price unless given) and sorts the copied pages that have a
recipe and were made in the step by two things: whether the page is next
used in the following step (the planner never drops those: its recipe's
inputs may not last that long), and how its rebuild compares with its round
trip over the link (dearer than the whole trip; dearer than the share of it
the planner charges for a copy that hides; cheaper, which the planner would
drop if it could). Prints counts, bytes, and the commonest page sizes.
"""

from __future__ import annotations

import collections
import statistics
import sys

from plan_offline import load

from deepum.core.planner import LINK_PRICE, carry_over, plan_repeating
from deepum.core.replay import NEVER, uses_by_page


def main(path: str, price: float) -> None:
    from deepum.core.planner import _tails  # noqa: PLC0415  (the planner's own next-step uses)

    trace, skeys, limit, kw = load(path)
    plan = plan_repeating(trace, skeys, limit, link_price=price, **kw)
    n = len(trace.ops)
    uses, tail = uses_by_page(trace)
    tails = _tails(trace, carry_over(trace, skeys))
    born_at = {p: t for t, op in enumerate(trace.ops) for p in op.creates}
    count, size, rows = collections.Counter(), collections.Counter(), []
    for t, moves in plan.evictions.items():
        for pid, action in moves:
            s = trace.pages[pid]
            if action.name != "COPY" or s.rebuild_seconds is None or pid not in born_at:
                continue
            trip = s.nbytes / kw["d2h_Bps"] + s.nbytes / kw["h2d_Bps"]
            later_here = any(u > t for u in uses.get(pid, ()))
            next_step = not later_here and tails.get(pid, tail.get(pid, NEVER)) >= n
            cost = ("rebuild dearer than the round trip" if s.rebuild_seconds > trip
                    else "rebuild dearer than the priced share" if s.rebuild_seconds > price * trip
                    else "rebuild cheaper than the priced share")
            key = ("used next step" if next_step else "used in this step", cost)
            count[key] += 1
            size[key] += s.nbytes
            rows.append((s.nbytes, s.rebuild_seconds, trip))
    print(f"link price {price}: {len(rows)} copied pages with recipes, {sum(r[0] for r in rows) / 1e9:.2f} GB")
    for key in sorted(count):
        print(f"  {' / '.join(key):70s} {count[key]:5d} pages {size[key] / 1e9:7.2f} GB")
    if rows:
        print(f"  median rebuild {statistics.median(r[1] for r in rows) * 1e6:.0f} us, "
              f"median round trip {statistics.median(r[2] for r in rows) * 1e6:.0f} us; sizes (MiB, pages): "
              f"{collections.Counter(round(r[0] / 2**20) for r in rows).most_common(6)}")


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else LINK_PRICE)
