"""One call on a GPU machine: a chosen list of bench cases, a log, results.jsonl and a short table.

    python benchmarks/gpu_round.py --cases llama-1b:plain,llama-1b:deepum:0.5,llama-1b:ckpt \
        --time-budget 500 [--old-src /path/to/other/src] [--warmup 3 --steps 3]

A case is MODEL:METHOD[:FRACTION]; FRACTION (of the model's unconstrained
peak) is for deepum, lru and identity (default for identity: a third of its
own plain peak), or ``ckpt``: the peak the model's ``ckpt`` case
of this round reached (list MODEL:ckpt before it), for issue 12's target of
no slower than checkpointing within its memory. Each case runs in its own process through the
bench's case machinery (``deepum.benchsuite.case.run_case``); the plain case
of each model runs first whether listed or not, since fractions need its
peak. With ``--old-src DIR`` every deepum and lru case runs a second time
with the engine imported from DIR (another commit's src/), the harness still
this tree's, labelled "old" in the table; ``--pairs K`` runs each such case K
times in each tree, interleaved (new, old, old, new, ...), and prints the
median of each tree's step medians and their ratio last (step times of one
engine move by 15-40% between processes on the lent machines, so one
process of each is a weak comparison). A case is skipped once starting it
would overrun ``--time-budget`` seconds (judged by the slowest case so far).
Output goes to $OUT (default ./out): results.jsonl, round.log.
``DEEPUM_BENCH_ADAMW=foreach`` (or ``single``) in the environment builds
every case's AdamW that way, plain cases too (default: fused on CUDA);
each row's ``adamw`` says which.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
PAGED = ("deepum", "lru")
OPTIONED = PAGED + ("identity",)  # the cases that take --option


def _load_harness():
    """This tree's bench harness as a package of its own, so the engine may come from elsewhere."""
    path = os.path.join(SRC, "deepum", "benchsuite")
    spec = importlib.util.spec_from_file_location("benchsuite", os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    module = importlib.util.module_from_spec(spec)
    sys.modules["benchsuite"] = module
    spec.loader.exec_module(module)
    from benchsuite.case import run_case  # noqa: PLC0415  (loaded just above)

    return run_case


def child(argv: list[str]) -> int:
    """A case in this process: one JSON line."""
    import torch

    model, method, budget, device, warmup, steps, options = argv
    run_case = _load_harness()
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", 0)
    opts = json.loads(options) or {}
    th = {k[3:]: v for k, v in opts.items() if k.startswith("th.")}
    if th:
        from deepum.core.config import Thresholds  # noqa: PLC0415  (the engine of this child's PYTHONPATH)

        opts = {k: v for k, v in opts.items() if not k.startswith("th.")} | {"thresholds": Thresholds(**th)}
    row = run_case(model, method, int(budget) if budget != "-" else None, dev, int(steps), int(warmup),
                   options=opts or None)
    print(json.dumps(row), flush=True)
    return 0


def run_child(args, model: str, method: str, budget: int | None, src: str, log) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", model, method,
           str(budget) if budget is not None else "-", args.device, str(args.warmup), str(args.steps),
           json.dumps(args.session_options if src != args.old_src and method in OPTIONED else {})]
    env = {**os.environ, "PYTHONPATH": src}
    t0 = time.time()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=args.case_timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"model": model, "method": method, "error": f"timed out after {args.case_timeout} s"}
    log.write(f"=== {model} {method} {budget} src={src} rc={r.returncode} {time.time() - t0:.1f}s\n")
    log.write(r.stdout[-4000:] + r.stderr[-8000:] + "\n")
    log.flush()
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    err = [ln for ln in r.stderr.strip().splitlines() if ln.strip()] or [f"exit code {r.returncode}"]
    named = [ln for ln in err if "Error" in ln or "error:" in ln]
    return {"model": model, "method": method, "error": (named or err)[-1][:300]}


def _options(items: list[str]) -> dict:
    """NAME=VALUE strings as session options (true/false and numbers converted); ``th.NAME``
    names a field of the session's Thresholds."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        low = value.lower()
        out[name] = True if low == "true" else False if low == "false" else _number(value)
    return out


def _number(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


CKPT = "ckpt"  # a budget: the peak of the model's checkpointing case in this round


def parse_cases(spec: str) -> list[tuple[str, str, float | str | None]]:
    out = []
    for item in spec.split(","):
        parts = item.strip().split(":")
        if len(parts) not in (2, 3):
            raise SystemExit(f"gpu_round: case {item!r}: write MODEL:METHOD or MODEL:METHOD:FRACTION")
        frac = (parts[2] if parts[2] == CKPT else float(parts[2])) if len(parts) == 3 else None
        if parts[1] in PAGED and frac is None:
            raise SystemExit(f"gpu_round: case {item!r}: {parts[1]} needs a budget fraction (e.g. :0.5)")
        out.append((parts[0], parts[1], frac))
    return out


def plan(cases, old_src: str | None, pairs: int = 1,
         plain_known: bool = False) -> list[tuple[str, str, float | None, str]]:
    """Cases in run order with their source label: each model's plain first.

    With ``old_src``, a paged case runs ``pairs`` times in each tree, new and
    old in the order new, old, old, new, new, old, ...: drift on the machine
    during the round then touches both alike.
    """
    out = []
    for model in dict.fromkeys(m for m, _, _ in cases):
        if not plain_known:
            out.append((model, "plain", None, "new"))
        for m, method, frac in cases:
            if m != model or method == "plain":
                continue
            if not (old_src and method in PAGED):
                out.append((model, method, frac, "new"))
                continue
            for k in range(pairs):
                for label in (("new", "old") if k % 2 == 0 else ("old", "new")):
                    out.append((model, method, frac, label))
    return out


def paired_summary(rows: list[dict]) -> str:
    """Per paged case run in both trees: the median of each tree's step medians, and new / old."""
    runs: dict[tuple, dict[str, list[float]]] = {}
    for r in rows:
        if "median_s" in r and r["method"] in PAGED:
            runs.setdefault((r["model"], r["method"], r.get("fraction")), {}).setdefault(r["src"], []).append(
                r["median_s"])
    lines = []
    for (model, method, frac), by in runs.items():
        if "new" in by and "old" in by:
            new, old = statistics.median(by["new"]), statistics.median(by["old"])
            lines.append(f"paired {model} {method} {frac}: new {new * 1e3:.1f} ms ({len(by['new'])} runs), "
                         f"old {old * 1e3:.1f} ms ({len(by['old'])} runs), new/old {new / old:.3f}")
    return "\n".join(lines)


def _cell(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, (int, float)) else "-"


def short_table(rows: list[dict]) -> str:
    """model, method, budget, ms/step, x plain, peak GiB, planned share, drops/step, bytes copied/step."""
    plain = {r["model"]: r["median_s"] for r in rows if r["method"] == "plain" and "median_s" in r}
    lines = [f"{'src':4} {'model':14} {'method':15} {'budget':7} {'ms/step':>9} {'x plain':>7} {'peak GiB':>8} "
             f"{'planned':>7} {'drops/st':>8} {'GB in+out/st':>12} {'regions':>7} {'select':>6} {'ops/st':>7}"]
    for r in rows:
        frac = r.get("fraction")
        budget = "-" if frac is None else frac if frac == CKPT else f"{frac:.3g}"
        head = f"{r.get('src', 'new'):4} {r['model']:14} {r['method']:15} {budget:7}"
        if "bit_identical" in r:
            lines.append(f"{head} bit-identical {r['bit_identical']}, fits {r.get('fits')}, regions "
                         f"{r.get('regions')}, evictions {r.get('evictions')}, ok {r.get('ok')}")
            continue
        if "median_s" not in r:
            lines.append(f"{head} {r.get('skipped') or r.get('error', '?')}"[:160])
            continue
        base = plain.get(r["model"])
        peak = r.get("peak_device_bytes")
        moved = (r["step_bytes_to_device"] + r["step_bytes_to_host"]) / 1e9 if "step_bytes_to_device" in r else None
        lines.append(f"{head} {r['median_s'] * 1e3:9.1f} {_cell(r['median_s'] / base if base else None, '7.2f')} "
                     f"{_cell(peak / 2**30 if peak else None, '8.2f')} {_cell(r.get('planned_share'), '7.0%')} "
                     f"{_cell(r.get('step_drops'), '8.0f')} {_cell(moved, '12.2f')} "
                     f"{_cell(r.get('regions'), '7d')} {_cell(r.get('regions_selective'), '6d')} "
                     f"{_cell(r.get('step_ops'), '7.0f')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", required=True, help="MODEL:METHOD[:FRACTION], comma-separated")
    p.add_argument("--time-budget", type=float, default=500, help="seconds for the whole round")
    p.add_argument("--old-src", default=None, help="another copy of src/ whose engine the paged cases also run")
    p.add_argument("--device", default="cuda")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--case-timeout", type=int, default=300)
    p.add_argument("--pairs", type=int, default=1,
                   help="with --old-src, run each paged case this many times in each tree, interleaved")
    p.add_argument("--plain-peak", type=int, default=None,
                   help="the models' unconstrained peak in bytes, known from an earlier round: plain does not run")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a session option for this tree's paged and identity cases (e.g. victims=age, or th.region_target=0.9 "
                        "for a threshold); repeatable")
    args = p.parse_args(argv)
    args.session_options = _options(args.option)
    if args.old_src and not os.path.isdir(os.path.join(args.old_src, "deepum")):
        raise SystemExit(f"gpu_round: --old-src {args.old_src}: no deepum package there; give the src/ folder")
    out = os.environ.get("OUT") or "out"
    os.makedirs(out, exist_ok=True)
    rows = run_round(args, parse_cases(args.cases), out)
    print(short_table(rows), flush=True)
    if args.old_src and args.pairs > 1:
        print(paired_summary(rows), flush=True)
    return 0


def run_round(args, cases, out: str) -> list[dict]:
    """Run the planned cases within the time budget, appending each row to $OUT/results.jsonl."""
    start, slowest, rows = time.time(), 0.0, []
    known = getattr(args, "plain_peak", None)
    peaks: dict[tuple[str, str], int] = {}  # (model, "plain" or "ckpt") -> the peak that case reached
    with open(os.path.join(out, "results.jsonl"), "a") as results, open(os.path.join(out, "round.log"), "a") as log:
        for model, method, frac, label in plan(cases, args.old_src, getattr(args, "pairs", 1),
                                           bool(known)):
            row = {"model": model, "method": method, "fraction": frac, "src": label}
            base = (model, CKPT if frac == CKPT else "plain")
            if time.time() - start + slowest > args.time_budget:
                row["skipped"] = f"time budget of {args.time_budget:.0f} s would be exceeded"
            elif frac is not None and base not in peaks and not (known and base[1] == "plain"):
                row["skipped"] = ("no checkpointing peak: list MODEL:ckpt before this case" if frac == CKPT
                                  else "no unconstrained peak to scale")
            else:
                peak = peaks.get(base, known)
                budget = None if frac is None else peak if frac == CKPT else int(peak * frac)
                t0 = time.time()
                src = args.old_src if label == "old" else SRC
                row.update(run_child(args, model, method, budget, src, log), fraction=frac, src=label)
                slowest = max(slowest, time.time() - t0)
                if method in ("plain", CKPT) and row.get("peak_device_bytes"):
                    peaks[model, method] = row["peak_device_bytes"]
            rows.append(row)
            results.write(json.dumps(row) + "\n")
            results.flush()
            print(short_table([r for r in rows if r["model"] == model]).splitlines()[-1], flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
