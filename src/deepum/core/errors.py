"""The core's own errors, and the byte formatter every message uses.

They live here so that core/ needs nothing outside itself; deepum.errors
re-exports them, and they are the very classes users catch
(``deepum.BudgetError`` is this ``BudgetError``).
"""

from __future__ import annotations


class DeepUMError(RuntimeError):
    """Base class of every error deepum raises on purpose."""


class BudgetError(DeepUMError, ValueError):
    """The budget cannot be parsed, is not positive, is surely a mistake, or exceeds the device."""


class OptionError(DeepUMError, ValueError, TypeError):
    """A session option has the wrong type or value.

    It is a ValueError and a TypeError too, so code that caught either from
    earlier versions keeps working.
    """


class BudgetTooSmallError(DeepUMError):
    """One operator needs more device memory at once than the budget allows.

    ``inputs``: (kind, bytes) of the operator's pages, where the engine knows
    them; the remedy depends on what is large (see _remedy).
    """

    def __init__(self, op: str, needed: int, limit: int, budget: int,
                 inputs: list[tuple[str, int]] | tuple = (), in_optimizer_step: bool = False) -> None:
        self.op, self.needed, self.limit, self.budget = op, needed, limit, budget
        self.inputs = list(inputs)
        super().__init__(
            f"operator {op} needs {fmt_bytes(needed)} of device memory at once "
            f"(its inputs and outputs), but the budget of {fmt_bytes(budget)} leaves "
            f"{fmt_bytes(limit)} for tensors. Raise the budget to at least "
            f"{fmt_bytes(needed + (budget - limit))}, {_remedy(op, self.inputs, limit, in_optimizer_step)}. "
            "No tensor was changed."
        )


_PARAMETER_KINDS = {"parameter", "gradient", "optimizer_state"}


def _remedy(op: str, inputs: list[tuple[str, int]], limit: int, in_optimizer_step: bool = False) -> str:
    """What else helps: only activations shrink with the batch (and nothing in an optimizer's
    step is an activation, whatever its pages were classed as when it made them)."""
    largest_kind, largest = max(inputs, key=lambda kb: kb[1], default=("other", 0))
    if largest > limit:
        what = "parameter" if largest_kind in _PARAMETER_KINDS else "tensor"
        return (f"or split the single {what} of {fmt_bytes(largest)}, larger than that alone, into "
                "smaller ones (a smaller batch does not help)")
    kinds = {k for k, _ in inputs}
    if "optimizer_state" in kinds or in_optimizer_step or op.startswith(("aten._foreach_", "aten._fused_")):
        return ("or split the large parameter it updates into smaller ones: this is an optimizer "
                "operator on one parameter, its gradient and its state, which a smaller batch does not shrink")
    if kinds and kinds <= _PARAMETER_KINDS:
        return ("or split the large parameter it works on into smaller ones "
                "(a smaller batch does not shrink parameters)")
    return "or make this operator smaller (a smaller batch or sequence length)"


def fmt_bytes(n: float) -> str:
    """``n`` bytes for a person: GiB, MiB, KiB or B."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
