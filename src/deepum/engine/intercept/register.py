"""Making pages: storages seen for the first time, outputs, tensors adopted at entry.

Each page gets its stable key here (see [Note: execution IDs and stable keys]
in mode.py).
"""

from __future__ import annotations

import torch

from ...core.pages import DEAD, OTHER, PARAMETER, Kind, Page
from ..remat import record, storage_of
from .plan import flat_outputs, pageable
from .sparse import sparse_parts_resident

# Kinds of pages a program holds for the whole run, one per parameter.
_STATE = (Kind.PARAMETER, Kind.OPTIMIZER_STATE)

_INDEX_BYTES = 4096  # see [Note: index tensors the host reads]
_FOR_GOOD = 1  # a pin no operator's unpin takes away
QUIET = -3  # the execution ID of every operator run on the quiet path
QUIET_SKEY = -1
_use_count = torch._C._storage_Use_Count
Tensor = torch.Tensor


def live_page(pages: dict[int, Page], t: torch.Tensor, is_managed) -> Page | None:
    """The page of ``t``'s storage in ``pages`` (by storage address), or None.

    A dead page whose death is not yet reaped can stand at the address a new
    storage took (views run without reaping: [Note: views] in mode.py), so
    the page must hold this very storage.
    """
    if not is_managed(t) or t.layout != torch.strided:
        return None
    try:
        s = storage_of(t)
    except (RuntimeError, NotImplementedError):
        return None
    p = pages.get(s._cdata)
    return p if p is not None and p.ref() is s else None


class Registration:
    """The part of :class:`~deepum.engine.intercept.mode.PagingMode` that turns storages into pages."""

    def _name_quiet_pages(self) -> None:
        """Pressure begins: pages made on the quiet path get stable keys of their own."""
        live = self.pager.live
        for page in self.pager.table.pages.values():
            if page.skey == QUIET_SKEY:
                page.skey = self.skeys(("quiet", page.key))
                live[page.skey] = page

    def adopt(self, tensors) -> int:
        """Make pages of tensors that exist before the session (a model, its optimizer).

        Without this they would become pages only when an operator first
        touches them, and until then they would hold budget the pager cannot
        see or free. Returns the number of pages made.
        """
        n = 0
        with self.pager.lock:
            for t in tensors:
                if not self.is_managed(t) or t.layout != torch.strided:
                    continue
                try:
                    s = storage_of(t)
                except (RuntimeError, NotImplementedError):
                    continue
                if s._cdata in self.pager.table.pages or s.nbytes() == 0 or s.device != self.device:
                    continue
                kind = PARAMETER if isinstance(t, torch.nn.Parameter) else OTHER
                self._keep_index(t, self.pager.register(s, self.skeys(("param", len(self.skeys))),
                                                        pageable(t, s), kind))
                n += 1
        return n

    def _gather(self, plan, func, args, kwargs) -> tuple[list[Page], list[Page]]:
        """The operator's pages (each once) and those it writes; retires dead pages first.

        Called under the pager's lock. A storage never seen becomes a page.
        """
        pager = self.pager
        if pager.dead:
            pager.reap()
        if pager.held:
            pager.release_held()
        is_managed = self.is_managed
        get = pager.table.pages.get
        found: dict[int, Page] = {}
        written: list[Page] = []
        # OpPlan.collect, written out: each tensor is handled where it is met.
        nargs, n_written = len(args), plan.n_written
        i = -1  # the tensor's position among the tensor arguments (collect's order)
        for k, (index, name, is_list) in enumerate(plan.slots):
            v = args[index] if index < nargs else kwargs.get(name)
            if v is None:
                continue
            for t in (v if is_list else (v,)):
                if not isinstance(t, Tensor):  # (Python scalars can stand where the schema says Tensor)
                    continue
                i += 1
                if t.layout != torch.strided:
                    if is_managed(t):
                        sparse_parts_resident(self, t, found)
                    continue
                try:
                    s = storage_of(t)
                except (RuntimeError, NotImplementedError):  # other storage-less kinds
                    continue
                # A known storage is managed; the device is asked only of one not seen
                # (dead pages were reaped above, so no other storage holds a page's address).
                p = get(s._cdata)
                if p is None:
                    if not is_managed(t):
                        continue
                    p = self._first_seen(t, s, func, i)
                    if p is None:
                        continue
                found[p.key] = p
                if k < n_written:
                    written.append(p)
        if pager.host_holds is not None:  # pages pinned for a pointer (host_access.py)
            pager.host_holds(found)
        return list(found.values()), written

    def _first_seen(self, t: torch.Tensor, s: torch.UntypedStorage, func, i: int) -> Page | None:
        """A storage no operator has used yet: a parameter, a new batch, ..."""
        nbytes = s.nbytes()
        if nbytes == 0 or s.device != self.device:
            return None
        # A parameter is often first seen through a view of it (the ``t`` of
        # a linear layer's weight): views take no part in paging ([Note:
        # views] in mode.py), so look through to the base.
        param = isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)
        if param:
            # Parameters live for the whole run: their identity is their role.
            skey = self.skeys(("param", len(self.skeys)))
        else:
            skey = self._stable_key(("ext", self.prev_plan, self.plans[id(func)], i, tuple(t.shape), t.dtype))
        kind = PARAMETER if param else OTHER
        return self._keep_index(t, self.pager.register(s, skey, pageable(t, s), kind, preexisting=True))

    def _register_outputs(self, out, eid: int, call: tuple | None = None) -> int:
        """Make new storages among the outputs pages; return their bytes.

        ``call``: (func, args, kwargs, generator state) of a recomputable operator; large new
        pages get a recipe (engine/remat.py).
        """
        pager = self.pager
        get, known, live = pager.table.pages.get, self.skeys.known, pager.live
        is_managed = self.is_managed
        new = 0
        for i, t in enumerate((out,) if type(out) is Tensor else flat_outputs(out)):
            if not is_managed(t):
                continue
            if t.layout != torch.strided:
                new += sparse_parts_resident(self, t, None)
                continue
            try:
                s = storage_of(t)
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
            if eid == QUIET:
                skey = QUIET_SKEY
            else:  # _stable_key, its usual case written out: every output
                name = ("born", eid, i)
                skey = known(name)
                if skey is None:
                    skey = self.skeys(name)
                holder = live.get(skey)
                if holder is not None and self._sibling(holder):
                    skey = self._stable_key(name)
            p = pager.register(s, skey, pageable(t, s), nbytes=nbytes)
            new += nbytes
            if call is not None and nbytes >= pager.recompute_min_bytes and p.pageable:
                func, args, kwargs, rng = call
                recipe = record(func, args, kwargs, i, t, self.page_of, rng, eid, nbytes)
                if recipe is not None:
                    pager.attach_recipe(p, recipe)
                    pager.counters.recipes += 1
        return new

    def _stable_key(self, key: tuple) -> int:
        """The stable key for a new page named ``key``: ``key`` itself, unless the page
        holding it is a sibling, then the first of (key, 1), (key, 2), ... no sibling
        holds ([Note: execution IDs and stable keys] in mode.py)."""
        live, skeys = self.pager.live, self.skeys
        skey = skeys(key)
        holder = live.get(skey)
        if holder is None or not self._sibling(holder):
            return skey  # the usual case: the role is free or its old page hands it over
        n = 1
        while self._sibling(live.get(skey := skeys((key, n)))):
            n += 1
        return skey

    def _sibling(self, page: Page | None) -> bool:
        """Does ``page``, holding a stable key, keep it from a new page of the same name?"""
        if page is None or page.state == DEAD or page.ref() is None:
            return False
        if page.readers and _use_count(page.key) == 1:
            return False  # kept only by recipes: no longer the program's
        return page.kind in _STATE or self.pager.in_optimizer_step

    def _keep_index(self, t: torch.Tensor, page: Page) -> Page:
        """On the cpu tier, pin a small integer tensor's page for good; returns the page.

        [Note: index tensors the host reads]
        Some C++ reads a host index tensor's data without an operator
        (``tensor_split``'s ``tensor_indices_or_sections``, whose composite
        kernel runs above the paging mode). On CUDA such a tensor is a host
        tensor, never a page; on the cpu tier it is one, and evicted it has no
        bytes to read. Host access wraps ``torch.tensor_split`` and the
        method, but not a reference taken before the session (OpInfo's
        database holds one), so on the cpu tier integer tensors of at most
        ``_INDEX_BYTES`` that come from outside the operators the mode sees
        (made before the session, or below it) stay resident: they free next
        to nothing. Pinned, not made unpageable: they stay inputs a recipe may
        read (an embedding's token IDs). Outputs of intercepted operators are
        left alone (a step's own index tensors move with the rest); such an
        index tensor handed to a ``tensor_split`` taken before the session can
        still be found evicted.
        """
        if (self.device.type == "cpu" and page.nbytes <= _INDEX_BYTES and page.pageable
                and not t.is_floating_point() and not t.is_complex()):
            page.pins = _FOR_GOOD
        return page

    def page_of(self, t: torch.Tensor) -> Page | None:
        return live_page(self.pager.table.pages, t, self.is_managed)

    def _factory_here(self, kwargs: dict) -> bool:
        dev = kwargs.get("device")
        if dev is None:
            return self.device.type == "cpu"
        return torch.device(dev).type == self.device.type
