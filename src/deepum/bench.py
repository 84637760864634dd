"""``deepum bench``: deepum side by side with what users pick today.

Each (model, method, budget) case runs in a child process of its own, so the
allocator, the pinned-memory cache and CUDA state start clean every time. The
parent first measures the host link (CUDA), runs the unconstrained case and
takes its peak, turns budget fractions into bytes, then runs the rest, and
writes ``results.jsonl``, ``results.md`` and ``throughput.png`` into the
output folder.

    deepum bench --model gpt2-medium --budgets card,0.5,0.333 --out out/   # on a GPU
    deepum bench --model gpt-2b,gpt-4b,gpt-6b --budgets 24GiB --out out/   # the model-dominated ladder
    deepum bench --model gpt2-check --methods identity --out out/          # bit-identity on the GPU
    deepum bench --device cpu --model tiny-mlp --steps 2 --out out/        # the harness on CPU

Budgets: a fraction of the unconstrained peak, ``card`` (the whole card:
nothing to page, the engine's overhead alone), or an absolute size such as
``24GiB``; an absolute budget also decides "fits" for the methods deepum does
not bound, and makes the summary name the largest model each method trained.

Methods: ``plain`` (unconstrained), ``deepum`` and ``lru`` (the two
policies), ``ckpt`` (the model's activation checkpointing), ``save_on_cpu``
(``torch.autograd.graph.save_on_cpu(pin_memory=True)``; pinned only on
CUDA), DeepSpeed ``zero2-offload`` (ZeRO-2, optimizer offloaded to the CPU),
``zero3-offload`` (ZeRO-3, parameters and optimizer offloaded) and
``zero3-offload-ckpt`` (the same with activation checkpointing), torchao's
``torchao-offload`` (``CPUOffloadOptimizer``), and ``identity``: the model
trained plainly twice and under deepum at a third of its peak with
deterministic algorithms, losses and parameters compared bit for bit.
DeepSpeed and torchao are optional (``benchmarks/bench_wheels.sh`` carries
them to a machine without an index); a method that cannot run is reported as
skipped with the reason. DeepSpeed trains in its own bf16 mode with its own
CPU AdamW instead of autocast and fused AdamW; the table says so.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

METHODS = ("plain", "deepum", "lru", "ckpt", "save_on_cpu", "zero2-offload", "zero3-offload",
           "zero3-offload-ckpt", "torchao-offload", "identity")
DEFAULT_METHODS = "plain,deepum,lru,ckpt,save_on_cpu,zero2-offload,zero3-offload,zero3-offload-ckpt"
PAGED = ("deepum", "lru")
DEEPSPEED = ("zero2-offload", "zero3-offload", "zero3-offload-ckpt")


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
    "gpt2-check": (lambda: _hf_gpt2(12, 768, 12, 50304, 512, 8, attn="eager"),
                   "HF GPT-2, 12 layers, d=768, eager attention, batch 8 x 512 (the CUDA bit-identity check)"),
    "gpt2-medium": (lambda: _hf_gpt2(24, 1024, 16, 50304, 1024, 16), "HF GPT-2 medium, batch 16 x 1024"),
    "bert-large": (lambda: _hf_bert(24, 1024, 16, 30522, 512, 32), "HF BERT-large MLM, batch 32 x 512"),
    "wide-gpt": (lambda: _hf_gpt2(4, 4096, 32, 50304, 2048, 4), "HF GPT-2, 4 layers, d=4096, batch 4 x 2048"),
    "resnet152": (lambda: _resnet(128), "torchvision ResNet-152, batch 128, channels_last"),
    # The model-dominated ladder: parameters, gradients and AdamW states
    # (16 bytes a parameter in fp32) are most of the footprint.
    "gpt-2b": (lambda: _hf_gpt2(8, 4096, 32, 50304, 1024, 4), "HF GPT-2, 8 layers, d=4096, 1.8B parameters, batch 4 x 1024"),
    "gpt-4b": (lambda: _hf_gpt2(18, 4096, 32, 50304, 1024, 4), "HF GPT-2, 18 layers, d=4096, 3.8B parameters, batch 4 x 1024"),
    "gpt-6b": (lambda: _hf_gpt2(28, 4096, 32, 50304, 1024, 4), "HF GPT-2, 28 layers, d=4096, 5.9B parameters, batch 4 x 1024"),
}


class Workload:
    """A model, its batches and its loss, independent of how it is trained."""

    def __init__(self, name: str, device: torch.device, model_device: torch.device | None = None,
                 make_model=None) -> None:
        torch.manual_seed(0)
        build = make_model or (lambda: MODELS[name][0]())
        if model_device is not None and model_device.type == "cuda":
            with torch.device(model_device):  # initialised on the GPU: seconds, not minutes
                self.model, (task, classes, batch, seq) = build()
        else:
            self.model, (task, classes, batch, seq) = build()
            if model_device is not None:
                self.model = self.model.to(model_device)
        if task == "image" and model_device is not None:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.task, self.batch, self.device = task, batch, device
        g = torch.Generator(device=device).manual_seed(1)
        self.labels = None
        if task in ("lm", "mlm"):
            self.data = [torch.randint(0, classes, (batch, seq), device=device, generator=g) for _ in range(2)]
        elif task == "image":
            self.data = [torch.randn(batch, 3, seq, seq, device=device, generator=g)
                         .to(memory_format=torch.channels_last) for _ in range(2)]
            self.labels = [torch.randint(0, classes, (batch,), device=device, generator=g) for _ in range(2)]
        else:
            self.data = [torch.randn(batch, classes, device=device, generator=g) for _ in range(2)]
            self.labels = [torch.randint(0, 10, (batch,), device=device, generator=g) for _ in range(2)]

    def loss(self, i: int, model=None):
        model = model or self.model
        x = self.data[i % 2]
        if self.task == "lm":
            return model(input_ids=x, labels=x).loss
        if self.task == "mlm":
            labels = x.clone()
            labels[:, ::2] = -100
            return model(input_ids=x, labels=labels).loss
        return torch.nn.functional.cross_entropy(model(x), self.labels[i % 2])


def standard_step(work: Workload, opt: torch.optim.Optimizer, wrap=None, mark=None):
    """One step as users write it: bf16 autocast on CUDA, backward, optimizer step.

    ``mark(phase)``, if given, is called as each phase ends (on the CPU: the
    GPU may still be working on it).
    """
    amp = torch.autocast(work.device.type, dtype=torch.bfloat16, enabled=work.device.type == "cuda")

    def step(i):
        with amp:
            if wrap is None:
                loss = work.loss(i)
            else:
                with wrap():
                    loss = work.loss(i)
        if mark:
            mark("forward")
        loss.backward()
        if mark:
            mark("backward")
        opt.step()
        opt.zero_grad(set_to_none=True)
        if mark:
            mark("optimizer")
        return loss.detach()

    return step


def adamw(model, device: torch.device):
    fused = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused, foreach=not fused)


# ------------------------------------------------------------------ DeepSpeed

class _Skip(Exception):
    """A method this model cannot do; the row says why."""


def _deepspeed_step(name: str, method: str, device: torch.device):
    """A DeepSpeed engine for ``method`` and its step; raises ImportError without DeepSpeed."""
    import socket

    import deepspeed

    with socket.socket() as s:  # a free port for the one-process group
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", str(port))):
        os.environ.setdefault(k, v)
    deepspeed.init_distributed(dist_backend="nccl", verbose=False)
    note = "DeepSpeed bf16 and its CPU AdamW"
    offload = {"device": "cpu", "pin_memory": True}
    zero = {"stage": 2, "offload_optimizer": offload}
    if method.startswith("zero3"):
        zero = {"stage": 3, "offload_optimizer": offload, "offload_param": offload}
    config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
              "bf16": {"enabled": True}, "zero_optimization": zero,
              "optimizer": {"type": "AdamW", "params": {"lr": 1e-4, "weight_decay": 0.01}},
              "steps_per_print": 10**9, "wall_clock_breakdown": False}
    if method.startswith("zero3"):
        # Parameters are partitioned (and offloaded) as they are created, so
        # the whole model never sits on the GPU; the batches are made outside,
        # where DeepSpeed's patched tensor constructors do not reach.
        try:
            with deepspeed.zero.Init(config_dict_or_path=config):
                torch.manual_seed(0)
                built = MODELS[name][0]()
            work = Workload(name, device, make_model=lambda: built)
        except IndexError:
            # transformers' BERT initialisation indexes the padding row of a
            # weight that zero.Init has already partitioned to nothing (seen
            # with transformers 5.17, DeepSpeed 0.19.8). Built on the host
            # instead, the model is partitioned by deepspeed.initialize.
            work = Workload(name, device)
            note += "; built outside zero.Init (the model's own initialisation fails under it)"
    else:
        work = Workload(name, device)  # built on the host; the engine moves it in bf16
    config["train_micro_batch_size_per_gpu"] = work.batch
    if method.endswith("-ckpt"):
        if not hasattr(work.model, "gradient_checkpointing_enable"):
            raise _Skip("the model has no activation-checkpointing switch")
        work.model.gradient_checkpointing_enable()
    engine, _, _, _ = deepspeed.initialize(model=work.model, model_parameters=work.model.parameters(),
                                           config=config)

    if work.task == "image":  # no autocast under DeepSpeed's bf16: the inputs must match the weights
        work.data = [x.to(torch.bfloat16) for x in work.data]

    def step(i):
        loss = work.loss(i, engine)
        engine.backward(loss)
        engine.step()
        return loss.detach()

    return step, work.batch, note


# ------------------------------------------------------------------ one case

class _PhaseBytes:
    """Bytes the pager moved each way in each phase of the step (forward, backward, optimizer).

    Counted when a copy is issued, so a prefetch issued late in the forward
    for the backward counts in the forward.
    """

    def __init__(self, pager) -> None:
        self.pager = pager
        self.reset()

    def reset(self) -> None:
        self.bytes: dict[str, list[int]] = {}
        self._last = self._now()

    def _now(self) -> tuple[int, int]:
        pr = self.pager.progress()
        return pr.bytes_to_device, pr.bytes_to_host

    def __call__(self, phase: str) -> None:
        now = self._now()
        acc = self.bytes.setdefault(phase, [0, 0])
        acc[0] += now[0] - self._last[0]
        acc[1] += now[1] - self._last[1]
        self._last = now


class _GcClock:
    """Time the garbage collector spends, per generation (a per-operator engine makes garbage)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = None
        self.on = False  # counting starts after the warm-up

    def __call__(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.seconds[info["generation"]] += time.perf_counter() - self._t0
            self.count[info["generation"]] += 1
            self._t0 = None

    def __enter__(self) -> _GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def link_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> dict:
    """Pinned host<->device copy rates in GB/s: median of 5 copies of 1 GiB each way."""
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    out = {}
    for name, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
        dst.copy_(src, non_blocking=True)
        _sync(device)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            _sync(device)
            times.append(time.perf_counter() - t0)
        out[f"{name}_GBps"] = nbytes / statistics.median(times) / 1e9
    return out


def identity_check(name: str, device: torch.device, steps: int) -> dict:
    """Plain twice (is the reference itself deterministic?) and deepum at a third of the peak."""
    import deepum

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)

    def train(budget=None):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        session = deepum.oversubscribe(budget or 1.0, device) if budget or device.type == "cpu" else None
        if session:
            session.__enter__()
        try:
            work = Workload(name, device, device)
            step = standard_step(work, adamw(work.model, device))
            losses = [step(i).item() for i in range(steps)]
        finally:
            if session:
                session.__exit__(None, None, None)
        stats = session.stats() if session else {}  # taken before the exit's restore
        peak = stats["peak_device_bytes"] if session else torch.cuda.max_memory_reserved(device)
        params = [p.detach().cpu() for p in work.model.parameters()]
        return losses, params, stats, peak

    l0, p0, _, peak0 = train()
    l0b, p0b, _, _ = train()
    deterministic = l0 == l0b and all(torch.equal(a, b) for a, b in zip(p0, p0b))
    budget = peak0 // 3
    l1, p1, stats, peak1 = train(budget)
    same = l0 == l1 and all(torch.equal(a, b) for a, b in zip(p0, p1))
    return {"reference_deterministic": deterministic, "bit_identical": same, "unconstrained_peak": peak0,
            "budget_bytes": budget, "peak_device_bytes": peak1, "fits": peak1 <= budget,
            "evictions": stats["evictions"], "faults": stats["faults"], "prefetches": stats["prefetches"],
            "drops": stats["drops"], "recomputes": stats["recomputes"],
            "losses": l1, "ok": deterministic and same and peak1 <= budget and stats["evictions"] > 0}


def run_case(model: str, method: str, budget: int | None, device: torch.device,
             steps: int, warmup: int, fits_budget: int | None = None, options: dict | None = None) -> dict:
    """Run one case in this process and return its row."""
    import psutil

    import deepum
    from deepum.engine.energy import Energy

    row = {"model": model, "method": method, "budget_bytes": budget, "device": str(device),
           "torch": torch.__version__, "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d")}
    if method == "identity":
        row.update(identity_check(model, device, steps))
        return row
    if method == "link":
        row.update(link_bandwidth(device), card_bytes=torch.cuda.get_device_properties(device).total_memory)
        return row
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    session = None
    if method in PAGED or (method == "plain" and device.type == "cpu"):
        # On the cpu device the engine's own count is the memory measure, so
        # the plain case runs under a budget that never binds. The model is
        # built inside the session, as a user whose model does not fit would.
        session = deepum.oversubscribe(budget or 1.0, device, policy="lru" if method == "lru" else "deepum",
                                       **(options or {}))
        session.__enter__()
    phases = None
    try:
        if method in DEEPSPEED:
            if device.type != "cuda":
                row["skipped"] = "DeepSpeed's offload needs CUDA"
                return row
            try:
                step, batch, row["note"] = _deepspeed_step(model, method, device)
            except ImportError as e:
                row["skipped"] = f"DeepSpeed is not installed ({e})"
                return row
            except _Skip as e:
                row["skipped"] = str(e)
                return row
        else:
            work = Workload(model, device, device)
            batch, wrap, opt = work.batch, None, None
            if method in ("ckpt",):
                if not hasattr(work.model, "gradient_checkpointing_enable"):
                    row["skipped"] = "the model has no activation-checkpointing switch"
                    return row
                work.model.gradient_checkpointing_enable()
            if method == "save_on_cpu":
                def wrap():
                    return torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda")
            if method == "torchao-offload":
                try:
                    from torchao.optim import CPUOffloadOptimizer
                except ImportError as e:
                    row["skipped"] = f"torchao is not installed ({e})"
                    return row
                opt = CPUOffloadOptimizer(work.model.parameters(), torch.optim.AdamW, lr=1e-4,
                                          fused=True)
                row["note"] = "optimizer states and step on the CPU"
            phases = _PhaseBytes(session.pager) if method in PAGED else None
            step = standard_step(work, opt or adamw(work.model, device), wrap, phases)
        energy = Energy.open(device)  # the same counter deepum's stats use
        times, before = [], {}
        proc = psutil.Process()
        host_peak = proc.memory_info().rss
        with _GcClock() as gc_clock:
            for i in range(warmup + steps):
                if i == warmup:
                    before = session.stats() if session else {}
                    joules0 = energy.joules() if energy else None
                    gc_clock.on = True
                    if phases:
                        phases.reset()
                _sync(device)
                t0 = time.perf_counter()
                step(i)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - t0)
                host_peak = max(host_peak, proc.memory_info().rss)
        row["step_gc_s"] = sum(gc_clock.seconds) / steps
        row["step_full_gcs"] = gc_clock.count[2] / steps
        end = session.stats() if session else {}
        if energy:
            row["joules_per_step"] = (energy.joules() - joules0) / steps
        # Read before the session's exit brings every page back to the device.
        peak = (torch.cuda.max_memory_reserved(device) if device.type == "cuda" else end.get("peak_device_bytes"))
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    row.update(times_s=times, median_s=statistics.median(times), min_s=min(times), max_s=max(times),
               samples_per_s=batch / statistics.median(times), peak_device_bytes=peak, peak_host_bytes=host_peak)
    if method in PAGED:
        for k in ("bytes_to_device", "bytes_to_host", "faults", "prefetches", "prefetch_hits", "late_prefetches",
                  "wasted_prefetches", "evictions", "stall_seconds", "drops", "recomputes"):
            row[f"step_{k}"] = (end[k] - before.get(k, 0)) / steps
        row["prediction_accuracy"] = end["prediction_accuracy"]
        if phases:
            row["step_phase_bytes"] = {k: [b / steps for b in v] for k, v in phases.bytes.items()}
    bound = budget if budget is not None else fits_budget
    if bound is not None and peak is not None:  # no measure (a method deepum does not run on cpu): no verdict
        row["fits"] = peak <= bound
    return row


# ------------------------------------------------------------------ the suite

def _child(args, model, method, budget, fits_budget=None) -> dict:
    cmd = [sys.executable, "-m", "deepum", "bench", "--case", "--model", model, "--methods", method,
           "--device", args.device, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    if budget is not None:
        cmd += ["--budget-bytes", str(budget)]
    if fits_budget is not None:
        cmd += ["--fits-bytes", str(fits_budget)]
    for opt in args.option:
        cmd += ["--option", opt]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"model": model, "method": method, "budget_bytes": budget, "error": f"timed out after {args.timeout} s"}
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()] or [f"exit code {r.returncode}, no output"]
    # The line that names the exception, not a C++ frame or a warning after it.
    named = [ln for ln in err if "Error" in ln or "error:" in ln or "what()" in ln or "Aborted" in ln]
    return {"model": model, "method": method, "budget_bytes": budget, "exit_code": r.returncode,
            "error": (named or err)[-1][:300], "stderr_tail": err[-60:]}


def _options(items: list[str]) -> dict:
    """--option NAME=VALUE pairs as keyword arguments: true/false, integers, or text."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        low = value.lower()
        out[name] = (low == "true") if low in ("true", "false") else int(value) if value.isdigit() else value
    return out


def _budgets(spec: str, peak: int | None, card: int | None) -> list[tuple[str, int | None]]:
    """(label, bytes) for each entry of --budgets: a fraction of the peak, 'card', or a size."""
    from .core.budget import parse_budget

    out = []
    for item in spec.split(","):
        item = item.strip()
        if item == "card":
            out.append(("card", int(card * 0.95) if card else None))
        elif item.replace(".", "", 1).isdigit() and float(item) <= 1.0:
            out.append((f"{float(item):.3g} peak", int(peak * float(item)) if peak else None))
        else:
            out.append((item, parse_budget(item, 1 << 62)))
    return out


def _floor(row: dict, plain_s: float | None, link: dict | None) -> None:
    """The physical floor of a paged case: compute, or the bytes it moved over the measured link."""
    if not (link and plain_s and "step_bytes_to_device" in row and "median_s" in row):
        return
    h2d, d2h = link["h2d_GBps"] * 1e9, link["d2h_GBps"] * 1e9
    row["link_floor_s"] = max(plain_s, row["step_bytes_to_device"] / h2d, row["step_bytes_to_host"] / d2h)
    row["x_floor"] = row["median_s"] / row["link_floor_s"]
    phases = row.get("step_phase_bytes")
    if phases:
        # The two directions overlap only within a phase: the forward's
        # evictions cannot overlap the backward's faults.
        row["phase_floor_s"] = max(plain_s, sum(max(i / h2d, o / d2h) for i, o in phases.values()))
        row["x_phase_floor"] = row["median_s"] / row["phase_floor_s"]


def table(rows: list[dict]) -> str:
    out = ["| model | method | budget | ms/step (median, min-max) | x plain | x floor (phase) | samples/s | "
           "peak device GiB | fits | peak host GiB | GB in/out per step | hits / late / faults | J/step | note |",
           "|" + "---|" * 14]
    plain = {r["model"]: r.get("median_s") for r in rows if r["method"] == "plain" and "median_s" in r}
    for r in rows:
        if r["method"] == "link":
            out.append(f"| - | link | - | host to device {r['h2d_GBps']:.1f} GB/s, device to host "
                       f"{r['d2h_GBps']:.1f} GB/s (pinned, 1 GiB) |" + " |" * 10)
            continue
        b = r.get("budget_label") or (f"{r['budget_bytes'] / 2**30:.2f} GiB" if r.get("budget_bytes") else "-")
        if r["method"] == "identity" and "ok" in r:
            out.append(f"| {r['model']} | identity | {r['budget_bytes'] / 2**30:.2f} GiB | "
                       f"bit-identical {r['bit_identical']}, reference deterministic "
                       f"{r['reference_deterministic']} | - | - | - | {r['peak_device_bytes'] / 2**30:.2f} | "
                       f"{'yes' if r['fits'] else 'no'} | - | - | {r['faults']} faults, {r['evictions']} evictions "
                       f"| - | {'ok' if r['ok'] else 'FAILED'} |")
            continue
        if "median_s" not in r:
            out.append(f"| {r['model']} | {r['method']} | {b} | - | - | - | - | - | - | - | - | - | - | "
                       f"{r.get('skipped') or r.get('error', '')} |")
            continue
        base = plain.get(r["model"])
        x = f"{r['median_s'] / base:.2f}" if base else "-"
        xf = f"{r['x_floor']:.2f}" if "x_floor" in r else "-"
        if "x_phase_floor" in r:
            xf += f" ({r['x_phase_floor']:.2f})"
        moved = (f"{r['step_bytes_to_device'] / 1e9:.2f} / {r['step_bytes_to_host'] / 1e9:.2f}"
                 if "step_bytes_to_device" in r else "-")
        hits = (f"{r['step_prefetch_hits']:.0f} / {r['step_late_prefetches']:.0f} / {r['step_faults']:.0f}"
                if "step_prefetch_hits" in r else "-")
        peak = f"{r['peak_device_bytes'] / 2**30:.2f}" if r.get("peak_device_bytes") else "-"
        joules = f"{r['joules_per_step']:.0f}" if r.get("joules_per_step") else "-"
        fits = {True: "yes", False: "no"}.get(r.get("fits"), "-")
        out.append(f"| {r['model']} | {r['method']} | {b} | {r['median_s'] * 1e3:.0f} "
                   f"({r['min_s'] * 1e3:.0f}-{r['max_s'] * 1e3:.0f}) | {x} | {xf} | {r['samples_per_s']:.1f} | "
                   f"{peak} | {fits} | {r['peak_host_bytes'] / 2**30:.2f} | {moved} | {hits} | {joules} | "
                   f"{r.get('note', '')} |")
    return "\n".join(out)


def largest(rows: list[dict], order: list[str]) -> dict[str, str | None]:
    """For a ladder of models: the largest each method trained within its budget."""
    best: dict[str, str | None] = {}
    for r in rows:
        if r["method"] in ("link", "identity"):
            continue
        best.setdefault(r["method"], None)
        if "median_s" in r and r.get("fits") and (best[r["method"]] is None or
                                                  order.index(r["model"]) > order.index(best[r["method"]])):
            best[r["method"]] = r["model"]
    return best


def plot(rows: list[dict], path: str) -> None:
    """Throughput relative to unconstrained against budget, one line per method; cases that do not fit are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows if r["method"] not in ("link", "identity")})
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model and "median_s" in r]
        base = next((r for r in mine if r["method"] == "plain"), None)
        if base is None:
            continue
        for method in METHODS:
            # A budgeted case sits at its budget, any other (and the whole-card
            # case, whose budget is not a constraint) at its own peak.
            def x(r):
                return r.get("peak_device_bytes") if r.get("budget_label") == "card" else (
                    r.get("budget_bytes") or r.get("peak_device_bytes"))

            pts = sorted((x(r), base["median_s"] / r["median_s"])
                         for r in mine if r["method"] == method and r.get("fits", True) and x(r))
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


def suite(args, model: str, methods: list[str], link: dict | None, card: int | None,
          emit, given_up: set[str]) -> None:
    """Every requested case of one model, the unconstrained reference first.

    ``given_up`` holds the methods that failed or did not fit an earlier,
    smaller model of a ladder: they are not tried again on a larger one.
    """
    if "identity" in methods:
        emit(_child(args, model, "identity", None))
        methods = [m for m in methods if m != "identity"]
    if not methods:
        return
    absolute = [b for label, b in _budgets(args.budgets, 1, card) if "peak" not in label and label != "card"]
    fits_budget = min(absolute) if absolute else None

    def case(method, budget=None, label=None, plain=None):
        if method in given_up:
            row = {"model": model, "method": method, "budget_label": label,
                   "skipped": "failed or did not fit a smaller model"}
        else:
            row = _child(args, model, method, budget, None if budget else fits_budget)
            if label:
                row["budget_label"] = label
            _floor(row, plain and plain.get("median_s"), link)
            if fits_budget is not None and ("error" in row or row.get("fits") is False):
                given_up.add(method)
        emit(row)
        return row

    # The reference is needed to scale fractions; with sizes only it runs when asked for.
    fractions = any("peak" in label for label, _ in _budgets(args.budgets, 1, card))
    plain = case("plain") if "plain" in methods or fractions else {}
    budgets = _budgets(args.budgets, plain.get("peak_device_bytes"), card)
    for method in [m for m in methods if m != "plain"]:
        if method in PAGED:
            for label, budget in budgets:
                if method == "lru" and label == "card":
                    continue  # nothing to page: the same engine as deepum's whole-card case
                if budget is None:
                    emit({"model": model, "method": method, "budget_label": label,
                          "error": "no unconstrained peak to scale" if "peak" in label else "no card size"})
                    continue
                case(method, budget, label, plain)
        else:
            case(method)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepum bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-medium",
                   help="one or several, comma-separated: " + ", ".join(f"{k} ({v[1]})" for k, v in MODELS.items()))
    p.add_argument("--methods", default=DEFAULT_METHODS, help="any of " + ", ".join(METHODS))
    p.add_argument("--budgets", default="0.5,0.333",
                   help="fractions of the unconstrained peak, 'card', or sizes such as 24GiB")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--out", default="bench-out")
    p.add_argument("--timeout", type=int, default=900, help="seconds per case")
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget-bytes", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fits-bytes", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a session option for the deepum and lru cases (e.g. recompute=false, "
                        "expandable_segments=false, lookahead=16); repeatable")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    if args.case:  # a child: one case, one JSON line
        row = run_case(args.model, args.methods, args.budget_bytes, device, args.steps, args.warmup,
                       args.fits_bytes, _options(args.option))
        if args.option:
            row["options"] = args.option
        print(json.dumps(row), flush=True)
        return 0
    methods = args.methods.split(",")
    models = args.model.split(",")
    unknown = (set(methods) - set(METHODS)) | {f"model {m}" for m in models if m not in MODELS}
    if unknown:
        p.error(f"unknown: {', '.join(sorted(unknown))}")
    try:
        _budgets(args.budgets, 1, 1)
    except ValueError as e:
        p.error(f"--budgets: {e}")
    os.makedirs(args.out, exist_ok=True)
    rows, link, card = [], None, None
    results = open(os.path.join(args.out, "results.jsonl"), "a")

    def emit(row):  # written as it comes, so a run cut short keeps what it measured
        rows.append(row)
        results.write(json.dumps(row) + "\n")
        results.flush()
        print(json.dumps(row), flush=True)

    with results:
        if device.type == "cuda":
            # Measured in a child: CUDA in this process would hold a context
            # (and memory) on the card for the whole suite.
            emit(_child(args, "-", "link", None))
            link = rows[-1] if "h2d_GBps" in rows[-1] else None
            card = link and link["card_bytes"]
        given_up: set[str] = set()
        for model in models:
            suite(args, model, methods, link, card, emit, given_up)
    md = table(rows)
    if len(models) > 1:
        md += "\n\nLargest model trained within the budget: " + "; ".join(
            f"{m}: {b or 'none'}" for m, b in largest(rows, models).items()) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(args.out, "throughput.png"))
    print(md)
    # Peers may fail (that is a finding); deepum's own cases and the reference may not.
    failed = [r for r in rows if (r["method"] == "identity" and not r.get("ok"))
              or ("error" in r and r["method"] in ("link",) + PAGED)]
    return 1 if failed else 0
