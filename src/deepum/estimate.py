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

_MAX_RESERVE = 2 << 30


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


def smallest_budget(working_set: int, cuda: bool) -> int:
    """The budget whose limit for pages holds ``working_set`` (the CUDA reserve is an eighth, at most 2 GiB)."""
    if not cuda:
        return max(working_set, 1 << 20)
    # budget - min(budget // 8, 2 GiB) >= working_set
    budget = -(-working_set * 8 // 7)
    if budget // 8 > _MAX_RESERVE:
        budget = working_set + _MAX_RESERVE
    return max(budget, 1 << 20)

