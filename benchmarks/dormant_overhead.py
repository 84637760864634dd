"""What a budget the program never reaches costs: plain, deepum (dormant), deepum (dormant=False).

    python benchmarks/dormant_overhead.py --device cpu [--threads 1] [--cases generate,cnn]
    python benchmarks/dormant_overhead.py --device cuda --cases generate --rounds 3

Cases, each timed in this process after one unreported run, plain first
and last (drift shows as the two plain figures differing):

- ``generate``: an HF GPT-2 from its config (no download) generating greedily
  with its KV cache; on the cpu a small one, on CUDA GPT-2 medium in bf16.
- ``cnn``: training steps of a CNN of many short operators (a small ResNet-like
  stack with BatchNorm), SGD.
- ``resnet``: the bench's ResNet-152 B128 step on CUDA (bf16 autocast, fused
  AdamW, channels_last, pinned host batches); a ResNet-18 on the cpu.

The budget is 95% of the card (cuda) or half the host memory (cpu), so nothing is
ever evicted. The output of every variant is checked bit-identical to
plain's. Prints one row per (case, variant) and writes rows to
$OUT/dormant_overhead.jsonl when OUT is set.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn as nn

import deepum


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_case(device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    if device.type == "cuda":
        cfg = GPT2Config(n_layer=24, n_embd=1024, n_head=16)
        batch, prompt, new, dtype = 8, 128, 64, torch.bfloat16
    else:
        cfg = GPT2Config(n_layer=4, n_embd=256, n_head=4, vocab_size=8192)
        batch, prompt, new, dtype = 2, 32, 32, torch.float32
    model = GPT2LMHeadModel(cfg).to(device=device, dtype=dtype).eval()
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt), generator=torch.Generator().manual_seed(1))
    ids = ids.to(device)

    def run():
        with torch.no_grad():
            return model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                  pad_token_id=0)

    return run, 3


class _Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.a = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(c)
        self.b = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn_b(self.b(torch.relu(self.bn_a(self.a(x))))))


def cnn_case(device: torch.device):
    # cuDNN's default algorithms may differ from run to run: the check needs the same bits.
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    c, blocks, batch, size = (64, 16, 64, 32) if device.type == "cuda" else (16, 12, 8, 16)
    model = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), *[_Block(c) for _ in range(blocks)],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, 3, size, size, generator=gen) for _ in range(4)]
    ys = [torch.randint(0, 10, (batch,), generator=gen) for _ in range(4)]
    state = {"i": 0}

    def run():
        i = state["i"] % 4
        state["i"] += 1
        loss = nn.functional.cross_entropy(model(xs[i].to(device)), ys[i].to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.detach()

    return run, 10


class _Bottleneck(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c // 4, 1, bias=False), nn.BatchNorm2d(c // 4), nn.ReLU(),
                                  nn.Conv2d(c // 4, c // 4, 3, padding=1, bias=False), nn.BatchNorm2d(c // 4),
                                  nn.ReLU(), nn.Conv2d(c // 4, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


def _small_bottleneck_net():
    """ResNet-152's shape of module tree, small: the cpu stand-in where torchvision is missing."""
    stages = [nn.Sequential(*[_Bottleneck(64) for _ in range(n)]) for n in (3, 8, 36, 3)]
    return nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                         *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1000))


def resnet_case(device: torch.device):
    """The bench's ResNet-152 step (B128 on CUDA, bf16 autocast, fused AdamW); on the cpu a
    50-block bottleneck net of the same depth, B4 at 16x16."""
    from deepum.benchsuite.models import adamw

    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    if cuda:
        import torchvision

        model = torchvision.models.resnet152().to(device)
    else:
        model = _small_bottleneck_net().to(device)
    model = model.to(memory_format=torch.channels_last)
    opt = adamw(model, device)
    batch, size = (128, 224) if cuda else (4, 16)
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(batch, 3, size, size, generator=gen) for _ in range(2)]
    ys = [torch.randint(0, 1000, (batch,), generator=gen) for _ in range(2)]
    if cuda:
        xs = [x.pin_memory() for x in xs]
        ys = [y.pin_memory() for y in ys]
    state = {"i": 0}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    def run():
        i = state["i"] % 2
        state["i"] += 1
        x = xs[i].to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with amp:
            loss = nn.functional.cross_entropy(model(x), ys[i].to(device, non_blocking=True))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return run, 6


CASES = {"generate": generate_case, "cnn": cnn_case, "resnet": resnet_case}


def timed(run, reps, device, warm=3):
    for _ in range(warm):
        run()
    _sync(device)
    t0 = time.perf_counter()
    outs = []
    for _ in range(reps):
        outs.append(run())
    _sync(device)
    return (time.perf_counter() - t0) / reps, outs


VARIANTS = [("plain", None), ("dormant", {}), ("paged", {"dormant": False}),
            ("dormant-noexp", {"expandable_segments": False}), ("plain-again", None)]


def interleaved(name: str, device: torch.device, budget, rounds: int, variants=VARIANTS) -> list[dict]:
    """Best time of each variant over ``rounds`` rounds that alternate them on one case
    (drift on the machine then touches every variant alike; no identity check)."""
    run, reps = CASES[name](device)
    best = {}
    for _ in range(rounds):
        for variant, options in [v for v in variants if v[0] != "plain-again"][:3]:
            if options is None:
                secs, _ = timed(run, reps, device)
            else:
                with deepum.oversubscribe(budget, device, **options):
                    secs, _ = timed(run, reps, device)
            best[variant] = min(best.get(variant, secs), secs)
    return [{"case": name, "variant": f"{v} (best of {rounds})", "device": str(device), "seconds": t,
             "x_plain": t / best["plain"], "ops": None, "paging_seconds": None, "identical": None,
             "torch": torch.__version__, "threads": torch.get_num_threads(),
             "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
            for v, t in best.items()]


def one_case(name: str, device: torch.device, budget, variants=VARIANTS) -> list[dict]:
    rows = []
    results = {}
    timed(*CASES[name](device), device)  # unreported: the first run of a case pays for warming up
    for variant, options in variants:
        run, reps = CASES[name](device)  # the same seeds: every variant starts from the same state
        if options is None:
            secs, outs = timed(run, reps, device)
            stats = {}
        else:
            with deepum.oversubscribe(budget, device, **options) as s:
                secs, outs = timed(run, reps, device)
            stats = s.stats()
        results[variant] = outs
        rows.append({"case": name, "variant": variant, "device": str(device), "seconds": secs,
                     "ops": stats.get("ops"), "evictions": stats.get("evictions"),
                     "paging_seconds": stats.get("paging_seconds"), "paging_stops": stats.get("paging_stops"),
                     "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"})
    for row in rows:
        row["identical"] = all(torch.equal(a, b) for a, b in zip(results["plain"], results[row["variant"]]))
    base = rows[0]["seconds"]
    for row in rows:
        row["x_plain"] = row["seconds"] / base
    return rows


def profile_dormant(name: str, device: torch.device, budget) -> None:
    """cProfile of plain then dormant runs of one case, top 30 by own time each, to $OUT or stdout."""
    import cProfile
    import io
    import pstats

    run, reps = CASES[name](device)
    text = io.StringIO()
    for variant, options in (("plain", None), ("dormant", {})):
        timed(run, reps, device)
        prof = cProfile.Profile()
        if options is None:
            prof.enable()
            timed(run, reps, device, warm=0)
            prof.disable()
        else:
            with deepum.oversubscribe(budget, device, **options):
                timed(run, reps, device)
                prof.enable()
                timed(run, reps, device, warm=0)
                prof.disable()
        text.write(f"==== {name} {variant}, {reps} runs\n")
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(30)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, f"profile-{name}.txt"), "w") as f:
            f.write(text.getvalue())
    else:
        print(text.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--cases", default="generate,cnn")
    ap.add_argument("--threads", type=int, default=1, help="cpu threads (cpu device only)")
    ap.add_argument("--profile", action="store_true",
                    help="also cProfile the dormant variant of each case; top functions to $OUT/profile-CASE.txt")
    ap.add_argument("--rounds", type=int, default=0,
                    help="then time plain, dormant and paged alternately this many rounds, best of each")
    ap.add_argument("--variants", default=",".join(v for v, _ in VARIANTS),
                    help="which of the variants to run (plain first); leaving out paged keeps a slow case short")
    args = ap.parse_args()
    chosen = [v for v in VARIANTS if v[0] in args.variants.split(",")]
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    budget = 0.95 if device.type == "cuda" else 0.5
    rows = []
    for name in args.cases.split(","):
        rows += one_case(name, device, budget, chosen)
        if args.rounds:
            rows += interleaved(name, device, budget, args.rounds, chosen)
        if args.profile:
            profile_dormant(name, device, budget)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "dormant_overhead.jsonl"), "a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print(f"{'case':10} {'variant':20} {'ms':>9} {'x plain':>8} {'ops':>8} {'paging s':>9} identical")
    for r in rows:
        ops = "-" if r["ops"] is None else r["ops"]
        ps = "-" if r["paging_seconds"] is None else f"{r['paging_seconds']:.2f}"
        print(f"{r['case']:10} {r['variant']:20} {r['seconds'] * 1e3:9.1f} {r['x_plain']:8.3f} {ops:>8} "
              f"{ps:>9} {r['identical']}")


if __name__ == "__main__":
    main()
