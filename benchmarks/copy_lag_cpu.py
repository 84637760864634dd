"""Planned steps when copies out hold their memory for a while, as on CUDA, on the cpu tier.

    python benchmarks/copy_lag_cpu.py [SRC] [LAGS] ['{"session": "options"}']

On the cpu tier a copy out is done when ``save`` returns, so its memory is
free at once; on CUDA it is free only once the copy on its stream has ended,
and the pager counts it as leaving until then. ``Thresholds.cpu_copy_lag``
makes the cpu tier count a copy out's memory as leaving for LAGS operators
(default 0,3,10); this trains the bench's tiny GPT-2, Llama-family model and
CNN under a third of their peak with ``plan=True`` (and OPTIONS). Prints,
per planned step (medians of the steps that ran under the plan): demand
faults, prefetches, evictions, waits for copies out (``leaving_waits``),
planned prefetches that found no room, and operators where the engine held
more than the plan counted. SRC puts another copy of deepum's src/ first.
"""

import dataclasses
import json
import statistics
import sys

import torch

if len(sys.argv) > 1 and sys.argv[1] not in ("-", ""):
    sys.path.insert(0, sys.argv[1])

import deepum  # noqa: E402
from deepum.benchsuite.models import Workload, adamw, standard_step  # noqa: E402
from deepum.core.config import Thresholds  # noqa: E402

KEYS = ("faults", "prefetches", "evictions", "leaving_waits", "plan_prefetch_no_room", "plan_over_ops")
torch.set_num_threads(1)


def run(model: str, budget: float, lag: int, steps: int = 8, **options):
    th = options.pop("thresholds", None) or Thresholds()
    options["thresholds"] = dataclasses.replace(th, cpu_copy_lag=lag)
    torch.manual_seed(0)
    dev = torch.device("cpu")
    each, last = [], {}
    with deepum.oversubscribe(budget, dev, **options) as s:
        work = Workload(model, dev, dev)
        step = standard_step(work, adamw(work.model, dev))
        for i in range(steps):
            step(work.host_batch(i))
            now = s.stats()
            each.append({k: now.get(k, 0) - last.get(k, 0) for k in (*KEYS, "planned_evictions")})
            last = now
    return each, s.stats()


def main() -> None:
    lags = [int(x) for x in (sys.argv[2] if len(sys.argv) > 2 else "0,3,10").split(",")]
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if isinstance(options.get("thresholds"), dict):
        options["thresholds"] = Thresholds(**options["thresholds"])
    print(f"{deepum.__file__}; options {options}")
    print(f"{'model':11s} {'lag':>3s} " + " ".join(f"{k:>22s}" for k in KEYS))
    for model in ("tiny-gpt2", "tiny-llama", "tiny-cnn"):
        _, st = run(model, 1.0, 0, 3)
        budget = max(st["peak_managed_bytes"] // 3, 1 << 20)
        for lag in lags:
            each, _ = run(model, budget, lag, plan=True, **dict(options))
            planned = [e for e in each if e["planned_evictions"] > e["evictions"] / 2] or each[-3:]
            row = [statistics.median(e[k] for e in planned) for k in KEYS]
            print(f"{model:11s} {lag:3d} " + " ".join(f"{v:22g}" for v in row), flush=True)


if __name__ == "__main__":
    main()
