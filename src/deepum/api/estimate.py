"""``deepum estimate``: what budget a program needs, from its first steps.

The script runs under a budget that never binds, with tracing on so that
every operator takes the full path and the pager sees its working set (its
inputs' and outputs' bytes, ``max_working_set_bytes``). After a few optimizer
steps the run is stopped. The smallest budget that would have worked is the
largest working set of one operator plus the reserve; the unconstrained peak
is what the program holds without deepum.
"""

from __future__ import annotations

import torch.optim.optimizer as _optim

from ..core.budget import MIN_BUDGET
from ..core.config import THRESHOLDS, Thresholds


class StopAfterSteps:
    """Ends the script after ``steps`` optimizer steps, by raising :class:`Done` from the step hook.

    [Note: stopping the script]
    Done derives from BaseException, as KeyboardInterrupt does, so that a
    script's ``except Exception`` does not swallow it; it unwinds the script
    as an interrupt would, and the session's exit restores every page.
    """

    class Done(BaseException):
        pass

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self.seen = 0
        self._handle = None

    def install(self) -> None:
        self._handle = _optim.register_optimizer_step_post_hook(self._after_step)

    def remove(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _after_step(self, optimizer, args, kwargs) -> None:
        self.seen += 1
        if self.seen >= self.steps:
            self.remove()
            raise StopAfterSteps.Done


def smallest_budget(working_set: int, cuda: bool, thresholds: Thresholds | None = None) -> int:
    """The budget whose limit for pages holds ``working_set``.

    On CUDA the default reserve (Thresholds.reserve of the budget, at most
    Thresholds.reserve_max) comes off the budget first.
    """
    if not cuda:
        return max(working_set, MIN_BUDGET)
    th = thresholds if thresholds is not None else THRESHOLDS
    # budget - min(budget * share, reserve_max) >= working_set
    budget = int(-(-working_set // (1 - th.reserve)))
    if th.of(th.reserve, budget) > th.reserve_max:
        budget = working_set + th.reserve_max
    return max(budget, MIN_BUDGET)
