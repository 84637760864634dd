"""Command line: ``deepum run`` and ``deepum report``."""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys

from ..errors import DeepUMError
from . import session as _session
from .status import StatusLine


def _fmt_bytes(n: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"


def summary(stats: dict) -> str:
    """A few lines a person reads at the end of a run."""
    if not stats:
        return "deepum: no statistics"
    lines = [
        f"deepum: policy {stats['policy']}, budget {_fmt_bytes(stats['budget_bytes'])}, "
        f"peak device {_fmt_bytes(stats['peak_device_bytes'])}, {stats['managed_pages']} pages managed at exit",
        f"  {stats['ops']} operators, {stats['faults']} faults, {stats['evictions']} evictions "
        f"({stats['writebacks']} written back, {stats['dropped_clean']} dropped clean, "
        f"{stats.get('drops', 0)} dropped to be recomputed; {stats.get('recomputes', 0)} recomputed)",
        f"  moved {_fmt_bytes(stats['bytes_to_device'])} to the device, "
        f"{_fmt_bytes(stats['bytes_to_host'])} to the host; stalled {stats['stall_seconds']:.3f} s",
    ]
    if stats.get("prefetches"):
        lines.append(
            f"  prefetches {stats['prefetches']}: {stats['prefetch_hits']} hits, "
            f"{stats['late_prefetches']} late, {stats['wasted_prefetches']} wasted; "
            f"prediction accuracy {stats['prediction_accuracy']:.1%}"
        )
    kinds = stats.get("resident_bytes_by_kind")
    if kinds and any(kinds.values()):
        lines.append("  resident by kind: " + ", ".join(
            f"{k.replace('_', ' ')} {_fmt_bytes(v)}" for k, v in kinds.items() if v))
    if stats.get("overshoots"):
        lines.append(f"  {stats['overshoots']} operators passed the budget before room was made "
                     f"(the largest by {_fmt_bytes(stats['overshoot_max_bytes'])}); --strict makes this an error")
    if stats.get("unpageable_pages"):
        lines.append(f"  {stats['unpageable_pages']} tensors could not be paged and stayed resident "
                     f"({_fmt_bytes(stats['unpageable_bytes'])} at exit)")
    return "\n".join(lines)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", default=os.environ.get("DEEPUM_BUDGET", "0.9"),
                   help="device memory the process may hold: bytes, '12GiB', '800MB', or a fraction "
                        "of the device such as 0.5 (default: $DEEPUM_BUDGET or 0.9)")
    p.add_argument("--device", default=None, help="'cuda', 'cuda:N' or 'cpu' (default: CUDA if present)")
    p.add_argument("--policy", choices=_session.POLICIES, default="deepum",
                   help="'deepum': correlation prefetch and pre-eviction; 'lru': demand paging")
    p.add_argument("--no-prefetch", action="store_true", help="keep the policy's victim choice, fetch on demand only")
    p.add_argument("--lookahead", type=int, default=64, help="operators the prefetcher works ahead")
    p.add_argument("--no-recompute", action="store_true",
                   help="copy every evicted page out, also those an elementwise operator can remake")
    p.add_argument("--strict", action="store_true",
                   help="fail when an operator's outputs pass the budget instead of counting an overshoot")
    p.add_argument("--quiet", action="store_true", help="no summary at exit")
    p.add_argument("--stats", metavar="FILE", help="save the final stats as JSON (read with 'deepum report')")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace (Perfetto, chrome://tracing)")
    p.add_argument("--plot", metavar="FILE", help="draw device residency by page kind to a PNG")


def cmd_run(args: argparse.Namespace) -> int:
    script = args.script
    if not os.path.isfile(script):
        print(f"deepum run: no such script: {script!r}", file=sys.stderr)
        return 2
    try:
        sess = _session.Session(args.budget, args.device, policy=args.policy,
                                prefetch=not args.no_prefetch, lookahead=args.lookahead,
                                recompute=not args.no_recompute, strict=args.strict,
                                trace=bool(args.trace or args.plot))
    except (DeepUMError, ValueError) as e:
        # Errors that name an API argument say it the command line's way here.
        print(f"deepum run: {getattr(e, 'cli_message', e)}", file=sys.stderr)
        return 2
    sys.argv = [script, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    code = 0
    status = StatusLine(sess) if not args.quiet else None
    try:
        with sess:
            if status is not None:
                status.start()
            try:
                runpy.run_path(script, run_name="__main__")
            finally:
                if status is not None:
                    status.stop()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    finally:
        stats = sess.stats()
        if args.stats:
            with open(args.stats, "w") as f:
                json.dump(stats, f, indent=1)
        if args.trace and sess.pager is not None:
            sess.export_trace(args.trace)
        if args.plot and sess.pager is not None and sess.pager.trace.counters:
            sess.plot_memory(args.plot, title=f"deepum run {os.path.basename(script)}")
        if not args.quiet:
            print(summary(stats), file=sys.stderr)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    try:
        with open(args.file) as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        print(f"deepum report: cannot read {args.file!r}: {e}", file=sys.stderr)
        return 2
    print(summary(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepum", description="Train PyTorch models larger than the device.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Python script with paging on",
                         description="Run an unmodified script like 'python script.py args...', with paging on.")
    _add_engine_options(run)
    run.add_argument("script")
    run.add_argument("args", nargs=argparse.REMAINDER)
    run.set_defaults(fn=cmd_run)
    report = sub.add_parser("report", help="print the summary of stats saved by 'deepum run --stats'")
    report.add_argument("file")
    report.set_defaults(fn=cmd_report)
    bench = sub.add_parser("bench", help="benchmark deepum against the alternatives (see 'deepum bench -h')",
                           add_help=False)
    bench.set_defaults(fn=None)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from ..bench import main as bench_main
        return bench_main(argv[1:])
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
