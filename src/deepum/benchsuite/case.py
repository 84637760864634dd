"""One bench case, run in the process that calls it: a row of measurements."""

from __future__ import annotations

import gc
import importlib.util
import os
import statistics
import time

import torch

from .models import Workload, adamw, adamw_kind, standard_step
from .peers import Skip, deepspeed_step, prepare

PAGED = ("deepum", "lru")
DEEPSPEED = ("zero2-offload", "zero3-offload", "zero3-offload-ckpt")

# Per-step deltas of session.stats() reported for paged cases; keys the
# engine does not have yet are left out of the row.
STEP_COUNTERS = ("bytes_to_device", "bytes_to_host", "bytes_dropped", "recompute_seconds", "faults",
                 "prefetches", "prefetch_hits", "late_prefetches", "wasted_prefetches", "evictions",
                 "stall_seconds", "drops", "recomputes", "planned_evictions", "planned_steps",
                 "plan_departures", "plans", "plan_over_ops", "plan_short_evictions", "oom_retries",
                 "leaving_waits", "victim_choices", "region_calls", "region_recomputes", "parked_bytes", "ops")


class PhaseBytes:
    """Bytes the pager moved each way in each phase of the step (forward, backward, optimizer).

    Counted when a copy is issued, so a prefetch issued late in the forward
    for the backward counts in the forward.
    """

    def __init__(self, session) -> None:
        self.session = session
        self.reset()

    def reset(self) -> None:
        self.bytes: dict[str, list[int]] = {}
        self._last = self._now()

    def _now(self) -> tuple[int, int]:
        # The two counters alone: a full stats() three times a step would
        # be the harness's cost on the step it measures.
        st = self.session.pager.counters
        return st.bytes_to_device, st.bytes_to_host

    def __call__(self, phase: str) -> None:
        now = self._now()
        acc = self.bytes.setdefault(phase, [0, 0])
        acc[0] += now[0] - self._last[0]
        acc[1] += now[1] - self._last[1]
        self._last = now


class GcClock:
    """Time the garbage collector spends, per generation (a per-operator engine makes garbage)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = None
        self.on = False  # counting starts after the warm-up

    def __call__(self, phase: str, info: dict) -> None:
        if not self.on:
            return
        if phase == "start":
            self._t0 = time.perf_counter()
        elif self._t0 is not None:
            self.seconds[info["generation"]] += time.perf_counter() - self._t0
            self.count[info["generation"]] += 1
            self._t0 = None

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc) -> None:
        gc.callbacks.remove(self)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def link_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> dict:
    """Pinned host<->device copy rates in GB/s: median of 5 copies of 1 GiB each way."""
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    out = {}
    for name, dst, src in (("h2d", dev, host), ("d2h", host, dev)):
        dst.copy_(src, non_blocking=True)
        sync(device)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=True)
            sync(device)
            times.append(time.perf_counter() - t0)
        out[f"{name}_GBps"] = nbytes / statistics.median(times) / 1e9
    return out


def identity_check(name: str, device: torch.device, steps: int, options: dict | None = None,
                   budget: int | None = None) -> dict:
    """Plain twice (is the reference itself deterministic?) and deepum at ``budget`` bytes, or a third
    of the peak (with the session ``options``, e.g. plan=True)."""
    import deepum

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)

    def train(budget=None):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        opts = (options or {}) if budget else {}
        session = deepum.oversubscribe(budget or 1.0, device, **opts) if budget or device.type == "cpu" else None
        if session:
            session.__enter__()
        history = []
        try:
            work = Workload(name, device, device)
            step = standard_step(work, adamw(work.model, device))
            losses = [step(work.host_batch(i)).item() for i in range(steps)]
            regions = getattr(getattr(session, "_watch", None), "regions", None)
            history = list(regions.history) if regions is not None else []
        finally:
            if session:
                session.__exit__(None, None, None)
        stats = dict(session.stats(), region_history=history) if session else {}  # before the exit's restore
        peak = stats["peak_device_bytes"] if session else torch.cuda.max_memory_reserved(device)
        params = [p.detach().cpu() for p in work.model.parameters()]
        return losses, params, stats, peak

    l0, p0, _, peak0 = train()
    l0b, p0b, _, _ = train()
    deterministic = l0 == l0b and all(torch.equal(a, b) for a, b in zip(p0, p0b))
    budget = budget or peak0 // 3
    l1, p1, stats, peak1 = train(budget)
    same = l0 == l1 and all(torch.equal(a, b) for a, b in zip(p0, p1))
    return {"reference_deterministic": deterministic, "bit_identical": same, "unconstrained_peak": peak0,
            "budget_bytes": budget, "peak_device_bytes": peak1, "fits": peak1 <= budget,
            "evictions": stats["evictions"], "faults": stats["faults"], "prefetches": stats["prefetches"],
            "drops": stats.get("drops", 0), "recomputes": stats.get("recomputes", 0),
            "planned_steps": stats.get("planned_steps", 0), "planned_evictions": stats.get("planned_evictions", 0),
            "regions": stats.get("regions", 0), "regions_selective": stats.get("regions_selective", 0),
            "region_recomputes": stats.get("region_recomputes", 0), "region_history": stats["region_history"],
            "paging_stops": stats.get("paging_stops", 0), "parked_bytes": stats.get("parked_bytes", 0), "losses": l1,
            "ok": deterministic and same and peak1 <= budget and stats["evictions"] > 0}


def _energy_counter(device: torch.device):
    """engine/energy.py's counter, loaded from this tree by path: gpu_round.py runs
    the harness against other commits' engines (--old-src), which may lack it."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "engine", "energy.py")
    spec = importlib.util.spec_from_file_location("_deepum_harness_energy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Energy.open(device)


def _build_step(model: str, method: str, device: torch.device, session):
    """(step taking a host batch, workload, note, phase counter) for a non-DeepSpeed method."""
    if method in DEEPSPEED:
        step, work, note = deepspeed_step(model, method, device)
        return step, work, note, None
    work = Workload(model, device, device)
    prep = prepare(method, work, device)
    phases = PhaseBytes(session) if method in PAGED else None
    step = standard_step(work, prep.opt or adamw(work.model, device), prep.wrap, phases, prep.model)
    return step, work, prep.note, phases


def _timed_steps(step, work: Workload, device: torch.device, session, phases, warmup: int, steps: int) -> dict:
    """Run warm-up and measured steps; the batch of each is made before its clock starts, as a loader would.

    The warm-up runs on, up to TRIAL_EXTRA_STEPS steps more, while plan="auto" is undecided
    (``warmup_steps`` in the row says how many it took).
    """
    import psutil

    energy = _energy_counter(device)
    times, before, joules0, fourth = [], {}, None, None
    retries0 = 0
    proc = psutil.Process()
    host_peak = proc.memory_info().rss
    extra = 0
    with GcClock() as gc_clock:
        i = 0
        while i < warmup + steps:
            if i == warmup and extra < TRIAL_EXTRA_STEPS and _trial_open(session):
                warmup += 1  # see _trial_open
                extra += 1
            if i == warmup:
                before = session.stats() if session else {}
                joules0 = energy.joules() if energy else None
                retries0 = _alloc_retries(device)
                gc_clock.on = True
                if phases:
                    phases.reset()
            if i == 3 and session is not None:
                fourth = session.stats()
            batch = work.host_batch(i)
            sync(device)
            t0 = time.perf_counter()
            step(batch)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            host_peak = max(host_peak, proc.memory_info().rss)
            i += 1
    end = session.stats() if session else {}
    out = {"times_s": times, "warmup_steps": warmup, "median_s": statistics.median(times),
           "min_s": min(times), "max_s": max(times),
           "samples_per_s": work.batch / statistics.median(times), "peak_host_bytes": host_peak,
           "step_gc_s": sum(gc_clock.seconds) / steps, "step_full_gcs": gc_clock.count[2] / steps,
           "_before": before, "_end": end, "_fourth": fourth}
    if device.type == "cuda":
        # Each retry frees the allocator's cache and waits for every stream.
        out["step_alloc_retries"] = (_alloc_retries(device) - retries0) / steps
    if energy and joules0 is not None:
        out["joules_per_step"] = (energy.joules() - joules0) / steps
    # Read before the session's exit brings every page back to the device.
    out["peak_device_bytes"] = (torch.cuda.max_memory_reserved(device) if device.type == "cuda"
                                else end.get("peak_device_bytes"))
    return out


# Warm-up steps a case adds, at most, while plan="auto" has not decided (_trial_open).
TRIAL_EXTRA_STEPS = 20


def _trial_open(session) -> bool:
    """Whether ``plan="auto"`` is still timing the planned step against the online choice.

    Its online steps are turns of the trial, not the session's steady state:
    timed, they would mix the two ways of paging in one row (session 20's
    first call, warm-up 12, did). So the timed steps start once it has decided.
    """
    if session is None:
        return False
    pager = session.pager
    trial = pager.plans.trial
    return pager.pressure and pager.plans.enabled and trial is not None and trial.verdict is None


def _alloc_retries(device: torch.device) -> int:
    return torch.cuda.memory_stats(device).get("num_alloc_retries", 0) if device.type == "cuda" else 0


def planned_share(since: dict | None, end: dict) -> float | None:
    """Share of page-ins that were planned (prefetched or recomputed) rather than demand faults."""
    if since is None:
        return None
    planned = sum(end.get(k, 0) - since.get(k, 0) for k in ("prefetches", "recomputes"))
    demand = planned + end.get("faults", 0) - since.get("faults", 0)
    return planned / demand if demand else None


def paged_fields(before: dict, end: dict, steps: int, fourth: dict | None = None) -> dict:
    """Per-step figures from two session.stats() readings (the measured steps only).

    ``planned_share`` counts from ``fourth``, the reading as the fourth step
    began (None when the run had no fourth step).
    """
    row = {}
    for k in STEP_COUNTERS:
        if k in end:
            row[f"step_{k}"] = (end[k] - before.get(k, 0)) / steps
    row["planned_share"] = planned_share(fourth, end)
    row["prediction_accuracy"] = end.get("prediction_accuracy")
    row["plan_verdict"] = end.get("plan_verdict")
    row["plan_trial_ms"] = end.get("plan_trial_ms")
    row["plan_seconds"] = end.get("plan_seconds")
    row["regions"] = end.get("regions")
    row["regions_selective"] = end.get("regions_selective")
    row["dormant"] = end.get("dormant")
    row["paging_stops"] = end.get("paging_stops")
    return row


def run_case(model: str, method: str, budget: int | None, device: torch.device,
             steps: int, warmup: int, fits_budget: int | None = None, options: dict | None = None) -> dict:
    """Run one case in this process and return its row."""
    row = {"model": model, "method": method, "budget_bytes": budget, "device": str(device),
           "adamw": None if method in DEEPSPEED or method == "torchao-offload" else adamw_kind(device),
           "torch": torch.__version__, "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "date": time.strftime("%Y-%m-%d")}
    if method == "identity":
        row.update(identity_check(model, device, steps, options, budget))
        return row
    if method == "link":
        row.update(link_bandwidth(device), card_bytes=torch.cuda.get_device_properties(device).total_memory)
        return row
    try:
        row.update(_measured(model, method, budget, device, steps, warmup, options))
    except Skip as e:
        row["skipped"] = str(e)
        return row
    bound = budget if budget is not None else fits_budget
    if bound is not None and row.get("peak_device_bytes") is not None:  # no measure: no verdict
        row["fits"] = row["peak_device_bytes"] <= bound
    return row


def _measured(model: str, method: str, budget: int | None, device: torch.device, steps: int, warmup: int,
              options: dict | None) -> dict:
    import deepum

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    session = None
    if method in PAGED or (method == "plain" and device.type == "cpu"):
        # On the cpu device the engine's own count is the memory measure, so
        # the plain case runs under a budget that never binds. The model is
        # built inside the session, as a user whose model does not fit would.
        session = deepum.oversubscribe(budget or 1.0, device, policy="lru" if method == "lru" else "deepum",
                                       **(options or {}))
        session.__enter__()
    try:
        step, work, note, phases = _build_step(model, method, device, session)
        out = _timed_steps(step, work, device, session, phases, warmup, steps)
        regions = getattr(getattr(session, "_watch", None), "regions", None)
        if regions is not None:
            # Each candidate's level ("s"elective, "w"hole, "." none) and each window's (forward peak, changes).
            report = regions.report()
            out["region_levels"] = "".join((r["level"] or ".")[0] for r in report)
            out["region_history"] = regions.history
            out["region_undone"] = regions.unintercepted.undone
            out["region_raised"] = regions.unintercepted.raised
            out["park_goals"] = regions.park_goals
            out["region_step_peaks"] = getattr(regions, "step_peaks", None)  # (an older engine has none)
            out["region_census"] = [(r["saved_bytes"], r["kept_bytes"], r["seconds"], r["cheap_seconds"])
                                    for r in report[:3]]
        watch = getattr(session, "_watch", None)
        if watch is not None and hasattr(watch, "windows"):
            # (paging, peak read, allocated peak, reserved peak, flushes so far) of the last windows
            out["watch_windows"] = list(watch.windows)
    finally:
        if session is not None:
            session.__exit__(None, None, None)
    before, end, fourth = out.pop("_before"), out.pop("_end"), out.pop("_fourth")
    if note:
        out["note"] = note
    if method in PAGED:
        out.update(paged_fields(before, end, steps, fourth))
        if phases:
            out["step_phase_bytes"] = {k: [b / steps for b in v] for k, v in phases.bytes.items()}
    return out
