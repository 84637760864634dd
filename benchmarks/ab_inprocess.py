"""Two sets of session options, in turns, in one process: A/B without the spread between processes.

    python benchmarks/ab_inprocess.py MODEL FRACTION '{A options}' '{B options}' [ROUNDS] [WARMUP] [STEPS]

Step times of one engine move by 15-40% between processes on the lent GPU
machines (docs/BENCHMARKS.md), more than most changes under test. Here one
process trains the bench's MODEL (step_anatomy.py's ``prepare``: fresh host
batch each step, bf16 autocast, AdamW) and enters a session at FRACTION of its
unconstrained peak ROUNDS times for each option set, in the order A B B A A B
..., each time WARMUP steps (plan="auto" records and tries its plan in the
first 14) and then STEPS timed steps, after one uncounted session of A (a
process's first session runs slower than the rest). Options are JSON; ``"thresholds"``
takes a dict of Thresholds fields (e.g. ``{"thresholds": {"view_fast_path":
false}}``); ``"src"`` names another copy of deepum's ``src/`` (another
commit) that the set runs, loaded beside this one under another name, so
two engines are compared in one process. ``AB_CPUS=FIRST-LAST`` keeps the
process (and the threads it starts, the autograd engine's among them) on
those CPUs, to see whether the spread between sessions follows where the
host threads run. Prints each session's median step and counters, then each set's
median of medians and B/A; writes ab-MODEL-FRACTION$AB_TAG.txt under $OUT. The
model keeps training across sessions, so the sets see the same kind of
steps, not the same batches.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.util
import json
import os
import statistics
import sys
import time

import torch
from step_anatomy import OUT, prepare

import deepum

KEYS = ("faults", "prefetches", "recomputes", "evictions", "planned_steps", "views", "leaving_waits",
        "plan_prefetch_no_room", "drops", "late_prefetches", "bytes_to_host", "bytes_to_device",
        "stall_seconds", "recompute_seconds")


def engine(src: str | None):
    """deepum, or the copy of it under ``src`` (its ``deepum`` package, imported as
    ``deepum_<hash>``: its own imports are relative, so it runs its own modules)."""
    if src is None:
        return deepum
    root = os.path.join(os.path.abspath(src), "deepum")
    name = "deepum_" + hashlib.sha1(root.encode()).hexdigest()[:8]
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(root, "__init__.py"),
                                                      submodule_search_locations=[root])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        register = torch.serialization.register_package
        # Its torch.save tag takes the next priority: two at one priority cannot be sorted.
        torch.serialization.register_package = lambda priority, *a: register(priority + 1, *a)
        try:
            spec.loader.exec_module(module)
        finally:
            torch.serialization.register_package = register
    return sys.modules[name]


def config_of(options: dict):
    """(the engine the options name, its Config of them)."""
    options = dict(options)
    mod = engine(options.pop("src", None))
    config = sys.modules[mod.__name__ + ".core.config"]
    th = options.pop("thresholds", None)
    if th is not None:
        options["thresholds"] = config.Thresholds(**th)
    return mod, config.Config(**options)


def one_session(device, sync, work, step, budget: int, setup, warmup: int, steps: int, first: int):
    """(median seconds of the timed steps, counters a step, plan verdict) of one session;
    ``setup``: config_of()'s (engine, config)."""
    mod, config = setup
    with mod.oversubscribe(budget, device, config=config) as session:
        for i in range(warmup):
            step(work.host_batch(first + i))
        sync()
        before = session.stats()
        env0 = _environment(device)
        times, cpu, main, tail = [], [], [], []
        for i in range(steps):
            # The batch is made before the clock starts, as the bench does (case.py):
            # an image batch's randn on the host takes longer than a plain ResNet step.
            batch = work.host_batch(first + warmup + i)
            t0, c0, m0 = time.perf_counter(), time.process_time(), time.thread_time()
            step(batch)
            t1 = time.perf_counter()
            sync()
            times.append(time.perf_counter() - t0)
            tail.append(time.perf_counter() - t1)
            cpu.append(time.process_time() - c0)
            main.append(time.thread_time() - m0)
        after = session.stats()
        env1 = _environment(device)
        plan = _plan_print(session)
    counts = {k: (after[k] - before[k]) / steps for k in KEYS if k in after}
    counts.update({k: (env1[k] - env0[k]) / steps for k in env0})
    counts["step_ms"] = "/".join(f"{t * 1e3:.0f}" for t in times)
    # Host CPU time of the step, all threads and the main thread alone (backward runs on
    # the autograd engine's thread): tells a step the host bounds from one that waits.
    counts["cpu_ms"] = "/".join(f"{t * 1e3:.0f}" for t in cpu)
    counts["main_cpu_ms"] = "/".join(f"{t * 1e3:.0f}" for t in main)
    # What the device still had queued when the host's step returned: near 0 where the host bounds.
    counts["sync_ms"] = "/".join(f"{t * 1e3:.0f}" for t in tail)
    counts["plan"] = plan
    # What plan="auto" decided on, and the host seconds its plans took.
    counts["plan_s"] = f"{after.get('plan_seconds', 0.0):.2f}"
    counts["trial_ms"] = ";".join(f"{k[0]}:" + "/".join(f"{t:.0f}" for t in v)
                                  for k, v in (after.get("plan_trial_ms") or {}).items())
    return statistics.median(times), counts, after.get("plan_verdict")


def _plan_print(session) -> str:
    """The session's plan in brief: pages it drops and copies a step, and the recompute
    seconds it expects (do two sessions of one setting run different plans?)."""
    plan = getattr(getattr(getattr(session, "pager", None), "plans", None), "plan", None)
    if plan is None:
        return "-"
    actions = [a.name for moves in plan.evictions.values() for _, a in moves]
    return (f"{actions.count('DROP')}d/{actions.count('COPY')}c/"
            f"{plan.recompute_seconds * 1e3:.1f}ms")


def _gc_tracker():
    """gc.callbacks entry counting full passes and their seconds (what moves a session's time
    besides the engine)."""
    state = {"full": 0, "gc_s": 0.0, "t0": 0.0}

    def callback(phase, info):
        if phase == "start":
            state["t0"] = time.perf_counter()
        else:
            state["gc_s"] += time.perf_counter() - state["t0"]
            state["full"] += info.get("generation") == 2

    gc.callbacks.append(callback)
    return state


_GC = _gc_tracker()


def _environment(device) -> dict:
    """The caching allocator's retries and the garbage collector's passes and seconds so far."""
    out = {"gc_full": _GC["full"], "gc_ms": _GC["gc_s"] * 1e3}
    if device.type == "cuda":
        out["alloc_retries"] = torch.cuda.memory_stats(device).get("num_alloc_retries", 0)
    return out


def main() -> None:
    model, fraction = sys.argv[1], float(sys.argv[2])
    sets = {"A": json.loads(sys.argv[3]), "B": json.loads(sys.argv[4])}
    rounds, warmup, steps = (int(a) for a in (sys.argv[5:8] + ["3", "15", "4"][len(sys.argv[5:8]):]))
    cpus = os.environ.get("AB_CPUS")  # e.g. "0-7": the process and its threads on these CPUs only
    if cpus:
        first_cpu, _, last_cpu = cpus.partition("-")
        os.sched_setaffinity(0, range(int(first_cpu), int(last_cpu or first_cpu) + 1))
        print(f"on CPUs {sorted(os.sched_getaffinity(0))}", flush=True)
    device, sync, work, step, peak = prepare(model)
    budget = int(peak * fraction)
    order = [("A", "B") if r % 2 == 0 else ("B", "A") for r in range(rounds)]
    # The process's first session runs slower than the rest (the pinned pool
    # grows, caches fill): one session of A, not counted, goes first.
    t, _, _ = one_session(device, sync, work, step, budget, config_of(sets["A"]), warmup, steps, 0)
    print(f"warm-up session (A, not counted): {t * 1e3:8.1f} ms", flush=True)
    lines = [f"{model} at {fraction} of its peak ({peak / 2**30:.2f} GiB); A = {sets['A']}, B = {sets['B']}; "
             f"{rounds} rounds, {warmup} warm-up and {steps} timed steps a session"]
    medians: dict[str, list[float]] = {"A": [], "B": []}
    first = warmup + steps
    for r, pair in enumerate(order):
        for name in pair:
            t, counts, verdict = one_session(device, sync, work, step, budget, config_of(sets[name]),
                                             warmup, steps, first)
            first += warmup + steps
            medians[name].append(t)
            line = (f"round {r} {name}: {t * 1e3:8.1f} ms  verdict {verdict}  "
                    + " ".join(f"{k} {v:.4g}" if not isinstance(v, str) else f"{k} {v}"
                               for k, v in counts.items()))
            print(line, flush=True)
            lines.append(line)
    a, b = statistics.median(medians["A"]), statistics.median(medians["B"])
    lines.append(f"median of medians: A {a * 1e3:.1f} ms, B {b * 1e3:.1f} ms, B/A {b / a:.3f}")
    print(lines[-1])
    os.makedirs(OUT, exist_ok=True)
    tag = os.environ.get("AB_TAG", "")  # several A/Bs of one model in one call: distinct files
    with open(os.path.join(OUT, f"ab-{model}-{fraction}{tag}.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
