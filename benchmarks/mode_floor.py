"""The floor of interception by a Python dispatch mode: what a step costs under a mode that pages nothing.

    python benchmarks/mode_floor.py MODEL [ROUNDS] [STEPS] [--time-ops] [--filler=N]

Trains the bench's MODEL (step_anatomy.py's ``prepare``: a fresh host batch
each step, bf16 autocast, AdamW) with no session, and times STEPS steps
(default 4) each way, ROUNDS times (default 2) in turn, in one process:

- ``plain``: no mode;
- ``pass-through``: a TorchDispatchMode whose ``__torch_dispatch__`` only
  calls the operator (what torch charges to hand every operator to Python);
- ``storages``: the same, and it also reads the storage address of every
  tensor argument and output and looks it up in a dict (the least any
  engine that pages by storage must do per operator, still without pages).

deepum's paged step runs the first two lines' work and its own on top: the
ratio of ``pass-through`` to ``plain`` is the part of a paged step's cost no
engine inside such a mode can remove. Prints the median step of each way and
of each round, the operators a step, and one JSON row to $OUT/mode_floor.jsonl.

With ``--time-ops``, one more way, ``timed``, is a pass-through that times each
operator's own call with ``perf_counter`` and prints the operators by host time
a step, the same table ``host_split.py`` prints for a paged step: set side by
side, they say how much more an operator's own call (launch, allocation) takes
under deepum's budget than with no budget at all. With ``--filler=N`` as
well, one more way, ``timed+filler``, does the same and then, after each
operator, reads N objects at random places of a large heap of Python
objects made at start (about as much as an engine's Python between two
operators touches): if the operators' own calls slow down with it, Python
between operators alone can slow them, with no budget and nothing in
flight. The filler stands in for the engine's Python; it is not the engine.
"""

from __future__ import annotations

import collections
import json
import os
import random
import statistics
import sys
import time

import torch
from gpu_pstats import timed_steps
from step_anatomy import OUT, prepare
from torch.utils._python_dispatch import TorchDispatchMode

_storage = torch._C.TensorBase.untyped_storage


class PassThrough(TorchDispatchMode):
    """Calls each operator, nothing else; counts them."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


class Storages(PassThrough):
    """Also finds every tensor argument's and output's storage address in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, int] = {}

    def _look(self, values) -> None:
        seen = self.seen
        for v in values:
            if isinstance(v, torch.Tensor) and v.layout == torch.strided:
                key = _storage(v)._cdata
                if seen.get(key) is None:
                    seen[key] = 1
            elif isinstance(v, (list, tuple)):
                self._look(v)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        kwargs = kwargs or {}
        self._look(args)
        self._look(kwargs.values())
        out = func(*args, **kwargs)
        self._look(out if isinstance(out, (list, tuple)) else (out,))
        if len(self.seen) > 100_000:
            self.seen.clear()
        return out


class Timed(PassThrough):
    """Times each operator's own call (seconds and calls by operator)."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        name = str(func)
        self.seconds[name] += time.perf_counter() - t0
        self.calls[name] += 1
        return out


class Filler(Timed):
    """Timed, and after each operator reads ``n`` objects at random places of a large heap."""

    def __init__(self, n: int, size: int = 1 << 20) -> None:
        super().__init__()
        rng = random.Random(0)
        self.heap = [[i, str(i)] for i in range(size)]
        self.order = [rng.randrange(size) for _ in range(1 << 16)]
        self.n, self.at = n, 0
        self.sink = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        heap, order, at, sink = self.heap, self.order, self.at, 0
        for j in range(self.n):
            sink += len(heap[order[(at + j) & 0xFFFF]][1])
        self.at, self.sink = (at + self.n) & 0xFFFF, sink
        return out


def main() -> None:
    argv = [a for a in sys.argv[1:] if not a.startswith("--")]
    model = argv[0]
    rounds = int(argv[1]) if len(argv) > 1 else 2
    steps = int(argv[2]) if len(argv) > 2 else 4
    device, sync, work, step, _ = prepare(model)
    ways = {"plain": None, "pass-through": PassThrough, "storages": Storages}
    filler = next((int(a.split("=", 1)[1]) for a in sys.argv if a.startswith("--filler=")), 0)
    if "--time-ops" in sys.argv:
        ways["timed"] = Timed
        if filler:
            ways["timed+filler"] = lambda: Filler(filler)
    timers: dict[str, list[Timed]] = {}  # each way's modes, one a round
    times: dict[str, list[list[float]]] = {w: [] for w in ways}
    ops: dict[str, float] = {}
    first = 10
    for _ in range(rounds):
        for way, mode_type in ways.items():
            mode = mode_type() if mode_type is not None else None
            if isinstance(mode, Timed):
                timers.setdefault(way, []).append(mode)
            if mode is not None:
                mode.__enter__()
            try:
                step(work.host_batch(first))  # a step to settle into the way
                n0 = mode.ops if mode is not None else 0
                times[way].append(timed_steps(step, work, first + 1, steps, sync))
                if mode is not None:
                    ops[way] = (mode.ops - n0) / steps
            finally:
                if mode is not None:
                    mode.__exit__(None, None, None)
            first += steps + 1
    plain = statistics.median(t for r in times["plain"] for t in r)
    row = {"model": model, "device": str(device), "torch": torch.__version__,
           "card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "ops_per_step": ops}
    for way, rs in times.items():
        med = statistics.median(t for r in rs for t in r)
        row[way + "_ms"] = med * 1e3
        row[way + "_rounds_ms"] = [round(statistics.median(r) * 1e3, 1) for r in rs]
        print(f"{model} {way:13} {med * 1e3:8.1f} ms ({med / plain:.3f}x plain); rounds "
              f"{row[way + '_rounds_ms']}")
    print(f"{model} operators a step under the mode: {ops}")
    n = rounds * (steps + 1)  # every step a timed mode saw, the settling ones included
    for way, modes in timers.items():
        seconds: dict[str, float] = collections.defaultdict(float)
        calls: dict[str, int] = collections.Counter()
        for timed in modes:
            for name, sec in timed.seconds.items():
                seconds[name] += sec
                calls[name] += timed.calls[name]
        print(f"{model} {way}: operators by host time, no budget (the call of each, ms a step, calls a "
              f"step; all: {sum(seconds.values()) / n * 1e3:.1f} ms):")
        for name, sec in sorted(seconds.items(), key=lambda kv: -kv[1])[:12]:
            print(f"  {name:50} {sec / n * 1e3:8.1f} {calls[name] / n:8.0f}")
    with open(os.path.join(OUT, "mode_floor.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
