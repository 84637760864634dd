"""``deepum bench``: deepum side by side with what users pick today.

Each (model, method, budget) case runs in a child process of its own, so the
allocator, the pinned-memory cache and CUDA state start clean every time. The
parent first runs the unconstrained case, takes its peak, turns budget
fractions into bytes, then runs the rest, and writes ``results.jsonl``,
``results.md`` and ``throughput.png`` into the output folder.

    deepum bench --model gpt2-medium --budgets 0.5,0.333 --out out/   # on a GPU
    deepum bench --device cpu --model tiny-mlp --steps 2 --out out/   # the harness on CPU

Methods: ``plain`` (unconstrained), ``deepum`` and ``lru`` (the two
policies), ``ckpt`` (the model's activation checkpointing), ``save_on_cpu``
(``torch.autograd.graph.save_on_cpu(pin_memory=True)``; pinned only on CUDA).
A method a model cannot do is reported as skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

METHODS = ("plain", "deepum", "lru", "ckpt", "save_on_cpu")


# ------------------------------------------------------------------ models

def _hf_gpt2(layers, d, heads, vocab, seq, batch, attn="sdpa"):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(n_layer=layers, n_embd=d, n_head=heads, vocab_size=vocab, n_positions=seq,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation=attn)
    return GPT2LMHeadModel(cfg), ("lm", vocab, batch, seq)


def _hf_bert(layers, d, heads, vocab, seq, batch):
    from transformers import BertConfig, BertForMaskedLM

    cfg = BertConfig(num_hidden_layers=layers, hidden_size=d, num_attention_heads=heads,
                     intermediate_size=4 * d, vocab_size=vocab, max_position_embeddings=seq,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForMaskedLM(cfg), ("mlm", vocab, batch, seq)


def _mlp():
    from torch import nn

    layers = [nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256)) for _ in range(6)]
    return nn.Sequential(*layers, nn.Linear(256, 10)), ("cls", 256, 64, None)


def _resnet(batch):
    import torchvision

    return torchvision.models.resnet152(), ("image", 1000, batch, 224)


MODELS = {
    # name: (builder, description)
    "tiny-mlp": (_mlp, "MLP, 6 blocks of 256-1024-256, batch 64 (the harness test)"),
    "tiny-gpt2": (lambda: _hf_gpt2(2, 64, 4, 256, 64, 4), "HF GPT-2, 2 layers, d=64, batch 4 x 64"),
    "gpt2-medium": (lambda: _hf_gpt2(24, 1024, 16, 50304, 1024, 16), "HF GPT-2 medium, batch 16 x 1024"),
    "bert-large": (lambda: _hf_bert(24, 1024, 16, 30522, 512, 32), "HF BERT-large MLM, batch 32 x 512"),
    "wide-gpt": (lambda: _hf_gpt2(4, 4096, 32, 50304, 2048, 4), "HF GPT-2, 4 layers, d=4096, batch 4 x 2048"),
    "resnet152": (lambda: _resnet(128), "torchvision ResNet-152, batch 128, channels_last"),
}


def build(name: str, device: torch.device):
    """(model, optimizer, step function) for a named model on ``device``."""
    torch.manual_seed(0)
    model, (task, classes, batch, seq) = MODELS[name][0]()
    model = model.to(device)
    if task == "image":
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator(device=device).manual_seed(1)
    if task in ("lm", "mlm"):
        data = [torch.randint(0, classes, (batch, seq), device=device, generator=g) for _ in range(2)]
    elif task == "image":
        data = [torch.randn(batch, 3, seq, seq, device=device, generator=g).to(memory_format=torch.channels_last)
                for _ in range(2)]
        labels = [torch.randint(0, classes, (batch,), device=device, generator=g) for _ in range(2)]
    else:
        data = [torch.randn(batch, classes, device=device, generator=g) for _ in range(2)]
        labels = [torch.randint(0, 10, (batch,), device=device, generator=g) for _ in range(2)]
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=not fused)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def loss_of(i):
        with amp:
            if task == "lm":
                return model(input_ids=data[i % 2], labels=data[i % 2]).loss
            if task == "mlm":
                labels_ = data[i % 2].clone()
                labels_[:, ::2] = -100
                return model(input_ids=data[i % 2], labels=labels_).loss
            return torch.nn.functional.cross_entropy(model(data[i % 2]), labels[i % 2])

    def step(i, wrap=None):
        if wrap is None:
            loss = loss_of(i)
        else:
            with wrap():
                loss = loss_of(i)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, step, batch


# ------------------------------------------------------------------ one case

def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(model: str, method: str, budget: int | None, device: torch.device,
             steps: int, warmup: int) -> dict:
    """Run one case in this process and return its row."""
    import psutil

    import deepum
    from deepum.pager import _Energy

    row = {"model": model, "method": method, "budget_bytes": budget, "device": str(device),
           "torch": torch.__version__, "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d")}
    net, step, batch = build(model, device)
    wrap = None
    if method == "ckpt":
        if not hasattr(net, "gradient_checkpointing_enable"):
            row["skipped"] = "the model has no activation-checkpointing switch"
            return row
        net.gradient_checkpointing_enable()
    if method == "save_on_cpu":
        def wrap():
            return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    energy = _Energy.open(device)  # the same counter deepum's stats use
    session = None
    if method in ("deepum", "lru") or (method == "plain" and device.type == "cpu"):
        # On the cpu device the engine's own count is the memory measure, so
        # the plain case runs under a budget that never binds.
        session = deepum.oversubscribe(budget or 1.0, device, policy="lru" if method == "lru" else "deepum")
        session.__enter__()
    times, before = [], {}
    proc = psutil.Process()
    host_peak = proc.memory_info().rss
    try:
        for i in range(warmup + steps):
            if i == warmup:
                before = session.stats() if session else {}
                joules0 = energy.joules() if energy else None
            _sync(device)
            t0 = time.perf_counter()
            step(i, wrap)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            host_peak = max(host_peak, proc.memory_info().rss)
        end = session.stats() if session else {}
        if energy:
            row["joules_per_step"] = (energy.joules() - joules0) / steps
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    peak = (torch.cuda.max_memory_reserved(device) if device.type == "cuda" else end.get("peak_device_bytes"))
    row.update(median_s=statistics.median(times), min_s=min(times), max_s=max(times),
               samples_per_s=batch / statistics.median(times), peak_device_bytes=peak, peak_host_bytes=host_peak)
    if method in ("deepum", "lru"):
        for k in ("bytes_to_device", "bytes_to_host", "faults", "prefetch_hits", "late_prefetches", "evictions"):
            row[f"step_{k}"] = (end[k] - before.get(k, 0)) / steps
        row["prediction_accuracy"] = end["prediction_accuracy"]
    if budget is not None:
        row["fits"] = peak is not None and peak <= budget
    return row


# ------------------------------------------------------------------ the suite

def _child(args, model, method, budget) -> dict:
    cmd = [sys.executable, "-m", "deepum", "bench", "--case", "--model", model, "--methods", method,
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if budget is not None:
        cmd += ["--budget-bytes", str(budget)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = (r.stderr.strip().splitlines() or ["no output"])[-1]
    return {"model": model, "method": method, "budget_bytes": budget, "error": err[:300]}


def table(rows: list[dict]) -> str:
    out = ["| model | method | budget | ms/step (median, min-max) | x plain | samples/s | peak device GiB | "
           "fits | peak host GiB | GB in/out per step | J/step | note |", "|" + "---|" * 12]
    plain = {r["model"]: r.get("median_s") for r in rows if r["method"] == "plain" and "median_s" in r}
    for r in rows:
        b = f"{r['budget_bytes'] / 2**30:.2f} GiB" if r.get("budget_bytes") else "-"
        if "median_s" not in r:
            out.append(f"| {r['model']} | {r['method']} | {b} | - | - | - | - | - | - | - | - | "
                       f"{r.get('skipped') or r.get('error', '')} |")
            continue
        base = plain.get(r["model"])
        x = f"{r['median_s'] / base:.2f}" if base else "-"
        moved = (f"{r['step_bytes_to_device'] / 1e9:.2f} / {r['step_bytes_to_host'] / 1e9:.2f}"
                 if "step_bytes_to_device" in r else "-")
        peak = f"{r['peak_device_bytes'] / 2**30:.2f}" if r.get("peak_device_bytes") else "-"
        joules = f"{r['joules_per_step']:.0f}" if r.get("joules_per_step") else "-"
        fits = {True: "yes", False: "no"}.get(r.get("fits"), "-")
        out.append(f"| {r['model']} | {r['method']} | {b} | {r['median_s'] * 1e3:.0f} "
                   f"({r['min_s'] * 1e3:.0f}-{r['max_s'] * 1e3:.0f}) | {x} | {r['samples_per_s']:.1f} | {peak} | "
                   f"{fits} | {r['peak_host_bytes'] / 2**30:.2f} | {moved} | {joules} | |")
    return "\n".join(out)


def plot(rows: list[dict], path: str) -> None:
    """Throughput relative to unconstrained against budget, one line per method; cases that do not fit are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and "median_s" in r]
        base = next((r for r in mine if r["method"] == "plain"), None)
        if base is None:
            continue
        for method in METHODS:
            # A budgeted case sits at its budget, any other at its own peak.
            pts = sorted((r.get("budget_bytes") or r.get("peak_device_bytes"), base["median_s"] / r["median_s"])
                         for r in mine if r["method"] == method and r.get("fits", True)
                         and (r.get("budget_bytes") or r.get("peak_device_bytes")))
            if pts:
                ax.plot([p[0] / 2**30 for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.set_title(model)
        ax.set_xlabel("device memory budget or peak (GiB)")
        ax.set_ylabel("throughput vs unconstrained")
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepum bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-medium", help=", ".join(f"{k} ({v[1]})" for k, v in MODELS.items()))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--budgets", default="0.5,0.333", help="fractions of the unconstrained peak")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="bench-out")
    p.add_argument("--timeout", type=int, default=900, help="seconds per case")
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget-bytes", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if args.case:  # a child: one case, one JSON line
        row = run_case(args.model, args.methods, args.budget_bytes, device, args.steps, args.warmup)
        print(json.dumps(row), flush=True)
        return 0
    methods = args.methods.split(",")
    unknown = set(methods) - set(METHODS)
    if unknown or args.model not in MODELS:
        p.error(f"unknown method(s) {sorted(unknown)} or model {args.model!r}")
    os.makedirs(args.out, exist_ok=True)
    rows = [_child(args, args.model, "plain", None)]
    peak = rows[0].get("peak_device_bytes")
    for method in [m for m in methods if m != "plain"]:
        if method in ("deepum", "lru"):
            if not peak:
                rows.append({"model": args.model, "method": method, "error": "no unconstrained peak to scale"})
                continue
            for frac in [float(f) for f in args.budgets.split(",")]:
                rows.append(_child(args, args.model, method, int(peak * frac)))
        else:
            rows.append(_child(args, args.model, method, None))
    with open(os.path.join(args.out, "results.jsonl"), "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    md = table(rows)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(args.out, "throughput.png"))
    print(md)
    return 0 if all("error" not in r for r in rows) else 1
