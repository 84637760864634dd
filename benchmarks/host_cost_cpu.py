"""Host time per operator of a paged step, on the cpu tier, where compute is negligible.

    python benchmarks/host_cost_cpu.py [SRC]

A GPT-2 of 4 tiny layers (d=64, batch 2 x 32) has operators of a few
microseconds, so its step time is the interception's host time. Prints, per
operator of a step (one thread, median of 6 steps after 4): plain, deepum
with a budget never reached (every operator intercepted, and dormant where
the commit has dormancy), and deepum at 1/2 of the peak with the online
choice and with the planned step; with the counts of events per step. On a
GPU a paged step is bound by this host time (docs/BENCHMARKS.md, sessions 6
and 14). Each row also counts the function calls of one more step per
operator, a measure that other jobs on a shared machine do not move.
SRC puts another copy of deepum's src/ first on the path (another commit).
"""

import statistics
import sys
import time

import torch

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

from cpu_gpt2 import gpt2_step  # noqa: E402

import deepum  # noqa: E402

torch.set_num_threads(1)
KEYS = ("ops", "views", "evictions", "faults", "recomputes", "prefetches", "planned_evictions")


def make():
    return gpt2_step(n_embd=64, vocab=512, seq=32, batch=2)


def timed(step, session=None):
    for i in range(4):
        step(i)
    before = session.stats() if session else {}
    times = []
    for i in range(4, 10):
        t0 = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - t0)
    after = session.stats() if session else {}
    moved = {k: (after[k] - before.get(k, 0)) / 6 for k in KEYS if k in after}
    moved["calls"] = _calls(step, 10)
    return statistics.median(times), moved


def _calls(step, i: int) -> float:
    """Python and C function calls in one more step (a count other jobs on the machine do not move)."""
    count = [0]

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1

    sys.setprofile(profile)
    try:
        step(i)
    finally:
        sys.setprofile(None)
    return count[0]


def _if_known(**option) -> dict:
    """``option`` where the commit under test knows it, else no options (older commits:
    before dormancy every operator was intercepted; before plan="auto" paging was online)."""
    try:
        deepum.Config(**option)
    except (TypeError, AttributeError, getattr(deepum, "OptionError", TypeError)):
        return {}
    return option


def main() -> None:
    plain, plain_moved = timed(make())
    with deepum.oversubscribe(1.0, "cpu", **_if_known(dormant=False)) as s:
        quiet, moved = timed(make(), s)
    ops = moved["ops"] + moved.get("views", 0)  # views are counted apart since 833a17d
    peak = s.stats()["peak_managed_bytes"]
    rows = [("plain", plain, plain_moved), ("deepum, never reached, paging", quiet, moved)]
    if _if_known(dormant=False):
        with deepum.oversubscribe(1.0, "cpu") as s:
            rows.append(("deepum, never reached, dormant", *timed(make(), s)))
    for name, opts in (("deepum 1/2, online", _if_known(plan=False)), ("deepum 1/2, plan", _if_known(plan=True))):
        if name.endswith("plan") and not opts:
            continue  # a commit before the planned step
        with deepum.oversubscribe(int(peak * 0.5), "cpu", **opts) as s:
            rows.append((name, *timed(make(), s)))
    print(f"{deepum.__file__}: {ops:.0f} operators a step")
    for name, t, moved in rows:
        counts = " ".join(f"{k}={v:.0f}" for k, v in moved.items() if k not in ("ops", "views", "calls"))
        print(f"{name:32s} {t * 1e3:8.1f} ms/step {t / ops * 1e6:7.1f} us/op {moved['calls'] / ops:6.1f} calls/op"
              f"  {counts}")


if __name__ == "__main__":
    main()
