"""Where a paged step's host time goes in steady state, by samples, with nothing timed inside.

    python benchmarks/pyspy_steady.py MODEL FRACTION ['{session options}'] [WARMUP] [STEPS] [RATE]

Trains the bench's MODEL (step_anatomy.py's ``prepare``: a fresh host batch
each step, bf16 autocast, AdamW) in a session at FRACTION of its peak for
WARMUP steps (default 15: the plan is recorded, made and tried), then starts
``py-spy record --native --threads`` on this process and runs STEPS more
(default 6), so the profile holds the planned steps alone: no recording, no
planning, no pool growth, and no timers of the engine's functions (unlike
host_split.py, whose clocks are themselves samples). Prints the step times
and counters, then ``pyspy_split.py``'s shares, then the shares of the caching
allocator's virtual-memory calls (expandable segments' maps and unmaps) and
of a few engine functions more. (The garbage collector runs inside whichever
call allocated and has no frame of its own: ab_inprocess.py counts it.)
Writes pyspy-MODEL-FRACTION.raw.gz and the printout under $OUT. Needs py-spy
on the PATH (benchmarks/bench_wheels.sh).

py-spy stops the whole process for each native sample: at RATE 100 a planned
ResNet-152 step ran tens of times slower (docs/BENCHMARKS.md, session 17), so
the default is 10, and the profiled steps' times say how far the profile
slowed them. The shares are of that slowed process: time the
host would have spent waiting for the device shrinks in them.
"""

from __future__ import annotations

import collections
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

from pyspy_split import WATCHED, samples
from step_anatomy import OUT, prepare

import deepum
from deepum.core.config import Thresholds

KEYS = ("evictions", "drops", "recomputes", "prefetches", "faults", "planned_steps")
# Frames whose inclusive share is printed besides pyspy_split's.
MORE = ("cuMemMap", "cuMemUnmap", "cuMemCreate", "cuMemRelease", "cuMemSetAccess", "cudaLaunchKernel",
        "cudaMemcpyAsync", "cuEventRecord", "cuEventQuery", "HostPool.take", "Lifecycle.register",
        "StepPlans._execute", "StepPlans.after", "Remat.record", "Registration._register_outputs")


def shares(path: str) -> list[str]:
    inclusive, total = collections.Counter(), 0
    for names, n in samples(path):
        total += n
        for name in set(names):
            inclusive[name] += n
    out = [f"{total} samples in the timed steps"]
    for name in (*WATCHED, *MORE):
        hits = sum(n for frame, n in inclusive.items() if frame == name or frame.startswith(name + "_"))
        out.append(f"{hits / max(total, 1):6.1%}  {name}")
    return out


def main() -> None:
    model, fraction = sys.argv[1], float(sys.argv[2])
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    warmup = int(sys.argv[4]) if len(sys.argv) > 4 else 15
    steps = int(sys.argv[5]) if len(sys.argv) > 5 else 6
    rate = sys.argv[6] if len(sys.argv) > 6 else "10"
    if "thresholds" in options:
        options["thresholds"] = Thresholds(**options["thresholds"])
    spy = shutil.which("py-spy")
    if spy is None:
        sys.exit("py-spy is not on the PATH (benchmarks/bench_wheels.sh carries it)")
    device, sync, work, step, peak = prepare(model)
    raw = os.path.join(OUT, f"pyspy-{model}-{fraction}.raw")
    lines = [f"{model} at {fraction} of its peak ({peak / 2**30:.2f} GiB), options {sys.argv[3:4]}, "
             f"{warmup} warm-up steps, {steps} profiled"]
    with deepum.oversubscribe(int(peak * fraction), device, **options) as session:
        for i in range(warmup):
            step(work.host_batch(i))
        sync()
        before = session.stats()
        batches = [work.host_batch(warmup + i) for i in range(steps)]  # made before the profile
        proc = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--native", "--threads", "-r", rate,
                                 "--format", "raw", "-o", raw], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(2.0)  # py-spy attaches
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            step(batch)
            sync()
            times.append(time.perf_counter() - t0)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=120)[1].decode(errors="replace")
        after = session.stats()
    lines.append("step ms: " + " ".join(f"{t * 1e3:.0f}" for t in times))
    lines.append("a step: " + ", ".join(f"{k} {(after[k] - before[k]) / steps:.1f}" for k in KEYS if k in after))
    if not os.path.exists(raw):
        lines.append("py-spy wrote nothing: " + err[-500:])
    else:
        lines += shares(raw)
        with open(raw, "rb") as f, gzip.open(raw + ".gz", "wb") as g:
            shutil.copyfileobj(f, g)
        os.remove(raw)
    text = "\n".join(lines)
    print(text)
    with open(os.path.join(OUT, f"pyspy-{model}-{fraction}.txt"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
