"""Where a paged step's time goes on the GPU: compute, copies, host waits, allocator calls, idle.

    python benchmarks/step_anatomy.py MODEL FRACTION [STEPS] ['{"session": "options"}']

Trains the bench's MODEL (deepum.benchsuite) at FRACTION of its unconstrained
peak (fraction 0 runs plain, no session) for STEPS steps (default 5), then
runs one more step under torch.profiler and prints, from its Chrome trace:

* the step's wall time and the pager's counters that moved in it;
* per CUDA stream, the time some kernel or copy ran on it (union of their
  intervals) and the part of that which was copies, by direction;
* the compute stream's idle time: wall time less its busy time (this is
  what paging adds to a GPU-bound step), and its gaps split into those
  that waited for the host to launch the next kernel and those that waited
  on the device (copies the stream waits for, synchronizations);
* CPU time in the CUDA runtime and driver calls that block or reshape memory
  (synchronizations, malloc and free, virtual-memory maps of expandable
  segments, pinned host allocation), summed by name;
* the top of a cProfile of one further step, by own time and by
  cumulative time, so the host's Python can be set against the idle time,
  then the engine's own functions by cumulative time;
* with a session, one more step in which the caching allocator's retries
  (``num_alloc_retries``: an allocation that failed under the cap, after
  which the allocator waits for every stream and empties its cache) are
  attributed to the operator during which they happened, and to whether
  the engine itself was allocating (faults, prefetches, rebuilds) or the
  operator was running.

Writes anatomy.txt (and the trace, gzipped) under $OUT (default ./out).
"""

from __future__ import annotations

import collections
import cProfile
import gzip
import io
import json
import os
import pstats
import shutil
import sys
import time

import torch

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step
from deepum.core.config import Thresholds

OUT = os.environ.get("OUT") or "out"
KEYS = ("faults", "prefetches", "late_prefetches", "recomputes", "evictions", "drops", "oom_retries", "leaving_waits",
        "bytes_to_host", "bytes_to_device", "stall_seconds", "recompute_seconds", "ops")
# CPU-side CUDA calls worth a line each: the ones that wait or remap memory.
WATCH = ("Synchronize", "Malloc", "Free", "MemMap", "MemUnmap", "MemCreate", "MemRelease", "HostAlloc",
         "MemAddressReserve", "MemSetAccess", "StreamWaitEvent", "EventQuery", "EventRecord",
         "MemcpyAsync", "LaunchKernel")


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def _idle_causes(trace: dict, compute: int, gap_us: float = 5.0, prompt_us: float = 20.0) -> str:
    """The compute stream's gaps split by whose they were: a gap that ends with a kernel
    starting within ``prompt_us`` of its launch call's return waited for the host to
    launch it (the step is bound by the host there); the rest waited on the device
    (for a copy the stream was told to wait for, a synchronization, ...)."""
    launches, work = {}, []
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X":
            continue
        cat, args = ev.get("cat", ""), ev.get("args", {})
        if cat in ("cuda_runtime", "cuda_driver") and "correlation" in args:
            launches[args["correlation"]] = float(ev["ts"]) + float(ev.get("dur", 0))
        elif cat in ("kernel", "gpu_memcpy", "gpu_memset") and int(args.get("stream", -1)) == compute:
            work.append((float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0)), args.get("correlation")))
    work.sort()
    host = device = 0.0
    end = work[0][1] if work else 0.0
    for ts, te, corr in work[1:]:
        gap = ts - end
        if gap > gap_us:
            launched = launches.get(corr)
            if launched is not None and ts - launched < prompt_us:
                host += gap
            else:
                device += gap
        end = max(end, te)
    return (f"compute stream gaps over {gap_us:g} us: {host / 1e3:.1f} ms waiting for the host to launch, "
            f"{device / 1e3:.1f} ms waiting on the device (copies, synchronizations)")


def summarize(trace: dict, wall_us: float) -> list[str]:
    busy: dict[int, list] = collections.defaultdict(list)
    copies: dict[tuple[int, str], float] = collections.defaultdict(float)
    runtime: dict[str, list] = collections.defaultdict(lambda: [0, 0.0])
    kernels: dict[int, int] = collections.Counter()
    for ev in trace.get("traceEvents", []):
        if ev.get("ph") != "X":
            continue
        cat, dur = ev.get("cat", ""), float(ev.get("dur", 0))
        if cat in ("kernel", "gpu_memcpy", "gpu_memset"):
            stream = int(ev.get("args", {}).get("stream", -1))
            ts = float(ev["ts"])
            busy[stream].append((ts, ts + dur))
            if cat == "gpu_memcpy":
                name = ev.get("name", "")
                way = "HtoD" if "HtoD" in name else "DtoH" if "DtoH" in name else "DtoD"
                copies[stream, way] += dur
            else:
                kernels[stream] += 1
        elif cat in ("cuda_runtime", "cuda_driver"):
            name = ev.get("name", "")
            if any(w in name for w in WATCH):
                runtime[name][0] += 1
                runtime[name][1] += dur
    lines = [f"wall {wall_us / 1e3:.1f} ms"]
    compute = max(busy, key=lambda s: kernels.get(s, 0)) if busy else None
    for stream in sorted(busy, key=lambda s: -_union(busy[s])):
        b = _union(busy[stream])
        parts = ", ".join(f"{way} {copies[stream, way] / 1e3:.1f} ms" for way in ("HtoD", "DtoH", "DtoD")
                          if copies.get((stream, way)))
        tag = " (compute)" if stream == compute else ""
        lines.append(f"stream {stream}{tag}: busy {b / 1e3:.1f} ms, {kernels.get(stream, 0)} kernels"
                     + (f"; copies {parts}" if parts else ""))
    if compute is not None:
        lines.append(f"compute stream idle {(wall_us - _union(busy[compute])) / 1e3:.1f} ms of the wall")
        lines.append(_idle_causes(trace, compute))
    lines.append("CUDA calls on the CPU (count, ms):")
    for name, (n, dur) in sorted(runtime.items(), key=lambda kv: -kv[1][1]):
        lines.append(f"  {name:40s} {n:7d} {dur / 1e3:9.1f}")
    return lines + phases(trace, compute)


def phases(trace: dict, compute: int | None) -> list[str]:
    """Wall, kernel time and each way's copy time and bytes (copies on any stream, demand
    faults on the compute stream too) in the forward pass, the backward pass (from its
    first operator whose name says backward) and the optimizer step (its profiler
    annotation): which phase the link or the host bounds."""
    events = [ev for ev in trace.get("traceEvents", []) if ev.get("ph") == "X" and "ts" in ev]
    if not events:
        return []
    t0 = min(float(ev["ts"]) for ev in events)
    t_end = max(float(ev["ts"]) + float(ev.get("dur", 0)) for ev in events)
    backward = [float(ev["ts"]) for ev in events
                if ev.get("cat") == "cpu_op" and "backward" in ev.get("name", "").lower()]
    optimizer = [(float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0))) for ev in events
                 if ev.get("cat") == "user_annotation" and ev.get("name", "").startswith("Optimizer.step")]
    cuts = [t0, min(backward, default=t_end), min(optimizer, default=(t_end, t_end))[0],
            max((b for _, b in optimizer), default=t_end)]
    lines = ["phase: wall, kernels on the compute stream, link in (ms, GB), link out (ms, GB)"]
    for name, lo, hi in zip(("forward", "backward", "optimizer"), cuts, cuts[1:]):
        kernels, ways = [], {"HtoD": ([], 0), "DtoH": ([], 0)}
        for ev in events:
            ts, te = float(ev["ts"]), float(ev["ts"]) + float(ev.get("dur", 0))
            if te <= lo or ts >= hi:
                continue
            span = (max(ts, lo), min(te, hi))
            args = ev.get("args", {})
            if ev.get("cat") == "kernel" and int(args.get("stream", -1)) == compute:
                kernels.append(span)
            elif ev.get("cat") == "gpu_memcpy":
                way = "HtoD" if "HtoD" in ev.get("name", "") else "DtoH" if "DtoH" in ev.get("name", "") else None
                if way is not None:
                    spans, nbytes = ways[way]
                    spans.append(span)
                    ways[way] = (spans, nbytes + int(args.get("bytes", 0)))
        link = ", ".join(f"{_union(ways[w][0]) / 1e3:.1f} ms {ways[w][1] / 1e9:.2f} GB" for w in ("HtoD", "DtoH"))
        lines.append(f"  {name:9s} {(hi - lo) / 1e3:7.1f} ms, kernels {_union(kernels) / 1e3:.1f} ms, {link}")
    return lines


def retries_by_operator(session, run_step) -> list[str]:
    """Run one step counting the allocator's retries during each operator (engine or operator)."""
    from deepum.engine.pager import Pager

    def retries() -> int:
        return torch.cuda.memory_stats().get("num_alloc_retries", 0)

    where: collections.Counter = collections.Counter()
    state = {"op": "?", "mark": 0}
    begin, end = Pager.begin, Pager.end

    def counted_begin(self, op, pages, out_bytes, written=()):
        state["op"], state["mark"] = str(op), retries()
        try:
            return begin(self, op, pages, out_bytes, written)
        finally:
            now = retries()
            if now > state["mark"]:
                where["engine (begin: faults, rebuilds)", state["op"]] += now - state["mark"]
            state["mark"] = now

    def counted_end(self, eid, written, op="an operator", *rest):
        now = retries()
        if now > state["mark"]:
            where["operator", str(op)] += now - state["mark"]
        try:
            return end(self, eid, written, op, *rest)
        finally:
            after = retries()
            if after > now:
                where["engine (end: prefetch, headroom)", str(op)] += after - now
            state["mark"] = after

    Pager.begin, Pager.end = counted_begin, counted_end
    try:
        total = retries()
        run_step()
        torch.cuda.synchronize()
        total = retries() - total
    finally:
        Pager.begin, Pager.end = begin, end
    lines = [f"allocator retries in one step: {total}"]
    for (who, op), n in where.most_common(15):
        lines.append(f"  {n:4d}  {who:36s} {op}")
    return lines


def arguments() -> tuple[str, float, int, dict]:
    """MODEL FRACTION [STEPS] [OPTIONS] from the command line (this script's and host_split.py's)."""
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    if isinstance(options.get("thresholds"), dict):  # {"thresholds": {"allocator_gc": 0.8}}
        options["thresholds"] = Thresholds(**options["thresholds"])
    return sys.argv[1], float(sys.argv[2]), steps, options


def prepare(model: str):
    """(device, sync, work, step, peak): the bench's MODEL and its step, trained two steps
    unconstrained for the peak (on the cpu tier, a smoke run, the session's own count)."""
    os.makedirs(OUT, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    work = Workload(model, device, device)
    step = standard_step(work, adamw(work.model, device))
    for i in range(2):
        step(work.host_batch(i))
    sync()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with deepum.oversubscribe(1.0, device, dormant=False) as s:
            step(work.host_batch(0))
        peak = s.stats()["peak_managed_bytes"]
    return device, sync, work, step, peak


def main() -> None:
    model, fraction, steps, options = arguments()
    device, sync, work, step, peak = prepare(model)
    session = deepum.oversubscribe(int(peak * fraction), device, **options) if fraction > 0 else None
    lines = [f"{model} at {fraction} of its peak ({peak / 2**30:.2f} GiB), options {options}"]
    if session is not None:
        session.__enter__()
    try:
        for i in range(steps):
            step(work.host_batch(i))
        sync()
        before = session.stats() if session else {}
        name = os.path.join(OUT, f"{model}-{fraction}.trace.json")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            batch = work.host_batch(steps)  # made before the clock, as the bench does (case.py)
            t0 = time.perf_counter()
            step(batch)
            sync()
            wall = time.perf_counter() - t0
        after = session.stats() if session else {}
        lines.append("moved: " + ", ".join(f"{k} {after[k] - before[k]:.4g}" for k in KEYS if k in after))
        prof.export_chrome_trace(name)
        with open(name) as f:
            trace = json.load(f)
        lines += summarize(trace, wall * 1e6)
        with open(name, "rb") as src, gzip.open(name + ".gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.remove(name)
        profiler = cProfile.Profile()
        t0 = time.perf_counter()
        profiler.enable()
        step(work.host_batch(steps + 1))
        sync()
        profiler.disable()
        lines.append(f"cProfile step: {(time.perf_counter() - t0) * 1e3:.1f} ms (slowed by the profiler)")
        for order in ("tottime", "cumulative"):
            buf = io.StringIO()
            pstats.Stats(profiler, stream=buf).sort_stats(order).print_stats(25)
            lines += [ln for ln in buf.getvalue().splitlines() if ln.strip()][:40]
        # The engine's own functions alone, by cumulative time: the breakdown
        # of the host time an operator costs under pressure.
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats("deepum/(engine|core)", 45)
        lines.append("the engine's functions, by cumulative time:")
        lines += [ln for ln in buf.getvalue().splitlines() if "deepum/" in ln]
        with open(os.path.join(OUT, f"anatomy-{model}-{fraction}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")  # kept if the count below fails
        if session is not None and device.type == "cuda":
            lines += retries_by_operator(session, lambda: step(work.host_batch(steps + 2)))
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(OUT, f"anatomy-{model}-{fraction}.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
