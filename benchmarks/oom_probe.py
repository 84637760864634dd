"""Where a session's run stopped with the allocator's out-of-memory error, and what the allocator held (CUDA).

    python benchmarks/oom_probe.py MODEL FRACTION PEAK_BYTES [--steps 16] [--deterministic] [--plain-first]

Trains MODEL's bench step (AdamW as ``DEEPUM_BENCH_ADAMW`` says) under a
session at FRACTION of PEAK_BYTES (the model's unconstrained peak, from an
earlier round), as the identity check's session run does (``--plain-first``:
after two plain runs of as many steps in the same process, as the identity
check runs its reference first). After each step
it prints one line: whether the session was dormant, the regions, the bytes
parked, and the allocator's allocated, reserved and flush counts. If a step
raises ``torch.OutOfMemoryError``, it prints the step, the phase (forward,
backward or optimizer), the session's state, and what the allocator's cache
held: free bytes by pool and by the size of their blocks, and how many of
the large pool's segments mix free and allocated blocks.
"""

from __future__ import annotations

import argparse
import collections
import os

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step

GB = 1 << 30
MB = 1 << 20


def allocator(device) -> str:
    s = torch.cuda.memory_stats(device)
    return (f"allocated {s['allocated_bytes.all.current'] / GB:.2f} GiB, reserved "
            f"{s['reserved_bytes.all.current'] / GB:.2f}, inactive split {s['inactive_split_bytes.all.current'] / GB:.2f}"
            f", flushes {s.get('num_alloc_retries', 0)}")


def cache(device) -> str:
    free = collections.Counter()
    by_size = collections.Counter()
    mixed = 0
    for seg in torch.cuda.memory_snapshot():
        states = {b["state"] for b in seg["blocks"]}
        mixed += seg["segment_type"] == "large" and "inactive" in states and "active_allocated" in states
        for b in seg["blocks"]:
            if b["state"] == "inactive":
                free[seg["segment_type"], seg["stream"]] += b["size"]
                by_size[min(b["size"] // MB, 4096).bit_length()] += b["size"]
    return (f"free by (pool, stream): {', '.join(f'{k}: {v / GB:.2f} GiB' for k, v in free.items())}; "
            f"large segments holding free and allocated blocks: {mixed}; free blocks by size (MiB up to): "
            + ", ".join(f"{(1 << k) - 1 if k else 0}: {v / GB:.2f}" for k, v in sorted(by_size.items())))


def segments(device) -> str:
    """The segments that hold both free and allocated blocks: (MiB, MiB allocated, expandable, stream)."""
    out = [(seg["total_size"] // MB, seg["allocated_size"] // MB, seg.get("is_expandable"), seg["stream"])
           for seg in torch.cuda.memory_snapshot() if 0 < seg["allocated_size"] < seg["total_size"]]
    return f"{len(out)} segments in part allocated: " + ", ".join(map(str, sorted(out, reverse=True)[:16]))


def window(w) -> str:
    """One entry of Watch.windows: (paging, peak read, allocated peak, reserved peak, flushes so far)."""
    return (f"window: paging {w[0]}, peak read {w[1] / GB:.2f} GiB, allocated {w[2] / GB:.2f}, "
            f"reserved {w[3] / GB:.2f}, flushes so far {w[4]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("fraction", type=float)
    ap.add_argument("peak", type=int)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--deterministic", action="store_true", help="as the identity check runs")
    ap.add_argument("--plain-first", action="store_true", help="two plain runs first, as the identity check")
    args = ap.parse_args()
    device = torch.device("cuda", 0)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    budget = int(args.peak * args.fraction)
    for _ in range(2 if args.plain_first else 0):
        torch.cuda.empty_cache()
        work = Workload(args.model, device, device)
        step = standard_step(work, adamw(work.model, device))
        for i in range(args.steps):
            step(work.host_batch(i)).item()
        del work, step
    if args.plain_first:
        torch.cuda.empty_cache()
        print(f"after the plain runs: {allocator(device)}; {cache(device)}", flush=True)
        print(f"  {segments(device)}", flush=True)
    session = deepum.oversubscribe(budget, device)
    session.__enter__()
    print(f"at the session's entry: {allocator(device)}; {segments(device)}", flush=True)
    phase = ["forward"]
    work = Workload(args.model, device, device)
    step = standard_step(work, adamw(work.model, device), mark=lambda p: phase.__setitem__(0, {
        "forward": "backward", "backward": "optimizer"}.get(p, p)))
    print(f"budget {budget} bytes ({budget / GB:.2f} GiB)")
    try:
        for i in range(args.steps):
            phase[0] = "forward"
            step(work.host_batch(i))
            torch.cuda.synchronize(device)
            st = session.stats()
            print(f"step {i}: dormant {st.get('dormant')}, regions {st.get('regions')}, parked "
                  f"{st.get('parked_bytes', 0) / GB:.2f} GB summed, evictions {st.get('evictions')}; "
                  f"{allocator(device)}", flush=True)
            watch = getattr(session, "_watch", None)
            if watch is not None and watch.windows:
                print(f"  {window(watch.windows[-1])}", flush=True)
    except torch.OutOfMemoryError as e:
        st = session.stats()
        print(f"OUT OF MEMORY at step {i}, in the {phase[0]}: {str(e).splitlines()[0][:200]}")
        print(f"  session: dormant {st.get('dormant')}, paging stops {st.get('paging_stops')}, regions "
              f"{st.get('regions')}, evictions {st.get('evictions')}, overshoots {st.get('overshoots')}")
        print(f"  {allocator(device)}")
        print(f"  {cache(device)}")
        print(f"  {segments(device)}")
        watch = getattr(session, "_watch", None)
        for w in list(getattr(watch, "windows", []))[-6:]:
            print(f"  {window(w)}")
    finally:
        session.__exit__(None, None, None)


if __name__ == "__main__":
    main()
