"""What ``deepum bench`` shows: a progress line per case, the markdown table, the plot."""

from __future__ import annotations


def size(nbytes: float | None) -> str:
    """Bytes in the unit that fits them (no "0.00 GiB" for a small model)."""
    if nbytes is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.2f} {unit}"
    return f"{nbytes:.0f} B"


def budget_text(r: dict) -> str:
    if r.get("budget_label"):
        return r["budget_label"]
    return size(r["budget_bytes"]) if r.get("budget_bytes") else "-"


def progress(r: dict) -> str:
    """One line for a finished case: model, method, budget and its time, or why it has none."""
    head = f"{r.get('model', '-')} {r['method']} {budget_text(r)}:"
    if r["method"] == "link":
        if "h2d_GBps" in r:
            return f"link: host to device {r['h2d_GBps']:.1f} GB/s, device to host {r['d2h_GBps']:.1f} GB/s"
        return f"link: failed: {r.get('error', '?')}"
    if r["method"] == "identity" and "ok" in r:
        return f"{head} {'ok' if r['ok'] else 'FAILED'} (bit-identical {r['bit_identical']})"
    if "median_s" in r:
        extra = f", planned share {r['planned_share']:.0%}" if r.get("planned_share") is not None else ""
        return f"{head} {r['median_s'] * 1e3:.1f} ms/step, peak {size(r.get('peak_device_bytes'))}{extra}"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']}"
    return f"{head} failed: {r.get('error', 'no result')}"


HEADER = ("| model | method | budget | ms/step (median, min-max) | x plain | x floor (phase) | samples/s | "
          "peak device | fits | peak host | in / out per step | hits / late / faults | planned share | "
          "drops / recomputes per step | J/step | note |")
COLUMNS = HEADER.count("|") - 1


def _measured_row(r: dict, base: float | None) -> str:
    x = f"{r['median_s'] / base:.2f}" if base else "-"
    xf = f"{r['x_floor']:.2f}" if "x_floor" in r else "-"
    if "x_phase_floor" in r:
        xf += f" ({r['x_phase_floor']:.2f})"
    moved = (f"{size(r['step_bytes_to_device'])} / {size(r['step_bytes_to_host'])}"
             if "step_bytes_to_device" in r else "-")
    hits = (f"{r['step_prefetch_hits']:.0f} / {r['step_late_prefetches']:.0f} / {r['step_faults']:.0f}"
            if "step_prefetch_hits" in r else "-")
    share = f"{r['planned_share']:.0%}" if r.get("planned_share") is not None else "-"
    drops = (f"{r['step_drops']:.0f} / {r.get('step_recomputes', 0):.0f}" if "step_drops" in r else "-")
    joules = f"{r['joules_per_step']:.0f}" if r.get("joules_per_step") else "-"
    fits = {True: "yes", False: "no"}.get(r.get("fits"), "-")
    return (f"| {r['model']} | {r['method']} | {budget_text(r)} | {r['median_s'] * 1e3:.1f} "
            f"({r['min_s'] * 1e3:.1f}-{r['max_s'] * 1e3:.1f}) | {x} | {xf} | {r['samples_per_s']:.1f} | "
            f"{size(r.get('peak_device_bytes'))} | {fits} | {size(r.get('peak_host_bytes'))} | {moved} | {hits} | "
            f"{share} | {drops} | {joules} | {r.get('note', '')} |")


def table(rows: list[dict]) -> str:
    out = [HEADER, "|" + "---|" * COLUMNS]
    plain = {r["model"]: r.get("median_s") for r in rows if r["method"] == "plain" and "median_s" in r}
    for r in rows:
        if r["method"] == "link" and "h2d_GBps" in r:
            out.append(f"| - | link | - | host to device {r['h2d_GBps']:.1f} GB/s, device to host "
                       f"{r['d2h_GBps']:.1f} GB/s (pinned, 1 GiB) |" + " |" * (COLUMNS - 4))
        elif r["method"] == "identity" and "ok" in r:
            cells = [r["model"], "identity", size(r["budget_bytes"]),
                     f"bit-identical {r['bit_identical']}, reference deterministic {r['reference_deterministic']}",
                     "-", "-", "-", size(r["peak_device_bytes"]), "yes" if r["fits"] else "no", "-", "-",
                     f"{r['faults']} faults, {r['evictions']} evictions", "-", "-", "-",
                     "ok" if r["ok"] else "FAILED"]
            out.append("| " + " | ".join(cells) + " |")
        elif "median_s" in r:
            out.append(_measured_row(r, plain.get(r["model"])))
        else:
            out.append(f"| {r.get('model', '-')} | {r['method']} | {budget_text(r)} |" + " - |" * (COLUMNS - 4)
                       + f" {r.get('skipped') or r.get('error', '')} |")
    return "\n".join(out)


def _x(r: dict) -> float | None:
    # A budgeted case sits at its budget, any other (and the whole-card case,
    # whose budget is not a constraint) at its own peak.
    if r.get("budget_label") == "card":
        return r.get("peak_device_bytes")
    return r.get("budget_bytes") or r.get("peak_device_bytes")


def _axis(ax, model: str, mine: list[dict], base: dict, methods) -> None:
    """One model's panel: a line per method; methods with no device peak as dashed levels."""
    top = 1.1
    scale, unit = (2**30, "GiB") if max((_x(r) or 0) for r in mine) >= 2**30 else (2**20, "MiB")
    for method in methods:
        ours = [r for r in mine if r["method"] == method and r.get("fits", True)]
        pts = sorted((_x(r), base["median_s"] / r["median_s"]) for r in ours if _x(r))
        if pts:
            ax.plot([p[0] / scale for p in pts], [p[1] for p in pts], marker="o", label=method)
            top = max(top, 1.1 * max(p[1] for p in pts))
        for r in ours:
            if not _x(r):  # no device peak measured (a peer on the cpu device): its level alone
                level = base["median_s"] / r["median_s"]
                ax.axhline(level, linestyle="--", linewidth=1, label=f"{method} (no device peak measured)",
                           color=f"C{list(methods).index(method) % 10}")
                top = max(top, 1.1 * level)
    ax.set_title(model)
    ax.set_xlabel(f"device memory budget or peak ({unit})")
    ax.set_ylabel("throughput vs unconstrained")
    ax.set_ylim(0, top)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot(rows: list[dict], path: str, methods) -> None:
    """Throughput relative to unconstrained against budget, one line per method; cases that do not fit are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows if r["method"] not in ("link", "identity")})
    fig, axes = plt.subplots(1, max(1, len(models)), figsize=(5 * max(1, len(models)), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r.get("model") == model and "median_s" in r]
        base = next((r for r in mine if r["method"] == "plain"), None)
        if base is None:
            ax.set_title(f"{model}: no unconstrained case to compare with")
            continue
        _axis(ax, model, mine, base, methods)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
