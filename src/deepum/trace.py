"""What the pager did, over time: a Chrome trace and a memory picture.

The recorder is off unless a session asks for it, and then costs one list
append per event. Timestamps are host times at which the pager issued work
(on CUDA the copies themselves run later, on their streams); each operator
is a slice on the "operators" track, each transfer a slice on its stream's
track, and counters carry resident bytes by page kind and the budget.
The JSON follows the trace-event format that Perfetto (ui.perfetto.dev) and
chrome://tracing load.
"""

from __future__ import annotations

import json
import time

from .core.pages import Kind

KIND_NAMES = [k.name.lower() for k in Kind]
_TRACKS = {"operators": 1, "faults": 2, "prefetches": 3, "evictions": 4}


def now_us() -> float:
    return time.perf_counter_ns() / 1000.0


class TraceRecorder:
    def __init__(self, budget: int, limit: int) -> None:
        self.budget = budget
        self.limit = limit
        self.t0 = now_us()
        # (ts, dur, track, name, args)
        self.slices: list[tuple[float, float, str, str, dict]] = []
        # (ts, resident bytes by kind)
        self.counters: list[tuple[float, tuple[int, ...]]] = []
        self.marks: list[tuple[float, str]] = []  # fault / prefetch instants for the picture
        self.steps: list[float] = []  # when each optimizer step ended

    def op(self, name: str, eid: int, start: float, end: float) -> None:
        self.slices.append((start, end - start, "operators", name, {"eid": eid}))

    def transfer(self, track: str, start: float, end: float, pages: list) -> None:
        nbytes = sum(p.nbytes for p in pages)
        kinds = sorted({KIND_NAMES[p.kind] for p in pages})
        self.slices.append((start, end - start, track, f"{track[:-1]} {len(pages)}",
                            {"pages": len(pages), "bytes": nbytes, "kinds": kinds}))
        if track in ("faults", "prefetches"):
            self.marks.append((start, track))

    def counter(self, ts: float, kind_bytes: list[int]) -> None:
        self.counters.append((ts, tuple(kind_bytes)))

    def step(self, ts: float) -> None:
        """An optimizer step ended (the session's step hook)."""
        self.steps.append(ts)

    # ---------------------------------------------------------------- output

    def chrome(self) -> dict:
        events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "deepum"}}]
        for track, tid in _TRACKS.items():
            events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": track}})
        for ts, dur, track, name, args in self.slices:
            events.append({"ph": "X", "pid": 1, "tid": _TRACKS[track], "ts": ts - self.t0,
                           "dur": max(dur, 0.001), "name": name, "cat": track, "args": args})
        for ts, by_kind in self.counters:
            args = {name: b for name, b in zip(KIND_NAMES, by_kind)}
            events.append({"ph": "C", "pid": 1, "ts": ts - self.t0, "name": "resident bytes", "args": args})
            events.append({"ph": "C", "pid": 1, "ts": ts - self.t0, "name": "budget",
                           "args": {"budget": self.budget, "limit": self.limit}})
        for i, ts in enumerate(self.steps):
            events.append({"ph": "i", "pid": 1, "tid": _TRACKS["operators"], "ts": ts - self.t0, "s": "p",
                           "name": f"optimizer step {i + 1}"})
        events.sort(key=lambda e: e.get("ts", -1))
        return {"traceEvents": events, "displayTimeUnit": "ms"}

    def write(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump(self.chrome(), f)

    def plot(self, path: str, title: str = "") -> None:
        """Device residency over time, stacked by page kind, with the budget, steps and fault/prefetch marks.

        The y-axis is fitted to the residency: a budget far above it (one that
        never binds) is named in the legend instead of squashing the data to a
        line at 0. The format follows the suffix (.png, .svg, .pdf).
        """
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if not self.counters:
            raise ValueError("the trace has no samples: run some operators with tracing on first")
        ts = [(t - self.t0) / 1000.0 for t, _ in self.counters]
        peak = max(sum(c) for _, c in self.counters)
        # The budget is drawn when it is near the data; else the axis would hide the data.
        budget_shown = self.budget <= 2 * max(peak, 1)
        top = max(peak, self.budget if budget_shown else 0, 1)
        scale, unit = (float(1 << 30), "GiB") if top >= 1 << 30 else (
            (float(1 << 20), "MiB") if top >= 1 << 20 else (1024.0, "KiB"))
        top = top / scale * 1.08
        fig, ax = plt.subplots(figsize=(11, 4.5))
        self._stack(ax, ts, scale)
        if budget_shown:
            ax.axhline(self.budget / scale, color="black", linewidth=1.2, label="budget")
            if self.limit != self.budget:
                ax.axhline(self.limit / scale, color="black", linewidth=0.8, linestyle="--", label="limit for pages")
        else:
            ax.plot([], [], linestyle="", label=f"budget {self.budget / (1 << 30):.3g} GiB (off the scale)")
        for i, t in enumerate(self.steps):
            ax.axvline((t - self.t0) / 1000.0, color="#333333", linewidth=0.7, linestyle=":",
                       label="optimizer step" if i == 0 else None)
        for t, kind in self.marks:
            y = top * (0.985 if kind == "faults" else 0.955)
            ax.plot((t - self.t0) / 1000.0, y, marker="|", color="#C44E52" if kind == "faults" else "#4C72B0",
                    markersize=6)
        if self.marks:
            ax.plot([], [], marker="|", linestyle="", color="#C44E52", label="fault")
            ax.plot([], [], marker="|", linestyle="", color="#4C72B0", label="prefetch")
        ax.set_ylim(0, top)
        ax.set_xlabel("time (ms, host)")
        ax.set_ylabel(f"resident on device ({unit})")
        ax.set_title(title or "deepum: device residency by page kind")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    def _stack(self, ax, ts: list[float], scale: float) -> None:
        layers = [[c[k] / scale for _, c in self.counters] for k in range(len(Kind))]
        order = [Kind.PARAMETER, Kind.GRADIENT, Kind.OPTIMIZER_STATE, Kind.ACTIVATION, Kind.OTHER]
        colors = {Kind.PARAMETER: "#4C72B0", Kind.GRADIENT: "#DD8452", Kind.OPTIMIZER_STATE: "#55A868",
                  Kind.ACTIVATION: "#C44E52", Kind.OTHER: "#8C8C8C"}
        ax.stackplot(ts, [layers[k] for k in order], colors=[colors[k] for k in order],
                     labels=[KIND_NAMES[k].replace("_", " ") for k in order], step="post", alpha=0.9)
