"""How far a calm operator's bookkeeping could shrink in Python, and what each part costs in place (cpu).

    python benchmarks/calm_bound_cpu.py

Times per_op_cpu.py's loop (20,000 additions of two 16-float tensors, one
thread, best of five) with the interceptor's ``_dispatch`` replaced, for
``aten.add`` only, by a *bound*: the least a pager by storage must do for a
calm operator, written in one frame with none of the engine's checks
(look the two pages up, name the operator, pin, reserve, run it, make its
output a page with a weak reference, count it). Then the same bound with one
part at a time done by the engine's own code instead:

- ``gather``: ``_gather`` (slots, dead pages reaped, written pages);
- ``begin``: ``Pager.begin`` (working set, plan, victim clock, LRU, peak);
- ``recipe``: ``_recipe_call``;
- ``register``: ``_register_outputs`` (naming with siblings, ``pageable``,
  ``Lifecycle.register``, ``PageTable.add``);
- ``end``: ``Pager.end`` with the online choice's prediction window;
- ``end-no-window``: the same with prediction off, as in a planned step;
- ``all``: the engine's code for every part (about what ``_dispatch`` costs).

Each row's excess over ``bound`` is what that part costs where it runs, which
is not what it costs timed alone (docs/BENCHMARKS.md, session 21). The bound
is not a correct engine: it has no fallback for a page off the device, and
it is here only to measure.
"""

from __future__ import annotations

import operator
import os
import sys

import torch

import deepum
from deepum.core.pages import RESIDENT, Page
from deepum.engine.intercept.mode import PagingMode
from deepum.engine.intercept.register import storage_of
from deepum.engine.lifecycle import StorageRef

sys.path.insert(0, os.path.dirname(__file__))
from overhead import per_op_us  # noqa: E402

torch.set_num_threads(1)
_ADD = torch.ops.aten.add.Tensor
_SKEY = operator.attrgetter("skey")
_GENERAL = PagingMode._dispatch
FLAGS: set[str] = set()


def _bound(self, plan, func, types, args, kwargs):
    if func is not _ADD:
        return _GENERAL(self, plan, func, types, args, kwargs)
    pager = self.pager
    table = pager.table
    with pager.lock:
        if "gather" in FLAGS:
            pages, written = self._gather(plan, func, args, kwargs)
        else:
            if pager.dead:
                pager.reap()
            pages, written = [], []
            for t in args[:2]:
                p = table.pages.get(storage_of(t)._cdata)
                if p is None or p.state != RESIDENT:
                    return _GENERAL(self, plan, func, types, args, kwargs)
                pages.append(p)
        eid = self.eid_of((plan, *map(_SKEY, pages)))
        est = self.out_bytes.get(eid) if eid is not None else None
        if est is None:
            return _GENERAL(self, plan, func, types, args, kwargs)
        if "begin" in FLAGS:
            pager.begin(func, pages, est, written)
        else:
            for p in pages:
                p.pins += 1
            table.reserved_bytes += est
    if "recipe" in FLAGS:
        self._recipe_call(plan, func, args, kwargs)
    out = plan.call(*args, **kwargs)
    with pager.lock:
        if "register" in FLAGS:
            self._register_outputs(out, eid, None)
        else:
            s = storage_of(out)
            key, nbytes = s._cdata, s.nbytes()
            name = ("born", eid, 0)
            skey = self.skeys.known(name)
            if skey is None:
                skey = self.skeys(name)
            page = Page(key, nbytes, skey, True)
            ref = StorageRef(s, pager._death_callback)
            ref.page = page
            page.ref = ref
            table.pages[key] = page
            table.resident_bytes += nbytes
            table.kind_bytes[page.kind] += nbytes
            table._lru[key] = page
            pager.live[skey] = page
        pager.counters.ops += 1
        if "end" in FLAGS:
            pager.end(eid, written, plan.name, pages, est)
        else:
            table.reserved_bytes -= est
            for p in pages:
                p.pins -= 1
        self.prev_plan = plan
        self.last_eid = eid
    return out


def row(name: str, flags: set[str], window: bool = True) -> None:
    FLAGS.clear()
    FLAGS.update(flags)
    with deepum.oversubscribe(1 << 33, "cpu", dormant=False) as session:
        session.pager._pressure_begins()  # the full path
        if not window:
            session.pager.prefetch_enabled = False
            session.pager.policy.prefetches = False
        us = min(per_op_us(device="cpu") for _ in range(5))
    print(f"{name:16} {us:6.2f} us per operator")


if __name__ == "__main__":
    PagingMode._dispatch = _bound
    try:
        row("bound", set())
        for part in ("gather", "begin", "recipe", "register"):
            row(part, {part})
        row("end", {"end"})
        row("end-no-window", {"end"}, window=False)
        row("all", {"gather", "begin", "recipe", "register", "end"})
    finally:
        PagingMode._dispatch = _GENERAL
    with deepum.oversubscribe(1 << 33, "cpu", dormant=False) as session:
        session.pager._pressure_begins()
        print(f"{'engine':16} {min(per_op_us(device='cpu') for _ in range(5)):6.2f} us per operator")
