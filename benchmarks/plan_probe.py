"""What the planned step decides and where a planned step's time goes, for offline study.

    python benchmarks/plan_probe.py MODEL BUDGET_BYTES [STEPS [plan|online]]    (writes to $OUT, default ./out)

Trains the bench's MODEL (deepum.benchsuite) under BUDGET_BYTES on CUDA for
STEPS steps (default 6), with the planned step (default) or the online choice,
and writes:

* ``plan_input.pkl``: the recorded step (core StepTrace), the stable keys,
  the limit and the link speeds the planner was given, plus the host wall
  time of each recorded operator, so the planner can be rerun and studied
  on a machine without a GPU;
* ``profile.txt``: the top of a cProfile of the last step;
* ``residency.json``: for each planned step, per operator, the bytes
  the engine held after it against the bytes the plan counted while it ran,
  and the evictions the engine made beyond the plan's;
* one line per step: wall time and the pager's counters that moved.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pickle
import pstats
import sys
import time

import torch

import deepum
import deepum.engine.stepplan as stepplan
from deepum.benchsuite.models import Workload, adamw, standard_step

OUT = os.environ.get("OUT") or "out"
KEYS = ("faults", "drops", "recomputes", "prefetches", "late_prefetches", "evictions", "planned_evictions",
        "bytes_to_host", "bytes_to_device", "plans", "plan_departures", "plan_over_ops",
        "plan_short_evictions")
ALLOC = ("num_alloc_retries", "num_sync_all_streams", "num_device_alloc", "num_device_free")


def main() -> None:
    model, budget = sys.argv[1], int(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    planned = (sys.argv[4] if len(sys.argv) > 4 else "plan") == "plan"
    os.makedirs(OUT, exist_ok=True)
    walls: list[float] = []
    original_after, original_plan = stepplan.StepPlans.after, stepplan.plan_repeating

    residency: list[tuple] = []
    step_no = [0]

    def after(self, eid):
        if self.mode == stepplan.RECORDING:
            walls.append(time.perf_counter())
        t, steering = self.t, self.steering
        short = self.pager.counters.plan_short_evictions
        out = original_after(self, eid)
        if steering and t < len(self.plan.resident):
            residency.append((step_no[0], t, eid, self.eids[t], self.pager.table.resident_bytes,
                              self.plan.resident[t], short))
        return out

    original_boundary = stepplan.StepPlans.boundary

    def boundary(self):
        step_no[0] += 1
        return original_boundary(self)

    def plan_repeating(trace, skeys, limit, **kw):
        with open(os.path.join(OUT, "plan_input.pkl"), "wb") as f:
            pickle.dump({"trace": trace, "skeys": skeys, "limit": limit, "kw": kw, "walls": list(walls)}, f)
        walls.clear()
        pager = holder[0].pager
        print(f"limit {limit} = table limit {pager.table.limit} - headroom {pager.headroom} - unpageable "
              f"{pager.table.unpageable_bytes} (- leaving peak {pager.plans.leaving_peak} if plan_leaving_room)",
              flush=True)
        t0 = time.perf_counter()
        plan = original_plan(trace, skeys, limit, **kw)
        print(f"plan: {len(trace.ops)} ops ({sum(o.seconds for o in trace.ops) * 1e3:.1f} ms of them as timed), "
              f"{len(trace.pages)} pages, {time.perf_counter() - t0:.2f} s, "
              f"fits {plan.fits}, stats {plan.stats}", flush=True)
        return plan

    stepplan.StepPlans.after = after
    stepplan.StepPlans.boundary = boundary
    stepplan.plan_repeating = plan_repeating
    dev = torch.device("cuda", 0)
    holder = []
    with deepum.oversubscribe(budget, dev, plan=planned) as session:
        holder.append(session)
        work = Workload(model, dev, dev)
        step = standard_step(work, adamw(work.model, dev))
        for i in range(steps):
            batch = work.host_batch(i)
            before = session.stats()
            alloc0 = torch.cuda.memory_stats(dev)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            if i == steps - 2:
                prof = cProfile.Profile()
                prof.enable()
                step(batch)
                torch.cuda.synchronize()
                prof.disable()
            elif i == steps - 1:
                acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                with torch.profiler.profile(activities=acts) as kin:
                    step(batch)
                    torch.cuda.synchronize()
                with open(os.path.join(OUT, "kineto.txt"), "w") as f:
                    f.write(kin.key_averages().table(sort_by="self_cpu_time_total", row_limit=40))
                    f.write(kin.key_averages().table(sort_by="self_cuda_time_total", row_limit=25))
            else:
                step(batch)
                torch.cuda.synchronize()
            end = session.stats()
            alloc1 = torch.cuda.memory_stats(dev)
            moved = {k: end[k] - before.get(k, 0) for k in KEYS}
            moved.update({k: alloc1.get(k, 0) - alloc0.get(k, 0) for k in ALLOC})
            print(f"step {i}: {time.perf_counter() - t0:.3f} s {moved}", flush=True)
    with open(os.path.join(OUT, "residency.json"), "w") as f:
        json.dump({"columns": ["step", "t", "eid", "planned_eid", "engine_bytes", "plan_bytes",
                               "short_evictions_before"], "rows": residency}, f)
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(45)
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(30)
    with open(os.path.join(OUT, "profile.txt"), "w") as f:
        f.write(s.getvalue())


if __name__ == "__main__":
    main()
