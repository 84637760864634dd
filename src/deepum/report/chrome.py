"""A recorded run as a Chrome trace (trace-event JSON, which Perfetto and chrome://tracing load).

Each operator is a slice on the "operators" track, each transfer a slice on
its stream's track, each rebuild of a dropped page a slice on the
"recomputes" track, counters carry resident bytes by page kind and the
budget, and each optimizer step's end is an instant on the operators track
that says how the step paged (recorded, planned, online, or a trial's
online step). An eviction batch's slice says how many of its pages were
dropped and how many copied, and whether a plan chose them; a prefetch's,
whether a plan started it.
"""

from __future__ import annotations

import json

from ..engine.telemetry import KIND_NAMES, TRACKS, TraceRecorder


def chrome_trace(recorder: TraceRecorder) -> dict:
    """The recorded trace as trace-event JSON (a dict)."""
    events = [{"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "deepum"}}]
    for track, tid in TRACKS.items():
        events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": track}})
    for ts, dur, track, name, args in recorder.slices:
        events.append({"ph": "X", "pid": 1, "tid": TRACKS[track], "ts": ts - recorder.t0,
                       "dur": max(dur, 0.001), "name": name, "cat": track, "args": args})
    for ts, by_kind in recorder.counters:
        args = {name: b for name, b in zip(KIND_NAMES, by_kind)}
        events.append({"ph": "C", "pid": 1, "ts": ts - recorder.t0, "name": "resident bytes", "args": args})
        events.append({"ph": "C", "pid": 1, "ts": ts - recorder.t0, "name": "budget",
                       "args": {"budget": recorder.budget, "limit": recorder.limit}})
    for i, (ts, paging) in enumerate(zip(recorder.steps, recorder.step_paging)):
        events.append({"ph": "i", "pid": 1, "tid": TRACKS["operators"], "ts": ts - recorder.t0, "s": "p",
                       "name": f"optimizer step {i + 1} ({paging})", "args": {"paging": paging}})
    events.sort(key=lambda e: e.get("ts", -1))
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_chrome_trace(recorder: TraceRecorder, path: str) -> None:
    """Write the recorded trace as Chrome trace-event JSON (Perfetto, chrome://tracing)."""
    with open(path, "w") as f:
        json.dump(chrome_trace(recorder), f)
