"""Does a program whose sequence length changes each step stay within its budget? Many runs.

    python benchmarks/varlen_budget_cpu.py [RUNS]

Runs the training of tests/test_regions.py's variable-length test (a small
GPT-2 at 3/4 of its peak, regions set at 96 tokens, then steps of 64-112)
RUNS times (default 8) and prints each run's overshoots, peak and budget.
Run from the repository root (it imports the tests' models).
"""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.helpers import train  # noqa: E402
from tests.test_regions import _gpt2, _lm, _peak, _tokens  # noqa: E402


def _batches():
    g = torch.Generator().manual_seed(3)
    lengths = [96] * 6 + [112, 64, 104, 80, 112, 96, 72, 112]
    return [torch.randint(1, 128, (8, n), generator=g) for n in lengths]


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    budget = int(_peak(_gpt2, _tokens, _lm) * 0.75)
    for r in range(runs):
        stats = train(_gpt2, _batches, _lm, steps=14, budget=budget)[3]
        print(r, {k: stats.get(k) for k in ("overshoots", "overshoot_max_bytes", "paging_stops", "paging_starts",
                                              "regions", "peak_managed_bytes")}, "budget", budget, flush=True)


if __name__ == "__main__":
    main()
