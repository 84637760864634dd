"""Turn a results.jsonl from gpu_check.py into the Markdown tables of docs/BENCHMARKS.md.

    python benchmarks/report.py benchmarks/results/2026-11-26-h100-run4.jsonl
"""

from __future__ import annotations

import json
import sys

GiB = 1 << 30


def fmt(v, scale=1.0, spec="{:.2f}"):
    return spec.format(v / scale) if isinstance(v, (int, float)) else "-"


def table(rows: list[dict]) -> str:
    out = []
    link = next((r for r in rows if r.get("method") == "link"), None)
    if link:
        out.append(f"Host link (pinned, 1 GiB copies, same run): host to device {link['h2d']:.1f} GB/s, "
                   f"device to host {link['d2h']:.1f} GB/s.\n")
    for r in rows:
        if r.get("method") == "bit-identity":
            out.append(
                f"Bit-identity on CUDA ({r['model']}): reference deterministic: {r['reference_deterministic']}; "
                f"identical losses and parameters: {r['bit_identical']}; budget {r['budget_bytes'] / GiB:.2f} GiB "
                f"(1/3 of the unconstrained peak {r['unconstrained_peak'] / GiB:.2f} GiB); "
                f"max_memory_reserved {r['peak_reserved'] / GiB:.2f} GiB; evictions {r['evictions']}, "
                f"faults {r['faults']}, prefetches {r['prefetches']}.\n")
    out.append("| model | method | policy | budget GiB | ms/step (median) | min-max | x plain | x link floor | "
               "peak reserved GiB | fits | GB in/step | GB out/step | prefetch hits | late | faults | "
               "stall s/step | prediction |")
    out.append("|" + "---|" * 17)
    for r in rows:
        if r.get("method") in ("link", "bit-identity") or "median_s" not in r:
            if "error" in r:
                out.append(f"| {r['model']} | {r['method']} | {r.get('policy') or '-'} | | error: {r['error'][:60]} |")
            continue
        label = r.get("label", "")
        method = r["method"] + (f" ({label})" if label and label != "-" else "")
        out.append(
            f"| {r['model']} | {method} | {r.get('policy') or '-'} | {fmt(r.get('budget_bytes'), GiB)} | "
            f"{fmt(r['median_s'], 1e-3, '{:.0f}')} | {fmt(r['min_s'], 1e-3, '{:.0f}')}-{fmt(r['max_s'], 1e-3, '{:.0f}')} | "
            f"{fmt(r.get('x_plain'))} | {fmt(r.get('x_floor'))} | {fmt(r['peak_reserved'], GiB)} | "
            f"{'yes' if r.get('fits') else ('no' if 'fits' in r else '-')} | "
            f"{fmt(r.get('step_bytes_to_device'), 1e9)} | {fmt(r.get('step_bytes_to_host'), 1e9)} | "
            f"{fmt(r.get('step_prefetch_hits'), 1, '{:.0f}')} | {fmt(r.get('step_late_prefetches'), 1, '{:.0f}')} | "
            f"{fmt(r.get('step_faults'), 1, '{:.0f}')} | {fmt(r.get('step_stall_seconds'), 1, '{:.3f}')} | "
            f"{fmt(r.get('prediction_accuracy'))} |")
    return "\n".join(out)


def main() -> None:
    for path in sys.argv[1:]:
        rows = [json.loads(line) for line in open(path)]
        print(table(rows))


if __name__ == "__main__":
    main()
