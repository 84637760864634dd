"""Command line: ``deepum run``, ``deepum estimate`` and ``deepum report``.

[Note: the CLI's conventions]
As the tools it sits beside (python, pip, git): a mistake of the user's
(a bad option, a budget one operator cannot fit in, an unwritable output
path) is one line on stderr and exit code 2, with the traceback only under
``--debug`` or ``DEEPUM_DEBUG=1``; output paths are checked before the script
starts, so an hour of training is never lost to a typo; the script's own
exceptions print their traceback and exit 1, as under python.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import runpy
import sys
import traceback

from ..errors import DeepUMError
from .status import StatusLine, fmt_bytes

_PLOT_SUFFIXES = (".png", ".svg", ".pdf")
_DEVICE = re.compile(r"^(cpu|cuda(:[0-9]+)?)$")
# Keys every stats dict has; a JSON file without them is not 'deepum run --stats' output.
_STATS_KEYS = ("policy", "budget_bytes", "peak_device_bytes", "ops", "faults", "evictions")


class UsageError(Exception):
    """A mistake in how deepum was called: one line, exit code 2."""


def summary(stats: dict) -> str:
    """A few lines a person reads at the end of a run."""
    if not stats:
        return "deepum: no statistics"
    lines = [
        f"deepum: policy {stats['policy']}, budget {fmt_bytes(stats['budget_bytes'])}, "
        f"peak device {fmt_bytes(stats['peak_device_bytes'])}, {stats.get('managed_pages', 0)} pages managed at exit",
        f"  {stats['ops']} operators, {stats['faults']} faults, {stats['evictions']} evictions "
        f"({stats.get('writebacks', 0)} written back, {stats.get('dropped_clean', 0)} dropped clean, "
        f"{stats.get('drops', 0)} dropped to be recomputed; {stats.get('recomputes', 0)} recomputed)",
        f"  moved {fmt_bytes(stats.get('bytes_to_device', 0))} to the device, "
        f"{fmt_bytes(stats.get('bytes_to_host', 0))} to the host; stalled {stats.get('stall_seconds', 0.0):.3f} s",
    ]
    if stats.get("paging_stops"):
        lines.append(f"  paging on for {stats.get('paging_seconds', 0.0):.1f} s (the operators above were "
                     f"intercepted then); dormant while memory was not tight: stopped "
                     f"{stats['paging_stops']} times, started again {stats.get('paging_starts', 0)}")
    if "bytes_dropped" in stats or "recompute_seconds" in stats:
        lines.append(f"  dropped {fmt_bytes(stats.get('bytes_dropped', 0))} instead of copying it; "
                     f"recomputing took {stats.get('recompute_seconds', 0.0):.3f} s")
    if stats.get("prefetches"):
        lines.append(
            f"  prefetches {stats['prefetches']}: {stats['prefetch_hits']} hits, "
            f"{stats['late_prefetches']} late, {stats['wasted_prefetches']} wasted; "
            f"prediction accuracy {stats['prediction_accuracy']:.1%}"
        )
    if stats.get("overshoots"):
        largest = stats.get("overshoot_max_bytes")
        lines.append(f"  {stats['overshoots']} overshoots: operators whose outputs passed the budget before "
                     "deepum made room" + (f" (the largest by {fmt_bytes(largest)})" if largest else "")
                     + "; --strict makes this an error")
    kinds = stats.get("resident_bytes_by_kind")
    if kinds and any(kinds.values()):
        lines.append("  resident by kind: " + ", ".join(
            f"{k.replace('_', ' ')} {fmt_bytes(v)}" for k, v in kinds.items() if v))
    if stats.get("unpageable_pages"):
        lines.append(f"  {stats['unpageable_pages']} tensors could not be paged and stayed resident "
                     f"({fmt_bytes(stats.get('unpageable_bytes', 0))} at exit)")
    return "\n".join(lines)


def estimate_report(stats: dict, session, steps: int) -> str:
    """What ``deepum estimate`` prints."""
    from .estimate import smallest_budget

    ran = stats.get("optimizer_steps", 0)
    scope = (f"its first {ran} optimizer steps" if ran >= steps
             else f"the whole run ({ran} optimizer steps)")
    working = stats.get("max_working_set_bytes", 0)
    if not working:
        return f"deepum estimate: {scope} ran no operator on the device's memory; nothing to estimate"
    cuda = session.device.type == "cuda"
    need = smallest_budget(working, cuda)
    lines = [
        f"deepum estimate: over {scope}, on {session.device}:",
        f"  unconstrained peak: {fmt_bytes(stats['peak_device_bytes'])} (no budget needed above it)",
        f"  smallest budget that would have worked: {fmt_bytes(need)}, set by operator "
        f"{stats.get('max_working_set_op') or '?'} ({fmt_bytes(working)} of inputs and outputs at once"
        + (", plus the reserve for memory deepum cannot see)" if cuda else ")"),
        "  (a budget near the smallest works but pages heavily: between the two, the larger the faster)",
    ]
    if stats.get("evictions"):
        lines.insert(2, "  (the program did not fit the whole device: the peak is the device's, capped)")
    return "\n".join(lines)


# ------------------------------------------------------------------ parsing

def _add_engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budget", default=os.environ.get("DEEPUM_BUDGET", "0.9"),
                   help="device memory the process may hold: bytes, '12GiB', '800MB', or a fraction "
                        "of the device such as 0.5 (default: $DEEPUM_BUDGET or 0.9)")
    p.add_argument("--device", default=None, help="'cuda', 'cuda:N' or 'cpu' (default: CUDA if present)")
    p.add_argument("--policy", choices=("deepum", "lru"), default="deepum",
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
    p.add_argument("--plot", metavar="FILE", help="draw device residency by page kind (.png, .svg or .pdf)")
    p.add_argument("--estimate", action="store_true",
                   help="run the first optimizer steps unconstrained and print the budget the script needs")
    p.add_argument("--steps", type=int, default=3, help="with --estimate: optimizer steps to run (default 3)")
    p.add_argument("--debug", action="store_true", help="print tracebacks of deepum's errors")


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="deepum", description="Train PyTorch models larger than the device.")
    parser.add_argument("--version", action="version", version=f"deepum {__version__}")
    parser.add_argument("--debug", action="store_true", help="print tracebacks of deepum's errors")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a Python script with paging on", allow_abbrev=False,
                         usage="deepum run [options] script.py [args ...]",
                         description="Run an unmodified script like 'python script.py args...', with paging on. "
                                     "Everything after the script goes to it unchanged.")
    _add_engine_options(run)
    estimate = sub.add_parser("estimate", help="print the budget a script needs", allow_abbrev=False,
                              usage="deepum estimate [options] script.py [args ...]",
                              description="Run the script's first optimizer steps under a budget that never "
                                          "binds, then print its peak and the smallest budget that would work.")
    _add_engine_options(estimate)
    report = sub.add_parser("report", help="print the summary of stats saved by 'deepum run --stats'")
    report.add_argument("file")
    sub.add_parser("bench", help="benchmark deepum against the alternatives (see 'deepum bench -h')",
                   add_help=False)
    return parser, run, estimate


def _split_script(argv: list[str], parser: argparse.ArgumentParser) -> tuple[list[str], str | None, list[str]]:
    """Options for deepum, the script, and the script's arguments, verbatim ('--' included)."""
    takes_value = {s for a in parser._actions for s in a.option_strings if a.nargs != 0}
    i = 0
    while i < len(argv):
        tok = argv[i]
        if tok == "--":
            return argv[:i], (argv[i + 1] if i + 1 < len(argv) else None), argv[i + 2:]
        if tok.startswith("-") and tok != "-":
            i += 2 if tok in takes_value else 1
            continue
        return argv[:i], tok, argv[i + 1:]
    return argv, None, []


def _parse(argv: list[str]) -> argparse.Namespace:
    parser, run, estimate = _parser()
    first = next((i for i, a in enumerate(argv) if not a.startswith("-")), None)
    if first is None or argv[first] not in ("run", "estimate"):
        return parser.parse_args(argv)
    sub = run if argv[first] == "run" else estimate
    opts, script, rest = _split_script(argv[first + 1:], sub)
    args = sub.parse_args(opts)
    args.debug = args.debug or "--debug" in argv[:first]
    if script is None:
        sub.error("the script to run is missing")
    args.command, args.script, args.args = argv[first], script, rest
    args.estimate = args.estimate or args.command == "estimate"
    if args.estimate and args.steps < 1:
        sub.error("--steps must be at least 1")
    return args


# ------------------------------------------------------------------ checks

def _check_device(device: str | None) -> None:
    if device is None:
        return
    if not _DEVICE.match(device):
        raise UsageError(f"--device {device!r} is not a device deepum pages; use 'cuda', 'cuda:N' or 'cpu'")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} was asked for, but CUDA is not available here; use --device cpu")
        index = int(device[5:] or 0)
        if index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")


def _check_output(flag: str, path: str | None, suffixes: tuple[str, ...] = ()) -> None:
    """Fail now, before the script runs, if ``path`` cannot be written at the end."""
    if not path:
        return
    if suffixes and os.path.splitext(path)[1].lower() not in suffixes:
        raise UsageError(f"{flag} {path!r}: the file name must end in {', '.join(suffixes)} "
                         "(the format is taken from it)")
    if os.path.isdir(path):
        raise UsageError(f"{flag} {path!r} is a directory; give a file name")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{flag} {path!r}: the directory {folder!r} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise UsageError(f"{flag} {path!r}: no permission to write there")
    if suffixes and importlib.util.find_spec("matplotlib") is None:
        raise UsageError(f"{flag} needs matplotlib: pip install matplotlib")


def _make_session(args: argparse.Namespace):
    from . import session as _session

    if not os.path.isfile(args.script):
        raise UsageError(f"no such script: {args.script!r}")
    _check_device(args.device)
    _check_output("--stats", args.stats)
    _check_output("--trace", args.trace)
    _check_output("--plot", args.plot, _PLOT_SUFFIXES)
    try:
        return _session.Session(1.0 if args.estimate else args.budget, args.device, policy=args.policy,
                                prefetch=not args.no_prefetch, lookahead=args.lookahead,
                                recompute=not args.no_recompute, strict=args.strict,
                                trace=bool(args.trace or args.plot or args.estimate))
    except (DeepUMError, ValueError) as e:  # the Python API's option checks
        # Errors that name an API argument say it the command line's way here.
        raise UsageError(str(getattr(e, "cli_message", e))) from e


# ------------------------------------------------------------------ running

def _script_traceback(exc: BaseException, script: str) -> None:
    """Print ``exc`` as python would for the script: deepum's and runpy's frames left out."""
    tb = exc.__traceback__
    target = os.path.abspath(script)
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename) != target:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


def _deepum_error(exc: BaseException) -> DeepUMError | None:
    """The deepum error that caused ``exc``, if any (autograd may re-raise it wrapped)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, DeepUMError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _run_script(args: argparse.Namespace, sess) -> int:
    """Run the script under ``sess``; return its exit code. DeepUM errors propagate."""
    from .estimate import StopAfterSteps

    sys.argv = [args.script, *args.args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(args.script)))
    status = StatusLine(sess) if not (args.quiet or args.estimate) else None
    stopper = StopAfterSteps(args.steps) if args.estimate else None
    try:
        with sess:
            if stopper is not None:
                stopper.install()
            if status is not None:
                status.start()
            try:
                runpy.run_path(args.script, run_name="__main__")
            finally:
                if status is not None:
                    status.stop()
                if stopper is not None:
                    stopper.remove()
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    except StopAfterSteps.Done:
        return 0
    except KeyboardInterrupt:
        print("KeyboardInterrupt", file=sys.stderr)
        return 130
    except Exception as e:
        if _deepum_error(e) is not None:
            raise
        _script_traceback(e, args.script)
        return 1
    return 0


def _write_outputs(args: argparse.Namespace, sess, stats: dict) -> None:
    """Write --stats, --trace and --plot; a failure is one line, and the rest still get written."""
    jobs = [("--stats", args.stats, lambda p: _dump_json(stats, p))]
    if sess.pager is not None and sess.pager.trace is not None:
        jobs.append(("--trace", args.trace, sess.export_trace))
        if sess.pager.trace.counters:
            title = f"deepum {args.command} {os.path.basename(args.script)}"
            jobs.append(("--plot", args.plot, lambda p: sess.plot_memory(p, title=title)))
    for flag, path, write in jobs:
        if not path:
            continue
        try:
            write(path)
        except (OSError, ValueError, RuntimeError) as e:
            print(f"deepum {args.command}: could not write {flag} {path!r}: {e}", file=sys.stderr)


def _dump_json(stats: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(stats, f, indent=1)


def cmd_run(args: argparse.Namespace) -> int:
    sess = _make_session(args)
    error: DeepUMError | None = None
    try:
        code = _run_script(args, sess)
    except Exception as e:
        error = _deepum_error(e)
        if error is None:
            raise
        if args.debug:
            traceback.print_exception(type(e), e, e.__traceback__)
        code = 2
    stats = sess.stats()
    _write_outputs(args, sess, stats)
    if args.estimate:
        print(estimate_report(stats, sess, args.steps), file=sys.stderr)
    elif not args.quiet:
        print(summary(stats), file=sys.stderr)
    if error is not None:
        print(f"deepum {args.command}: error: {_cli_words(str(error))}", file=sys.stderr)
    return code


def cmd_report(args: argparse.Namespace) -> int:
    try:
        with open(args.file) as f:
            stats = json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot read {args.file!r}: {e}") from e
    if isinstance(stats, dict) and "traceEvents" in stats:
        raise UsageError(f"{args.file!r} is a trace (from --trace), not stats: open it in ui.perfetto.dev, "
                         "and give 'deepum report' the file of 'deepum run --stats FILE'")
    missing = [k for k in _STATS_KEYS if not isinstance(stats, dict) or k not in stats]
    if missing:
        raise UsageError(f"{args.file!r} is not stats from 'deepum run --stats' (no {', '.join(missing)})")
    print(summary(stats))
    return 0


def _cli_words(message: str) -> str:
    """Advice written for the Python API, said as the CLI's options."""
    return message.replace("device='cpu'", "--device cpu").replace("device=\"cpu\"", "--device cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from ..bench import main as bench_main

        return bench_main(argv[1:])
    debug = os.environ.get("DEEPUM_DEBUG", "") not in ("", "0")
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        args = _parse(argv)
        debug = args.debug = debug or args.debug
        return {"run": cmd_run, "estimate": cmd_run, "report": cmd_report}[args.command](args)
    except (UsageError, DeepUMError) as e:
        if debug:
            traceback.print_exc()
        print(f"deepum {command}: error: {_cli_words(str(e))}".replace("deepum : ", "deepum: "),
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
