"""Pictures of a recorded run (matplotlib, imported only when a picture is asked for)."""

from __future__ import annotations

from ..core.pages import Kind
from ..engine.telemetry import KIND_NAMES, TraceRecorder


def plot_memory(recorder: TraceRecorder, path: str, title: str = "") -> None:
    """Device residency over time, stacked by page kind, with the budget and fault/prefetch marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not recorder.counters:
        raise ValueError("the trace has no samples: run some operators with tracing on first")
    ts = [(t - recorder.t0) / 1000.0 for t, _ in recorder.counters]
    gib, unit = (float(1 << 30), "GiB") if recorder.budget >= 1 << 30 else (float(1 << 20), "MiB")
    layers = [[c[k] / gib for _, c in recorder.counters] for k in range(len(Kind))]
    order = [Kind.PARAMETER, Kind.GRADIENT, Kind.OPTIMIZER_STATE, Kind.ACTIVATION, Kind.OTHER]
    colors = {Kind.PARAMETER: "#4C72B0", Kind.GRADIENT: "#DD8452", Kind.OPTIMIZER_STATE: "#55A868",
              Kind.ACTIVATION: "#C44E52", Kind.OTHER: "#8C8C8C"}
    fig, ax = plt.subplots(figsize=(11, 4.5))
    ax.stackplot(ts, [layers[k] for k in order], colors=[colors[k] for k in order],
                 labels=[KIND_NAMES[k].replace("_", " ") for k in order], step="post", alpha=0.9)
    ax.axhline(recorder.budget / gib, color="black", linewidth=1.2, label="budget")
    ax.axhline(recorder.limit / gib, color="black", linewidth=0.8, linestyle="--", label="limit for pages")
    top = max(recorder.budget / gib, max(sum(c) for _, c in recorder.counters) / gib) * 1.08
    for t, kind in recorder.marks:
        y = top * (0.985 if kind == "faults" else 0.955)
        ax.plot((t - recorder.t0) / 1000.0, y, marker="|", color="#C44E52" if kind == "faults" else "#4C72B0",
                markersize=6)
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
