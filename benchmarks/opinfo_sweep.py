"""PyTorch's operator database under deepum's stress mode, compared bit for bit with a plain run.

    python benchmarks/opinfo_sweep.py                    # every OpInfo, float32, CPU
    python benchmarks/opinfo_sweep.py --first 40         # the fast subset CI runs
    python benchmarks/opinfo_sweep.py --recipes          # every output gets a recipe

Stress mode evicts every managed page after every operator and the sample's
inputs are evicted before the operator runs, so every input of every aten
operator the OpInfo calls is faulted back in. Forward outputs, and gradients
where the OpInfo supports autograd, must equal a plain run's bit for bit
(NaN where NaN). Each slice of operators runs in a child process, so a crash
is reported against its operators instead of ending the sweep.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.layout != b.layout:
            return False
        a, b = a.detach(), b.detach()
        if a.layout != torch.strided:  # sparse COO/CSR/...: compare the values they stand for
            a, b = a.to_dense(), b.to_dense()
        if a.dtype.is_floating_point and a.element_size() == 1:
            # float8 has almost no operators (no nan_to_num, no equal): compare the bits.
            return bool(torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8)))
        if a.is_complex():
            a, b = torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())
        if a.is_floating_point():
            return bool(torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))
                        and torch.equal(a.isnan(), b.isnan()))
        return bool(torch.equal(a, b))
    return a == b or (a != a and b != b)


def _run(op, sample, grad: bool):
    torch.manual_seed(0)
    out = op(sample.input, *sample.args, **sample.kwargs)
    outs = [t for t in tree_flatten(out)[0]]
    grads = []
    if grad:
        leaves = [t for t in tree_flatten((sample.input, sample.args, sample.kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.requires_grad]
        diff = [t for t in outs if isinstance(t, torch.Tensor) and t.requires_grad]
        if leaves and diff:
            total = sum(t.float().sum() for t in diff if not t.is_complex())
            if isinstance(total, torch.Tensor):
                grads = list(torch.autograd.grad(total, leaves, allow_unused=True))
    return outs, grads


def _clone(sample):
    """The same sample with fresh leaves, so the plain and the paged run share no tensor."""
    def c(x):
        if isinstance(x, torch.Tensor):
            return x.detach().clone().requires_grad_(x.requires_grad)
        return x

    return type(sample)(tree_map(c, sample.input), args=tree_map(c, sample.args),
                        kwargs=tree_map(c, sample.kwargs),
                        output_process_fn_grad=sample.output_process_fn_grad)


class _PassThrough(TorchDispatchMode):
    """Any dispatch mode, doing nothing: the second reference (see _outcome)."""

    @classmethod
    def _should_skip_dynamo(cls):
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _equal(x, y) -> bool:
    return (len(x[0]) == len(y[0]) and all(_same(a, b) for a, b in zip(x[0], y[0]))
            and len(x[1]) == len(y[1])
            and all((a is None and b is None) or (a is not None and b is not None and _same(a, b))
                    for a, b in zip(x[1], y[1])))


def _close(x, y) -> bool:
    def dense(t):
        return t.detach().to_dense() if isinstance(t, torch.Tensor) and t.layout != torch.strided else t

    try:
        torch.testing.assert_close([dense(t) for t in x[0]], [dense(t) for t in y[0]], equal_nan=True)
        torch.testing.assert_close([dense(t) for t in x[1]], [dense(t) for t in y[1]], equal_nan=True)
    except (AssertionError, TypeError):
        return False
    return True


# Operators whose outputs are uninitialized memory: no two runs agree.
UNINITIALIZED = ("empty", "empty_like", "empty_permuted", "empty_strided", "new_empty", "new_empty_strided")


def check_op(op, max_samples: int, recipes: bool = False) -> dict:
    """``recipes``: every output gets a recipe whatever its size, so every
    elementwise operator is also dropped and computed again."""
    import deepum

    counts = collections.Counter()
    failures = []
    grad = op.supports_autograd
    if op.name in UNINITIALIZED:
        return {"op": op.name, "skipped": "outputs are uninitialized memory"}
    try:
        samples = list(op.sample_inputs("cpu", torch.float32, requires_grad=grad))[:max_samples]
    except Exception as e:  # the OpInfo cannot make float32 samples on CPU
        return {"op": op.name, "skipped": f"no float32 CPU samples ({type(e).__name__})"}
    for sample in samples:
        try:
            ref_out, ref_grads = _run(op, _clone(sample), grad)
        except Exception:
            counts["plain_error"] += 1  # the sample is meant to fail, or the op does not support it
            continue
        paged = _clone(sample)
        try:
            # 'age' drops whenever a recipe allows; 'cost' would copy these small pages instead.
            options = {"victims": "age"} if recipes else {}
            with deepum.oversubscribe(1.0, "cpu", stress=True, **options) as session:
                if recipes:
                    session.pager.recompute_min_bytes = 0
                session.manage(tree_flatten((paged.input, paged.args, paged.kwargs))[0])
                out, grads = _run(op, paged, grad)
        except Exception as e:
            counts["failed"] += 1
            failures.append(f"raised {type(e).__name__}: {str(e)[:200]}")
            continue
        if _equal((out, grads), (ref_out, ref_grads)):
            counts["passed"] += 1
        else:
            # Some autograd formulas take another, composite-compliant branch
            # whenever any dispatch mode is active (at::isTensorSubclassLike):
            # then a pass-through mode, paging nothing, differs from plain too.
            try:
                with _PassThrough():
                    mode_ref = _run(op, _clone(sample), grad)
            except Exception:
                mode_ref = None
            if mode_ref is not None and _equal((out, grads), mode_ref):
                counts["passed_as_any_mode"] += 1
            elif any(not _equal(_run(op, _clone(sample), grad), (ref_out, ref_grads))
                     for _ in range(3)):
                # Plain PyTorch does not reproduce itself here (LAPACK's gelsy
                # driver, for one): hold deepum to the tolerances of a test.
                if _close((out, grads), (ref_out, ref_grads)):
                    counts["passed_nondeterministic"] += 1
                else:
                    counts["failed"] += 1
                    failures.append("nondeterministic operator, outside assert_close's tolerances")
            else:
                counts["failed"] += 1
                failures.append("output or gradient differs from plain and from a pass-through mode")
        st = session.stats()
        if st["faults"] == 0 and any(isinstance(t, torch.Tensor) and t.numel()
                                     for t in tree_flatten(paged.input)[0]):
            counts["no_faults"] += 1
        counts["recomputes"] += st["recomputes"]
    return {"op": op.name, **counts, "failures": failures[:3]}


def _child(indices: list[int], max_samples: int, recipes: bool) -> None:
    from torch.testing._internal.common_methods_invocations import op_db

    for i in indices:
        print(json.dumps(check_op(op_db[i], max_samples, recipes)), flush=True)


def sweep(first: int | None, max_samples: int, slice_size: int = 20, recipes: bool = False) -> list[dict]:
    from torch.testing._internal.common_methods_invocations import op_db

    n = len(op_db) if first is None else min(first, len(op_db))
    rows = []
    for start in range(0, n, slice_size):
        todo = list(range(start, min(start + slice_size, n)))
        while todo:
            r = subprocess.run([sys.executable, __file__, "--child", ",".join(map(str, todo)),
                                "--max-samples", str(max_samples)] + (["--recipes"] if recipes else []),
                               capture_output=True, text=True, timeout=1800)
            done = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
            rows += done
            todo = todo[len(done):]
            if todo and r.returncode != 0:  # the child died on todo[0]
                rows.append({"op": op_db[todo[0]].name, "crashed": f"exit code {r.returncode}"})
                todo = todo[1:]
    return rows


def summary(rows: list[dict]) -> dict:
    total = collections.Counter()
    for r in rows:
        for k in ("passed", "passed_as_any_mode", "passed_nondeterministic", "failed", "plain_error",
                  "no_faults"):
            total[k] += r.get(k, 0)
    return {
        "operators": len(rows),
        "operators_run": sum(1 for r in rows if r.get("passed") or r.get("failed") or r.get("passed_as_any_mode")
                              or r.get("passed_nondeterministic")),
        "operators_like_any_dispatch_mode": sorted(r["op"] for r in rows if r.get("passed_as_any_mode")),
        "operators_failed": sorted(r["op"] for r in rows if r.get("failed")),
        "operators_crashed": sorted(r["op"] for r in rows if r.get("crashed")),
        "operators_skipped": {reason: sorted(r["op"] for r in rows if r.get("skipped") == reason)
                              for reason in sorted({r["skipped"] for r in rows if r.get("skipped")})},
        "operators_nondeterministic_in_plain": sorted(r["op"] for r in rows if r.get("passed_nondeterministic")),
        "samples_passed": total["passed"], "samples_passed_as_any_mode": total["passed_as_any_mode"],
        "samples_passed_nondeterministic": total["passed_nondeterministic"],
        "samples_failed": total["failed"],
        "samples_invalid_in_plain_run": total["plain_error"], "samples_without_faults": total["no_faults"],
        "pages_recomputed": sum(r.get("recomputes", 0) for r in rows),
        "operators_with_recomputes": sum(1 for r in rows if r.get("recomputes")),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--first", type=int, default=None, help="only the first N OpInfos")
    ap.add_argument("--max-samples", type=int, default=8)
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--ops", default=None, help="only these OpInfo names, comma-separated")
    ap.add_argument("--recipes", action="store_true",
                    help="give every output a recipe (no size threshold): dropped pages are computed again")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ops is not None:
        from torch.testing._internal.common_methods_invocations import op_db

        names = set(args.ops.split(","))
        args.child = ",".join(str(i) for i, op in enumerate(op_db) if op.name in names)
    if args.child is not None:
        _child([int(i) for i in args.child.split(",")], args.max_samples, args.recipes)
        return 0
    rows = sweep(args.first, args.max_samples, recipes=args.recipes)
    if args.json:
        with open(args.json, "w") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    s = summary(rows)
    print(json.dumps(s, indent=1))
    for r in rows:
        if r.get("failed") or r.get("crashed"):
            print(r["op"], r.get("crashed") or r.get("failures"))
    return 0 if not s["operators_failed"] and not s["operators_crashed"] else 1


if __name__ == "__main__":
    sys.exit(main())
