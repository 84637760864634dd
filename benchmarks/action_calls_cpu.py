"""Function calls per page action of a planned step, on the cpu tier: a count no other job moves.

    python benchmarks/action_calls_cpu.py [FRACTION] [SRC] ['{"thresholds": {"plan_candidates": 1024}}']

Trains the 4-layer tiny GPT-2 of host_cost_cpu.py with plan=True at FRACTION
(default 0.3) of its peak for eight steps, then counts the Python and C
function calls (``sys.setprofile``) of one more step: per operator (views
included), and inside each engine function below, per call of it (inclusive:
what one recipe's recording, one rebuild, one eviction batch costs in calls).
On the GPU a planned step is bound by the host (docs/BENCHMARKS.md, session
16), so fewer calls per action is less host time there. SRC puts another copy
of deepum's src/ first on the path (another commit; "" for this one); the
last argument gives session options (Thresholds as a dict).
"""

import collections
import json
import sys

import torch

if len(sys.argv) > 2 and sys.argv[2]:
    sys.path.insert(0, sys.argv[2])

from cpu_gpt2 import gpt2_step  # noqa: E402

import deepum  # noqa: E402
from deepum.core.config import Thresholds  # noqa: E402

WATCHED = ("record", "rebuild", "run_into", "_register_outputs", "evict", "_execute", "_fetch", "begin", "end",
           "_gather")
KEYS = ("ops", "views", "evictions", "recomputes", "prefetches", "faults", "recipes")


def make():
    return gpt2_step(n_embd=64, vocab=512, seq=32, batch=2)


def main() -> None:
    fraction = float(sys.argv[1]) if len(sys.argv) > 1 else 0.3
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    if "thresholds" in options:
        options["thresholds"] = Thresholds(**options["thresholds"])
    torch.set_num_threads(1)
    step = make()
    with deepum.oversubscribe(1.0, "cpu", dormant=False) as s:
        for i in range(3):
            step(i)
    peak = s.stats()["peak_managed_bytes"]
    step = make()
    inside: collections.Counter = collections.Counter()  # calls made inside each watched function
    entered: collections.Counter = collections.Counter()  # outermost calls of each
    total = [0]

    def profile(frame, event, arg):
        if event not in ("call", "c_call"):
            return
        total[0] += 1
        seen = set()
        f = frame.f_back if event == "call" else frame
        while f is not None:
            name = f.f_code.co_name
            if name in WATCHED and "deepum" in f.f_code.co_filename and name not in seen:
                seen.add(name)
                inside[name] += 1
            f = f.f_back
        if event == "call" and frame.f_code.co_name in WATCHED and "deepum" in frame.f_code.co_filename:
            if frame.f_code.co_name not in seen:
                entered[frame.f_code.co_name] += 1

    with deepum.oversubscribe(int(peak * fraction), "cpu", plan=True, **options) as s:
        for i in range(8):
            step(i)
        before = s.stats()
        sys.setprofile(profile)
        try:
            step(8)
        finally:
            sys.setprofile(None)
        after = s.stats()
    moved = {k: after[k] - before[k] for k in KEYS}
    print(f"{deepum.__file__}: {moved}")
    print(f"calls per operator (views included): {total[0] / (moved['ops'] + moved['views']):.1f}")
    for name in WATCHED:
        if entered[name]:
            print(f"  {name:20s} {entered[name]:6d} calls, {inside[name] / entered[name]:7.1f} calls inside each")


if __name__ == "__main__":
    main()
