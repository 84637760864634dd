"""The planned step across model families on the cpu tier: exactness and paging counts.

    python benchmarks/plan_families_cpu.py ['{"thresholds": {"plan_candidates": 1024}}']

For each of the bench's tiny models (GPT-2, a Llama-family model, T5, ViT,
an MLP, a CNN with BatchNorm): 8 training steps plain, then at 1/3 of the
plain peak with the online choice and with ``plan=True`` (and the options
given, Thresholds as a dict). Prints whether losses and parameters are
bit-identical, and evictions, prefetches, faults, recomputes and bytes copied
out over the 8 steps (the first two are recorded and planned, not run under
a plan).
"""

import json
import sys

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step
from deepum.core.config import Thresholds

dev = torch.device("cpu")
def run(model, budget, steps=8, **opt):
    torch.manual_seed(0)
    with deepum.oversubscribe(budget, dev, **opt) as s:
        work = Workload(model, dev, dev)
        step = standard_step(work, adamw(work.model, dev))
        losses = [float(step(work.host_batch(i))) for i in range(steps)]
        params = [p.detach().clone() for p in work.model.parameters()]
    return losses, params, s.stats()
options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
if "thresholds" in options:
    options["thresholds"] = Thresholds(**options["thresholds"])
for m in ("tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-vit", "tiny-mlp", "tiny-cnn"):
    l0, p0, st0 = run(m, 1.0)
    budget = max(st0["peak_managed_bytes"] // 3, 1 << 20)
    l1, p1, st1 = run(m, budget, plan=False)
    l2, p2, st2 = run(m, budget, plan=True, **options)
    same = l0 == l2 and all(torch.equal(a, b) for a, b in zip(p0, p2)) and l0 == l1
    print(f"{m:11s} identical={same} online: ev {st1['evictions']} faults {st1['faults']} rec {st1['recomputes']} | plan: ev {st2['evictions']} planned {st2['planned_evictions']} pf {st2['prefetches']} out {st2['bytes_to_host'] / 1e6:.1f} MB faults {st2['faults']} rec {st2['recomputes']} steps {st2['planned_steps']} dep {st2['plan_departures']} over-ops {st2.get('plan_over_ops', '-')} of {st2['ops']} peak<=budget {st2['peak_device_bytes'] <= budget}", flush=True)
