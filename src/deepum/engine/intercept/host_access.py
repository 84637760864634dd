"""Host access: code that reads or writes tensor memory without an aten operator.

[Note: host access]
The paging mode sees operators only. Python code also reaches tensor memory
below the dispatcher: ``tolist``/``numpy`` read the data pointer, ``repr``
formats the values, ``copy.deepcopy`` clones the storage, ``torch.save`` and
``pickle`` read storage metadata at reduce time and the bytes much later,
safetensors and Hugging Face read ``data_ptr()`` and storage addresses, C++
extensions are handed raw pointers. An evicted storage has ``nbytes() == 0``
and no memory, so each of those would see an empty storage (or garbage). They
are caught one level up, as the methods themselves (:class:`HostAccessMode`,
[Note: host access without a torch-function mode]), in four ways:

* reads (tolist, tensor_split's index tensor, repr/str/format, deepcopy): the
  tensors' pages are faulted in and pinned for the duration of the call;
* aliases (numpy, ``__array__``, ``__dlpack__``): the page is faulted in and
  becomes unpageable for good, since whatever shares it may read or write it
  at any later time; a write through the alias therefore never leaves a
  stale host copy or an inexact recipe (both are voided first);
* pointers (``data_ptr``, ``untyped_storage``, ``storage``): the page is
  faulted in and stays pinned until the same thread runs an operator on
  other pages only, because the pointer or storage is used right after the
  call (a ``ctypes`` read, an identity check, ``storage.tolist()``, whose
  element reads are operators on the same storage);
* serialization (torch.save in both formats, pickle, anything that reduces a
  tensor): ``Tensor._reduce_ex_internal`` is wrapped while a session is
  active so that the tensor it reduces is a host *snapshot* of the page (a
  copy taken now: from the host copy if the page is evicted with one, else
  faulted in and copied). The writer reads the bytes only after every object
  was pickled; a state dict is usually larger than the budget, so pinning
  every page until then would not fit, while snapshots need no residency. On
  CUDA a snapshot is tagged with its page's device (``register_package``),
  so torch.load brings the tensor back where it was. Snapshots of one page
  are shared while no operator has run since, so views of one storage are
  still saved as one storage.

Pages are faulted in through :meth:`Pager.begin`, so the budget holds: a
read makes room like any operator, and one that cannot fit raises
BudgetTooSmallError before anything changes.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import weakref
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode_stack

from ...core.pages import DEAD, EVICTED, Page
from ...errors import UnsupportedError
from ..movers import byte_view
from ..pager import Pager
from .register import live_page

Tensor = torch.Tensor
_storage_of = torch._C.TensorBase.untyped_storage  # never through the wrappers below

COMPILE_REMEDY = (
    "this torch.compile cannot be kept out of deepum's interceptor. Compile and run the function outside "
    "the session, or run the compiled function with deepum off (deepum.disable(), or leave the "
    "oversubscribe() block)")


class HostAccess:
    """The engine side of host access for one session: fault in, pin, snapshot."""

    def __init__(self, pager: Pager, is_managed) -> None:
        self.pager = pager
        self.is_managed = is_managed
        # Pages pinned for a pointer or storage handed out, per thread; see hold().
        self._held = threading.local()
        self._holders = 0  # threads holding some
        # page key -> (operators run when taken, weak ref to the snapshot storage)
        self._snaps: dict[int, tuple[int, weakref.ref]] = {}

    def pages_of(self, tensors) -> list[Page]:
        """The live managed pages of ``tensors`` (each once). Called under the pager's lock."""
        pages, is_managed = self.pager.table.pages, self.is_managed
        found: dict[int, Page] = {}
        for t in tensors:
            if isinstance(t, Tensor) and (p := live_page(pages, t, is_managed)) is not None:
                found[p.key] = p
        return list(found.values())

    def pin(self, op: object, tensors, alias: bool = False) -> list[Page]:
        """Fault the tensors' pages in and pin them; the caller unpins (:meth:`unpin`)."""
        pager = self.pager
        # The engine's own storage look-ups hold the lock: not caught as host access.
        with pager.lock:
            pages = self.pages_of(tensors)
            if pages:
                # The copies that bring pages back are operators themselves:
                # run them below the paging mode, as its own fault path does.
                with _disable_current_modes():
                    pager.begin(op, pages, 0)
                if alias:
                    for p in pages:
                        pager.before_write(p)
                        if p.pageable:
                            pager.table.make_unpageable(p)
                            pager.counters.unpageable_pages += 1
                        # The alias may write it: the host copy is stale from now on.
                        p.dirty = True
                        pager.transfers.release_host(p)
        return pages

    def hold(self, op: object, tensors) -> None:
        """Fault in and pin until this thread runs an operator on other pages only."""
        pages = self.pin(op, tensors)
        if not pages:
            return
        with self.pager.lock:
            held = getattr(self._held, "pages", None)
            if not held:
                self._held.pages = held = {}
                self._holders += 1
                self.pager.host_holds = self._release_unless_used
            for p in pages:
                if p.key in held:
                    self.pager.unpin([p])  # pinned once per hold
                else:
                    held[p.key] = p

    def _release_unless_used(self, used: dict) -> None:
        """An operator runs (under the pager's lock): holds of this thread it does not use end."""
        held = getattr(self._held, "pages", None)
        # An operator with no pages (a factory; reading a storage makes an
        # empty tensor and sets it to the storage) does not end a hold.
        if not held or not used or any(k in used for k in held):
            return
        self._held.pages = None
        self.pager.unpin(list(held.values()))
        self._holders -= 1
        if self._holders == 0:
            self.pager.host_holds = None

    def unpin(self, pages: list[Page]) -> None:
        if pages:
            with self.pager.lock:
                self.pager.unpin(pages)

    def snapshot(self, t: Tensor) -> Tensor | None:
        """A host tensor with ``t``'s bytes, shape and strides, or None if ``t`` needs none."""
        if not (self.is_managed(t) and t.layout == torch.strided) or self.pager.closed:
            return None
        return self._snapshot(t)

    def _snapshot(self, t: Tensor) -> Tensor | None:
        try:
            storage = _storage_of(t)
        except (RuntimeError, NotImplementedError):
            return None
        pager = self.pager
        with pager.lock, _disable_current_modes():
            page = pager.table.pages.get(storage._cdata)
            if page is None or page.state == DEAD or not page.pageable or page.ref() is not storage:
                # Never evicted (the writer reads the real storage), or a dead
                # page at this address, its death not yet reaped.
                return None
            snap = self._cached(page)
            if snap is None:
                snap = self._copy_out(page, storage)
                self._snaps[page.key] = (pager.counters.ops, weakref.ref(snap))
                _SNAPSHOT_DEVICE[snap._cdata] = str(storage.device)
                weakref.finalize(snap, _SNAPSHOT_DEVICE.pop, snap._cdata, None)
            out = torch.empty(0, dtype=t.dtype).set_(snap, t.storage_offset(), t.size(), t.stride())
        out.requires_grad_(t.requires_grad and t.is_leaf)
        return out

    def _cached(self, page: Page) -> torch.UntypedStorage | None:
        entry = self._snaps.get(page.key)
        if entry is None:
            return None
        ops, ref = entry
        snap = ref()
        if snap is None or ops != self.pager.counters.ops:
            # An operator ran since: the page may have been written.
            del self._snaps[page.key]
            return None
        return snap

    def _copy_out(self, page: Page, storage: torch.UntypedStorage) -> torch.UntypedStorage:
        pager = self.pager
        buf = torch.empty(page.nbytes, dtype=torch.uint8)
        if page.state == EVICTED and page.host is not None and pager.device.type == "cpu":
            buf.copy_(page.host[: page.nbytes])  # the host copy is the truth; no fault needed
            return buf.untyped_storage()
        pager.begin("a host snapshot (torch.save, pickle)", [page], 0)
        try:
            buf.copy_(byte_view(storage))
        finally:
            pager.unpin([page])
        return buf.untyped_storage()


class HostAccessMode:
    """Brings pages in before host code reads tensor memory; see [Note: host access].

    [Note: host access without a torch-function mode]
    While entered, the caught methods are wrapped on ``torch.Tensor`` itself
    (and ``torch.tensor_split``), not caught by a ``TorchFunctionMode``: a
    torch-function mode costs a Python call on every torch call of the
    program, views included, for a dozen methods that a training step calls
    rarely. A wrapper passes straight through unless the calling thread runs
    under this session's paging mode (the threads a torch-function mode would
    have seen: the session's, autograd's workers, attached ones), and the
    engine's own storage look-ups (under the pager's lock, or through
    ``TensorBase`` directly) never wait on it. Calls a caught method makes
    itself (``storage()`` reading ``untyped_storage()``) pass through.
    """

    def __init__(self, access: HostAccess, paging_mode) -> None:
        self.access = access
        self.paging_mode = paging_mode  # the session's interceptor: its threads are watched
        self.watching = True

    def __enter__(self) -> HostAccessMode:
        _wrap_methods(self)
        return self

    def __exit__(self, *exc) -> None:
        _unwrap_methods(self)

    def call(self, func, kind: int, args: tuple, kwargs: dict):
        """``func`` (a caught method's original) with the tensors' pages in, as ``kind`` says."""
        tensors = _tensors(args, kwargs)
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            if kind == _POINTER:
                self.access.hold(func, tensors)
                return func(*args, **kwargs)
            pages = self.access.pin(func, tensors, alias=kind == _ALIAS)
            try:
                if not pages:
                    return func(*args, **kwargs)
                # Below the paging mode: a deepcopy's new storage is passed to
                # set_ as a storage, not a tensor, so the mode could not fault it
                # back in had it evicted it meanwhile. What the call makes stays
                # unmanaged until an operator first uses it.
                with _disable_current_modes():
                    return func(*args, **kwargs)
            finally:
                self.access.unpin(pages)
        finally:
            _inside.depth -= 1

    def watches_this_thread(self) -> bool:
        return self.paging_mode in _get_current_dispatch_mode_stack()


_READ, _ALIAS, _POINTER = range(3)
_METHODS = {"tolist": _READ, "tensor_split": _READ, "__repr__": _READ, "__format__": _READ,
            "__deepcopy__": _READ, "numpy": _ALIAS, "__array__": _ALIAS, "__dlpack__": _ALIAS,
            "data_ptr": _POINTER, "untyped_storage": _POINTER, "storage": _POINTER,
            "_typed_storage": _POINTER}
_MISSING = object()
_inside = threading.local()  # depth of caught calls on this thread
_watch: HostAccessMode | None = None
_saved: dict[str, object] = {}  # name -> what torch.Tensor held before (_MISSING: inherited)


def _wrapper(original, kind: int):
    def caught(*args, **kwargs):
        watch = _watch
        if (watch is None or getattr(_inside, "depth", 0) or watch.access.pager.lock._is_owned()
                or not watch.watches_this_thread()):
            # Not watching; a caught method's own calls; the engine itself (it
            # holds the lock); or a thread the session does not page.
            return original(*args, **kwargs)
        if not _dynamo_kept_out and "torch._dynamo" in sys.modules:
            keep_dynamo_out()  # torch.compile was first called inside the session
        return watch.call(original, kind, args, kwargs)

    caught.__name__ = getattr(original, "__name__", "caught")
    caught.__doc__ = getattr(original, "__doc__", None)
    caught.__wrapped__ = original
    return caught


def _wrap_methods(watch: HostAccessMode) -> None:
    global _watch
    _watch = watch
    if _saved:
        return
    for name, kind in _METHODS.items():
        _saved[name] = Tensor.__dict__.get(name, _MISSING)
        setattr(Tensor, name, _wrapper(getattr(Tensor, name), kind))
    _saved["torch.tensor_split"] = torch.tensor_split
    torch.tensor_split = _wrapper(torch.tensor_split, _READ)


def _unwrap_methods(watch: HostAccessMode) -> None:
    global _watch
    if _watch is not watch:
        return
    _watch = None
    if not _saved:
        return
    torch.tensor_split = _saved.pop("torch.tensor_split")
    for name, before in _saved.items():
        if before is _MISSING:
            delattr(Tensor, name)
        else:
            setattr(Tensor, name, before)
    _saved.clear()


_dynamo_kept_out = False


def keep_dynamo_out() -> None:
    """torch.compile must never trace deepum's own frames (they would recurse into the pager).

    A compiled function called inside a session runs under Dynamo's frame
    hook, and deepum's interceptor, called from its frames, would be
    compiled too. Listing deepum's package with Dynamo's skipped directories
    makes Dynamo run it as it runs torch's internals, and the compiled
    function is paged like any other code. Dynamo is not imported here (it
    takes seconds): the session calls this at entry, ``torch.compile`` while
    a session is active (:func:`install`), and a caught method's wrapper as
    soon as Dynamo appears.
    """
    global _dynamo_kept_out
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is None or _dynamo_kept_out:
        return
    try:
        dynamo.trace_rules.add(__package__.split(".")[0])  # all of deepum, not this folder
    except Exception as e:  # a Dynamo without trace_rules.add
        raise UnsupportedError(COMPILE_REMEDY) from e
    _dynamo_kept_out = True


def _tensors(args, kwargs) -> list[Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, Tensor))
    return out


# ----------------------------------------------------------- serialization

# Snapshot storage (C++ address) -> the device of the page it copies.
_SNAPSHOT_DEVICE: dict[int, str] = {}
_active: HostAccess | None = None
_original_reduce = Tensor._reduce_ex_internal


def _reduce_ex_internal(self, proto):
    access = _active
    if access is not None:
        snap = access.snapshot(self)
        if snap is not None:
            return _original_reduce(snap, proto)
    return _original_reduce(self, proto)


def _tag(storage) -> str | None:
    if storage.device.type != "cpu" or not _SNAPSHOT_DEVICE:
        return None
    return _SNAPSHOT_DEVICE.get(storage._cdata)


def _no_deserializer(storage, location):
    return None  # the device's own deserializer restores it


torch.serialization.register_package(5, _tag, _no_deserializer)


def enter(pager: Pager, is_managed, watch: bool, paging_mode) -> HostAccessMode:
    """Start host access for a session; undo with :func:`leave`.

    ``paging_mode``: the session's interceptor; host code is watched on the
    threads it runs on. ``watch=False`` (Session(host_access=False)) keeps
    serialization safe but leaves the methods unwrapped: reads without an
    operator are then the program's own business.
    """
    keep_dynamo_out()
    mode = HostAccessMode(HostAccess(pager, is_managed), paging_mode)
    mode.watching = watch
    if watch:
        mode.__enter__()
    install(mode.access)
    return mode


def leave(mode: HostAccessMode) -> None:
    uninstall()
    if mode.watching:
        mode.__exit__(None, None, None)


def install(access: HostAccess) -> None:
    """Reduce tensors through snapshots of their pages, and keep Dynamo out of deepum's
    frames at a first ``torch.compile``, until :func:`uninstall`."""
    global _active
    _active = access
    Tensor._reduce_ex_internal = _reduce_ex_internal
    torch.compile = _compile


def uninstall() -> None:
    global _active
    _active = None
    Tensor._reduce_ex_internal = _original_reduce
    if torch.compile is _compile:
        torch.compile = _original_compile
    _SNAPSHOT_DEVICE.clear()


_original_compile = torch.compile


def _compile(*args, **kwargs):
    """torch.compile, first called inside a session: Dynamo is imported here, so deepum's
    package joins its skipped files before any frame is traced (:func:`keep_dynamo_out`;
    ``nn.Module.compile`` calls this too)."""
    import torch._dynamo  # noqa: F401, PLC0415  (what torch.compile imports first)

    keep_dynamo_out()
    return _original_compile(*args, **kwargs)


_compile.__doc__ = (_compile.__doc__ or "") + "\n\n" + (_original_compile.__doc__ or "")
_compile.__wrapped__ = _original_compile


@contextlib.contextmanager
def resident(*tensors: Tensor) -> Iterator[None]:
    """Keep the tensors' pages resident (pinned) for the block.

    For code that uses raw pointers over a longer stretch than one call: a C++
    extension or a ctypes/cffi routine handed ``t.data_ptr()``. Outside a
    session it does nothing.
    """
    access = _active
    if access is None:
        yield
        return
    pages = access.pin("deepum.resident", list(tensors))
    try:
        yield
    finally:
        access.unpin(pages)


@contextlib.contextmanager
def written(*tensors: Tensor) -> Iterator[None]:
    """Keep the tensors' pages resident for the block, which writes them below the paging mode.

    The engine's own writes (engine/parking.py fills a new state tensor): the
    pages' readers and recipes are settled before the write, as before an
    operator's, and the pages are dirty after it (their host copies stale).
    """
    access = _active
    if access is None:
        yield
        return
    pages = access.pin("deepum.written", list(tensors))
    pager = access.pager
    with pager.lock:
        for p in pages:
            if p.readers or p.recipe is not None:
                pager.before_write(p)
    try:
        yield
    finally:
        with pager.lock:
            for p in pages:
                if not p.dirty:
                    p.dirty = True
                    pager.transfers.release_host(p)
        access.unpin(pages)
