"""Shares of a py-spy profile's samples, for a paged step's host time (collapsed stacks).

    py-spy record --native --idle --threads -r 40 --format raw -o OUT.raw -- python host_split.py ...
    python benchmarks/pyspy_split.py OUT.raw[.gz]

Keeps the samples of the training step (under the step function or the
autograd engine's threads), less three one-time costs a profile of a short
run is full of: building the native swap extension (its first use), the
pinned host pool's growth (CUDA's host allocator on its slow path) and
threads parked on a condition variable. Prints the inclusive share of the
engine's main functions and of the allocator's work, then the frames with the
most samples of their own.
"""

from __future__ import annotations

import collections
import gzip
import re
import sys

ONE_TIME = ("_jit_compile", "allocate_host_memory_slowpath", "pthread_cond_wait")
IN_STEP = ("standard_step.<locals>.step", "torch::autograd::Engine::thread_main")
WATCHED = (
    "PagingMode.__torch_dispatch__", "PagingMode._view", "PagingMode._call", "PagingMode._gather",
    "Registration._register_outputs", "record", "Pager.begin", "Pager.end", "Pager.make_room", "Pager.evict",
    "CudaTransfers.save", "CudaTransfers.load", "Remat.rebuild", "StepPlans.after", "Prefetcher._prefetch_ahead",
    "HostAccessMode.__torch_function__", "RecomputeFirstPolicy.choose_victims",
    "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::release_cached_blocks",
    "c10::cuda::CUDACachingAllocator::Native::DeviceCachingAllocator::malloc",
)


def samples(path: str):
    """(frame names, count) of each collapsed stack in the step, thread name dropped."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit() or any(x in stack for x in ONE_TIME):
                continue
            names = [re.sub(r" \(.*", "", frame) for frame in stack.split(";")[1:]]
            if any(x in names for x in IN_STEP):
                yield names, int(n)


def main() -> None:
    inclusive, own = collections.Counter(), collections.Counter()
    total = 0
    for names, n in samples(sys.argv[1]):
        total += n
        for name in set(names):
            inclusive[name] += n
        own[names[-1] if names else "?"] += n
    print(f"{total} samples in the step")
    for name in WATCHED:
        print(f"{inclusive[name] / total:6.1%}  {name}")
    print("frames with the most samples of their own:")
    for name, n in own.most_common(15):
        print(f"{n / total:6.1%}  {name[:100]}")


if __name__ == "__main__":
    main()
