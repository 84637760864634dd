"""What eager recompute can reach at best: PyTorch's checkpointing per block, no deepum.

    python benchmarks/sac_ceiling.py MODEL [MODES] [STEPS]

MODES is a comma-separated list (default ``plain,whole,selective,saveall``):

- ``plain``: no checkpointing;
- ``whole``: every block (``find_blocks``, as deepum's regions choose them)
  under ``torch.utils.checkpoint``;
- ``selective``: every block under selective checkpointing with deepum's
  SELECTIVE policy (``engine/regions.py`` ``_policy``: matmuls, convolutions
  and attention kept);
- ``saveall``: selective checkpointing whose policy keeps every output, so
  nothing is recomputed: the cost of the policy's dispatch mode alone;
- ``fused``: every block whole, with the recompute under ``torch.compile``.

All modes run in one process on one card, each with a fresh model (same
seed) and the bench's step (bf16 autocast on CUDA, fused AdamW, a fresh host
batch each step). Prints ms per step (median of STEPS after warm-up) and the
allocator's peak for each mode, then a short table.
"""

from __future__ import annotations

import functools
import gc
import statistics
import sys
import time

import torch
from torch.utils import checkpoint as ckpt

from deepum.benchsuite.models import Workload, adamw, standard_step
from deepum.engine.regions import _policy, find_blocks


def _wrap(block: torch.nn.Module, mode: str) -> None:
    inner = block.forward
    if mode == "selective":
        def context():
            return ckpt.create_selective_checkpoint_contexts(_policy)
    elif mode == "saveall":
        def context():
            return ckpt.create_selective_checkpoint_contexts(lambda *a, **k: ckpt.CheckpointPolicy.MUST_SAVE)
    else:
        context = ckpt.noop_context_fn
    fn = torch.compile(inner) if mode == "fused" else inner

    @functools.wraps(inner)
    def forward(*args, **kwargs):
        return ckpt.checkpoint(fn, *args, use_reentrant=False, context_fn=context, **kwargs)

    block.forward = forward


def run(model: str, mode: str, steps: int, warmup: int, device: torch.device) -> tuple[float, int, int]:
    cuda = device.type == "cuda"
    work = Workload(model, device, model_device=device)
    cfg = getattr(work.model, "config", None)
    if cfg is not None and hasattr(cfg, "use_cache"):
        cfg.use_cache = False  # a cache would be extended again by each recompute
    blocks = find_blocks(work.model) if mode != "plain" else []
    for b in blocks:
        _wrap(b, mode)
    opt = adamw(work.model, device)
    step = standard_step(work, opt)
    times = []
    for i in range(warmup + steps):
        if i == warmup and cuda:
            torch.cuda.reset_peak_memory_stats(device)
        if cuda:
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        step(work.host_batch(i))
        if cuda:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    del work, opt, step
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return statistics.median(times), peak, len(blocks)


def main() -> None:
    model = sys.argv[1]
    modes = (sys.argv[2] if len(sys.argv) > 2 else "plain,whole,selective,saveall").split(",")
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for mode in modes:
        try:
            s, peak, n = run(model, mode, steps, 5, device)
        except Exception as e:  # one mode failing should not lose the others' rows
            print(f"{model} {mode}: {type(e).__name__}: {e}", flush=True)
            continue
        rows.append((mode, s, peak, n))
        print(f"{model} {mode}: {s * 1e3:.1f} ms, peak {peak / 2**30:.2f} GiB, {n} blocks", flush=True)
    base = next((s for m, s, _, _ in rows if m == "plain"), None)
    print(f"{'model':12s} {'mode':10s} {'ms':>8s} {'x plain':>8s} {'peak GiB':>9s}")
    for mode, s, peak, _ in rows:
        ratio = f"{s / base:.2f}" if base else "-"
        print(f"{model:12s} {mode:10s} {s * 1e3:8.1f} {ratio:>8s} {peak / 2**30:9.2f}")


if __name__ == "__main__":
    main()
