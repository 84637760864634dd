"""The garbage collector's share of paged steps, and what freezing the program's objects at steady state saves.

    python benchmarks/gc_freeze_probe.py MODEL FRACTION {none,freeze} [WARMUP] [STEPS]

Trains the bench's MODEL (step_anatomy.py's ``prepare``) in a session at
FRACTION of its peak for WARMUP steps (default 15: the plan is recorded,
made and tried), then, with ``freeze``, runs ``gc.collect(); gc.freeze()``
(the model, its optimizer and everything else alive then move to the
collector's permanent generation, where full passes no longer walk them),
and times STEPS more steps (default 12) with the collector's passes
counted per generation. A full pass over a large program's objects takes
hundreds of milliseconds on the GPU hosts and comes every few paged steps
(docs/BENCHMARKS.md): the median step hides it, the mean pays it, so both
are printed. One row of JSON goes to $OUT/gc_freeze.jsonl.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

from gpu_pstats import timed_steps
from step_anatomy import OUT, prepare

import deepum
from deepum.benchsuite.case import GcClock


def main() -> None:
    model, fraction, how = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 12
    device, sync, work, step, peak = prepare(model)
    with deepum.oversubscribe(int(peak * fraction), device) as session:
        for i in range(warmup):
            step(work.host_batch(i))
        sync()
        if how == "freeze":
            gc.collect()
            gc.freeze()
        frozen = gc.get_freeze_count()
        tracked = len(gc.get_objects())
        before = session.stats()
        with GcClock() as collector:
            collector.on = True
            t_all = time.perf_counter()
            times = timed_steps(step, work, warmup, steps, sync)
            wall = time.perf_counter() - t_all
        after = session.stats()
        if how == "freeze":
            gc.unfreeze()
    row = {"model": model, "fraction": fraction, "how": how, "steps": steps, "frozen": frozen,
           "tracked": tracked, "mean_ms": 1e3 * statistics.mean(times),
           "median_ms": 1e3 * statistics.median(times), "max_ms": 1e3 * max(times),
           "wall_per_step_ms": 1e3 * wall / steps, "gc_ms_per_step": 1e3 * sum(collector.seconds) / steps,
           "gc_passes": collector.count,
           "planned_steps": after["planned_steps"] - before["planned_steps"]}
    print(json.dumps(row))
    with open(os.path.join(OUT, "gc_freeze.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
