"""The interceptor: every aten operator passes through :class:`PagingMode`.

Per operator it (1) finds the pages of the tensor arguments, (2) names the
operator with an execution ID, (3) asks the pager to make those pages
resident with room for the outputs, (4) runs the operator, retrying after an
allocator out-of-memory error when that is safe, and (5) registers the outputs
as new pages and tells the pager what was written.

[Note: the hot path]
Interception costs CPU time on every operator, and models with many short
kernels feel it (see docs/DESIGN.md). So: all schema analysis happens once
per operator overload (:class:`OpPlan`); arguments are read by schema position,
without pytree; storages are looked up by their C++ address in one dict; and
until memory is tight (Thresholds.pressure of the limit, or a first eviction) the
predictor and the prefetcher are skipped altogether.

[Note: execution IDs and stable keys]
An execution ID is the operator together with the stable keys of its input
pages (see :mod:`deepum.core.correlation`). A page born as output ``i`` of
execution ID ``e`` gets the stable key ``("born", e, i)``; a page first seen
as an input is named by what it is: a parameter by its identity (it lives for
the whole run), anything else (a batch from a data loader) by where it
appears: the previous operator, the consuming operator, the argument position,
shape and dtype. Both recur in the next training iteration, so the IDs recur
too, and operators that differ only by which layer's weights they read get
different IDs. An operator with no managed input (a factory such as ``empty``)
is named by itself, its arguments (sizes, dtype) and the operator before it.

A name can come up again while its page is alive. Usually that page is the
same role's from the previous iteration (a loss kept in a list, the batch
before this one): the new page takes the role over. But siblings made alike
must keep roles of their own: a model built inside the session makes its
weights of one shape by the same ``empty`` after the same initializer, and
an optimizer's first step makes both states of a weight by the same
``zeros_like`` of it. So where the page holding the name is a parameter or
an optimizer state, or the new page is born inside an optimizer step, the
new page takes the first of ``(key, 1), (key, 2), ...`` that no such
sibling holds (:meth:`Registration._stable_key`): siblings are numbered in
creation order, the same in every run. A page kept only by recipes never
holds a name.

Only *operators*, never execution IDs, of the past enter a key: an ID made
from the previous operator's ID would chain each iteration to the one before
(the loss read by ``.item()`` at the end of step k would name the batch of
step k+1), and IDs would never recur.
"""

from __future__ import annotations

import operator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ...core.correlation import Interner
from ...core.pages import Page
from ..pager import Pager
from ..remat import capture_rng
from ..retry import call_after_oom
from ..stepplan import RECORDING
from ..telemetry import now_us
from .chunking import Chunking
from .estimate import estimate_cached, guess
from .plan import OpPlan, flat_outputs, hashable
from .register import QUIET, Registration

_SKEY = operator.attrgetter("skey")
_NBYTES = operator.attrgetter("nbytes")

# [Note: views]
# About half the operators of a transformer's step are views (view, t,
# transpose, detach, slice, expand, ...): they make a tensor that shares an
# input's storage, and read and write no element. Paging has nothing to do
# for them, so a view runs at once, with no look-up, pin or lock: the
# consumer of the view is the use that counts, and it finds the page through
# the shared storage like any other. A view of an evicted storage is fine as
# metadata, but most views check their bounds against the storage's size,
# which is zero off the device: that RuntimeError sends the view the long
# way, which brings its pages in and runs it again (a view that is wrong in
# itself raises the same error again there). Either way a view is never an
# execution ID nor a position in the recorded step: which way it goes
# depends on residency, and the step must count the same positions every
# time. But the recording counts a view's pages as used by the operator
# after it (usually the view's consumer), so that a planned step has them in
# device memory there: a view that checks its bounds before the plan brings
# a page back would fault it in, unplanned. Views do not retire dead pages
# either (the next operator's look-up does), so a look-up by storage
# address elsewhere checks that the page's storage is that storage: a new
# storage can take a dead one's address in between.

# [Note: before pressure]
# Until memory is tight nothing is evicted, so nothing needs predicting or
# fetching: an operator's pages are found (new storages become pages, so the
# byte count is right when pressure comes) and pinned (another thread may
# start evicting meanwhile), and that is all. No execution ID is formed and no
# output size estimated; a page born then has no stable key (QUIET_SKEY) until
# pressure begins, when each gets one of its own (register.py's _name_quiet_pages). With a
# budget the program never fills this is the whole per-operator cost. Room
# is not made ahead of an operator here: one whose outputs alone pass the
# last quarter of the limit is counted as an overshoot and room is made right
# after it, as on the full path when an estimate was low; on CUDA the
# allocator's cap holds the budget regardless (an allocation past it is
# answered by evicting and retrying).


class PagingMode(Registration, Chunking, TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Newer torch wraps __torch_dispatch__ in a Dynamo-disable shim that
        # costs tens of microseconds per operator; deepum never runs under
        # torch.compile tracing, so it opts out of the shim.
        return False

    def __init__(self, pager: Pager) -> None:
        super().__init__()
        self.pager = pager
        self.device = pager.device
        self.plans: dict[int, OpPlan] = {}  # by id() of the overload
        self.eids = Interner()
        self.eid_of = self.eids.known
        self.skeys = Interner()
        # The operator (not its execution ID) that ran last; see the note.
        self.prev_plan: OpPlan | None = None
        self.last_eid = -1
        # Execution ID -> bytes its outputs took last time (learned), so the
        # pager can make room before the operator runs.
        self.out_bytes: dict[int, int] = {}
        # (operator, argument metadata) -> bytes of new outputs (_estimate_cached).
        self.meta_sizes: dict[tuple, int] = {}
        th = pager.config.thresholds
        self.chunk_share = min(th.chunk, th.prefetch_cap)  # see Thresholds.chunk
        # A C-level attribute getter: called for every tensor argument and output.
        self.is_managed = operator.attrgetter("is_cuda" if self.device.type == "cuda" else "is_cpu")
        pager.on_pressure = self._name_quiet_pages

    # ------------------------------------------------------------ hot path

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        # By address: OpOverload hashes in Python. A plan holds its overload,
        # so no other object can take that address while the plan is kept.
        plan = self.plans.get(id(func))
        if plan is None:
            plan = self._plan(func)
            if plan is None:
                return func(*args, **kwargs)
        pager = self.pager
        if plan.view:
            pager.counters.views += 1
            plans = pager.plans
            if not (plans.mode == RECORDING and plans.builder is not None):  # (plans.recording)
                try:  # about half of all operators: no frame of the engine's but this one
                    return plan.call(*args, **kwargs)
                except RuntimeError:
                    pass  # an evicted storage has no bytes to check against (or the call is wrong)
            return self._view(plan, func, args, kwargs)
        trace = pager.trace
        if trace is None:
            if pager.pressure or pager.stress or plan.sized:
                return self._dispatch(plan, func, types, args, kwargs)
            return self._dispatch_quiet(plan, func, types, args, kwargs)
        start = now_us()
        self.last_eid = -1  # stays -1 if the operator touches no managed memory
        out = self._dispatch(plan, func, types, args, kwargs)
        trace.op(plan.name, self.last_eid, start, now_us())
        return out

    def _view(self, plan, func, args, kwargs):
        """A view that found a storage off the device (its bounds are checked against it)
        or runs in a recorded step: runs once the storage is brought in. Never an
        execution ID nor a step position ([Note: views])."""
        pager = self.pager
        if pager.plans.recording:
            with pager.lock:
                # Pages already: a storage seen first at a view becomes a page at
                # its first operator, as when the view does not look, so its
                # stable key names that operator in recorded and planned steps.
                known = (self.page_of(t) for t in plan.collect(args, kwargs)[0])
                pager.plans.viewed([p for p in known if p is not None])
            try:
                return plan.call(*args, **kwargs)
            except RuntimeError:
                pass  # as in __torch_dispatch__
        with pager.lock:
            pages, _ = self._gather(plan, func, args, kwargs)
            pager.begin(func, pages, 0)
        try:
            return plan.call(*args, **kwargs)
        finally:
            with pager.lock:
                pager.unpin(pages)

    def _dispatch_quiet(self, plan, func, types, args, kwargs):
        """Before memory is tight: pages are made, pinned and counted, nothing else.

        See [Note: before pressure]. Once resident bytes pass Thresholds.pressure
        of the limit (or anything is evicted) the full path takes over.
        """
        pager = self.pager
        with pager.lock:
            # Written pages were never evicted before pressure: no host copy to void.
            pages, written = self._gather(plan, func, args, kwargs)
            filled = pager.table.resident_bytes > pager.pressure_bytes
            if filled:
                pager._pressure_begins()
            else:
                for p in pages:
                    p.pins += 1
        if filled:
            # Storages seen first here (a parameter not adopted) filled
            # memory: this operator already takes the full path, which
            # makes room for it or says why it cannot fit.
            return self._dispatch(plan, func, types, args, kwargs)
        try:
            out = plan.call(*args, **kwargs)
        except torch.OutOfMemoryError as e:  # see [Note: evict and retry] in retry.py
            try:
                out = call_after_oom(pager, plan.name, plan.retry_safe, lambda: plan.call(*args, **kwargs),
                                     0, pages, e)
            except BaseException:
                with pager.lock:
                    pager.unpin(pages)
                raise
        except BaseException:
            with pager.lock:
                pager.unpin(pages)
            raise
        with pager.lock:
            for p in pages:  # (unpin, written out)
                p.pins -= 1
            if plan.comm:
                _hold_for_comm(pager, out, pages)
            table = pager.table
            for p in written:
                storage = p.ref()
                if storage is not None and storage.nbytes() != p.nbytes:
                    table.resize(p, storage.nbytes())
            if plan.fresh:
                self._register_outputs(out, QUIET)
            pager.counters.ops += 1
            self.prev_plan = plan
            if table.resident_bytes > pager.pressure_bytes:
                pager.end(QUIET, [], plan.name)  # starts pressure, makes room if outputs overshot
        return out

    def _dispatch(self, plan, func, types, args, kwargs):
        pager = self.pager
        is_managed = self.is_managed
        with pager.lock:
            pages, written = self._gather(plan, func, args, kwargs)
            if pages:
                key = (plan, *map(_SKEY, pages))
                eid = self.eid_of(key)
                if eid is None:
                    eid = self.eids(key)
            elif plan.factory and self._factory_here(kwargs):
                pages = []
                # Sizes and dtypes are in the arguments: two factory calls of
                # different sizes must not share an ID (nor an output size).
                eid = self.eids((plan, -1, self.prev_plan, hashable(args), hashable(kwargs)))
            else:
                pages = None
            if pages is not None:
                est = self.out_bytes.get(eid)
                guessed = est is None
                if guessed:  # first sight of this execution ID
                    est, guessed = self._first_sight(plan, func, args, kwargs, eid, pages)
                chunks = None
                if (plan.foreach and len(pages) > 1
                        and est + sum(map(_NBYTES, pages)) > self._chunk_cap()):
                    chunks = self._chunks(plan, args, kwargs, est)
                if chunks is None:
                    pager.begin(func, pages, est, written, guessed)
        if pages is None:
            # Nothing managed goes in; register whatever managed comes out.
            out = plan.call(*args, **kwargs)
            if plan.fresh and any(is_managed(t) for t in flat_outputs(out)):
                with pager.lock:
                    eid = self.eids((plan, -2, self.prev_plan))
                    if self._register_outputs(out, eid):
                        self._finish(plan, eid, [])
            return out
        if chunks is not None:
            return self._run_chunks(func, types, args, kwargs, chunks)
        call = None
        if plan.recomputable and pager.recompute and pager.pressure:  # _recipe_call's usual case written out
            call = self._recipe_call(plan, func, args, kwargs) if plan.seeded or pager.plans.mode else (
                func, args, kwargs, None)
        # Timed in their first runs: operators with recipes (a rebuild's cost)
        # and, for a planned step, every operator (the compute a planned copy
        # can hide behind, engine/stepplan.py).
        token = (pager.timer.start(eid) if pager.timer.cuda and (call is not None or pager.plans.enabled)
                 else None)
        try:
            try:
                out = plan.call(*args, **kwargs)
            except torch.OutOfMemoryError as e:  # see [Note: evict and retry] in retry.py
                out = call_after_oom(pager, plan.name, plan.retry_safe, lambda: plan.call(*args, **kwargs),
                                     est, pages, e)
        except BaseException:
            with pager.lock:
                pager.unpin(pages, est)
            raise
        if token is not None:
            pager.timer.stop(token)
        with pager.lock:
            if plan.comm:
                _hold_for_comm(pager, out, pages)
            new = self._register_outputs(out, eid, call) if plan.fresh else 0
            if guessed:
                pager.note_working(func, sum(map(_NBYTES, pages)) + new)
            # The largest output seen: an ID whose output size varies with an
            # argument that is not part of it (a size list) is never underestimated twice.
            if new > est or guessed:
                self.out_bytes[eid] = new
                pager.costs.note_bytes(eid, new)
            elif eid not in self.out_bytes:
                self.out_bytes[eid] = est
            pager.counters.ops += 1
            pager.end(eid, written, plan.name, pages, est)
            self.prev_plan = plan
            self.last_eid = eid
        return out

    def _first_sight(self, plan: OpPlan, func, args, kwargs, eid: int, pages: list[Page]) -> tuple[int, bool]:
        """(bytes to make room for, whether that is a guess) for a new execution ID;
        the prediction window learns the ID's pages."""
        pager = self.pager
        est = estimate_cached(self.meta_sizes, plan, func, args, kwargs) if plan.fresh else 0
        guessed = est < 0
        if guessed:
            est = guess(pager.table, pages)
        if pager.policy.prefetches:  # the window, for victims too (prefetch=False)
            pager.policy.pages.record(eid, [p.skey for p in pages])
        return est, guessed

    def _recipe_call(self, plan: OpPlan, func, args, kwargs) -> tuple | None:
        """(func, args, kwargs, generator state) for the recipes of this call's outputs, or None.

        Taken before the operator runs: a random operator replays with the
        generator state it saw (engine/remat.py).
        """
        pager = self.pager
        if not (plan.recomputable and pager.recompute and pager.pressure):
            return None
        if pager.plans.mode and not pager.plans.recipe_wanted():
            return None
        rng = None
        if plan.seeded:
            if kwargs.get("generator") is not None:
                return None  # a private generator: its state is not the default one
            rng = capture_rng(self.device)
        return (func, args, kwargs, rng)

    def _finish(self, plan: OpPlan, eid: int, written: list[Page]) -> None:
        self.pager.counters.ops += 1
        self.pager.end(eid, written, plan.name)
        self.prev_plan = plan
        self.last_eid = eid

    def _plan(self, func) -> OpPlan | None:
        if not isinstance(func, torch._ops.OpOverload):
            return None  # higher-order operators and the like pass through
        config = self.pager.config
        plan = OpPlan(func, config.recipes)
        plan.view = plan.view and config.thresholds.view_fast_path
        self.plans[id(func)] = plan
        return plan


def _hold_for_comm(pager: Pager, out, pages: list[Page]) -> None:
    """Keep a collective's pages pinned until its communication has finished.

    ``c10d`` operators hand the tensors to a communication thread and
    return at once; evicting a bucket before the all-reduce is done would
    free memory the thread still reads and writes.
    """
    work_type = getattr(torch._C, "_distributed_c10d", None)
    if work_type is None:
        return
    for x in out if isinstance(out, (tuple, list)) else (out,):
        if isinstance(x, torch.ScriptObject):
            try:
                work = work_type.Work.unbox(x)
            except RuntimeError:
                continue
            if not work.is_completed():
                pager.hold(work, pages)
