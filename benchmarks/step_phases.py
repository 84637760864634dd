"""A bench case's steady step by phase: GPU time (CUDA events) and host time between phase marks.

    python benchmarks/step_phases.py MODEL BUDGET_BYTES [--warmup 24] [--steps 6] [--method deepum]

Builds MODEL's bench step (as ``deepum bench`` does; BUDGET_BYTES 0 runs it
plain), runs the warm-up, then times STEPS steps with a CUDA event and a host
clock reading at each mark: the step's start, the forward's end, the first
gradient the backward accumulates, the backward's end, the optimizer step's
pre- and post-hooks, and the step's end (after ``zero_grad``). Prints each
phase's median GPU and host milliseconds, and the session's per-step
bytes parked. The question it answers: where in the step the time that
parking and regions add goes (session 28).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.optim.optimizer as optimizer_hooks

import deepum
from deepum.benchsuite.case import _build_step

MARKS = ("start", "forward", "first grad", "backward", "opt pre", "opt post", "end")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("budget", type=int)
    ap.add_argument("--warmup", type=int, default=24)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--method", default="deepum")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_phases.py times CUDA events: run it on a GPU machine")
    device = torch.device("cuda", 0)
    session = deepum.oversubscribe(args.budget, device) if args.budget else None
    if session is not None:
        session.__enter__()
    method = args.method if session is not None else "plain"
    step, work, _, _ = _build_step(args.model, method, device, session)
    on = [False]
    marks: dict[str, tuple[torch.cuda.Event, float]] = {}

    def mark(name: str) -> None:
        if on[0] and name not in marks:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            marks[name] = (ev, time.perf_counter())

    params = [p for p in work.model.parameters() if p.requires_grad]
    hooks = [p.register_post_accumulate_grad_hook(lambda p: mark("first grad")) for p in params]
    hooks += [optimizer_hooks.register_optimizer_step_pre_hook(lambda *a: mark("opt pre")),
              optimizer_hooks.register_optimizer_step_post_hook(lambda *a: mark("opt post"))]
    loss_fn = work.loss

    def loss_marked(batch, model=None):
        loss = loss_fn(batch, model)
        mark("forward")
        return loss

    work.loss = loss_marked
    for i in range(args.warmup):
        step(work.host_batch(i))
    torch.cuda.synchronize(device)
    before = session.stats() if session is not None else {}
    rows = []
    for k in range(args.steps):
        batch = work.host_batch(args.warmup + k)
        torch.cuda.synchronize(device)
        marks.clear()
        on[0] = True
        mark("start")
        step(batch)
        # the backward's end: marked after the step (its mark would need the
        # step's own code); the optimizer's pre-hook follows it directly.
        mark("end")
        on[0] = False
        torch.cuda.synchronize(device)
        got = [m for m in MARKS if m in marks and m != "backward"]
        rows.append({f"{a}->{b}": (marks[a][0].elapsed_time(marks[b][0]), (marks[b][1] - marks[a][1]) * 1e3)
                     for a, b in zip(got, got[1:])})
        rows[-1]["step"] = (marks["start"][0].elapsed_time(marks["end"][0]),
                            (marks["end"][1] - marks["start"][1]) * 1e3)
    for h in hooks:
        h.remove()
    print(f"{args.model} {method} budget {args.budget}: median over {args.steps} steps, GPU ms / host ms")
    for key in rows[0]:
        gpu = statistics.median(r[key][0] for r in rows if key in r)
        host = statistics.median(r[key][1] for r in rows if key in r)
        print(f"  {key:>22}: {gpu:8.2f} {host:8.2f}")
    if session is not None:
        after = session.stats()
        session.__exit__(None, None, None)
        print(f"  parked_bytes a step: {(after['parked_bytes'] - before.get('parked_bytes', 0)) / args.steps:.4g}")
        print("  dormant", after.get("dormant"), "regions", after.get("regions"))


if __name__ == "__main__":
    main()
