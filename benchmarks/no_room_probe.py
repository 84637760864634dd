"""Why a planned prefetch finds no room: the engine's memory set against the plan's, where it happens.

    python benchmarks/no_room_probe.py MODEL [FRACTION] [WARMUP] [STEPS] ['{"session": "options"}']

Trains the bench's MODEL (step_anatomy.py's ``prepare``) in a planned session
(``plan=True`` unless the options say otherwise) at FRACTION of its peak
(default 0.5) for WARMUP steps (default 12), then watches STEPS steps
(default 2): each planned prefetch that found no room is logged with the
operator position, the page's bytes, the room, the bytes copies out still
held (leaving), the engine's resident bytes and the plan's resident bytes at
that position. Prints a summary by cause: no room because copies out still
held it (room + leaving would have fitted), or because the engine held more
than the plan counted at that point. On the cpu tier pass
``{"thresholds": {"cpu_copy_lag": 10}}`` to model copies that take time.
Writes no-room-MODEL.txt under $OUT (default ./out).
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter

from ab_inprocess import config_of
from step_anatomy import OUT, prepare

import deepum
from deepum.core.pages import EVICTED

MiB = 2**20


def main() -> None:
    model = sys.argv[1]
    fraction = float(sys.argv[2]) if len(sys.argv) > 2 else 0.5
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 12
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    options = {"plan": True, **(json.loads(sys.argv[5]) if len(sys.argv) > 5 else {})}
    device, sync, work, step, peak = prepare(model)
    rows: list[tuple] = []
    with deepum.oversubscribe(int(peak * fraction), device, config=config_of(options)) as session:
        pager = session.pager
        for i in range(warmup):
            step(work.host_batch(i))
        sync()
        original = pager.prefetch_pages

        def watched(pages):
            table, plans = pager.table, pager.plans
            room, leaving, resident = table.room(), table.leaving_bytes, table.resident_bytes
            asked = sum(p.nbytes for p in pages if p is not None and p.state == EVICTED and p.host is not None)
            short = original(pages)
            plan = plans.plan
            planned = plan.resident[plans.t - 1] if plan is not None and 0 < plans.t <= len(plan.resident) else -1
            for page in short:
                rows.append((plans.t - 1, page.nbytes, room, leaving, resident, planned, asked))
            return short

        pager.prefetch_pages = watched
        before = session.stats()
        for i in range(steps):
            step(work.host_batch(warmup + i))
        sync()
        after = session.stats()
    keys = ("faults", "prefetches", "plan_prefetch_no_room", "leaving_waits", "planned_steps", "plan_departures")
    lines = [f"{model} at {fraction} of its peak ({peak / MiB:.0f} MiB), options {options}, {steps} steps watched",
             "counters a step: " + " ".join(f"{k} {(after.get(k, 0) - before.get(k, 0)) / steps:g}" for k in keys),
             "t | page MiB | room MiB | leaving MiB | engine resident MiB | plan resident MiB | over plan MiB | "
             "asked in the call MiB"]
    causes: Counter = Counter()
    for t, nbytes, room, leaving, resident, planned, asked in rows:
        over = resident - planned if planned >= 0 else 0
        if leaving > 0 and room + leaving >= min(asked, nbytes):
            causes["copies out held the room"] += 1
        elif planned >= 0 and over > 0:
            causes["engine held more than the plan"] += 1
        else:
            causes["the call asked for more than the room (frees not yet made)"] += 1
        lines.append(f"{t} | {nbytes / MiB:.1f} | {room / MiB:.1f} | {leaving / MiB:.1f} | {resident / MiB:.1f} | "
                     f"{planned / MiB:.1f} | {over / MiB:.1f} | {asked / MiB:.1f}")
    by_t = Counter(r[0] for r in rows)
    lines.append(f"no-room prefetches: {len(rows)} in {steps} steps, at {len(by_t)} positions; "
                 f"most at: {by_t.most_common(8)}")
    lines.append("by cause: " + ", ".join(f"{k} {v}" for k, v in causes.most_common()))
    text = "\n".join(lines)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, f"no-room-{model}.txt"), "w") as f:
        f.write(text + "\n")
    print(text if len(rows) < 60 else "\n".join(lines[:3] + lines[-2:]))


if __name__ == "__main__":
    main()
