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

Every case feeds a fresh batch each step, made on the host from a generator
seeded with the step (pinned for CUDA) and copied in with
``non_blocking=True``, as a training loop over a DataLoader does.

Methods: ``plain`` (unconstrained), ``deepum`` and ``lru`` (the two
policies), ``ckpt`` (the model's activation checkpointing: HF
``gradient_checkpointing_enable``, timm's ``set_grad_checkpointing``, or
``torch.utils.checkpoint`` around each torchvision block), ``compile``
(``torch.compile``), ``compile-budget`` (the same with
``torch._functorch.config.activation_memory_budget = 0.5``), ``save_on_cpu``
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
import json
import os
import subprocess
import sys

import torch

from .benchsuite.case import DEEPSPEED, PAGED, identity_check, link_bandwidth, run_case  # noqa: F401  (the bench's API)
from .benchsuite.models import MODELS, HostBatches, Workload, adamw, standard_step  # noqa: F401
from .benchsuite.report import plot, progress, size, table  # noqa: F401

METHODS = ("plain", "deepum", "lru", "ckpt", "compile", "compile-budget", "save_on_cpu", "zero2-offload",
           "zero3-offload", "zero3-offload-ckpt", "torchao-offload", "identity")
DEFAULT_METHODS = ("plain,deepum,lru,ckpt,compile,compile-budget,save_on_cpu,zero2-offload,zero3-offload,"
                   "zero3-offload-ckpt")


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
    # The child imports the same deepum as this process, whatever an installed copy says.
    src = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deepum bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-medium",
                   help="one or several, comma-separated: " + ", ".join(f"{k} ({v[1]})" for k, v in MODELS.items()))
    p.add_argument("--methods", default=DEFAULT_METHODS, help="any of " + ", ".join(METHODS))
    p.add_argument("--budgets", default="0.5,0.333",
                   help="fractions of the unconstrained peak, 'card', or sizes such as 24GiB")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed steps first; a paged case warms up longer (20 steps at most) while "
                        "plan='auto' is still timing its plan against the online choice")
    p.add_argument("--out", default="bench-out")
    p.add_argument("--timeout", type=int, default=900, help="seconds per case")
    p.add_argument("--case", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--budget-bytes", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--fits-bytes", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a session option for the deepum and lru cases (e.g. recompute=false, "
                        "expandable_segments=false, lookahead=16); repeatable")
    return p


def device_or_exit(name: str) -> torch.device:
    """The device named, or one line saying why it cannot be used and exit code 2."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        print(f"deepum bench: --device {name}: {e}", file=sys.stderr)
        sys.exit(2)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(f"deepum bench: --device {name}: this machine has no CUDA device "
                  f"(torch {torch.__version__}); use --device cpu", file=sys.stderr)
            sys.exit(2)
        if device.index is None:
            device = torch.device("cuda", 0)
    return device


def main(argv: list[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    device = device_or_exit(args.device)
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
    rows = _run_all(args, device, models, methods)
    md = table(rows)
    if len(models) > 1:
        md += "\n\nLargest model trained within the budget: " + "; ".join(
            f"{m}: {b or 'none'}" for m, b in largest(rows, models).items()) + "\n"
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(md + "\n")
    plot(rows, os.path.join(args.out, "throughput.png"), METHODS)
    print(md)
    # Peers may fail (that is a finding); deepum's own cases and the reference may not.
    failed = [r for r in rows if (r["method"] == "identity" and not r.get("ok"))
              or ("error" in r and r["method"] in ("link",) + PAGED)]
    return 1 if failed else 0


def _run_all(args, device: torch.device, models: list[str], methods: list[str]) -> list[dict]:
    """Every case, each row appended to results.jsonl and announced by one line as it comes."""
    os.makedirs(args.out, exist_ok=True)
    rows, link, card = [], None, None
    results = open(os.path.join(args.out, "results.jsonl"), "a")

    def emit(row):  # written as it comes, so a run cut short keeps what it measured
        rows.append(row)
        results.write(json.dumps(row) + "\n")
        results.flush()
        print(progress(row), flush=True)

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
    return rows
