"""Where in a steady step the device memory peaks: forward, backward (by gradient), optimizer step.

    python benchmarks/step_memory.py MODEL [BUDGET_BYTES] [--warmup 24] [--groups 8]

Builds MODEL's bench step (plain, or deepum at BUDGET_BYTES), runs the
warm-up steps, then reads the allocator's allocated bytes (CUDA only)
through one more step, without resetting its peak (a session's watch reads
that peak): at the step's start, at the end of the forward, at every
parameter's gradient as the backward accumulates it (printed as GROUPS
groups in the order the gradients came, each with its highest reading and
the share of the parameters' bytes done by then), at the backward's end,
and at the optimizer step's start and end. The allocator's peak of the
whole step is printed last. The question it answers (session 27's notes):
is there room at the backward's tail to copy parked optimizer state in
before the step needs it?
"""

from __future__ import annotations

import argparse

import torch
import torch.optim.optimizer as optimizer_hooks

import deepum
from deepum.benchsuite.models import Workload, adamw, standard_step
from deepum.benchsuite.peers import prepare

GB = 1 << 30


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("budget", nargs="?", type=int)
    ap.add_argument("--warmup", type=int, default=24)
    ap.add_argument("--groups", type=int, default=8)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("step_memory.py reads the CUDA allocator: run it on a GPU machine")
    device = torch.device("cuda", 0)
    session = deepum.oversubscribe(args.budget, device) if args.budget else None
    if session is not None:
        session.__enter__()
    work = Workload(args.model, device, device)
    method = "deepum" if session is not None else "plain"
    prep = prepare(method, work, device)
    readings: list[tuple[str, int, int]] = []
    on = [False]

    def read(label: str) -> None:
        # Without a session nothing else reads the allocator's peak, so each
        # reading also takes the peak since the one before.
        if on[0]:
            now = torch.cuda.memory_allocated(device)
            since = now
            if session is None:
                since = torch.cuda.max_memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            readings.append((label, now, since))

    step = standard_step(work, prep.opt or adamw(work.model, device), prep.wrap, read, prep.model)
    params = [p for p in work.model.parameters() if p.requires_grad]
    total = sum(p.nbytes for p in params)
    hooks = [p.register_post_accumulate_grad_hook(lambda p: read(f"grad {p.nbytes}")) for p in params]
    hooks += [optimizer_hooks.register_optimizer_step_pre_hook(lambda *a: read("optimizer begins")),
              optimizer_hooks.register_optimizer_step_post_hook(lambda *a: read("optimizer ends"))]
    for i in range(args.warmup):
        step(work.host_batch(i))
    torch.cuda.synchronize(device)
    if session is None:
        torch.cuda.reset_peak_memory_stats(device)
    on[0] = True
    read("step begins")
    step(work.host_batch(args.warmup))
    torch.cuda.synchronize(device)
    on[0] = False
    for h in hooks:
        h.remove()
    peak = max([torch.cuda.max_memory_allocated(device)] + [s for _, _, s in readings])
    if session is not None:
        stats = session.stats()
        session.__exit__(None, None, None)
        print("dormant", stats.get("dormant"), "regions", stats.get("regions"), "parked", stats.get("parked_bytes"))
    grads = sum(1 for label, *_ in readings if label.startswith("grad"))
    per, done, chunk, peaks = max(-(-grads // max(args.groups, 1)), 1), 0, [], []
    tail = "" if session is None else " (no peaks between readings: the session's watch reads them)"
    print(f"allocated at each reading, and the highest since the reading before{tail}")

    def flush() -> None:
        if chunk:
            print(f"  {len(chunk):4d} gradients: highest {max(chunk) / GB:7.2f} GiB, peak {max(peaks) / GB:7.2f}, "
                  f"{done / total:6.1%} of the parameters' bytes done")
            chunk.clear()
            peaks.clear()

    for label, b, since in readings:  # in the order they came
        if label.startswith("grad"):
            done += int(label.split()[1])
            chunk.append(b)
            peaks.append(since)
            if len(chunk) == per:
                flush()
            continue
        flush()
        print(f"{label:>18}: {b / GB:7.2f} GiB allocated, peak since the reading before {since / GB:7.2f}")
    flush()
    print(f"the allocator's allocated peak over the run: {peak / GB:.2f} GiB")


if __name__ == "__main__":
    main()
