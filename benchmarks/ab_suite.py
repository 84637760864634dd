"""Several in-process A/Bs in one device call, each in a process of its own, with a table last.

    python benchmarks/ab_suite.py [--budget SECONDS] [--rounds R] [--warmup W] [--steps S] \
        'MODEL|{A options}|{B options}' ...

Each argument names one A/B of ``ab_inprocess.py`` (MODEL at 1/2 of its
peak, A and B in turns in one process, after one uncounted session). They
run one after the other, each given what is left of ``--budget`` seconds
(an A/B that runs out is stopped and reported as such). Each A/B writes
ab-MODEL-FRACTION-N.txt under $OUT (one that fails, ab-suite-N.txt with its
output); printed last, one row per A/B: the medians of A and of B, B/A, and
the trial's verdicts per session.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.environ.get("OUT") or "out"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("cases", nargs="+", help="MODEL|{A}|{B}")
    p.add_argument("--budget", type=float, default=560)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--fraction", type=float, default=0.5)
    args = p.parse_args()
    os.makedirs(OUT, exist_ok=True)
    end = time.monotonic() + args.budget
    rows = []
    for i, case in enumerate(args.cases):
        model, a, b = case.split("|")
        left = end - time.monotonic()
        if left < 30:
            rows.append((model, a, b, "not run: no time left"))
            continue
        cmd = [sys.executable, os.path.join(HERE, "ab_inprocess.py"), model, str(args.fraction), a, b,
               str(args.rounds), str(args.warmup), str(args.steps)]
        env = dict(os.environ, AB_TAG=f"-{i}")
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=left, env=env)
            text = done.stdout + done.stderr
        except subprocess.TimeoutExpired as e:
            text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
            text += "\n(stopped: out of time)"
        m = re.search(r"median of medians: A ([\d.]+) ms, B ([\d.]+) ms, B/A ([\d.]+)", text)
        verdicts = " ".join(f"{n}{v}" for n, v in re.findall(r"round \d+ ([AB]):.*?verdict (-?\d)", text))
        if m is None:  # ab_inprocess.py wrote no file of its own (the device returns 8 files at most)
            with open(os.path.join(OUT, f"ab-suite-{i}.txt"), "w") as f:
                f.write(" ".join(cmd) + "\n" + text)
        rows.append((model, a, b, f"A {m[1]} ms, B {m[2]} ms, B/A {m[3]}; verdicts {verdicts}"
                     if m else f"failed: see ab-suite-{i}.txt"))
        print(f"[{i}] {model} {a} vs {b}: {rows[-1][3]}", flush=True)
    print("\nmodel | A | B | result")
    for row in rows:
        print(" | ".join(row))


if __name__ == "__main__":
    main()
