"""Host instructions per intercepted operator, counted by valgrind: a measure no other job moves.

    python benchmarks/instructions_cpu.py [SRC ...]

Times per operator on this project's shared CPU machine move by a third
between runs, and counts of Python calls (per_op_cpu.py, host_cost_cpu.py)
weigh a dict look-up like a tensor's construction. This counts the
instructions the host executes (valgrind's callgrind, ``Collected``), with
string hashing fixed (``PYTHONHASHSEED=0``) and the garbage collector off
(its passes fall at different operators from run to run; what it costs is
measured apart, by the bench's ``step_gc_s``). Counts still differ by a few
per cent between runs of one tree (docs/BENCHMARKS.md, session 19). Each case runs twice in a
fresh interpreter, with a small and a large number of operators; the
difference over the extra operators is the cost of one, start-up (torch's
import, the model) taken out. Cases, for each SRC (a copy of deepum's src/,
default this tree's):

- ``plain``: per_op_cpu.py's loop (additions of two 16-float tensors) with
  no session, the floor;
- ``full``: the same loop (additions of two 16-float tensors) in a
  session under pressure with nothing evicted: the full path;
- ``planned``: host_cost_cpu.py's tiny GPT-2 at 1/2 of its peak with
  ``plan=True``, eight warm-up steps, then planned steps; per operator of a
  step (views included).

Each run takes one to ten minutes under valgrind (the planned case the longest); runs
go two at a time, about 35 minutes for two trees on this project's machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import gc
import sys
sys.path.insert(0, {src!r}); sys.path.insert(1, {here!r})
import torch
import deepum
torch.set_num_threads(1)
case, n = {case!r}, {n}
gc.disable()  # its passes fall at different operators from run to run (see the docstring)
if case == "plain":
    x, y = torch.randn(16), torch.randn(16)
    for _ in range(200 + n):
        torch.add(x, y)
elif case == "full":
    x, y = torch.randn(16), torch.randn(16)
    with deepum.oversubscribe(1 << 33, "cpu", dormant=False) as s:
        s.pager._pressure_begins()
        for _ in range(200):
            torch.add(x, y)
        for _ in range(n):
            torch.add(x, y)
else:
    from cpu_gpt2 import gpt2_step
    def make():
        return gpt2_step(n_embd=64, vocab=512, seq=32, batch=2)
    with deepum.oversubscribe(1.0, "cpu", dormant=False) as s:
        step = make()
        for i in range(3):
            step(i)
        peak = s.stats()["peak_managed_bytes"]
    with deepum.oversubscribe(int(peak * 0.5), "cpu", plan=True) as s:
        step = make()
        for i in range(8):
            step(i)
        before = s.stats()
        for i in range(8, 8 + n):
            step(i)
        after = s.stats()
        ops = (after["ops"] + after.get("views", 0) - before["ops"] - before.get("views", 0)) / n
        assert after["planned_steps"] - before["planned_steps"] == n, "a step left the plan"
        print("OPS", ops)
"""

SIZES = {"plain": (200, 2200), "full": (200, 2200), "planned": (1, 3)}


def run(src: str, case: str, n: int) -> tuple[int, float | None]:
    """(instructions, operators a step or None) of one child under callgrind."""
    with tempfile.TemporaryDirectory() as d:
        script = os.path.join(d, "child.py")
        with open(script, "w") as f:
            f.write(CHILD.format(src=src, here=HERE, case=case, n=n))
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.out", sys.executable, script]
        r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or found is None:
        raise SystemExit(f"instructions_cpu: {src} {case} {n} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    ops = re.search(r"OPS ([\d.]+)", r.stdout)
    return int(found.group(1)), float(ops.group(1)) if ops else None


def main(srcs: list[str]) -> None:
    srcs = [os.path.abspath(s) for s in srcs] or [os.path.join(os.path.dirname(HERE), "src")]
    jobs = [(src, case, n) for src in srcs for case, ns in SIZES.items() for n in ns]
    with ThreadPoolExecutor(2) as pool:
        results = dict(zip(jobs, pool.map(lambda job: run(*job), jobs)))
    for src in srcs:
        for case, (small, large) in SIZES.items():
            (lo, _), (hi, ops) = results[src, case, small], results[src, case, large]
            extra = (large - small) * (ops if ops else 1)
            unit = "operator of a planned step" if ops else "operator"
            print(f"{src}: {case:8s} {(hi - lo) / extra:10.0f} instructions per {unit}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
