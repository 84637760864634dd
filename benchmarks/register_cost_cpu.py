"""What an operator's output costs the quiet path, in pieces (cpu tier, one thread).

    python benchmarks/register_cost_cpu.py

Times, outside the dispatch mode of a session whose budget is never
reached, 20,000 additions of two 16-float tensors with one more piece of
the output's registration each time (best of seven), less the addition
alone: the storage and its look-up; the checks before a page is made
(managed, strided, size, device) and ``pageable``; a ``Page``; a ``Page``
and its weak reference; ``Pager.register`` with the reap of the page
when its storage dies; and the whole ``_register_outputs`` with the reap.
"""

import time

import torch
from torch.utils._python_dispatch import _disable_current_modes

import deepum
from deepum.core.pages import Page
from deepum.engine.intercept.mode import QUIET
from deepum.engine.intercept.plan import pageable
from deepum.engine.lifecycle import StorageRef

torch.set_num_threads(1)
storage_of = torch._C.TensorBase.untyped_storage


def timed(fn, n: int = 20000) -> float:
    best = float("inf")
    for _ in range(7):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


def main() -> None:
    x, y = torch.randn(16), torch.randn(16)
    with deepum.oversubscribe(1 << 33, "cpu") as session:
        mode, pager = session._mode, session.pager
        get, dead = pager.table.pages.get, pager.dead

        def storage():
            s = storage_of(torch.add(x, y))
            get(s._cdata)

        def checks():
            t = torch.add(x, y)
            s = storage_of(t)
            get(s._cdata)
            mode.is_managed(t), t.layout == torch.strided, s.nbytes(), s.device != mode.device, pageable(t, s)

        def page():
            s = storage_of(torch.add(x, y))
            Page(s._cdata, 64, -1, True)

        def page_and_ref():
            s = storage_of(torch.add(x, y))
            p = Page(s._cdata, 64, -1, True)
            r = StorageRef(s, dead.append)
            r.page, p.ref = p, r

        def register_and_reap():
            s = storage_of(torch.add(x, y))
            pager.register(s, -2, True, nbytes=64)
            del s
            if dead:
                pager.reap()

        def register_outputs_and_reap():
            mode._register_outputs(torch.add(x, y), QUIET)
            if dead:
                pager.reap()

        with _disable_current_modes():
            base = timed(lambda: torch.add(x, y))
            print(f"the addition alone: {base:.2f} us")
            for fn in (storage, checks, page, page_and_ref, register_and_reap, register_outputs_and_reap):
                print(f"{fn.__name__}: +{timed(fn) - base:.2f} us")
                dead.clear()


if __name__ == "__main__":
    main()
