"""One device call: bit-identity on CUDA, link bandwidth, and timed cases.

    python benchmarks/gpu_check.py --out $OUT [--cases check,gpt2,resnet] [--steps 5]

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

GiB = 1 << 30


def link_bandwidth(nbytes: int = GiB) -> dict:
    """Pinned host<->device copy rates in GB/s (the same method as docs/DESIGN.md)."""
    dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    out = {}
    for name, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out[name] = nbytes / statistics.median(times) / 1e9
    del dev, host
    torch.cuda.empty_cache()
    return out


# ----------------------------------------------------------------- models

def gpt2_model(layers=24, d=1024, heads=16, attn="sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=layers, n_embd=d, n_head=heads, vocab_size=50304, n_positions=1024,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn)
    return GPT2LMHeadModel(cfg)


def make_case(name: str):
    """(model, optimizer, step function) for a case, on the GPU."""
    torch.manual_seed(0)
    if name.startswith("gpt2"):
        if name == "gpt2_check":
            model = gpt2_model(layers=12, d=768, heads=12, attn="eager")
            batch, seq = 8, 512
        else:
            model = gpt2_model()
            batch, seq = 16, 1024
        model = model.cuda()
        g = torch.Generator(device="cuda").manual_seed(1)
        ids = [torch.randint(0, 50304, (batch, seq), device="cuda", generator=g) for _ in range(4)]

        def loss_of(i):
            x = ids[i % len(ids)]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return model(input_ids=x, labels=x).loss
    else:
        import torchvision
        model = torchvision.models.resnet152().cuda().to(memory_format=torch.channels_last)
        g = torch.Generator(device="cuda").manual_seed(1)
        xs = [torch.randn(128, 3, 224, 224, device="cuda", generator=g).to(memory_format=torch.channels_last)
              for _ in range(2)]
        ys = [torch.randint(0, 1000, (128,), device="cuda", generator=g) for _ in range(2)]

        def loss_of(i):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return torch.nn.functional.cross_entropy(model(xs[i % 2]), ys[i % 2])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)

    def step(i, wrap=None):
        if wrap is None:
            loss = loss_of(i)
        else:
            with wrap():
                loss = loss_of(i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, opt, step


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
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        def train(budget=None):
            cleanup()
            model, opt, step = make_case("gpt2_check")
            cleanup()
            losses = []
            if budget is None:
                for i in range(steps):
                    losses.append(step(i).item())
                stats, peak = None, torch.cuda.max_memory_reserved()
            else:
                with deepum.oversubscribe(budget, "cuda") as s:
                    for i in range(steps):
                        losses.append(step(i).item())
                stats = s.stats()
                peak = stats["peak_device_bytes"]
            params = [p.detach().cpu() for p in model.parameters()]
            del model, opt, step
            return losses, params, stats, peak

        l0, p0, _, peak0 = train()
        l0b, p0b, _, _ = train()
        deterministic = l0 == l0b and all(torch.equal(a, b) for a, b in zip(p0, p0b))
        budget = peak0 // 3
        l1, p1, stats, peak1 = train(budget)
        same = l0 == l1 and all(torch.equal(a, b) for a, b in zip(p0, p1))
        return {"model": "gpt2_check", "method": "bit-identity", "reference_deterministic": deterministic,
                "bit_identical": same, "unconstrained_peak": peak0, "budget_bytes": budget,
                "peak_reserved": peak1, "fits": peak1 <= budget, "evictions": stats["evictions"],
                "faults": stats["faults"], "prefetches": stats["prefetches"], "losses": l1,
                "ok": deterministic and same and peak1 <= budget and stats["evictions"] > 0}
    finally:
        torch.use_deterministic_algorithms(False)


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
