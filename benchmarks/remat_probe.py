"""One GPU call: plain and deepum steps of several model families, each case its own process.

    python benchmarks/remat_probe.py --models gpt2-medium,llama-1b,vit-l16 --fractions 0.5 \
        [--old-src DIR] [--time-budget 540] [--out $OUT]

Every step feeds a fresh host batch (pinned, copied with non_blocking=True),
as real loops do. The plain case of a model runs first; its peak reserved
bytes set the budgets (fractions of it) of the deepum cases. ``--old-src``
adds deepum cases run with another copy of deepum's src/ on PYTHONPATH
(another commit), labelled "old". A table is printed last; rows go to
``probe.jsonl`` under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

STAT_KEYS = ("faults", "prefetches", "prefetch_hits", "late_prefetches", "drops", "recomputes",
             "bytes_to_device", "bytes_to_host", "bytes_dropped", "recompute_seconds",
             "lineage_released", "evictions", "stall_seconds")


def build(name: str):
    """(model, make_batch(step) -> (inputs dict or tensor, labels), task) on the current CUDA device."""
    import torch

    g = torch.Generator().manual_seed(1)
    if name in ("gpt2-medium", "llama-1b", "tiny-llama", "tiny-gpt2"):
        if name.endswith("gpt2") or name == "gpt2-medium":
            from transformers import GPT2Config, GPT2LMHeadModel

            big = name == "gpt2-medium"
            cfg = GPT2Config(n_layer=24 if big else 2, n_embd=1024 if big else 64, n_head=16 if big else 4,
                             vocab_size=50304 if big else 256, n_positions=1024 if big else 64,
                             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa")
            model, vocab, batch, seq = GPT2LMHeadModel(cfg), cfg.vocab_size, (16 if big else 4), cfg.n_positions
        else:
            from transformers import LlamaConfig, LlamaForCausalLM

            big = name == "llama-1b"
            cfg = LlamaConfig(hidden_size=2048 if big else 64, intermediate_size=5632 if big else 176,
                              num_hidden_layers=16 if big else 2, num_attention_heads=16 if big else 4,
                              num_key_value_heads=4 if big else 2, vocab_size=32000 if big else 256,
                              max_position_embeddings=2048 if big else 64, attn_implementation="sdpa")
            model, vocab, batch, seq = LlamaForCausalLM(cfg), cfg.vocab_size, (4 if big else 2), (2048 if big else 64)

        def make(i):
            x = torch.randint(0, vocab, (batch, seq), generator=g)
            return x, x
        return model, make, "lm"
    if name in ("vit-l16", "tiny-vit"):
        import timm

        big = name == "vit-l16"
        model = timm.create_model("vit_large_patch16_224" if big else "vit_tiny_patch16_224",
                                  num_classes=1000)
        batch = 128 if big else 4

        def make(i):
            return torch.randn(batch, 3, 224, 224, generator=g), torch.randint(0, 1000, (batch,), generator=g)
        return model, make, "image"
    raise SystemExit(f"unknown model {name}")


def case(name: str, budget: int | None, steps: int, warmup: int) -> dict:
    import torch

    dev = torch.device("cuda", 0)
    torch.manual_seed(0)
    with torch.device(dev):
        model, make, task = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    session = None
    if budget is not None:
        import deepum

        session = deepum.oversubscribe(budget, dev)
        session.__enter__()
    row = {"model": name, "budget_bytes": budget, "card": torch.cuda.get_device_name(dev),
           "torch": torch.__version__}
    try:
        times, before = [], {}
        for i in range(warmup + steps):
            if i == warmup and session is not None:
                before = session.stats()
            x, y = make(i)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            x = x.pin_memory().to(dev, non_blocking=True)
            y = y.pin_memory().to(dev, non_blocking=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                if task == "lm":
                    loss = model(input_ids=x, labels=y).loss
                else:
                    loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            row.setdefault("losses", []).append(float(loss))
        row["peak_reserved"] = torch.cuda.max_memory_reserved(dev)
        if session is not None:
            end = session.stats()
            for k in STAT_KEYS:
                if k in end:
                    row[k] = (end[k] - before.get(k, 0)) / steps
            row["prediction_accuracy"] = end.get("prediction_accuracy")
            row["peak_device_bytes"] = end.get("peak_device_bytes")
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    row.update(times_s=times, median_s=statistics.median(times))
    return row


def child(args, name, budget, src=None) -> dict:
    cmd = [sys.executable, __file__, "--child", name, "--budget", str(budget or 0),
           "--steps", str(args.steps), "--warmup", str(args.warmup)]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.case_timeout)
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("{"):
            return json.loads(line)
    return {"model": name, "budget_bytes": budget, "failed": (p.stderr or p.stdout)[-1500:]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="gpt2-medium,llama-1b,vit-l16")
    ap.add_argument("--fractions", default="0.5")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--old-src", default=None)
    ap.add_argument("--new-src", default=None)
    ap.add_argument("--time-budget", type=float, default=540)
    ap.add_argument("--case-timeout", type=float, default=240)
    ap.add_argument("--out", default=os.environ.get("OUT", "out"))
    ap.add_argument("--child", default=None)
    ap.add_argument("--budget", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(case(args.child, args.budget or None, args.steps, args.warmup)), flush=True)
        return
    os.makedirs(args.out, exist_ok=True)
    start, rows = time.time(), []
    out = open(os.path.join(args.out, "probe.jsonl"), "a")

    def emit(row, label):
        row["label"] = label
        rows.append(row)
        out.write(json.dumps(row) + "\n")
        out.flush()
        print(f"{row['model']:12s} {label:10s} {row.get('median_s', 0) * 1e3:8.1f} ms "
              f"{'FAILED ' + row['failed'][-300:] if 'failed' in row else ''}", flush=True)

    for name in args.models.split(","):
        plain = child(args, name, None)
        emit(plain, "plain")
        if "failed" in plain:
            continue
        for f in (float(x) for x in args.fractions.split(",")):
            for label, src in (("deepum", args.new_src), ("old", args.old_src)):
                if label == "old" and not src:
                    continue
                if time.time() - start > args.time_budget:
                    print("time budget spent: remaining cases skipped", flush=True)
                    break
                emit(child(args, name, int(plain["peak_reserved"] * f), src), f"{label}@{f:g}")
    print("\nmodel        case        ms/step   x plain  peak GiB  drops  recomp  rec_s   GB in  GB out GB drop faults prefetch late")
    base = {r["model"]: r.get("median_s") for r in rows if r["label"] == "plain"}
    for r in rows:
        if "failed" in r:
            continue
        ms = r["median_s"] * 1e3
        print(f"{r['model']:12s} {r['label']:10s} {ms:8.1f} {ms / 1e3 / base[r['model']]:7.2f}x "
              f"{r['peak_reserved'] / 2**30:8.1f} {r.get('drops', 0):6.0f} {r.get('recomputes', 0):6.0f} "
              f"{r.get('recompute_seconds', 0):6.3f} {r.get('bytes_to_device', 0) / 1e9:6.1f} "
              f"{r.get('bytes_to_host', 0) / 1e9:6.1f} {r.get('bytes_dropped', 0) / 1e9:6.1f} "
              f"{r.get('faults', 0):6.0f} {r.get('prefetches', 0):6.0f} {r.get('late_prefetches', 0):5.0f}")


if __name__ == "__main__":
    main()
