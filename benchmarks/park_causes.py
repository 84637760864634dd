"""Which window set each change of parking, read from gpu_round.py's rows.

    python benchmarks/park_causes.py RESULTS.jsonl [...]

For every paged row with parking, prints its goals (the bytes to park and
the window that set each) and its windows in order: a paging window's
demand, the allocator's allocated and reserved peaks, whether it flushed
the allocator's cache (its flush count rose), and where it flushed, how far
its demand plus its rests (reserved less allocated) passed the allocator's
cap (the budget less ``Thresholds.cap_slack``): the shortfall the release
rule hands the regions ([Note: the allocator's overhead at release] in
core/dormancy.py). Unintercepted windows follow. GiB throughout; windows
whose demand passes twice the budget are the settling windows after a
change, which the regions do not weigh.
"""

import json
import sys

GIB = 1 << 30
CAP_SLACK = 64 << 20  # Thresholds.cap_slack's default


def report(row: dict) -> list[str]:
    budget = row["budget_bytes"]
    cap = max(budget - CAP_SLACK, budget // 2)
    peaks = row.get("region_step_peaks") or []
    lines = [f"{row['model']} {row.get('fraction')} {row.get('src')}: "
             f"{row['median_s'] * 1e3:.1f} ms, budget {budget / GIB:.2f}, cap {cap / GIB:.2f}"]
    for at, goal in row.get("park_goals") or []:
        weighed = f", set by the window of demand {peaks[at - 1] / GIB:.2f}" if 0 < at <= len(peaks) else ""
        lines.append(f"  goal {goal / 1e9:.2f} GB after window {at}{weighed}")
    flushes = None
    for paging, demand, allocated, reserved, count in row.get("watch_windows") or []:
        flushed = flushes is not None and count > flushes
        flushes = count
        text = (f"  {'paging' if paging else 'dormant'} {demand / GIB:.2f} {allocated / GIB:.2f} "
                f"{reserved / GIB:.2f}{' flushed' if flushed else ''}")
        if paging and flushed and demand < 2 * budget:
            short = demand + reserved - allocated - cap
            if short > 0:
                text += f" short {short / GIB:.2f}"
        lines.append(text)
    return lines


def main(paths: list[str]) -> None:
    for path in paths:
        for row in map(json.loads, open(path)):
            if row.get("median_s") and row.get("park_goals"):
                print("\n".join(report(row)))


if __name__ == "__main__":
    main(sys.argv[1:])
