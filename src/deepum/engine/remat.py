"""Recipes: a page dropped without a copy, rebuilt by running its operator again.

Copying a page out and back costs two trips over the host link; running the
operator that made it costs one kernel on the device. On the GPUs deepum
targets the link moves tens of GB/s and the device hundreds of TFLOP/s, so
one page is almost always cheaper to recompute than to copy: casts and
pointwise outputs by far, matmuls and attention too. Whether a whole step
gains depends on how often pages are rebuilt, and on the host work each
rebuild costs (the victim policy weighs both: core/remat_policy.py).
Copying remains for pages no recipe can rebuild exactly.

[Note: when a recipe is exact]
Re-running an operator gives the same bits when its kernel is deterministic
and it reads the same bits. So a recipe is recorded for any functional
operator (no argument written, fresh outputs) that is not listed as
nondeterministic on the device (:data:`NEVER_REPLAYED`: kernels that
accumulate with atomics, and every backward kernel), whose tensor arguments
are managed pages (kept as the page and the view's geometry) or tiny
unmanaged constants (copied into the recipe), and only for an output that
covers its whole storage. Operators that draw random numbers
(``nondeterministic_seeded``) replay with the generator state captured just
before they ran, as torch.utils.checkpoint does. The pager then keeps three
invariants (see :class:`Remat` below):

* the inputs hold the bits they had: before an operator writes a page, the
  pages whose recipes read it are rebuilt if dropped, and their recipes
  voided (:meth:`Pager.before_write`); a page written after it was made
  loses its own recipe;
* the inputs exist: a recipe holds its inputs' storages from the moment it
  is recorded, so an intermediate the program frees stays as a *lineage
  node* (DTR's term): a page only recipes hold, which eviction drops to no
  memory at all when it has a recipe of its own ([Note: lineage] below);
* the chain is bounded: a page whose rebuild would need more than
  ``Thresholds.recipe_max_depth`` (core/config.py) dropped pages rebuilt
  first is copied out instead.

A recipe runs below autocast and autograd, as the original call did (the
interceptor sits below both), so it calls the same kernel.
"""

from __future__ import annotations

import torch

from ..core import lineage
from ..core.costs import H2D
from ..core.pages import ARRIVING, DEAD, EVICTED, Kind, Page
from ..errors import BudgetTooSmallError
from .movers import can_swap, swap_data
from .retry import evict_for_retry
from .telemetry import now_us, profiler_range

# A tensor's storage, called on TensorBase: the engine's look-ups never pass
# through host access's wrappers of Tensor.untyped_storage (intercept/host_access.py).
storage_of = torch._C.TensorBase.untyped_storage

# Small unmanaged tensors a recipe may copy and keep (scalars moved to a
# device, CPU scalar tensors handed to CUDA operators).
_CONST_MAX_BYTES = 4096

# The steps of Remat.rebuild_walk.
REBUILD, FAULT, DEEP = "rebuild", "fault", "deep"

_PLAIN = (torch.Tensor, torch.nn.Parameter)
_use_count = torch._C._storage_Use_Count
_WITHOUT_STATS = {torch.ops.aten.native_batch_norm.default}
_WITHOUT_STATS_IDS = frozenset(map(id, _WITHOUT_STATS))

# Factories "like" a tensor read only its geometry, and their values are
# fixed: their recipes keep that geometry, not the page, so a rebuild brings
# nothing in (an optimizer's first moment, zeros like a weight the program
# may have evicted; SparseAdam on an embedding passed the budget for it in
# session 28's sweep). empty_like is not here: its values are whatever the
# memory held, which a replay cannot give back.
_SHAPE_ONLY = {torch.ops.aten.zeros_like.default, torch.ops.aten.ones_like.default,
               torch.ops.aten.full_like.default}
_SHAPE_ONLY_IDS = frozenset(map(id, _SHAPE_ONLY))

# Forward kernels whose results can differ from run to run on a GPU (they
# accumulate with atomics, or order a reduction by thread timing), and
# operators that return no fresh tensor worth rebuilding. Matched by the
# operator's base name, so every overload is covered.
NEVER_REPLAYED = frozenset({
    "index_put", "_index_put_impl", "_unsafe_index_put", "index_add", "index_copy",
    "index_reduce", "scatter", "scatter_add", "scatter_reduce", "put", "take_along_dim_backward",
    "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only", "histc", "bincount",
    "histogram", "kthvalue", "median", "nanmedian", "mode", "cumsum", "cumprod", "logcumsumexp",
    "_local_scalar_dense", "item", "nonzero", "nonzero_static", "unique", "_unique", "_unique2",
    "unique_consecutive", "unique_dim", "masked_select", "_ctc_loss", "ctc_loss",
    "nll_loss2d_forward", "grid_sampler_3d", "_fused_dropout", "rrelu_with_noise",
    "_cudnn_rnn", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "mkldnn_rnn_layer",
    "_pin_memory", "lift_fresh", "lift_fresh_copy", "_to_dense", "to_sparse",
    "_nested_tensor_from_mask", "_assert_async", "_functional_assert_async",
})

_SEEDED = getattr(torch.Tag, "nondeterministic_seeded", None)
_BITWISE = getattr(torch.Tag, "nondeterministic_bitwise", None)


def recomputable(func: torch._ops.OpOverload, scope: str = "all") -> bool:
    """Can this operator's outputs be rebuilt by running it again (given the conditions above)?

    ``scope`` "pointwise" keeps to elementwise operators and dtype casts
    (Config.recipes).
    """
    schema = func._schema
    if scope == "pointwise" and not (torch.Tag.pointwise in func.tags
                                     or func is torch.ops.aten._to_copy.default):
        return False
    base = schema.name.split("::")[-1]
    if schema.name.startswith(("c10d::", "_c10d_functional::", "profiler::")):
        return False
    if base in NEVER_REPLAYED or "backward" in base or base.startswith(("_foreach_", "_fused_")):
        return False
    return _BITWISE is None or _BITWISE not in func.tags


def seeded(func: torch._ops.OpOverload) -> bool:
    """Does the operator draw random numbers (its replay needs the generator's state)?"""
    return _SEEDED is not None and _SEEDED in func.tags


# id(operator) -> (operator, position of its ``dropout_p`` argument, or -1):
# reading the schema builds its argument list anew on every call, and an
# OpOverload hashes in Python (the entry keeps the operator, so its id stays its own).
_DROPOUT_AT: dict[int, tuple] = {}


def _attention_dropout(func, args: tuple, kwargs: dict) -> bool:
    """Attention with dropout returns the generator's seed and offset as outputs
    and reads them back in backward: such a call is not replayed."""
    entry = _DROPOUT_AT.get(id(func))
    if entry is None:
        entry = _DROPOUT_AT[id(func)] = (func, next((i for i, a in enumerate(func._schema.arguments)
                                                     if a.name == "dropout_p"), -1))
    at = entry[1]
    if at < 0:
        return False
    return bool(args[at] if at < len(args) else kwargs.get("dropout_p", 0.0))


def capture_rng(device: torch.device):
    """The default generator's state on ``device`` (taken before a seeded operator runs)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    return torch.get_rng_state()


class _In:
    """A tensor argument that lives in a page: the page and the view's geometry."""

    __slots__ = ("page", "dtype", "size", "stride", "offset")

    def __init__(self, page: Page, t: torch.Tensor) -> None:
        self.page = page
        self.dtype = t.dtype
        self.size = t.shape  # (a torch.Size: a tuple already)
        self.stride = t.stride()
        self.offset = t.storage_offset()

    def tensor(self, device: torch.device) -> torch.Tensor:
        storage = self.page.ref()
        return torch.empty(0, dtype=self.dtype, device=device).set_(storage, self.offset, self.size,
                                                                    self.stride)


class _Const:
    """A small unmanaged tensor argument, copied when the recipe was recorded."""

    __slots__ = ("value",)

    def __init__(self, t: torch.Tensor) -> None:
        self.value = t.clone()


class _Geometry:
    """A tensor argument of which the operator reads only the size, strides and dtype."""

    __slots__ = ("size", "stride", "dtype")

    def __init__(self, t: torch.Tensor) -> None:
        self.size, self.stride, self.dtype = t.shape, t.stride(), t.dtype

    def tensor(self) -> torch.Tensor:
        return torch.empty_strided(self.size, self.stride, dtype=self.dtype, device="meta")


class Recipe:
    """How to rebuild one page: an operator, its arguments, which output.

    ``held`` keeps the inputs' storages alive for as long as the recipe may
    be needed (see [Note: lineage] below); :meth:`Remat.void` lets go.
    """

    __slots__ = ("func", "args", "kwargs", "index", "inputs", "held", "depth", "rng", "eid")

    def __init__(self, func, args: tuple, kwargs: dict, index: int, inputs: list[Page],
                 rng=None, eid: int = -1) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.index = index
        self.inputs = inputs  # the pages read, each once
        self.held: list | None = [q.ref() for q in inputs]
        self.depth = 1
        self.rng = rng
        self.eid = eid  # the execution ID that made the page (its cost is that operator's)

    def usable(self) -> bool:
        """Are the inputs still there to rebuild from?"""
        return self.held is not None and all(q.state != DEAD and s is not None
                                             for q, s in zip(self.inputs, self.held))

    def run_into(self, storage: torch.UntypedStorage, nbytes: int, device: torch.device) -> None:
        """Run the operator again and give ``storage`` (freed, ``nbytes`` when resident) its output.

        See [Note: rebuilding in place]. Runs below autograd and autocast, as the
        original call did (the interceptor sits below both): the two switches are
        set directly, as ``torch.no_grad()`` and ``torch.autocast(enabled=False)``
        would, without their context objects (a rebuild is a host cost of its own).
        """
        kind = device.type
        grad, cast = torch.is_grad_enabled(), torch.is_autocast_enabled(kind)
        torch._C._set_grad_enabled(False)
        if cast:
            torch.set_autocast_enabled(kind, False)
        rng = self.rng
        saved = _swap_rng(rng, device) if rng is not None else None
        try:
            args = [_arg(a, device) for a in self.args]
            kwargs = {k: _arg(v, device) for k, v in self.kwargs.items()} if self.kwargs else {}
            out = self.func._op(*args, **kwargs)  # (OpOverload.__call__, one frame fewer)
            if isinstance(out, (tuple, list)):
                out = out[self.index]
            src = storage_of(out)
            if src.nbytes() != nbytes:
                raise RuntimeError(f"deepum: recomputing {self.func} gave {src.nbytes()} bytes, "
                                   f"the page holds {nbytes}")
            if storage.nbytes() == 0 and can_swap() and not out._is_view() and _owns(src, args, kwargs):
                swap_data(storage, src)
                return
            storage.resize_(nbytes)
            dst = torch.empty(0, dtype=torch.uint8, device=device).set_(storage)
            dst.copy_(torch.empty(0, dtype=torch.uint8, device=device).set_(src))
        finally:
            if rng is not None:
                _set_rng(saved, device)
            if cast:
                torch.set_autocast_enabled(kind, True)
            torch._C._set_grad_enabled(grad)


def _arg(x, device: torch.device):
    """A recipe's argument as the operator takes it (a tensor over its page's storage)."""
    if isinstance(x, _In):
        return x.tensor(device)
    if isinstance(x, _Const):
        return x.value
    if isinstance(x, _Geometry):
        return x.tensor()
    if isinstance(x, list):
        return [_arg(y, device) for y in x]
    return x


def _swap_rng(state, device: torch.device):
    """Set the default generator's state on ``device`` (a seeded operator's replay);
    return the one it had."""
    saved = capture_rng(device)
    _set_rng(state, device)
    return saved


def _set_rng(state, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


# [Note: rebuilding in place]
# A rebuilt output is a fresh allocation of exactly the page's size; handing
# that memory to the page's storage (``_swap_data_ptr_``: the storage object,
# and so every view and saved reference, stays the same) avoids a device copy
# of the page and a second page's worth of memory during the rebuild. Only an
# output that owns its memory outright is handed over; one that shares an
# input's storage, or where memory cannot change hands (movers.swap_data),
# is copied.


def rebuild_pages() -> int:
    """Pages' worth of memory a rebuild holds at once, the page included."""
    return 1 if can_swap() else 2


def _owns(src: torch.UntypedStorage, args: list, kwargs: dict) -> bool:
    """``src`` is none of the arguments' storages (the output is a fresh allocation)."""
    ptr = src.data_ptr()
    return not any(_shares(a, ptr) for a in args) and not any(_shares(v, ptr) for v in kwargs.values())


def _shares(x, ptr: int) -> bool:
    if isinstance(x, torch.Tensor):
        return storage_of(x).data_ptr() == ptr
    if isinstance(x, (list, tuple)):
        return any(_shares(y, ptr) for y in x)
    return False


def record(func, args: tuple, kwargs: dict, index: int, out: torch.Tensor, page_of,
           rng=None, eid: int = -1, nbytes: int = -1) -> Recipe | None:
    """A recipe for output ``index`` (``out``), or None when it would not be exact.

    ``page_of(t)`` returns the managed page of a tensor, or None; ``nbytes``: the
    size of ``out``'s storage, where the caller has read it.
    """
    if nbytes < 0:
        nbytes = storage_of(out).nbytes()
    if out.storage_offset() != 0 or out.numel() * out.element_size() != nbytes:
        return None
    if _attention_dropout(func, args, kwargs):
        return None
    if id(func) in _SHAPE_ONLY_IDS:
        return _shape_only(func, args, kwargs, index, out, eid)
    inputs: list[Page] = []
    new_args = []
    for a in args:
        k = _keep(a, inputs, page_of)
        if k is _MISSING:
            return None
        new_args.append(k)
    new_kwargs = {}
    for name, v in kwargs.items():
        k = _keep(v, inputs, page_of)
        if k is _MISSING:
            return None
        new_kwargs[name] = k
    if not inputs:
        return None  # a factory: nothing it depends on is tracked
    if id(func) in _WITHOUT_STATS_IDS:  # (the set's operators live as long as torch.ops)
        inputs = _without_stats(new_args, inputs)
        if inputs is None:
            return None
    return Recipe(func, tuple(new_args), new_kwargs, index, inputs, rng, eid)


def _shape_only(func, args: tuple, kwargs: dict, index: int, out: torch.Tensor, eid: int) -> Recipe | None:
    """A factory "like" a tensor (_SHAPE_ONLY): its recipe keeps the tensor's geometry, on the
    meta device, and names the output's device; it reads no page."""
    like = args[0] if args else None
    if (not isinstance(like, torch.Tensor) or like.layout != torch.strided or type(like) not in _PLAIN
            or any(isinstance(a, torch.Tensor) for a in args[1:])
            or any(isinstance(v, torch.Tensor) for v in kwargs.values())):
        return None
    return Recipe(func, (_Geometry(like), *args[1:]), {**kwargs, "device": out.device}, index, [], None, eid)


_MISSING = object()  # an argument a recipe cannot keep exactly


def _keep(x, inputs: list[Page], page_of):
    """``x`` as a recipe keeps it (a page's tensor as _In, a tiny constant as _Const), or
    _MISSING; the pages read are added to ``inputs``, each once."""
    if isinstance(x, torch.Tensor):
        if type(x) not in _PLAIN or x.is_conj() or x.is_neg() or x._is_zerotensor():
            # A view rebuilt from its storage would lose these bits (the
            # OpInfo sweep caught clone() of a conjugate view).
            return _MISSING
        if x.layout != torch.strided:
            return _MISSING
        page = page_of(x)
        if page is None:
            if x.numel() * x.element_size() <= _CONST_MAX_BYTES and not x.requires_grad:
                return _Const(x)
            return _MISSING
        if not page.pageable:
            # Memory the engine may not see written (numpy can share an
            # unpageable page and write it without an operator).
            return _MISSING
        if page not in inputs:
            inputs.append(page)
        return _In(page, x)
    if isinstance(x, (list, tuple)) and any(isinstance(y, torch.Tensor) for y in x):
        kept = [_keep(y, inputs, page_of) if y is not None else None for y in x]
        return _MISSING if any(k is _MISSING for k in kept) else kept
    return x


def _without_stats(args: list, inputs: list[Page]) -> list[Page] | None:
    """Training-mode batch norm also updates the running statistics (arguments
    3 and 4), which its output does not read: the replay leaves them out so
    they are updated once, and no recipe reads them. None in eval mode, where
    the output reads them."""
    if len(args) < 6 or not args[5]:
        return None
    args[3] = args[4] = None
    return [q for q in inputs if any(isinstance(a, _In) and a.page is q for a in args)]


# --------------------------------------------------------------- the engine side

# [Note: dropping instead of copying]
# A page with a recipe is evicted without a copy while its recipe's inputs
# exist, and rebuilt on the compute stream when needed (:meth:`Remat.rebuild`):
# the inputs first (faulted or rebuilt in turn), then the operator again.
# Three invariants make the bits the same: a write to a page first rebuilds
# the dropped pages that read it and voids its readers' recipes
# (:meth:`Remat.before_write`); a page written after it was made loses its
# recipe; a recipe holds its inputs' storages alive for as long as it exists.
#
# [Note: lineage]
# The program frees most intermediates right after the operator that reads
# them (a layer norm's fp32 output, once autocast has cast it to bf16), yet a
# recipe that reads one needs its bits. So a recipe holds the storages of its
# inputs, and such an intermediate lives on as a page only recipes hold: a
# lineage node (DTR's term). The storage's use count tells (one reference:
# the wrapper the recipes hold). Nothing touches a lineage node again, so it
# soon reaches the victims; eviction then drops it to no memory when it has a
# recipe of its own, or, when it has none and no reader is dropped, voids its
# readers' recipes and lets it die (:meth:`Remat._release_lineage`) rather
# than copying it. A rebuild that needs a dropped lineage node rebuilds it
# first, like any dropped input. At exit lineage nodes are not brought back;
# voiding every recipe lets them die.


# [Note: gradients are copied]
# A gradient is next read by the optimizer step, after the backward pass has
# freed what its operator read (the layer's input and the gradient flowing
# in). Dropped, it would keep those alive as lineage nodes, which are then
# dropped or copied in turn, and its rebuild in the optimizer step would
# replay the weight-gradient matmul and, through dropped lineage, the
# forward operators that made its inputs (on the GPU, casts, matmuls,
# pointwise chains and layer norms ran again inside the optimizer step:
# docs/BENCHMARKS.md, session 9). So a page known to be a gradient
# (classified at birth from the previous step, see Lifecycle.set_kind) is
# copied out, never dropped.


class Remat:
    """The part of :class:`~deepum.engine.pager.Pager` that drops pages and rebuilds them.

    The graph's bookkeeping (inputs, readers, depth) is core/lineage.py; this
    side makes the bytes: it holds inputs alive, runs recipes and evicts to make room.
    """

    def attach_recipe(self, page: Page, recipe) -> None:
        """``page`` can be computed again by ``recipe`` (recompute.Recipe)."""
        lineage.attach(page, recipe)

    def void(self, page: Page) -> None:
        """Forget a page's recipe (its inputs or its bytes changed) and let go of its inputs."""
        if page.recipe is None:  # voided already (a rebuild on the way evicted around it)
            return
        page.recipe.held = None
        lineage.detach(page)

    def _release_lineage(self, page: Page) -> bool:
        """Let a lineage node with no recipe die instead of copying it; False to keep it.

        See [Note: lineage]. Only pages no program tensor refers to any more
        qualify, and only while none of their readers is dropped (a dropped
        reader needs the bytes); small ones are kept, as recipes that read
        them save more than they cost.
        """
        if not self._releasable(page):
            return False
        for reader in lineage.readers(page):
            self.void(reader)
        self.retire(page)
        self.counters.lineage_released += 1
        return True

    def _dead_dropped(self, page: Page) -> list[Page] | None:
        """``page`` (dropped) and the dropped pages whose rebuilds need it, if no
        tensor refers to any of them (only recipes hold them); else None."""
        out, stack, seen = [], [page], {page}
        while stack:
            x = stack.pop()
            if x.pins or _use_count(x.key) != 1:
                return None
            out.append(x)
            for r in x.readers or ():
                if r.dropped and r not in seen:
                    seen.add(r)
                    stack.append(r)
        return out

    def _let_go(self, page: Page) -> None:
        if page.state == DEAD:
            return
        for reader in lineage.readers(page):
            self.void(reader)
        self.retire(page)
        self.counters.lineage_released += 1

    def _releasable(self, page: Page) -> bool:
        return (page.nbytes >= self.recompute_min_bytes and not page.pins
                and _use_count(page.key) == 1 and not any(r.dropped for r in page.readers))

    def _drop(self, page: Page, dropping: set[Page]) -> bool:
        """Evict ``page`` by its recipe if its inputs allow; False to copy it out instead.

        ``dropping``: pages dropped in the same batch, not yet marked evicted.
        """
        recipe = page.recipe
        if not recipe.usable():
            self.void(page)
            return False
        if page.kind == Kind.GRADIENT:
            # See [Note: gradients are copied].
            return False
        depth = lineage.drop_depth(recipe, dropping)
        if depth > self.recipe_max_depth:
            return False
        # A rebuild holds its inputs and the page (rebuild_pages()) at once:
        # a page that could not be rebuilt under the limit is copied.
        if sum(q.nbytes for q in recipe.inputs) + rebuild_pages() * page.nbytes > self.table.limit:
            return False
        recipe.depth = depth
        return True

    def rebuild_seconds(self, page: Page) -> float | None:
        """Seconds a rebuild of ``page`` would take, its dropped ancestors' and faults included;
        None when it cannot be dropped (DTR's cost over the evicted neighbourhood).

        What the recompute-first victim policy weighs against a copy.
        """
        recipe = page.recipe
        if recipe is None:
            # A lineage node that can be let go costs nothing to evict.
            return 0.0 if page.readers and self._releasable(page) else None
        if not self.recompute or recipe.held is None:
            return None
        costs = self.costs
        total = self._own_rebuild_seconds(page)
        for q in recipe.inputs:
            if q.state == EVICTED:
                if q.host is None:
                    break  # a dropped input: the whole neighbourhood below
                total += costs.copy_seconds(q.nbytes, H2D)
        else:
            # No input dropped (most candidates): the walk would meet the
            # page and its inputs on the host, each once.
            return total
        total = 0.0
        for step, p in self.rebuild_walk(page):
            if step is REBUILD:
                total += self._own_rebuild_seconds(p)
            elif step is FAULT:
                total += costs.copy_seconds(p.nbytes, H2D)
            else:
                return None  # too deep a neighbourhood: copy it instead
        return total

    def _own_rebuild_seconds(self, page: Page) -> float:
        """Running ``page``'s own recipe once: its operator's estimate (or the fallback) and the host's part."""
        own = self.costs.recompute_seconds(page.recipe.eid)
        return self.rebuild_overhead_s + (own if own is not None else self.costs.fallback_seconds(page.nbytes))

    def rebuild_walk(self, page: Page):
        """What rebuilding dropped ``page`` takes, in the order a rebuild meets it (DTR's evicted
        neighbourhood): (REBUILD, p) for each dropped page rebuilt, ``page`` first; (FAULT, q)
        for each page on the host faulted in; (DEEP, q) for a dropped input past
        4 * recipe_max_depth pages, not followed."""
        todo, seen = [page], {page}
        while todo:
            p = todo.pop()
            yield REBUILD, p
            for q in p.recipe.inputs:
                if q in seen:
                    continue
                seen.add(q)
                if q.dropped:
                    if len(seen) > self.recipe_max_depth * 4:
                        yield DEEP, q
                    else:
                        todo.append(q)
                elif q.state == EVICTED:
                    yield FAULT, q

    def live_dropped_readers(self, page: Page) -> list[Page]:
        """The dropped readers of ``page`` that before_write would rebuild (not those it lets go)."""
        return [r for r in lineage.readers(page) if r.dropped and self._dead_dropped(r) is None]

    def before_write(self, page: Page) -> None:
        """``page`` is about to be written: recipes that read it, and its own, stop being exact."""
        for reader in lineage.readers(page):
            if reader.dropped:
                dead = self._dead_dropped(reader)
                if dead is not None:
                    # No tensor refers to it nor to any dropped page that
                    # needs it: let them go rather than rebuild bits nobody
                    # can read (their readers' recipes go with them).
                    for x in dead:
                        self._let_go(x)
                    continue
                self.rebuild(reader)
            self.void(reader)
        if page.recipe is not None:
            self.void(page)

    def rebuild(self, page: Page) -> None:
        """Compute a dropped page again on the compute stream (its inputs made resident first)."""
        # Held here so that the page cannot die half way (a lineage node lives
        # only through its readers' recipes, which evictions below may void).
        storage = page.ref()
        if storage is None:
            self.retire(page)
            return
        recipe = page.recipe
        inputs = recipe.inputs
        for q in inputs:
            q.pins += 1
        try:
            for q in inputs:
                if q.state == EVICTED and q.host is None:  # (Page.dropped, written out)
                    self.rebuild(q)
            evicted, need = [], 0
            for q in inputs:
                if q.state == EVICTED:
                    evicted.append(q)
                    need += q.nbytes
            # The page (and the operator's output, where it is copied over: rebuild_pages()).
            held = rebuild_pages()
            need += held * page.nbytes
            if need > self.table.limit:
                raise BudgetTooSmallError(f"recomputing {recipe.func}", need, self.table.limit, self.budget)
            short = need - self.table.room()
            if short > 0:
                self.make_room(short)
            if evicted:
                self.fault(evicted)
            arriving = [q for q in inputs if q.state == ARRIVING]
            if arriving:
                self._arrive(arriving)
            for q in inputs:
                if q.prefetched:  # fetched ahead for this rebuild (prefetch.py): its first use
                    self._prefetch_used(q)
            self._run_recipe(page, storage, held)
            over = self.table.resident_bytes - self.table.limit
            if over > 0:
                # The operator that needs this page pinned what room could not be
                # made from: the budget was passed, which must not go unsaid. No
                # room is made here, mid-rebuild (the operator's end makes it).
                self._count_overshoot(f"recomputing {recipe.func}", over)
            self.table.touch_all(inputs)
            # Used now, as far as the victim policy can tell: a page rebuilt
            # (early, by a prefetch, or for a reader) and the inputs just
            # brought back would otherwise look as stale as before and be the
            # next victims, dropped again before the reader or a sibling's
            # rebuild used them.
            self.policy.note_use((*inputs, page))
            self.counters.recomputes += 1
        finally:
            for q in inputs:
                q.pins -= 1

    def _run_recipe(self, page: Page, storage: torch.UntypedStorage, held: int) -> None:
        """Run ``page``'s recipe into its storage, with room for ``held`` pages' worth of
        output (rebuild_pages()), evicting more and trying again after an out-of-memory error."""
        recipe = page.recipe
        # The operator's output beyond the page itself, where it is copied over.
        extra = (held - 1) * page.nbytes
        table = self.table
        t0 = now_us() if self.trace is not None else 0.0
        while True:
            table.arriving(page)
            table.reserved_bytes += extra
            try:
                start = self.transfers.clock()
                try:
                    with profiler_range("deepum::recompute"):
                        recipe.run_into(storage, page.nbytes, self.device)
                finally:
                    self.transfers.clocked(start, "recompute_seconds")
                break
            except torch.OutOfMemoryError as e:
                self._unarrive([(storage, page)])
                evict_for_retry(self, f"recomputing {recipe.func}", held * page.nbytes, held * page.nbytes, e)
            except BaseException:
                self._unarrive([(storage, page)])
                raise
            finally:
                table.reserved_bytes -= extra
        table.arrived(page)
        page.ready = None
        page.dirty = True  # no host copy: the next eviction drops or copies it again
        if self.trace is not None:
            self.trace.transfer("recomputes", t0, now_us(), [page], f"recompute {recipe.func}",
                                planned=self.plans.steering)
