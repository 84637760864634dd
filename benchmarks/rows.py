"""One short line per bench row, for reading a device run's output at a glance.

    python benchmarks/rows.py OUT/*/results.jsonl
"""

from __future__ import annotations

import json
import sys


def line(r: dict) -> str:
    if r.get("method") == "link":
        return f"link h2d {r.get('h2d_GBps', 0):.1f} GB/s d2h {r.get('d2h_GBps', 0):.1f} GB/s"
    parts = [r.get("model", "?"), r.get("method", "?"), str(r.get("budget_label") or ""),
             " ".join(r.get("options", []))]
    if "times_s" in r:
        parts.append("ms " + ",".join(str(round(t * 1000)) for t in r["times_s"]))
        parts.append(f"peak {r.get('peak_device_bytes', 0) / 2**30:.2f}GiB fits={r.get('fits')}")
    for k in ("x_floor", "x_phase_floor", "step_gc_s", "step_full_gcs"):
        if k in r:
            parts.append(f"{k} {r[k]:.3g}")
    if "step_bytes_to_device" in r:
        parts.append(f"GB in/out {r['step_bytes_to_device'] / 1e9:.1f}/{r['step_bytes_to_host'] / 1e9:.1f}")
        for phase, (i, o) in r.get("step_phase_bytes", {}).items():
            parts.append(f"{phase} {i / 1e9:.1f}/{o / 1e9:.1f}")
        parts.append("pf/hits/late/faults/drops/recomp " + "/".join(
            str(round(r.get(f"step_{k}", 0))) for k in ("prefetches", "prefetch_hits", "late_prefetches", "faults",
                                                         "drops", "recomputes")))
        if "step_bytes_dropped" in r:
            parts.append(f"GB dropped {r['step_bytes_dropped'] / 1e9:.2f}")
        if "step_recompute_seconds" in r:
            parts.append(f"recompute {r['step_recompute_seconds'] * 1e3:.1f}ms")
    if r.get("planned_share") is not None:
        parts.append(f"planned {r['planned_share']:.0%}")
    for k in ("bit_identical", "drops", "recomputes", "evictions", "ok", "error", "skipped"):
        if k in r:
            parts.append(f"{k}={str(r[k])[:120]}")
    return " | ".join(p for p in parts if p)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            for text in f:
                if text.strip():
                    print(line(json.loads(text)))
