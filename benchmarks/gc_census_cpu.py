"""Objects the garbage collector tracks that a paged step adds, by type, on the cpu tier.

    python benchmarks/gc_census_cpu.py [MODEL] [OPTIONS]

Trains the bench's MODEL (default tiny-gpt2) at 1/2 of its peak for four
steps, then counts the objects ``gc.get_objects()`` returns at a step's
start and again after the next step's forward pass, and prints the types
that grew most. Objects that live from an operator to the backward pass
survive the young collections into the oldest generation; how many a step
adds there sets how often the collector makes a full pass over every
object of the process (docs/BENCHMARKS.md, session 11).
"""

import collections
import gc
import json
import sys

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step


def census() -> collections.Counter:
    gc.collect()
    return collections.Counter(type(o).__name__ for o in gc.get_objects())


def main() -> None:
    model = sys.argv[1] if len(sys.argv) > 1 else "tiny-gpt2"
    options = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    torch.set_num_threads(1)
    dev = torch.device("cpu")
    work = Workload(model, dev, dev)
    step = standard_step(work, adamw(work.model, dev))
    step(work.host_batch(0))
    with deepum.oversubscribe(1.0, dev, dormant=False) as s:
        step(work.host_batch(0))
    peak = s.stats()["peak_managed_bytes"]
    with deepum.oversubscribe(int(peak * 0.5), dev, **options):
        for i in range(4):
            step(work.host_batch(i))
        base = census()
        loss = work.loss(work.host_batch(5), None)
        grown = census() - base
        del loss
    print(f"{model}, options {options}: {sum(grown.values())} more objects after a forward pass than at the step's start")
    for name, n in grown.most_common(15):
        print(f"  {n:6d} {name}")


if __name__ == "__main__":
    main()
