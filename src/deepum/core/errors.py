"""The core's own errors (re-exported by deepum.errors), and the byte formatter every message uses."""

from __future__ import annotations


class DeepUMError(RuntimeError):
    """Base class of every error deepum raises on purpose."""


class BudgetError(DeepUMError, ValueError):
    """The budget cannot be parsed, is not positive, or exceeds the device."""


class OptionError(DeepUMError, ValueError, TypeError):
    """A session option has the wrong type or value.

    It is a ValueError and a TypeError too, so code that caught either from
    earlier versions keeps working.
    """


class BudgetTooSmallError(DeepUMError):
    """One operator needs more device memory at once than the budget allows."""

    def __init__(self, op: str, needed: int, limit: int, budget: int) -> None:
        self.op, self.needed, self.limit, self.budget = op, needed, limit, budget
        super().__init__(
            f"operator {op} needs {fmt_bytes(needed)} of device memory at once "
            f"(its inputs and outputs), but the budget of {fmt_bytes(budget)} leaves "
            f"{fmt_bytes(limit)} for tensors. Raise the budget to at least "
            f"{fmt_bytes(needed + (budget - limit))}, or make this operator smaller "
            "(a smaller batch or sequence length). No tensor was changed."
        )


def fmt_bytes(n: float) -> str:
    """``n`` bytes for a person: GiB, MiB, KiB or B."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{int(n)} B"
