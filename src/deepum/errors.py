"""Errors a user can cause, each naming the cause and the remedy.

Every error is raised before any page is changed, or after the engine has put
every page back in a state from which its data can be recovered: nothing the
program owns is lost by an error from deepum.
"""

from __future__ import annotations

from .core.errors import BudgetError, BudgetTooSmallError, DeepUMError, OptionError, fmt_bytes

__all__ = [
    "BudgetError", "BudgetOvershootError", "BudgetTooSmallError", "DeviceUnavailableError", "DeepUMError", "HostMemoryError",
    "OptionError", "RestoreError", "UnmanagedMemoryError", "UnsupportedError",
]


class BudgetOvershootError(DeepUMError):
    """Under ``strict``: an operator's outputs passed the budget's limit before deepum could make room."""

    def __init__(self, op: str, over: int, budget: int, unpageable: int = 0) -> None:
        self.op, self.over, self.budget, self.unpageable = op, over, budget, unpageable
        why = ("(its output size could not be told before it ran); deepum made room right after it, "
               "no tensor was lost. Raise the budget by that much" if not unpageable else
               f"with {unpageable_cause(unpageable)}; no tensor was lost. Copy those tensors inside the "
               "session (.clone()) or let go of them, or raise the budget")
        super().__init__(
            f"operator {op} made outputs {fmt_bytes(over)} past the budget of {fmt_bytes(budget)} "
            f"{why}, or run without strict to count overshoots in the stats (overshoots, "
            "overshoot_max_bytes) instead.")


def unpageable_cause(nbytes: int) -> str:
    """What holds ``nbytes`` of the budget that deepum cannot page out, for messages."""
    return (f"{fmt_bytes(nbytes)} of the budget held by tensors deepum cannot page out (storages "
            "that cannot be resized: memory loaded by torch.load, safetensors or from_pretrained "
            "on this device, made by torch.from_numpy or torch.frombuffer, or shared with numpy)")


class UnmanagedMemoryError(DeepUMError):
    """The allocator is full of memory the pager cannot evict."""

    def __init__(self, op: str, needed: int, managed: int, budget: int) -> None:
        self.op, self.needed = op, needed
        super().__init__(
            f"operator {op} could not allocate within the budget of {fmt_bytes(budget)} although "
            f"it needs only {fmt_bytes(needed)} and deepum holds {fmt_bytes(managed)} of pages: the rest is "
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
            f"could not allocate {fmt_bytes(nbytes)} of {kind} to evict a page "
            f"({cause}). Free host memory, raise the device budget so fewer "
            "pages leave the device, or lower the locked-memory limit's use by "
            "other processes. The page stayed on the device; nothing was lost."
        )


class RestoreError(DeepUMError):
    """Leaving the context, the evicted pages do not all fit back on the device."""

    def __init__(self, pending: int, pending_bytes: int, cause: BaseException | None) -> None:
        self.pending, self.pending_bytes = pending, pending_bytes
        super().__init__(
            f"leaving deepum, {pending} evicted tensors ({fmt_bytes(pending_bytes)}) "
            f"do not fit back on the device ({cause}). Their data is intact in "
            "host memory, held by this session: free device memory (delete "
            "tensors you no longer need) and call session.restore(), or keep "
            "working inside deepum.oversubscribe(...)."
        )


class UnsupportedError(DeepUMError):
    """A setting or environment that deepum cannot run under."""



class DeviceUnavailableError(UnsupportedError):
    """The device asked for does not exist here.

    ``advice`` is what to do in the API's words; ``cli_message`` says the same
    for the command line, where the device is chosen with ``--device``.
    """

    def __init__(self, asked: str, why: str) -> None:
        self.asked = asked
        self.why = why
        self.advice = "use device='cpu'"
        self.cli_message = f"{why}; use --device cpu"
        super().__init__(f"{why}; {self.advice}")
