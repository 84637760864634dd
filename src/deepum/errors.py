"""Errors a user can cause, each naming the cause and the remedy.

Every error is raised before any page is changed, or after the engine has put
every page back in a state from which its data can be recovered: nothing the
program owns is lost by an error from deepum.
"""

from __future__ import annotations

from .core.errors import BudgetError, DeepUMError

__all__ = [
    "BudgetError", "BudgetTooSmallError", "DeepUMError", "HostMemoryError", "RestoreError",
    "UnmanagedMemoryError", "UnsupportedError",
]


class BudgetTooSmallError(DeepUMError):
    """One operator needs more device memory at once than the budget allows.

    ``inputs``: (kind, bytes) of the operator's pages, where the engine knows
    them; the remedy depends on what is large (see _remedy).
    """

    def __init__(self, op: str, needed: int, limit: int, budget: int,
                 inputs: list[tuple[str, int]] | tuple = ()) -> None:
        self.op, self.needed, self.limit, self.budget = op, needed, limit, budget
        self.inputs = list(inputs)
        super().__init__(
            f"operator {op} needs {_fmt(needed)} of device memory at once "
            f"(its inputs and outputs), but the budget of {_fmt(budget)} leaves "
            f"{_fmt(limit)} for tensors. Raise the budget to at least "
            f"{_fmt(needed + (budget - limit))}, {_remedy(op, self.inputs, limit)}. "
            "No tensor was changed."
        )


_PARAMETER_KINDS = {"parameter", "gradient", "optimizer_state"}


def _remedy(op: str, inputs: list[tuple[str, int]], limit: int) -> str:
    """What else helps: only activations shrink with the batch."""
    largest_kind, largest = max(inputs, key=lambda kb: kb[1], default=("other", 0))
    if largest > limit:
        what = "parameter" if largest_kind in _PARAMETER_KINDS else "tensor"
        return (f"or split the single {what} of {_fmt(largest)}, larger than that alone, into "
                "smaller ones (a smaller batch does not help)")
    kinds = {k for k, _ in inputs}
    if "optimizer_state" in kinds or op.startswith(("aten._foreach_", "aten._fused_")):
        return ("or split the large parameter it updates into smaller ones: this is an optimizer "
                "operator on one parameter, its gradient and its state, which a smaller batch does not shrink")
    if kinds and kinds <= _PARAMETER_KINDS:
        return ("or split the large parameter it works on into smaller ones "
                "(a smaller batch does not shrink parameters)")
    return "or make this operator smaller (a smaller batch or sequence length)"


class UnmanagedMemoryError(DeepUMError):
    """The allocator is full of memory the pager cannot evict."""

    def __init__(self, op: str, needed: int, managed: int, budget: int) -> None:
        self.op, self.needed = op, needed
        super().__init__(
            f"operator {op} could not allocate within the budget of {_fmt(budget)} although "
            f"it needs only {_fmt(needed)} and deepum holds {_fmt(managed)} of pages: the rest is "
            "memory deepum cannot evict (tensors no operator inside the session has touched, "
            "allocations from other libraries, or fragmentation). Enter the session before "
            "creating the model and optimizer, keep adopt=True, or leave more headroom with "
            "reserve=. No tensor was changed."
        )


class HostMemoryError(DeepUMError, MemoryError):
    """Host memory for evicted pages could not be allocated or pinned."""

    def __init__(self, nbytes: int, pinned: bool, cause: BaseException | str | None) -> None:
        kind = "pinned host memory" if pinned else "host memory"
        super().__init__(
            f"could not allocate {_fmt(nbytes)} of {kind} to evict a page "
            f"({cause}). Free host memory, raise the device budget so fewer "
            "pages leave the device, or lower the locked-memory limit's use by "
            "other processes. The page stayed on the device; nothing was lost."
        )


class RestoreError(DeepUMError):
    """Leaving the context, the evicted pages do not all fit back on the device."""

    def __init__(self, pending: int, pending_bytes: int, cause: BaseException | None) -> None:
        self.pending, self.pending_bytes = pending, pending_bytes
        super().__init__(
            f"leaving deepum, {pending} evicted tensors ({_fmt(pending_bytes)}) "
            f"do not fit back on the device ({cause}). Their data is intact in "
            "host memory, held by this session: free device memory (delete "
            "tensors you no longer need) and call session.restore(), or keep "
            "working inside deepum.oversubscribe(...)."
        )


class UnsupportedError(DeepUMError):
    """A setting or environment that deepum cannot run under."""


def _fmt(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"
