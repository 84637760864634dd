"""Where a bench case's steady step spends its time, from torch.profiler.

Usage: python step_profile.py MODEL METHOD [BUDGET_BYTES] [WARMUP] [--out DIR]

Builds MODEL's step as ``deepum bench`` does (METHOD: plain, ckpt, deepum,
...; deepum needs BUDGET_BYTES), runs WARMUP steps (default 24), then
profiles two steps. Prints the step's wall time, the GPU's busy time (the
union of kernel and copy intervals), the count of device events, and the top
operators by device time and by host time; writes the Chrome trace to
DIR/MODEL-METHOD.json.gz when --out is given.
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import time

import torch
from torch.profiler import ProfilerActivity, profile

import deepum
from deepum.benchsuite.case import _build_step, sync


def _busy_us(events) -> tuple[float, int]:
    """Microseconds some kernel or copy ran (intervals merged), and the count of device events."""
    spans, kernels = [], 0
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            spans.append((e.time_range.start, e.time_range.end))
            kernels += 1
    spans.sort()
    busy, end = 0.0, -1.0
    for a, b in spans:
        if b <= end:
            continue
        busy += b - max(a, end)
        end = b
    return busy, kernels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("method")
    ap.add_argument("budget", nargs="?", type=int)
    ap.add_argument("warmup", nargs="?", type=int, default=24)
    ap.add_argument("--out")
    args = ap.parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    session = None
    if args.method in ("deepum", "lru"):
        session = deepum.oversubscribe(args.budget, device, policy=args.method)
        session.__enter__()
    step, work, _, _ = _build_step(args.model, args.method, device, session)
    for i in range(args.warmup):
        step(work.host_batch(i))
    batches = [work.host_batch(args.warmup + k) for k in range(2)]
    sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        for b in batches:
            step(b)
        sync(device)
        wall = (time.perf_counter() - t0) / 2
    if session is not None:
        stats = session.stats()
        session.__exit__(None, None, None)
        print("dormant", stats.get("dormant"), "paging_stops", stats.get("paging_stops"))
    busy, kernels = _busy_us(prof.events())
    print(f"{args.model} {args.method}: wall {wall * 1e3:.1f} ms/step (profiled), GPU busy {busy / 2e3:.1f} ms/step, "
          f"{kernels // 2} device events/step")
    table = prof.key_averages()
    print(table.table(sort_by="self_device_time_total", row_limit=22, max_name_column_width=60))
    print(table.table(sort_by="self_cpu_time_total", row_limit=14, max_name_column_width=60))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        raw = os.path.join(args.out, f"{args.model}-{args.method}.json")
        prof.export_chrome_trace(raw)
        with open(raw, "rb") as f, gzip.open(raw + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
        os.remove(raw)


if __name__ == "__main__":
    main()
