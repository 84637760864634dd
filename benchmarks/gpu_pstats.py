"""Raw cProfile statistics of steady steps, plain and in a session, to study here.

    python benchmarks/gpu_pstats.py MODEL FRACTION [WARMUP] [STEPS] ['{session options}']

Trains the bench's MODEL (step_anatomy.py's ``prepare``: fresh host batch
each step, bf16 autocast, AdamW). First STEPS plain steps (no session) are
timed, then profiled; then a session at FRACTION of the model's peak
(FRACTION above 1: a budget never reached, the session dormant) runs WARMUP
steps (default 15: plan="auto" records, plans and tries its plan in the
first 14), then STEPS timed steps, then STEPS profiled ones. Writes
``pstats-MODEL-FRACTION-{plain,session}.prof`` under $OUT, to be read with
``pstats`` on any machine (callers and callees included, which a printed
top list loses), and prints the step times, the pager's counters per
profiled step, and each profile's top functions by own time.

cProfile slows Python frames several times, so its shares overstate the
engine's Python against C++ and the device; the unprofiled step times
printed beside them are the measure, the profile says where to look.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time

from step_anatomy import OUT, prepare

import deepum

KEYS = ("ops", "views", "evictions", "drops", "recomputes", "prefetches", "faults", "planned_steps")


def timed_steps(step, work, first: int, n: int, sync) -> list[float]:
    """Seconds of steps ``first`` .. ``first + n - 1``, each batch made before its clock starts."""
    times = []
    for i in range(first, first + n):
        batch = work.host_batch(i)
        sync()
        t0 = time.perf_counter()
        step(batch)
        sync()
        times.append(time.perf_counter() - t0)
    return times


def _profiled(step, work, first: int, n: int, sync, path: str) -> str:
    prof = cProfile.Profile()
    sync()
    prof.enable()
    for i in range(first, first + n):
        step(work.host_batch(i))
    sync()
    prof.disable()
    prof.dump_stats(path)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(30)
    return buf.getvalue()


def main() -> None:
    model, fraction = sys.argv[1], float(sys.argv[2])
    warmup = int(sys.argv[3]) if len(sys.argv) > 3 else 15
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 2
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    device, sync, work, step, peak = prepare(model)
    tag = f"{model}-{fraction}"
    plain = timed_steps(step, work, 2, steps + 1, sync)
    text = _profiled(step, work, 10, steps, sync, os.path.join(OUT, f"pstats-{tag}-plain.prof"))
    lines = [f"{model}: plain steps {[round(t * 1e3, 1) for t in plain]} ms", text]
    with deepum.oversubscribe(int(peak * fraction), device, **options) as session:
        for i in range(warmup):
            step(work.host_batch(20 + i))
        paged = timed_steps(step, work, 100, steps + 1, sync)
        before = session.stats()
        text = _profiled(step, work, 200, steps, sync, os.path.join(OUT, f"pstats-{tag}-session.prof"))
        after = session.stats()
    moved = {k: (after[k] - before[k]) / steps for k in KEYS if k in after}
    lines += [f"{model} at {fraction}: session steps {[round(t * 1e3, 1) for t in paged]} ms "
              f"(median {statistics.median(paged) * 1e3:.1f}, plain {statistics.median(plain) * 1e3:.1f}); "
              f"per profiled step {moved}", text]
    out = "\n".join(lines)
    print(out)
    with open(os.path.join(OUT, f"pstats-{tag}.txt"), "w") as f:
        f.write(out + "\n")


if __name__ == "__main__":
    main()
