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
until memory is tight (three quarters of the limit, or a first eviction) the
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

Only *operators*, never execution IDs, of the past enter a key: an ID made
from the previous operator's ID would chain each iteration to the one before
(the loss read by ``.item()`` at the end of step k would name the batch of
step k+1), and IDs would never recur.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .core.correlation import Interner
from .core.pages import DEAD, Kind, Page
from .errors import BudgetTooSmallError, UnmanagedMemoryError, UnsupportedError
from .pager import Pager
from .recompute import recomputable, record
from .trace import now_us

aten = torch.ops.aten

# Operators that write arguments their schema does not mark as written:
# batch norm updates running_mean and running_var (arguments 3 and 4) in
# training mode.
_UNANNOTATED_WRITES = {
    "aten::native_batch_norm": (3, 4),
    "aten::cudnn_batch_norm": (3, 4),
    "aten::miopen_batch_norm": (3, 4),
}

Tensor = torch.Tensor

# [Note: before pressure]
# Until memory is tight nothing is evicted, so nothing needs predicting or
# fetching: an operator's pages are found (new storages become pages, so the
# byte count is right when pressure comes) and pinned (another thread may
# start evicting meanwhile), and that is all. No execution ID is formed and no
# output size estimated; a page born then has no stable key (QUIET_SKEY) until
# pressure begins, when each gets one of its own (_name_quiet_pages). With a
# budget the program never fills this is the whole per-operator cost. Room
# is not made ahead of an operator here: one whose outputs alone pass the
# last quarter of the limit is counted as an overshoot and room is made right
# after it, as on the full path when an estimate was low; on CUDA the
# allocator's cap holds the budget regardless (an allocation past it is
# answered by evicting and retrying).
QUIET = -3  # the execution ID of every operator run on the quiet path
QUIET_SKEY = -1
_PAGEABLE_TYPES = (torch.Tensor, torch.nn.Parameter)


class OpPlan:
    """What the interceptor needs to know about one operator overload, computed once."""

    __slots__ = ("func", "name", "slots", "n_written", "list_slots", "foreach",
                 "fresh", "factory", "retry_safe", "comm", "recomputable", "sized")

    def __init__(self, func: torch._ops.OpOverload) -> None:
        schema = func._schema
        self.func = func
        self.name = str(func)
        extra = _UNANNOTATED_WRITES.get(schema.name, ())
        written, read, lists = [], [], []
        pos = 0
        for i, arg in enumerate(schema.arguments):
            kind = _tensor_kind(arg.type)
            # Positional arguments come in args by index; keyword-only ones
            # come in kwargs by name.
            index = 10**6 if arg.kwarg_only else pos
            if not arg.kwarg_only:
                pos += 1
            if isinstance(arg.type, torch.ListType):
                lists.append((index, arg.name))
            if kind is None:
                continue
            is_write = bool(arg.alias_info is not None and arg.alias_info.is_write) or i in extra
            (written if is_write else read).append((index, arg.name, kind == "list"))
        self.slots = tuple(written + read)
        self.n_written = len(written)
        self.list_slots = tuple(lists)
        base = schema.name.split("::")[-1]
        self.foreach = base.startswith(("_foreach_", "_fused_")) and bool(lists)
        # Can the operator allocate new storages? Returns without alias
        # annotation can; views and in-place returns cannot.
        self.fresh = any(r.alias_info is None and _tensor_kind(r.type) is not None
                         for r in schema.returns)
        self.factory = any(a.name == "device" for a in schema.arguments)
        # Collectives return before the communication ends (a Work handle).
        self.comm = schema.name.startswith("c10d::")
        # After an out-of-memory error a functional operator has changed
        # nothing and can run again; one that writes its arguments may have
        # written some of them. Batch norm is the exception: its kernels
        # allocate every output before they touch the running statistics.
        annotated_write = any(a.alias_info is not None and a.alias_info.is_write
                              for a in schema.arguments)
        self.retry_safe = not annotated_write
        self.recomputable = self.fresh and not annotated_write and recomputable(func)
        # See [Note: sizes known before the run].
        self.sized = self.fresh and (self.factory or schema.name in _UNRELIABLE_META)

    def collect(self, args: tuple, kwargs: dict) -> tuple[list, int]:
        """The tensor arguments, written ones first, and how many are written."""
        out = []
        nargs = len(args)
        nw = 0
        for k, (index, name, is_list) in enumerate(self.slots):
            if k == self.n_written:
                nw = len(out)
            v = args[index] if index < nargs else kwargs.get(name)
            if v is None:
                continue
            if is_list:
                out.extend(x for x in v if isinstance(x, Tensor))
            elif isinstance(v, Tensor):
                # Python scalars can stand where the schema says Tensor.
                out.append(v)
        if self.n_written == len(self.slots):
            nw = len(out)
        return out, nw


def _tensor_kind(t: torch._C.JitType) -> str | None:
    if isinstance(t, torch.OptionalType):
        t = t.getElementType()
    if isinstance(t, torch.TensorType):
        return "tensor"
    if isinstance(t, torch.ListType):
        e = t.getElementType()
        if isinstance(e, torch.OptionalType):
            e = e.getElementType()
        if isinstance(e, torch.TensorType):
            return "list"
    return None


class PagingMode(TorchDispatchMode):
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
        self.plans: dict[object, OpPlan] = {}
        self.eids = Interner()
        self.skeys = Interner()
        # The operator (not its execution ID) that ran last; see the note.
        self.prev_plan: OpPlan | None = None
        self.last_eid = -1
        # Execution ID -> bytes its outputs took last time (learned), so the
        # pager can make room before the operator runs.
        self.out_bytes: dict[int, int] = {}
        # (operator, argument metadata) -> bytes of new outputs (_estimate_cached).
        self.meta_sizes: dict[tuple, int] = {}
        self._is_managed = (lambda t: t.is_cuda) if self.device.type == "cuda" else (lambda t: t.is_cpu)
        pager.on_pressure = self._name_quiet_pages

    # ------------------------------------------------------------ hot path

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        plan = self.plans.get(func)
        if plan is None:
            plan = self._plan(func)
            if plan is None:
                return func(*args, **kwargs)
        pager = self.pager
        trace = pager.trace
        if trace is None:
            if pager.pressure or pager.stress or plan.sized:
                return self._dispatch(plan, func, types, args, kwargs)
            return self._dispatch_quiet(plan, func, args, kwargs)
        start = now_us()
        self.last_eid = -1  # stays -1 if the operator touches no managed memory
        out = self._dispatch(plan, func, types, args, kwargs)
        trace.op(plan.name, self.last_eid, start, now_us())
        return out

    def _dispatch_quiet(self, plan, func, args, kwargs):
        """Before memory is tight: pages are made, pinned and counted, nothing else.

        See [Note: before pressure]. Once resident bytes pass three quarters
        of the limit (or anything is evicted) the full path takes over.
        """
        pager = self.pager
        with pager.lock:
            # Written pages were never evicted before pressure: no host copy to void.
            pages, written = self._gather(plan, func, args, kwargs)
            for p in pages:
                p.pins += 1
        try:
            out = self._call(plan, func, args, kwargs, 0, pages)
        finally:
            with pager.lock:
                pager.unpin(pages)
        with pager.lock:
            if plan.comm:
                self._hold_for_comm(out, pages)
            table = pager.table
            for p in written:
                storage = p.ref()
                if storage is not None and storage.nbytes() != p.nbytes:
                    table.resize(p, storage.nbytes())
            if plan.fresh:
                self._register_outputs(out, QUIET)
            pager.stats_.ops += 1
            self.prev_plan = plan
            if table.resident_bytes * 4 > table.limit * 3:
                pager.end(QUIET, [], plan.name)  # starts pressure, makes room if outputs overshot
        return out

    def _name_quiet_pages(self) -> None:
        """Pressure begins: pages made on the quiet path get stable keys of their own."""
        live = self.pager.live
        for page in self.pager.table.pages.values():
            if page.skey == QUIET_SKEY:
                page.skey = self.skeys(("quiet", page.key))
                live[page.skey] = page

    def _gather(self, plan, func, args, kwargs) -> tuple[list[Page], list[Page]]:
        """The operator's pages (each once) and those it writes; retires dead pages first.

        Called under the pager's lock. A storage never seen becomes a page.
        """
        pager = self.pager
        if pager.dead:
            pager.reap()
        if pager.held:
            pager.release_held()
        tensors, nw = plan.collect(args, kwargs)
        is_managed = self._is_managed
        get = pager.table.pages.get
        found: dict[int, Page] = {}
        written: list[Page] = []
        for i, t in enumerate(tensors):
            if not is_managed(t):
                continue
            if t.layout != torch.strided:
                _sparse_parts_resident(self, t, found)
                continue
            try:
                s = t.untyped_storage()
            except (RuntimeError, NotImplementedError):  # other storage-less kinds
                continue
            p = get(s._cdata)
            if p is None:
                p = self._first_seen(t, s, func, i)
                if p is None:
                    continue
            found[p.key] = p
            if i < nw:
                written.append(p)
        if pager.host_holds is not None:  # pages pinned for a pointer (host_access.py)
            pager.host_holds(found)
        return list(found.values()), written

    def _dispatch(self, plan, func, types, args, kwargs):
        pager = self.pager
        is_managed = self._is_managed
        with pager.lock:
            pages, written = self._gather(plan, func, args, kwargs)
            if pages:
                eid = self.eids((plan, *[p.skey for p in pages]))
            elif plan.factory and self._factory_here(kwargs):
                pages = []
                # Sizes and dtypes are in the arguments: two factory calls of
                # different sizes must not share an ID (nor an output size).
                eid = self.eids((plan, -1, self.prev_plan, _hashable(args), _hashable(kwargs)))
            else:
                pages = None
            if pages is not None:
                est = self.out_bytes.get(eid)
                guessed = False
                if est is None:  # first sight of this execution ID
                    est = self._estimate_cached(plan, func, args, kwargs) if plan.fresh else 0
                    if est < 0:
                        est, guessed = _guess(pager.table, pages), True
                    if pager.prefetch_enabled:
                        pager.policy.pages.record(eid, [p.skey for p in pages])
                chunks = None
                if (plan.foreach and len(pages) > 1
                        and est + sum(p.nbytes for p in pages) > self._chunk_cap()):
                    chunks = self._chunks(plan, args, kwargs, est)
                if chunks is None:
                    pager.begin(func, pages, est, written)
        if pages is None:
            # Nothing managed goes in; register whatever managed comes out.
            out = func(*args, **kwargs)
            if plan.fresh and any(is_managed(t) for t in _flat_outputs(out)):
                with pager.lock:
                    eid = self.eids((plan, -2, self.prev_plan))
                    if self._register_outputs(out, eid):
                        self._finish(plan, eid, [])
            return out
        if chunks is not None:
            return self._run_chunks(func, types, args, kwargs, chunks)
        try:
            out = self._call(plan, func, args, kwargs, est, pages)
        except BaseException:
            with pager.lock:
                pager.unpin(pages, est)
            raise
        with pager.lock:
            pager.unpin(pages, est)
            if plan.comm:
                self._hold_for_comm(out, pages)
            recipes = plan.recomputable and pager.recompute and pager.pressure
            new = self._register_outputs(out, eid, (func, args, kwargs) if recipes else None) if plan.fresh else 0
            # The largest output seen: an ID whose output size varies with an
            # argument that is not part of it (a size list) is never underestimated twice.
            if new > est or guessed:
                self.out_bytes[eid] = new
            elif eid not in self.out_bytes:
                self.out_bytes[eid] = est
            self._finish(plan, eid, written)
        return out

    def _hold_for_comm(self, out, pages: list[Page]) -> None:
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
                    self.pager.hold(work, pages)

    def _finish(self, plan: OpPlan, eid: int, written: list[Page]) -> None:
        self.pager.stats_.ops += 1
        self.pager.end(eid, written, plan.name)
        self.prev_plan = plan
        self.last_eid = eid

    def _call(self, plan, func, args, kwargs, est, pages):
        pager = self.pager
        while True:
            try:
                return func(*args, **kwargs)
            except torch.OutOfMemoryError as e:
                # The allocator hit the budget (memory the engine cannot see:
                # workspaces, fragmentation). Evict and try again.
                with pager.lock:
                    # Any progress is worth a retry: the allocator may need a
                    # few evictions before a large enough block is free.
                    freed = plan.retry_safe and pager.evict_bytes(max(est, pager.table.limit // 16))
                    if not freed:
                        working = est + sum(p.nbytes for p in pages)
                        if working > pager.table.limit or not plan.retry_safe:
                            raise BudgetTooSmallError(plan.name, working, pager.table.limit,
                                                      pager.budget) from e
                        raise UnmanagedMemoryError(plan.name, working, pager.table.resident_bytes,
                                                   pager.budget) from e
                    pager.stats_.oom_retries += 1

    # ---------------------------------------------------------- registration

    def adopt(self, tensors) -> int:
        """Make pages of tensors that exist before the session (a model, its optimizer).

        Without this they would become pages only when an operator first
        touches them, and until then they would hold budget the pager cannot
        see or free. Returns the number of pages made.
        """
        n = 0
        with self.pager.lock:
            for t in tensors:
                if not self._is_managed(t) or t.layout != torch.strided:
                    continue
                try:
                    s = t.untyped_storage()
                except (RuntimeError, NotImplementedError):
                    continue
                if s._cdata in self.pager.table.pages or s.nbytes() == 0 or s.device != self.device:
                    continue
                kind = Kind.PARAMETER if isinstance(t, torch.nn.Parameter) else Kind.OTHER
                self.pager.register(s, self.skeys(("param", len(self.skeys))), _pageable(t, s), kind)
                n += 1
        return n

    def _first_seen(self, t: torch.Tensor, s: torch.UntypedStorage, func, i: int) -> Page | None:
        """A storage no operator has used yet: a parameter, a new batch, ..."""
        nbytes = s.nbytes()
        if nbytes == 0 or s.device != self.device:
            return None
        if isinstance(t, torch.nn.Parameter):
            # Parameters live for the whole run: their identity is their role.
            skey = self.skeys(("param", len(self.skeys)))
        else:
            skey = self.skeys(("ext", self.prev_plan, self.plans[func], i, tuple(t.shape), t.dtype))
        kind = Kind.PARAMETER if isinstance(t, torch.nn.Parameter) else Kind.OTHER
        return self.pager.register(s, skey, _pageable(t, s), kind, preexisting=True)

    def _register_outputs(self, out, eid: int, call: tuple | None = None) -> int:
        """Make new storages among the outputs pages; return their bytes.

        ``call``: (func, args, kwargs) of a recomputable operator; large new
        pages get a recipe (recompute.py).
        """
        pager = self.pager
        get = pager.table.pages.get
        is_managed = self._is_managed
        new = 0
        for i, t in enumerate(_flat_outputs(out)):
            if not is_managed(t):
                continue
            if t.layout != torch.strided:
                new += _sparse_parts_resident(self, t, None)
                continue
            try:
                s = t.untyped_storage()
            except (RuntimeError, NotImplementedError):
                continue
            key = s._cdata
            p = get(key)
            if p is not None:
                if p.ref() is s:
                    continue  # an alias of a page we know
                pager.retire(p)  # the old storage died during this operator
            nbytes = s.nbytes()
            if nbytes == 0 or s.device != self.device:
                continue
            skey = QUIET_SKEY if eid == QUIET else self.skeys(("born", eid, i))
            p = pager.register(s, skey, _pageable(t, s))
            new += nbytes
            if call is not None and nbytes >= pager.recompute_min_bytes and p.pageable:
                recipe = record(*call, i, t, self._page_of)
                if recipe is not None:
                    pager.attach_recipe(p, recipe)
        return new

    def _page_of(self, t: torch.Tensor) -> Page | None:
        if not self._is_managed(t) or t.layout != torch.strided:
            return None
        try:
            return self.pager.table.pages.get(t.untyped_storage()._cdata)
        except (RuntimeError, NotImplementedError):
            return None

    def _factory_here(self, kwargs: dict) -> bool:
        dev = kwargs.get("device")
        if dev is None:
            return self.device.type == "cpu"
        return torch.device(dev).type == self.device.type

    # ------------------------------------------------------------- planning

    def _plan(self, func) -> OpPlan | None:
        if not isinstance(func, torch._ops.OpOverload):
            return None  # higher-order operators and the like pass through
        plan = OpPlan(func)
        self.plans[func] = plan
        return plan

    def _estimate_cached(self, plan: OpPlan, func, args, kwargs) -> int:
        """_estimate, remembered by the arguments' metadata (all a meta run sees).

        A new execution ID needs an estimate before it runs; IDs are new for
        every operator of a first iteration, and for every operator of a
        program whose chains never recur. Transformer layers repeat the same
        shapes, so most of those are one dict look-up instead of a meta run
        (measured on CPU: docs/BENCHMARKS.md, "Interception cost per operator").
        """
        try:
            key = (plan, _meta_key(args), _meta_key(kwargs))
            est = self.meta_sizes.get(key)
        except TypeError:  # an argument that cannot be hashed: no caching
            return self._estimate(plan, func, args, kwargs)
        if est is None:
            est = self._estimate(plan, func, args, kwargs)
            if len(self.meta_sizes) >= _META_CACHE_MAX:
                self.meta_sizes.clear()  # programs whose shapes never repeat
            self.meta_sizes[key] = est
        return est

    def _estimate(self, plan: OpPlan, func, args, kwargs) -> int:
        """Bytes of new storages the operator will return, from a run on meta tensors; -1 if unknown."""
        if plan.sized and not plan.factory:
            return -1
        try:
            margs = _to_meta(args)
            mkwargs = {k: _to_meta(v) for k, v in kwargs.items()}
            inputs = {t.untyped_storage()._cdata for t in _flat_outputs(margs)}
            out = func(*margs, **mkwargs)
        except Exception:
            return -1  # no meta kernel (or sparse arguments): see _guess
        total = 0
        for t in _flat_outputs(out):
            if t.layout != torch.strided:
                total += _sparse_nbytes(t)
                continue
            s = t.untyped_storage()
            if s._cdata not in inputs:
                total += s.nbytes()
        return total

    # -------------------------------------------------------------- foreach

    def _chunk_cap(self) -> int:
        table = self.pager.table
        return max(1, (table.limit - table.unpageable_bytes) // 2)

    def _chunks(self, plan, args, kwargs, est):
        """Split a foreach or fused operator's lists into slices that fit, or None.

        These operators compute each list element independently, so running
        them slice by slice gives the same bits as one call. None when the
        operator cannot be split (one element per list already); it then runs
        whole, and the budget check names it if it does not fit.
        """
        # Lists run in parallel (element j of each goes together); empty ones
        # (an unused amsgrad state list, say) pass through whole.
        lists, values = [], []
        for i, n in plan.list_slots:
            v = args[i] if i < len(args) else kwargs.get(n)
            if v:
                lists.append((i, n))
                values.append(v)
        length = len(values[0])
        if length < 2:
            return None
        cost = [0] * length
        for v in values:
            if len(v) != length:
                raise UnsupportedError(
                    f"{plan.name}: list arguments of different lengths ({len(v)} and {length}); "
                    "deepum cannot split this operator into parts that fit the budget")
            for j, x in enumerate(v):
                if isinstance(x, torch.Tensor) and self._is_managed(x):
                    cost[j] += x.untyped_storage().nbytes() or _logical_nbytes(x)
        total = sum(cost) or 1
        cap = self._chunk_cap()
        bounds, start, acc = [], 0, 0
        for j, c in enumerate(cost):
            c += est * c // total
            if j > start and acc + c > cap:
                bounds.append((start, j))
                start, acc = j, 0
            acc += c
        bounds.append((start, length))
        return (lists, values, bounds)

    def _run_chunks(self, func, types, args, kwargs, chunks):
        lists, values, bounds = chunks
        self.pager.stats_.chunked_ops += 1
        results = []
        for a, b in bounds:
            cargs, ckwargs = list(args), dict(kwargs)
            for (i, n), v in zip(lists, values):
                if i < len(args):
                    cargs[i] = v[a:b]
                else:
                    ckwargs[n] = v[a:b]
            # Each slice is an operator of its own: faults, writes and
            # outputs go through the ordinary path.
            results.append(self.__torch_dispatch__(func, types, tuple(cargs), ckwargs))
        self.last_eid = -1  # the slices carry the IDs; the whole call has none
        return _concat_results(results)


def _pageable(t: torch.Tensor, s: torch.UntypedStorage) -> bool:
    """Can this storage be freed and re-allocated in place without anyone noticing?"""
    # A ZeroTensor (autograd's allocation-free zeros) has a storage with a
    # size and no memory: there is nothing to copy out.
    return (type(t) in _PAGEABLE_TYPES and s.resizable() and not t.is_quantized
            and not t.is_nested and t.layout == torch.strided and not t._is_zerotensor())


def _hashable(x):
    if isinstance(x, (list, tuple)):
        return tuple(_hashable(y) for y in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in x.items()))
    try:
        hash(x)
    except TypeError:
        return id(x)
    return x


def _logical_nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _flat_outputs(out):
    if isinstance(out, torch.Tensor):
        yield out
    elif isinstance(out, (tuple, list)):
        for x in out:
            if isinstance(x, torch.Tensor):
                yield x
            elif isinstance(x, (tuple, list)):
                for y in x:
                    if isinstance(y, torch.Tensor):
                        yield y


_META_CACHE_MAX = 1 << 16


def _meta_key(x):
    """What a meta run of an operator sees of an argument, hashable; TypeError if it cannot be."""
    if isinstance(x, torch.Tensor):
        if x.layout != torch.strided:
            raise TypeError("no strides (sparse): estimated without the cache")
        return (x.dtype, x.shape, x.stride())
    if isinstance(x, (list, tuple)):
        return tuple(_meta_key(y) for y in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _meta_key(v)) for k, v in x.items()))
    if isinstance(x, torch.device):
        return "device"  # _to_meta makes every device "meta"
    hash(x)
    return (type(x), x)  # 1, 1.0 and True hash alike but promote differently


def _to_meta(x):
    if isinstance(x, torch.Tensor):
        return torch.empty_strided(x.size(), x.stride(), dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(y) for y in x)
    if isinstance(x, torch.device):
        return torch.device("meta")
    return x


def _concat_results(results: list):
    first = results[0]
    if first is None or (isinstance(first, tuple) and len(first) == 0):
        return first
    if isinstance(first, list):
        return [x for r in results for x in r]
    if isinstance(first, tuple):
        return tuple([x for r in results for x in r[k]] for k in range(len(first)))
    raise UnsupportedError(f"cannot join chunked results of type {type(first).__name__}")


# [Note: sizes known before the run]
# An operator's outputs must fit before it runs, or the budget is passed.
# The quiet path skips the estimate; that is safe only where the outputs are
# small next to the quarter of the limit it keeps free. Two kinds are not:
# factories (one call can make a tensor as large as the budget) and operators
# whose meta kernel is known to under-state their outputs (the RNN layers:
# their workspace is sized by the backend at run time). Both always take the
# full path (plan.sized). Where no estimate exists (no meta kernel, sparse
# arguments, the operators just named) the first run of an execution ID gets
# all the room the budget has (_guess); later runs use the size it made.
# Whatever still passes the limit is counted as an overshoot, and room is
# made right after the operator (Pager.end).
_UNRELIABLE_META = {
    "aten::mkldnn_rnn_layer", "aten::mkldnn_rnn_layer_backward", "aten::_cudnn_rnn",
    "aten::_cudnn_rnn_backward", "aten::miopen_rnn", "aten::miopen_rnn_backward",
    "aten::_thnn_fused_lstm_cell", "aten::_thnn_fused_gru_cell",
}


def _sparse_parts_resident(mode: PagingMode, t: torch.Tensor, found: dict | None) -> int:
    """A sparse tensor's index and value tensors stay resident and are counted.

    C++ reaches them through the sparse tensor, not as operator
    arguments (SparseAdam builds tensors from a gradient's indices with
    ``grad.new``), so they can never be evicted. A part evicted while it
    was an ordinary page (before it joined a sparse tensor) is faulted in
    with the operator (``found``) and pinned for good next time.
    Returns the bytes of parts seen for the first time.
    """
    pager = mode.pager
    new = 0
    for part in _sparse_parts(t):
        s = part.untyped_storage()
        p = pager.table.pages.get(s._cdata)
        if p is None:
            if s.nbytes() and s.device == mode.device:
                pager.register(s, mode.skeys(("sparse", len(mode.skeys))), False)
                new += s.nbytes()
        elif p.pageable and p.state != DEAD:
            if p.resident:
                pager.before_write(p)
                pager.table.make_unpageable(p)
                pager.stats_.unpageable_pages += 1
            elif found is not None:
                found[p.key] = p
    return new


def _guess(table, pages: list[Page]) -> int:
    """Room for the outputs of an operator whose size cannot be told beforehand: all there is.

    See [Note: sizes known before the run]. The size it really made is
    learned after the run, so this happens once per execution ID.
    """
    return max(0, table.limit - table.unpageable_bytes - sum(p.nbytes for p in pages if p.pageable))


def _sparse_nbytes(t: torch.Tensor) -> int:
    """Bytes a sparse (or other storage-less) tensor holds, where its layout tells."""
    return sum(x.nbytes for x in _sparse_parts(t))


def _sparse_parts(t: torch.Tensor) -> tuple:
    """The strided tensors inside a sparse tensor (indices, values); () for other layouts."""
    try:
        if t.layout == torch.sparse_coo:
            return t._indices(), t._values()
        return (t.values(), *_compressed_indices(t))
    except (RuntimeError, NotImplementedError):
        return ()


def _compressed_indices(t: torch.Tensor) -> tuple:
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.crow_indices(), t.col_indices()
    if t.layout in (torch.sparse_csc, torch.sparse_bsc):
        return t.ccol_indices(), t.row_indices()
    return ()


# [Note: host reads]
# On the cpu device a paged storage is host memory that C++ may read without
# an operator, below the dispatch mode's reach: Tensor.tolist() and .numpy()
# read the data pointer, and tensor_split's C++ reads its index tensor. An
# evicted storage has no memory there ("data is not allocated yet"). These
# functions are caught one level up, as torch functions, and their tensor
# arguments faulted in and pinned while they run. What numpy() and
# __array__/__dlpack__ return shares the storage for as long as it lives, so
# those pages become unpageable for good. On CUDA no such read exists: host
# code reads device memory only through a copy, which is an operator.
_READS = {torch.Tensor.tolist, torch.tensor_split, torch.Tensor.tensor_split}
_ALIASES = {torch.Tensor.numpy, torch.Tensor.__array__, torch.Tensor.__dlpack__}


class HostReadMode(TorchFunctionMode):
    """Fault in the tensors a host-side read is about to touch (cpu device only)."""

    def __init__(self, pager: Pager) -> None:
        super().__init__()
        self.pager = pager

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        alias = func in _ALIASES
        if not (alias or func in _READS):
            return func(*args, **kwargs)
        pager = self.pager
        pages = []
        with pager.lock:
            for a in (*args, *kwargs.values()):
                if isinstance(a, torch.Tensor) and a.is_cpu and a.layout == torch.strided:
                    p = pager.table.pages.get(a.untyped_storage()._cdata)
                    if p is not None and p.state != DEAD:
                        pages.append(p)
            if pages:
                # The copies that bring pages back are operators themselves:
                # run them below the paging mode, as its own fault path does.
                with torch.utils._python_dispatch._disable_current_modes():
                    pager.begin(func, pages, 0)
                if alias:
                    for p in pages:
                        # Writes through the alias are invisible: recipes that read it stop being exact.
                        pager.before_write(p)
                        pager.table.make_unpageable(p)
                        pager.stats_.unpageable_pages += 1
        if not pages:
            return func(*args, **kwargs)
        try:
            return func(*args, **kwargs)
        finally:
            with pager.lock:
                pager.unpin(pages)
