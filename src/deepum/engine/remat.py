"""Recipes: a page dropped without a copy, rebuilt by running its operator again.

Copying a page out and back costs two trips over the host link; for a page
that one cheap operator computed from pages that are still around, running
that operator again costs one kernel on the device and no link time. A GELU
written as a chain of elementwise operators (GPT-2's ``gelu_new``) saves four
tensors of the MLP's width for backward, three of them products of the other
two and a constant; autocast's bf16 copies of the weights are functions of
the fp32 parameters.

[Note: when a recipe is exact]
Re-running an operator gives the same bits when its kernel is deterministic
and it reads the same bits. So a recipe is recorded only for operators
tagged ``pointwise`` (or ``_to_copy``) and not ``nondeterministic_seeded``,
whose every tensor argument is a managed page (kept as the page and the
view's geometry; Python scalars arrive as numbers and are kept as they are)
and a plain strided view (no conjugate or negative bit, which a view rebuilt
from the storage would lose),
and only for an output that covers its whole storage. The pager then keeps three
invariants (see :class:`Remat` below):

* the inputs hold the bits they had: before an operator writes a page, the
  pages whose recipes read it are rebuilt if dropped, and their recipes
  voided (:meth:`Pager.before_write`); a page written after it was made
  loses its own recipe;
* the inputs exist: dropping a page holds its inputs' storages until it is
  rebuilt or dies;
* the chain is short: a page whose rebuild would need more than
  ``Thresholds.recipe_max_depth`` (core/config.py) dropped pages rebuilt first is copied out instead.

A recipe runs below autocast and autograd, as the original call did (the
interceptor sits below both), so it calls the same kernel.
"""

from __future__ import annotations

import torch

from ..core import lineage
from ..core.pages import ARRIVING, DEAD, EVICTED, Page
from ..errors import BudgetTooSmallError
from .retry import evict_for_retry
from .telemetry import profiler_range

_ALWAYS = {torch.ops.aten._to_copy.default}
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def recomputable(func: torch._ops.OpOverload) -> bool:
    """Can this operator's outputs be rebuilt by running it again (given the conditions above)?"""
    tags = func.tags
    if any(getattr(torch.Tag, name, None) in tags for name in ("nondeterministic_seeded", "nondeterministic_bitwise")):
        return False
    return torch.Tag.pointwise in tags or func in _ALWAYS


class _In:
    """A tensor argument that lives in a page: the page and the view's geometry."""

    __slots__ = ("page", "dtype", "size", "stride", "offset")

    def __init__(self, page: Page, t: torch.Tensor) -> None:
        self.page = page
        self.dtype = t.dtype
        self.size = tuple(t.shape)
        self.stride = t.stride()
        self.offset = t.storage_offset()

    def tensor(self, device: torch.device) -> torch.Tensor:
        storage = self.page.ref()
        return torch.empty(0, dtype=self.dtype, device=device).set_(storage, self.offset, self.size,
                                                                    self.stride)


class Recipe:
    """How to rebuild one page: an operator, its arguments, which output."""

    __slots__ = ("func", "args", "kwargs", "index", "inputs", "held", "depth")

    def __init__(self, func, args: tuple, kwargs: dict, index: int, inputs: list[Page]) -> None:
        self.func = func
        self.args = args
        self.kwargs = kwargs
        self.index = index
        self.inputs = inputs  # the pages read, each once
        # While the page is dropped: its inputs' storages, kept alive.
        self.held: list | None = None
        self.depth = 1

    def usable(self) -> bool:
        """Are the inputs still there to rebuild from?"""
        return all(q.state != DEAD and q.ref() is not None for q in self.inputs)

    def run_into(self, storage: torch.UntypedStorage, device: torch.device) -> None:
        """Run the operator again and put its output's bytes into ``storage`` (already sized)."""
        def arg(x):
            return x.tensor(device) if isinstance(x, _In) else x

        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            out = self.func(*[arg(a) for a in self.args], **{k: arg(v) for k, v in self.kwargs.items()})
            if isinstance(out, (tuple, list)):
                out = out[self.index]
            src = out.untyped_storage()
            if src.nbytes() != storage.nbytes():
                raise RuntimeError(f"deepum: recomputing {self.func} gave {src.nbytes()} bytes, "
                                   f"the page holds {storage.nbytes()}")
            dst = torch.empty(0, dtype=torch.uint8, device=device).set_(storage)
            dst.copy_(torch.empty(0, dtype=torch.uint8, device=device).set_(src))


def record(func, args: tuple, kwargs: dict, index: int, out: torch.Tensor, page_of) -> Recipe | None:
    """A recipe for output ``index`` (``out``), or None when it would not be exact.

    ``page_of(t)`` returns the managed page of a tensor, or None.
    """
    if out.storage_offset() != 0 or out.numel() * out.element_size() != out.untyped_storage().nbytes():
        return None
    inputs: list[Page] = []

    def keep(x):
        if isinstance(x, torch.Tensor):
            if x.is_conj() or x.is_neg() or x._is_zerotensor() or type(x) not in _PLAIN:
                # A view rebuilt from its storage would lose these bits (the
                # OpInfo sweep caught clone() of a conjugate view).
                return None
            page = page_of(x)
            if page is None or not page.pageable:
                # Memory the engine does not watch for writes (Python
                # scalars arrive as numbers, not tensors, at this level), or
                # may not see them: an unpageable page can be memory numpy
                # shares and writes without an operator.
                return None
            if page not in inputs:
                inputs.append(page)
            return _In(page, x)
        if isinstance(x, (list, tuple)) and any(isinstance(y, torch.Tensor) for y in x):
            return None  # tensor lists: not a pointwise operator's shape
        return x

    new_args = []
    for a in args:
        k = keep(a)
        if k is None and a is not None:
            return None
        new_args.append(k)
    new_kwargs = {}
    for name, v in kwargs.items():
        k = keep(v)
        if k is None and v is not None:
            return None
        new_kwargs[name] = k
    if not inputs:
        return None  # a factory: nothing it depends on is tracked
    return Recipe(func, tuple(new_args), new_kwargs, index, inputs)


# --------------------------------------------------------------- the engine side

# [Note: dropping instead of copying]
# A page with a recipe (see recompute.py) is evicted without a copy while its
# recipe's inputs exist, and rebuilt on the compute stream when needed
# (:meth:`Pager.rebuild`): the inputs first (faulted or rebuilt in turn), then
# the operator again. Three invariants make the bits the same: a write to a
# page first rebuilds the dropped pages that read it and voids its readers'
# recipes (:meth:`Pager.before_write`); a page written after it was made loses
# its recipe; a dropped page holds its inputs' storages alive until it is
# rebuilt or dies.


class Remat:
    """The part of :class:`~deepum.engine.pager.Pager` that drops pages and rebuilds them.

    The graph's bookkeeping (inputs, readers, depth) is core/lineage.py; this
    side makes the bytes: it holds inputs alive, runs recipes and evicts to make room.
    """

    def attach_recipe(self, page: Page, recipe) -> None:
        """``page`` can be computed again by ``recipe`` (recompute.Recipe)."""
        lineage.attach(page, recipe)

    def void(self, page: Page) -> None:
        """Forget a resident page's recipe (its inputs or its bytes changed)."""
        lineage.detach(page)

    def _drop(self, page: Page) -> bool:
        """Evict ``page`` by its recipe if its inputs allow; False to copy it out instead."""
        recipe = page.recipe
        if not recipe.usable():
            self.void(page)
            return False
        # An input dropped, or being dropped in the same batch, holds its own inputs.
        depth = lineage.drop_depth(recipe)
        if depth > self.recipe_max_depth:
            return False
        recipe.depth = depth
        recipe.held = [q.ref() for q in recipe.inputs]
        return True

    def before_write(self, page: Page) -> None:
        """``page`` is about to be written: recipes that read it, and its own, stop being exact."""
        for reader in lineage.readers(page):
            if reader.dropped:
                self.rebuild(reader)
            self.void(reader)
        if page.recipe is not None:
            self.void(page)

    def rebuild(self, page: Page) -> None:
        """Compute a dropped page again on the compute stream (its inputs made resident first)."""
        recipe = page.recipe
        inputs = recipe.inputs
        for q in inputs:
            q.pins += 1
        try:
            for q in inputs:
                if q.dropped:
                    self.rebuild(q)
            evicted = [q for q in inputs if q.state == EVICTED]
            # The page, and the operator's own output until it is copied over.
            need = sum(q.nbytes for q in evicted) + 2 * page.nbytes
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
            storage = page.ref()
            while True:
                self.table.arriving(page)
                self.table.reserved_bytes += page.nbytes
                try:
                    with profiler_range("deepum::recompute"):
                        storage.resize_(page.nbytes)
                        recipe.run_into(storage, self.device)
                    break
                except torch.OutOfMemoryError as e:
                    self._unarrive([(storage, page)])
                    evict_for_retry(self, f"recomputing {recipe.func}", 2 * page.nbytes,
                                    2 * page.nbytes, e)
                except BaseException:
                    self._unarrive([(storage, page)])
                    raise
                finally:
                    self.table.reserved_bytes -= page.nbytes
            self.table.arrived(page)
            page.ready = None
            page.dirty = True  # no host copy: the next eviction drops or copies it again
            recipe.held = None
            for q in inputs:
                self.table.touch(q)
            self.counters.recomputes += 1
        finally:
            for q in inputs:
                q.pins -= 1
