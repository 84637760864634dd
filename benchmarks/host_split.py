"""Where a paged step's host time goes, by engine function, without a profiler's slowdown.

    python benchmarks/host_split.py MODEL FRACTION [STEPS] ['{"session": "options"}']

Trains the bench's MODEL (deepum.benchsuite) at FRACTION of its unconstrained
peak for STEPS warm-up steps (default 5), then times STEPS more with a
perf_counter wrapper around each engine function listed in ``WATCHED``
(inclusive time of the outermost call, a fraction of a microsecond of its
own a call) and the garbage collector's passes (gc.callbacks). Prints, per
step: the wall time, the time inside the dispatch mode, inside the operators
themselves (``OpPlan.call``: launch, allocation and the allocator's retries), and
per watched function its calls and inclusive time, the collector's passes
that fell inside it left out (a pass runs in whichever call allocates when it
is due, a recipe's recording among them; before session 16 those passes
were counted in the function too); what is left of the mode's time after the
operators is the interception's own cost. Unlike
cProfile (about twice the step) and torch.profiler, the split it gives adds
up to the step it measured. Writes host-split-MODEL-FRACTION.txt under $OUT.
"""

from __future__ import annotations

import collections
import gc
import os
import statistics
import time

import torch
from step_anatomy import OUT, arguments, prepare

import deepum
from deepum.engine import movers, pager, stepplan
from deepum.engine.intercept import mode, register

# (owner, attribute, label): the dispatch, its parts, and what pressure adds.
WATCHED = [
    (mode.PagingMode, "__torch_dispatch__", "mode: whole interception"),
    (mode.PagingMode, "_view", "  views"),
    (mode.PagingMode, "_gather", "  gather pages"),
    (mode.PagingMode, "_first_sight", "  first sight of an ID"),
    (mode.PagingMode, "_register_outputs", "  register outputs"),
    (register, "record", "    record a recipe"),
    (mode.PagingMode, "_recipe_call", "  capture recipe call (rng)"),
    (mode.PagingMode, "_run_chunks", "  chunked operators"),
    (pager.Pager, "begin", "  pager.begin"),
    (pager.Pager, "make_room", "    make_room"),
    (pager.Pager, "evict", "      evict"),
    (pager.Pager, "fault", "    fault"),
    (pager.Pager, "rebuild", "    rebuild"),
    (pager.Pager, "end", "  pager.end"),
    (pager.Pager, "_prefetch_ahead", "    prefetch ahead"),
    (stepplan.StepPlans, "after", "    the plan: after an operator"),
    (stepplan.StepPlans, "_execute", "      its evictions and prefetches"),
    (stepplan._Letting, "after", "      letting go"),
    (pager.Pager, "prefetch_pages", "      prefetch_pages"),
    (pager.Pager, "reap", "  reap dead pages"),
    (movers.HostTransfers, "save", "transfers.save (cpu tier)"),
    (movers.HostTransfers, "load", "transfers.load (cpu tier)"),
    (movers.CudaTransfers, "save", "transfers.save"),
    (movers.CudaTransfers, "load", "transfers.load"),
    (movers.CudaTransfers, "wait", "transfers.wait"),
    (movers.CudaTransfers, "settle", "transfers.settle (host waits)"),
    (movers.CudaTransfers, "release_finished", "transfers.release_finished"),
]


class Split:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.Counter()
        self.depth: dict[str, int] = collections.Counter()
        self.gc_seconds = 0.0
        self.gc_full = 0
        self._gc_t0 = 0.0
        self.on = False

    def wrap(self, owner, attr: str, label: str) -> None:
        original = owner.__dict__.get(attr) if isinstance(owner, type) else getattr(owner, attr, None)
        if original is None:
            original = getattr(owner, attr, None)
        if original is None:
            print(f"host_split: {owner.__name__}.{attr} not found; skipped")
            return
        setattr(owner, attr, self.timed(original, label))

    def timed(self, original, label: str, also=None):
        """``original`` timed under ``label`` (the outermost call only), the garbage
        collector's time inside it left out; ``also(seconds)`` hears each timed call."""
        split, clock = self, time.perf_counter

        def timed(*args, **kwargs):
            if not split.on or split.depth[label]:
                return original(*args, **kwargs)
            split.depth[label] += 1
            t0, gc0 = clock(), split.gc_seconds
            try:
                return original(*args, **kwargs)
            finally:
                # Less the collector's passes that fell inside: a full pass runs in whichever
                # call allocates when one is due, not where the garbage was made.
                dt = clock() - t0 - (split.gc_seconds - gc0)
                split.seconds[label] += dt
                split.calls[label] += 1
                split.depth[label] -= 1
                if also is not None:
                    also(dt)

        return timed

    def gc_callback(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self._gc_t0 = time.perf_counter()
        else:
            self.gc_seconds += time.perf_counter() - self._gc_t0
            self.gc_full += info.get("generation") == 2


OPS = "  operator itself (_call)"


def _time_operators(split: Split) -> Split:
    """Time each operator's own call (``OpPlan.call``: launch, allocation, the allocator's
    retries) into ``split`` and, by operator name, into the Split returned (which operators
    a planned step makes slower). Patches the plans the mode makes from now on."""
    by_op = Split()

    class TimedPlan(mode.OpPlan):
        def __init__(self, func, *rest) -> None:
            super().__init__(func, *rest)
            name = str(func)

            def note(dt: float) -> None:
                by_op.seconds[name] += dt
                by_op.calls[name] += 1

            self.call = split.timed(self.call, OPS, note)

    mode.OpPlan = TimedPlan
    return by_op


ALLOC = ("num_alloc_retries", "num_sync_all_streams", "num_device_alloc", "num_device_free")


def _allocator(device) -> dict:
    """The caching allocator's counters that mean a host wait (retries free the cache and synchronize)."""
    if device.type != "cuda":
        return {}
    st = torch.cuda.memory_stats(device)
    return {k: st.get(k, 0) for k in ALLOC}


def main() -> None:
    model, fraction, steps, options = arguments()
    device, sync, work, step, peak = prepare(model)
    split = Split()
    for owner, attr, label in WATCHED:
        split.wrap(owner, attr, label)
    gc.callbacks.append(split.gc_callback)
    by_op = _time_operators(split)
    walls = []
    with deepum.oversubscribe(int(peak * fraction), device, **options) as session:
        for i in range(steps):
            step(work.host_batch(i))
        sync()
        before = session.stats()
        alloc0 = _allocator(device)
        for i in range(steps, 2 * steps):
            split.on = False
            batch = work.host_batch(i)  # made before the clock and the split, as the bench does (case.py)
            split.on = True
            t0 = time.perf_counter()
            step(batch)
            sync()
            walls.append(time.perf_counter() - t0)
        split.on = False
        after = session.stats()
        alloc1 = _allocator(device)
    gc.callbacks.remove(split.gc_callback)
    n = len(walls)
    lines = [f"{model} at {fraction} of its peak ({peak / 2**30:.2f} GiB), options {options}, {n} steps timed",
             f"step wall: median {statistics.median(walls) * 1e3:.1f} ms, mean {sum(walls) / n * 1e3:.1f} ms",
             "per step: " + ", ".join(f"{k} {(after[k] - before[k]) / n:.4g}" for k in
                                      ("ops", "faults", "prefetches", "recomputes", "evictions", "drops", "oom_retries",
                                       "victim_choices", "leaving_waits", "recipes", "plan_prefetch_no_room",
                                       "planned_evictions") if k in after),
             f"garbage collector: {split.gc_seconds / n * 1e3:.1f} ms a step, {split.gc_full / n:.2f} full passes a step",
             "allocator per step: " + ", ".join(f"{k} {(alloc1[k] - alloc0[k]) / n:.4g}" for k in alloc0),
             f"{'function':38} {'calls/step':>10} {'ms/step':>9} {'us/call':>8}"]
    for label in [WATCHED[0][2], OPS, *(w[2] for w in WATCHED[1:])]:
        calls = split.calls.get(label, 0)
        if calls:
            sec = split.seconds[label]
            lines.append(f"{label:38} {calls / n:10.0f} {sec / n * 1e3:9.1f} {sec / calls * 1e6:8.1f}")
    whole = split.seconds.get("mode: whole interception", 0.0)
    ops = split.seconds.get(OPS, 0.0)
    lines.append(f"interception less the operators: {(whole - ops) / n * 1e3:.1f} ms a step; "
                 f"outside the mode and the collector (model and optimizer Python, autograd, sync at "
                 f"the end): {(sum(walls) - whole - split.gc_seconds) / n * 1e3:.1f} ms a step")
    lines.append("operators by host time (the _call of each, ms a step, calls a step):")
    for name, sec in sorted(by_op.seconds.items(), key=lambda kv: -kv[1])[:12]:
        lines.append(f"  {name:48} {sec / n * 1e3:8.1f} {by_op.calls[name] / n:8.0f}")
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(OUT, f"host-split-{model}-{fraction}.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
