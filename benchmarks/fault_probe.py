"""Why page-ins are demand faults rather than prefetches: each fault of a paged step, classified.

    python benchmarks/fault_probe.py MODEL FRACTION [STEPS] [DEVICE] ['{"thresholds": {"prefetch_cap": 0.5}}']

Trains the bench's MODEL (deepum.benchsuite; ``tiny-gpt2`` and the other tiny
models run on the cpu) at FRACTION of its unconstrained peak for STEPS steps
(default 6), and for each step after the third prints its time, page-ins
(faults, prefetches, rebuilds) and each faulted page's cause:

* ``rebuild input``: an evicted input of a dropped page being rebuilt;
* ``unpredicted``: its page was not in the prediction window when faulted;
* ``evicted in window``: evicted fewer operators before than the window
  spans (the victim choice gave up a page needed soon);
* ``predicted``: in the window and evicted before it; the prefetcher did
  not reach it. The scan's stops in the step say why: ``cap`` (bytes
  prefetched and not yet used at Thresholds.prefetch_cap) or ``room`` (no
  room could be made without pages the window needs).

Also by phase (forward, backward, optimizer). The JSON argument is session
options; its "thresholds" entry replaces fields of Thresholds. Writes the same to
$OUT/fault_probe.txt when OUT is set.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import sys
import time
import traceback

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step
from deepum.core.config import Thresholds
from deepum.engine import pager as pager_module
from deepum.engine import prefetch


def main() -> None:
    model, fraction = sys.argv[1], float(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    device = torch.device(sys.argv[4] if len(sys.argv) > 4 else ("cuda" if torch.cuda.is_available() else "cpu"))
    options = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    if "thresholds" in options:
        options["thresholds"] = dataclasses.replace(Thresholds(), **options["thresholds"])
    work = Workload(model, device, device)
    opt = adamw(work.model, device)
    phase = ["forward"]
    step = standard_step(work, opt, mark=lambda p: phase.__setitem__(0, {"forward": "backward",
                                                                          "backward": "optimizer"}.get(p, "forward")))
    for i in range(2):
        step(work.host_batch(i))
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with deepum.oversubscribe(1.0, device, dormant=False) as s:
            step(work.host_batch(0))
        peak = s.stats()["peak_managed_bytes"]
    causes: collections.Counter = collections.Counter()
    stops: collections.Counter = collections.Counter()
    evicted_at: dict[int, int] = {}
    state = {"session": None}

    original_fault, original_evict = prefetch.Prefetcher.fault, pager_module.Pager.evict

    def evict(self, pages, action=None):
        ops = self.counters.ops
        for p in pages:
            evicted_at[id(p)] = ops
        return original_evict(self, pages, action)

    def fault(self, pages):
        rebuilding = any(f.name == "rebuild" for f in traceback.extract_stack(limit=12))
        window = self.policy.predictor.window_pages if hasattr(self.policy, "predictor") else {}
        span = getattr(self.policy, "predictor", None)
        span = span.lookahead if span is not None else 0
        for p in pages:
            if rebuilding:
                cause = "rebuild input"
            elif p.skey not in window:
                cause = "unpredicted"
            elif self.counters.ops - evicted_at.get(id(p), -10**9) < span:
                cause = "evicted in window"
            else:
                cause = "predicted"
            causes[phase[0], cause] += 1
        return original_fault(self, pages)

    prefetch.Prefetcher.fault = fault
    pager_module.Pager.evict = evict
    lines = []
    with deepum.oversubscribe(int(peak * fraction), device, **options) as session:
        state["session"] = session
        pager = session.pager
        policy = pager.policy
        if hasattr(policy, "rewind"):
            original_rewind = policy.rewind

            def rewind(distance):
                cap = pager.unused_prefetch_bytes >= pager.prefetch_cap * 0.9
                stops["cap" if cap else "room"] += 1
                return original_rewind(distance)

            policy.rewind = rewind
        for i in range(steps):
            causes.clear()
            stops.clear()
            phase[0] = "forward"
            before = session.stats()
            t0 = time.perf_counter()
            step(work.host_batch(i))
            if device.type == "cuda":
                torch.cuda.synchronize()
            secs = time.perf_counter() - t0
            after = session.stats()
            if i < 3:
                continue
            moved = {k: after[k] - before[k] for k in ("faults", "prefetches", "recomputes", "evictions", "drops")}
            lines.append(f"step {i}: {secs * 1e3:.1f} ms {moved} scan stops {dict(stops)}")
            for (ph, cause), n in sorted(causes.items()):
                lines.append(f"    {ph:9s} {cause:18s} {n}")
    prefetch.Prefetcher.fault, pager_module.Pager.evict = original_fault, original_evict
    head = f"{model} at {fraction} of its peak ({peak / 2**30:.2f} GiB), {device}"
    text = "\n".join([head] + lines)
    print(text)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "fault_probe.txt"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
