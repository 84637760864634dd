"""Planned steps when copies out hold their memory for a while, as on CUDA, on the cpu tier.

    python benchmarks/copy_lag_cpu.py [SRC] [LAGS] ['{"session": "options"}']

On the cpu tier a copy out is done when ``save`` returns, so its memory is
free at once; on CUDA it is free only once the copy on its stream has ended,
and the pager counts it as leaving until then. This swaps the cpu tier's
copies for ones whose memory is counted as leaving for LAGS operators
(default 0,3,10) and trains the bench's tiny GPT-2, Llama-family model and
CNN under a third of their peak with ``plan=True`` (and OPTIONS). Prints,
per planned step (medians of the steps that ran under the plan): demand
faults, prefetches, evictions, waits for copies out (``leaving_waits``),
planned prefetches that found no room, and operators where the engine held
more than the plan counted. SRC puts another copy of deepum's src/ first.
"""

import json
import statistics
import sys

import torch

if len(sys.argv) > 1 and sys.argv[1] not in ("-", ""):
    sys.path.insert(0, sys.argv[1])

import deepum  # noqa: E402
import deepum.engine.pager as pager_module  # noqa: E402
from deepum.benchsuite.models import Workload, adamw, standard_step  # noqa: E402
from deepum.engine.movers import HostTransfers  # noqa: E402

KEYS = ("faults", "prefetches", "evictions", "leaving_waits", "plan_prefetch_no_room", "plan_over_ops")
torch.set_num_threads(1)


class Lagging(HostTransfers):
    """The cpu tier's copies; a copy out's memory counts as leaving for ``lag`` operators."""

    lag = 0

    def __init__(self, device) -> None:
        super().__init__(device)
        self.queue, self.ops = [], 0

    def free(self, storage, copied=False):
        nbytes = storage.nbytes()
        storage.resize_(0)
        if not (copied and self.lag):
            return 0
        self.queue.append((self.ops + self.lag, nbytes))
        return nbytes

    def release_finished(self):
        self.ops += 1
        done = sum(n for when, n in self.queue if when <= self.ops)
        self.queue = [(when, n) for when, n in self.queue if when > self.ops]
        return done

    def settle(self, need=None):
        freed = 0
        while self.queue and (need is None or freed < need):
            freed += self.queue.pop(0)[1]
        return freed

    def synchronize(self):
        return self.settle()


def run(model: str, budget: float, steps: int = 8, **options):
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
        options["thresholds"] = deepum.Config().thresholds.__class__(**options["thresholds"])
    pager_module.make_transfers = Lagging
    print(f"{deepum.__file__}; options {options}")
    print(f"{'model':11s} {'lag':>3s} " + " ".join(f"{k:>22s}" for k in KEYS))
    for model in ("tiny-gpt2", "tiny-llama", "tiny-cnn"):
        Lagging.lag = 0
        _, st = run(model, 1.0, 3)
        budget = max(st["peak_managed_bytes"] // 3, 1 << 20)
        for lag in lags:
            Lagging.lag = lag
            each, _ = run(model, budget, plan=True, **options)
            planned = [e for e in each if e["planned_evictions"] > e["evictions"] / 2] or each[-3:]
            row = [statistics.median(e[k] for e in planned) for k in KEYS]
            print(f"{model:11s} {lag:3d} " + " ".join(f"{v:22g}" for v in row), flush=True)


if __name__ == "__main__":
    main()
