"""Pictures of a recorded run (matplotlib, imported only when a picture is asked for)."""

from __future__ import annotations

from ..core.pages import Kind
from ..engine.telemetry import KIND_NAMES, TraceRecorder


def plot_memory(recorder: TraceRecorder, path: str, title: str = "") -> None:
    """Device residency over time, stacked by page kind, with the budget, steps and fault/prefetch marks.

    The y-axis is fitted to the residency: a budget far above it (one that
    never binds) is named in the legend instead of squashing the data to a
    line at 0. The format follows the suffix (.png, .svg, .pdf).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not recorder.counters:
        raise ValueError("the trace has no samples: run some operators with tracing on first")
    t0 = recorder.t0
    ts = [(t - t0) / 1000.0 for t, _ in recorder.counters]
    peak = max(sum(c) for _, c in recorder.counters)
    # The budget is drawn when it is near the data; else the axis would hide the data.
    budget_shown = recorder.budget <= 2 * max(peak, 1)
    top = max(peak, recorder.budget if budget_shown else 0, 1)
    scale, unit = (float(1 << 30), "GiB") if top >= 1 << 30 else (
        (float(1 << 20), "MiB") if top >= 1 << 20 else (1024.0, "KiB"))
    top = top / scale * 1.08
    fig, ax = plt.subplots(figsize=(11, 4.5))
    _stack(ax, recorder, ts, scale)
    if budget_shown:
        ax.axhline(recorder.budget / scale, color="black", linewidth=1.2, label="budget")
        if recorder.limit != recorder.budget:
            ax.axhline(recorder.limit / scale, color="black", linewidth=0.8, linestyle="--", label="limit for pages")
    else:
        ax.plot([], [], linestyle="", label=f"budget {recorder.budget / (1 << 30):.3g} GiB (off the scale)")
    for i, t in enumerate(recorder.steps):
        ax.axvline((t - t0) / 1000.0, color="#333333", linewidth=0.7, linestyle=":",
                   label="optimizer step" if i == 0 else None)
    for t, kind in recorder.marks:
        y = top * (0.985 if kind == "faults" else 0.955)
        ax.plot((t - t0) / 1000.0, y, marker="|", color="#C44E52" if kind == "faults" else "#4C72B0",
                markersize=6)
    if recorder.marks:
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


def _stack(ax, recorder: TraceRecorder, ts: list[float], scale: float) -> None:
    layers = [[c[k] / scale for _, c in recorder.counters] for k in range(len(Kind))]
    order = [Kind.PARAMETER, Kind.GRADIENT, Kind.OPTIMIZER_STATE, Kind.ACTIVATION, Kind.OTHER]
    colors = {Kind.PARAMETER: "#4C72B0", Kind.GRADIENT: "#DD8452", Kind.OPTIMIZER_STATE: "#55A868",
              Kind.ACTIVATION: "#C44E52", Kind.OTHER: "#8C8C8C"}
    ax.stackplot(ts, [layers[k] for k in order], colors=[colors[k] for k in order],
                 labels=[KIND_NAMES[k].replace("_", " ") for k in order], step="post", alpha=0.9)
