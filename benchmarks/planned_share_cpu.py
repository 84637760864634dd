"""Share of page-ins planned (prefetched or rebuilt) from the fourth step on, every tiny bench model, cpu tier.

    python benchmarks/planned_share_cpu.py [FRACTION] [MODEL ...]

Each model (default: all seven tiny bench models) runs plain for its peak,
then at FRACTION (default 0.5) of it with ``plan=True`` and with the online
choice (``plan=False``): four warm-up steps, then three counted ones, as
``deepum bench`` counts them (benchsuite/case.py). Issue 12's target is at
least 90% on every bench model; tests/test_bench.py asserts it with two
counted steps.
"""

import sys

import torch

from deepum.benchsuite import case

MODELS = ("tiny-gpt2", "tiny-llama", "tiny-t5", "tiny-bert", "tiny-cnn", "tiny-vit", "tiny-mlp")


def main() -> None:
    fraction = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    torch.set_num_threads(1)
    cpu = torch.device("cpu")
    for name in sys.argv[2:] or MODELS:
        plain = case.run_case(name, "plain", None, cpu, steps=1, warmup=0)
        for plan in (True, False):
            row = case.run_case(name, "deepum", int(plain["peak_device_bytes"] * fraction), cpu, steps=3,
                                warmup=4, options={"plan": plan})
            share = row["planned_share"]
            print(f"{name:11s} {'planned' if plan else 'online':8s} share "
                  f"{'-' if share is None else f'{share:.3f}'}, faults {row['step_faults']:.1f}, "
                  f"prefetches {row['step_prefetches']:.1f}, rebuilds {row['step_recomputes']:.1f}, "
                  f"evictions {row['step_evictions']:.1f} a step, fits {row['fits']}", flush=True)


if __name__ == "__main__":
    main()
