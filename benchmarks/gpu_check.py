"""One device call: bit-identity on CUDA, link bandwidth, and timed cases.

    python benchmarks/gpu_check.py --out $OUT [--cases check,gpt2,resnet] [--steps 5]

The models, the step and the checks are those of ``deepum bench``
(src/deepum/bench.py); this script runs them in one process and adds the
whole-card case and the link floor to one table. Runs 2-9 of
docs/BENCHMARKS.md were made with it.

Cases
  check   GPT-2 (12 layers, d=768, eager attention, deterministic algorithms)
          trained 5 steps plain and under deepum at a third of its peak:
          losses and parameters must be bit-identical, max_memory_reserved
          must stay within the budget, and pages must have moved.
  gpt2    HF GPT-2 medium from a config (24 layers, d=1024, 16 heads, vocab
          50304), batch 16 x 1024, bf16 autocast, fused AdamW.
  resnet  torchvision ResNet-152, batch 128, channels_last, bf16 autocast,
          fused AdamW.
For gpt2 and resnet: unconstrained; deepum with budget = the whole card;
deepum and lru policies at 1/2 and 1/3 of the unconstrained peak (reserved);
save_on_cpu; activation checkpointing (GPT-2). Every figure is printed in a
table at the end and written as JSON lines to OUT/results.jsonl.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import traceback

import torch

import deepum
from deepum import bench

GiB = 1 << 30


def link_bandwidth() -> dict:
    bw = bench.link_bandwidth(torch.device("cuda", 0))
    return {"h2d": bw["h2d_GBps"], "d2h": bw["d2h_GBps"]}


def make_case(name: str):
    """(model, optimizer, step function) for a case, on the GPU: the models of ``deepum bench``."""
    dev = torch.device("cuda", 0)
    work = bench.Workload({"gpt2": "gpt2-medium", "resnet": "resnet152"}[name], dev, dev)
    opt = bench.adamw(work.model, dev)

    def step(i, wrap=None):
        return bench.standard_step(work, opt, wrap)(work.host_batch(i))

    return work.model, opt, step


def cleanup():
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    if hasattr(torch._C, "_host_emptyCache"):  # pinned blocks cached by earlier cases
        torch._C._host_emptyCache()
    torch.cuda.reset_peak_memory_stats()


# ------------------------------------------------------------------ runs

def timed(step, steps, warmup, wrap=None, between=None):
    times = []
    for i in range(warmup + steps):
        if i == warmup and between:
            between()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(i, wrap)
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def run_case(model_name, method, budget=None, policy="deepum", steps=5, warmup=3, bw=None):
    cleanup()
    row = {"model": model_name, "method": method, "policy": policy if method == "deepum" else None,
           "budget_bytes": budget}
    try:
        model, opt, step = make_case(model_name)
        wrap = None
        if method == "ckpt":
            model.gradient_checkpointing_enable()
        if method == "save_on_cpu":
            def wrap():
                return torch.autograd.graph.save_on_cpu(pin_memory=True)
        cleanup()
        if method == "deepum":
            session = deepum.oversubscribe(budget, "cuda", policy=policy)
            snap = {}

            def between():
                snap.update(session.stats())

            with session:
                times = timed(step, steps, warmup, between=between)
                end = session.stats()
            peak = end["peak_device_bytes"]
            per = {k: (end[k] - snap.get(k, 0)) / steps for k in
                   ("bytes_to_device", "bytes_to_host", "faults", "prefetches", "prefetch_hits",
                    "late_prefetches", "wasted_prefetches", "evictions", "stall_seconds", "oom_retries",
                    "energy_joules") if k in end}
            row.update({f"step_{k}": v for k, v in per.items()})
            row["prediction_accuracy"] = end["prediction_accuracy"]
            row["ops_per_step"] = (end["ops"] - snap.get("ops", 0)) / steps
        else:
            times = timed(step, steps, warmup, wrap=wrap)
            peak = torch.cuda.max_memory_reserved()
        row.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
                   peak_reserved=peak, peak_allocated=torch.cuda.max_memory_allocated())
        if budget is not None:
            row["fits"] = peak <= budget
        if method == "deepum" and bw:
            floor = max(row.get("plain_s", 0),
                        row["step_bytes_to_device"] / (bw["h2d"] * 1e9),
                        row["step_bytes_to_host"] / (bw["d2h"] * 1e9))
            row["link_floor_s"] = floor
        del model, opt, step
    except Exception as e:  # report and go on with the next case
        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        traceback.print_exc()
    cleanup()
    return row


def check_bit_identical(steps=5) -> dict:
    """GPT-2 on CUDA, deterministic, plain twice and under deepum at 1/3 of the peak."""
    cleanup()
    row = bench.identity_check("gpt2-check", torch.device("cuda", 0), steps)
    row.update(model="gpt2_check", method="bit-identity", peak_reserved=row["peak_device_bytes"])
    return row


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--cases", default="check,gpt2,resnet")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--fractions", default="0.5,0.333")
    ap.add_argument("--methods", default="full,deepum,lru,save_on_cpu,ckpt")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "results.jsonl")
    rows = []

    def emit(row):
        row.update(card=torch.cuda.get_device_name(), torch=torch.__version__,
                   date=time.strftime("%Y-%m-%d"))
        rows.append(row)
        with open(results_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)

    bw = link_bandwidth()
    emit({"model": "-", "method": "link", **bw})
    cases = args.cases.split(",")
    methods = args.methods.split(",")
    if "check" in cases:
        emit(check_bit_identical())
    for model_name in [c for c in cases if c in ("gpt2", "resnet")]:
        base = run_case(model_name, "plain", steps=args.steps, warmup=args.warmup)
        emit(base)
        if "error" in base:
            continue
        plain_s, peak = base["median_s"], base["peak_reserved"]
        todo = []
        if "full" in methods:
            todo.append(("deepum", "full card", int(torch.cuda.get_device_properties(0).total_memory * 0.95), "deepum"))
        for frac in [float(f) for f in args.fractions.split(",")]:
            for pol in ("deepum", "lru"):
                if pol in methods:
                    todo.append(("deepum", f"{frac:.2f} peak", int(peak * frac), pol))
        if "save_on_cpu" in methods:
            todo.append(("save_on_cpu", "-", None, None))
        if "ckpt" in methods and model_name == "gpt2":
            todo.append(("ckpt", "-", None, None))
        for method, label, budget, pol in todo:
            row = run_case(model_name, method, budget, pol or "deepum", args.steps, args.warmup, bw)
            row["label"] = label
            row["plain_s"] = plain_s
            if "median_s" in row:
                row["x_plain"] = row["median_s"] / plain_s
                if "link_floor_s" in row:
                    row["link_floor_s"] = max(row["link_floor_s"], plain_s)
                    row["x_floor"] = row["median_s"] / row["link_floor_s"]
            emit(row)

    print("\n| model | method | policy | budget GiB | ms/step | x plain | x floor | peak GiB | fits | "
          "GB in/step | GB out/step | hits | late | faults | stall s | acc |")
    print("|" + "---|" * 16)
    for r in rows:
        if r["method"] == "link":
            print(f"link: h2d {r['h2d']:.1f} GB/s, d2h {r['d2h']:.1f} GB/s")
            continue
        if r["method"] == "bit-identity":
            print(f"bit-identity on CUDA: ok={r['ok']} deterministic_ref={r['reference_deterministic']} "
                  f"identical={r['bit_identical']} budget={r['budget_bytes'] / GiB:.2f} GiB "
                  f"peak_reserved={r['peak_reserved'] / GiB:.2f} GiB evictions={r['evictions']} faults={r['faults']}")
            continue
        if "error" in r:
            print(f"| {r['model']} | {r['method']} {r.get('label', '')} | {r.get('policy')} | | ERROR {r['error'][:80]} |")
            continue

        def g(k, scale=1.0, fmt="{:.2f}", r=r):
            v = r.get(k)
            return fmt.format(v / scale) if isinstance(v, (int, float)) else "-"
        print(f"| {r['model']} | {r['method']} {r.get('label', '')} | {r.get('policy') or '-'} | "
              f"{g('budget_bytes', GiB)} | {g('median_s', 1e-3, '{:.0f}')} | {g('x_plain')} | {g('x_floor')} | "
              f"{g('peak_reserved', GiB)} | {r.get('fits', '-')} | {g('step_bytes_to_device', 1e9)} | "
              f"{g('step_bytes_to_host', 1e9)} | {g('step_prefetch_hits', 1, '{:.0f}')} | "
              f"{g('step_late_prefetches', 1, '{:.0f}')} | {g('step_faults', 1, '{:.0f}')} | "
              f"{g('step_stall_seconds', 1, '{:.3f}')} | {g('prediction_accuracy')} |")
    ok = all(r.get("ok", True) for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
