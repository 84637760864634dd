"""Which allocations make the caching allocator reserve more than a steady step allocates (CUDA only).

    python benchmarks/step_blocks.py MODEL [BUDGET_BYTES] [--warmup 24] [--steps 2] [--top 12]

Builds MODEL's bench step (plain, or deepum at BUDGET_BYTES), runs the
warm-up steps, hands the allocator's cache back (``empty_cache``), then
records the allocator's history (PyTorch's memory snapshot, Python stacks)
through STEPS more steps. From the trace it replays the allocated and
reserved bytes event by event and prints: each step's allocated and
reserved peaks; the allocations that made the allocator reserve more while
its cache already held at least their size free (a miss: no free block
fitted), grouped by size and the first frames outside torch, with the
cached bytes they found; and the cache at the end of the last step (free
blocks by size). The question it answers (session 28's notes): the
allocator held about 2 GiB above the allocated peak of a Llama-family step
at 1/2 of its peak, so parking had to leave that much room; which blocks?
"""

from __future__ import annotations

import argparse
import collections

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step
from deepum.benchsuite.peers import prepare

GB = 1 << 30
MB = 1 << 20


def _where(frames: list[dict], n: int = 3) -> str:
    mine = [f for f in frames if "/torch/" not in f.get("filename", "") and f.get("filename", "") != "??"]
    return " < ".join(f"{f['filename'].rsplit('/', 1)[-1]}:{f['line']} {f['name']}" for f in mine[:n]) or "?"


def replay(trace: list[dict], marks: list[int], alloc: int, reserved: int) -> tuple[list[tuple[int, int]], list[dict]]:
    """Per step (``marks``: trace indices where steps begin), the allocated and reserved peaks; and the misses.
    ``alloc`` and ``reserved``: the allocator's counts when the trace began."""
    peaks, misses, cur = [], [], [alloc, reserved]
    bounds = set(marks[1:])
    for i, ev in enumerate(trace):
        if i in bounds:
            peaks.append(tuple(cur))
            cur = [alloc, reserved]
        act, size = ev["action"], ev.get("size", 0)
        if act in ("segment_map", "segment_alloc"):
            grew_for = next((e for e in trace[i + 1:i + 4] if e["action"] == "alloc"), None)
            if grew_for is not None and reserved - alloc >= grew_for["size"]:
                misses.append({"size": grew_for["size"], "cached": reserved - alloc, "grew": size,
                               "where": _where(grew_for.get("frames", [])), "at": i})
            reserved += size
        elif act in ("segment_unmap", "segment_free"):
            reserved -= size
        elif act == "alloc":
            alloc += size
        elif act == "free_completed":
            alloc -= size
        cur = [max(cur[0], alloc), max(cur[1], reserved)]
    peaks.append(tuple(cur))
    return peaks, misses


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("budget", nargs="?", type=int)
    ap.add_argument("--warmup", type=int, default=24)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_blocks.py reads the CUDA allocator: run it on a GPU machine")
    device = torch.device("cuda", 0)
    session = deepum.oversubscribe(args.budget, device) if args.budget else None
    if session is not None:
        session.__enter__()
    work = Workload(args.model, device, device)
    prep = prepare("deepum" if session is not None else "plain", work, device)
    step = standard_step(work, prep.opt or adamw(work.model, device), prep.wrap, lambda label: None, prep.model)
    for i in range(args.warmup):
        step(work.host_batch(i))
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    base_alloc, base_res = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    torch.cuda.memory._record_memory_history(max_entries=1_000_000, stacks="python")
    marks = []
    for i in range(args.steps):
        marks.append(len(torch.cuda.memory._snapshot()["device_traces"][device.index]))
        step(work.host_batch(args.warmup + 1 + i))
    torch.cuda.synchronize(device)
    snap = torch.cuda.memory._snapshot()
    torch.cuda.memory._record_memory_history(enabled=None)
    if session is not None:
        stats = session.stats()
        session.__exit__(None, None, None)
        print("dormant", stats.get("dormant"), "regions", stats.get("regions"), "parked", stats.get("parked_bytes"),
              "retries", torch.cuda.memory_stats(device).get("num_alloc_retries"))
    trace = snap["device_traces"][device.index]
    peaks, misses = replay(trace, marks, base_alloc, base_res)
    print(f"after empty_cache: {base_alloc / GB:.2f} GiB allocated, {base_res / GB:.2f} reserved")
    for k, (a, r) in enumerate(peaks):
        print(f"step {k}: allocated peak {a / GB:.2f} GiB, reserved peak {r / GB:.2f} (replayed from the trace)")
    groups = collections.defaultdict(list)
    for m in misses:
        groups[(m["size"] // MB, m["where"])].append(m)
    print(f"{len(misses)} allocations mapped more memory while the cache held at least their size free:")
    ranked = sorted(groups.items(), key=lambda kv: -sum(m["grew"] for m in kv[1]))
    for (size_mb, where), ms in ranked[:args.top]:
        print(f"  {len(ms):4d} x {size_mb:7d} MiB, grew {sum(m['grew'] for m in ms) / GB:6.2f} GiB, cache held "
              f"{max(m['cached'] for m in ms) / GB:5.2f} GiB: {where}")
    free = collections.Counter()
    for seg in snap["segments"]:
        for b in seg["blocks"]:
            if b["state"] == "inactive":
                free[min(b["size"] // MB, 4096).bit_length()] += b["size"]
    print("free blocks in the cache at the end, by size (MiB up to): " + ", ".join(
        f"{(1 << k) - 1 if k else 0}: {v / GB:.2f} GiB" for k, v in sorted(free.items())))
    print("segments:", collections.Counter((s["stream"], s["segment_type"]) for s in snap["segments"]))


if __name__ == "__main__":
    main()
