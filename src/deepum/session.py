"""Sessions: the public face of the engine.

``with deepum.oversubscribe(budget="12GiB"):`` runs the block under a device
memory budget; ``deepum.enable()`` / ``deepum.disable()`` do the same for the
rest of the process.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import torch
import torch.optim.optimizer as _optim

from .core.budget import parse_budget
from .core.pages import Kind
from .errors import BudgetError, UnsupportedError
from .interceptor import HostReadMode, PagingMode
from .pager import Pager
from .trace import TraceRecorder, now_us

log = logging.getLogger("deepum")
POLICIES = ("deepum", "lru")
_CAP_SLACK = 64 << 20
_active: Session | None = None  # the session whose interceptor is installed


def _set_allocator_settings(settings: str) -> None:
    setter = getattr(torch._C, "_accelerator_setAllocatorSettings", None)
    if setter is None:  # older torch
        setter = torch.cuda.memory._set_allocator_settings
    setter(settings)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedError("device 'cuda' was asked for, but CUDA is not available here; use device='cpu'")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
    elif device.type != "cpu":
        raise UnsupportedError(f"device {device} is not supported; deepum pages 'cuda' and 'cpu' devices")
    return device


def device_memory(device: torch.device) -> int:
    """Total memory of the device in bytes (host RAM for the cpu device)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _mark_step(pager: Pager) -> None:
    """An optimizer step ended: a mark on the trace's time line (the memory picture's step lines)."""
    if pager.trace is not None:
        pager.trace.step(now_us())


def _parameter_hook(pager: Pager, page_of):
    """Class a parameter as one when a module registers it, not only from the first optimizer step."""
    def on_parameter(module, name, param):
        page = page_of(param)
        if page is not None:
            with pager.lock:
                pager.set_kind(page, Kind.PARAMETER)
    return torch.nn.modules.module.register_module_parameter_registration_hook(on_parameter)


class Session:
    """One budgeted run. Use it as a context manager, or through enable()/disable().

    Parameters
    ----------
    budget:
        Device memory the process may hold: bytes (int), a string with units
        ("12GiB", "800MB"), or a fraction of the device's memory (0 < f <= 1).
    device:
        "cuda", "cuda:N" or "cpu"; defaults to the current CUDA device, else "cpu".
    policy:
        "deepum" (correlation prefetching and pre-eviction) or "lru" (demand
        paging with least-recently-used eviction).
    prefetch:
        Turn prefetching off while keeping the deepum policy's victim choice.
    lookahead:
        How many predicted operators ahead the prefetcher works.
    recompute:
        Evict a page that a cheap deterministic operator made from pages that
        still exist (elementwise operators, dtype casts) without copying it,
        and run the operator again when the page is needed: no link time
        either way (see deepum/recompute.py). The bits are the same.
    expandable_segments:
        On CUDA, switch the caching allocator to expandable segments (it then
        stays so for the process), which avoids most fragmentation.
    adopt:
        At entry, make pages of every tensor already on the device (found
        through the garbage collector), so a model built before the session
        can be evicted before any operator touches it. Default: on for CUDA,
        off for the cpu device.
    stress:
        Evict every page after every operator, so that every operator's
        inputs are faulted back in (for testing the engine, very slow).
    trace:
        Record a trace of operators, transfers and residency for
        :meth:`export_trace` and :meth:`plot_memory` (costs a little per operator).
    track_kinds:
        Tell saved activations from other pages, through a saved-tensors hook
        (default: on when tracing). The hook makes autograd dispatch one
        ``detach`` per saved tensor, which costs interception time, so it is
        off otherwise. Parameters, gradients and optimizer state are always
        classified (at first sight and by an optimizer-step hook).
    freeze_gc:
        Move the objects that exist at entry out of the garbage collector's
        reach until exit (``gc.freeze()``). Off by default: the collector
        schedules full passes by the number of objects that survived the last
        one, which a freeze sets near zero, so full passes then come every few
        steps (measured on an H100, GPT-2 medium at half its peak: 39 ms a
        step in the collector with it, 4 ms without; whole card: 231 ms steps
        without, 259-314 ms with; docs/BENCHMARKS.md, session 3). It can
        help a program that builds a large object graph before the session.
    reserve:
        Bytes of the budget kept for memory deepum cannot see (kernel
        workspaces, allocator rounding and fragmentation). Default: on CUDA
        an eighth of the budget, at most 2 GiB; on CPU nothing.
    """

    def __init__(self, budget: int | float | str, device: str | torch.device | None = None,
                 *, policy: str = "deepum", prefetch: bool = True, lookahead: int = 64,
                 recompute: bool = True,
                 reserve: int | None = None, headroom: int | None = None,
                 expandable_segments: bool = True, adopt: bool | None = None,
                 freeze_gc: bool = False, trace: bool = False, track_kinds: bool | None = None,
                 stress: bool = False) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy {policy!r} is unknown; choose one of {', '.join(POLICIES)}")
        if lookahead < 1:
            raise ValueError("lookahead must be at least 1")
        self.device = _resolve_device(device)
        self.total = device_memory(self.device)
        self.budget = parse_budget(budget, self.total)
        if reserve is None:
            reserve = min(self.budget // 8, 2 << 30) if self.device.type == "cuda" else 0
        if not 0 <= reserve < self.budget:
            raise BudgetError(f"reserve {reserve} must be at least 0 and below the budget {self.budget}")
        self.limit = self.budget - reserve
        self.policy = policy
        self.prefetch = prefetch
        self.lookahead = lookahead
        self.recompute = recompute
        self.headroom = headroom
        self.expandable_segments = expandable_segments
        # On the cpu device every host tensor of the process would be in
        # scope, data loaders' buffers and arrays numpy shares included, so
        # adoption is for CUDA only unless asked for.
        self.adopt = (self.device.type == "cuda") if adopt is None else adopt
        self.freeze_gc = freeze_gc
        self._froze_gc = False
        self.trace = trace
        self.stress = stress
        self.track_kinds = trace if track_kinds is None else track_kinds
        self._kind_hooks: list = []
        self.pager: Pager | None = None
        self._mode: PagingMode | None = None
        self._host_reads: HostReadMode | None = None
        self._final_stats: dict[str, Any] | None = None
        self._fraction_set = False

    # --------------------------------------------------------- context

    def __enter__(self) -> Session:
        global _active
        if self._mode is not None:
            raise RuntimeError("this deepum session is already active")
        if _active is not None:
            # An inner session's own copies would run under the outer one's
            # interceptor, which could evict the very page being copied.
            raise UnsupportedError(
                "a deepum session is already active in this process (deepum run, deepum.enable() "
                "or an enclosing oversubscribe()); sessions do not nest. Use the outer session, "
                "or leave it first.")
        self.pager = Pager(self.device, self.budget, self.limit, self.policy,
                           self.lookahead, self.prefetch, self.headroom)
        self._mode = PagingMode(self.pager)
        if self.adopt:
            # type(), not isinstance(): some module proxies warn when their
            # __class__ is read.
            tensor = torch.Tensor
            self._mode.adopt(o for o in gc.get_objects() if issubclass(type(o), tensor))
            table = self.pager.table
            if table.resident_bytes > table.limit:
                self.pager.make_room(table.resident_bytes - table.limit)
            # Memory held before the session is not a peak of the session's.
            table.peak_resident_bytes = table.resident_bytes
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            # Pages come and go in every size; expandable segments keep the
            # caching allocator from fragmenting under a hard cap. It applies
            # to segments made from now on, hence the empty_cache after it.
            if self.expandable_segments:
                _set_allocator_settings("expandable_segments:True")
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            # The allocator itself enforces the budget: an allocation past it
            # raises OutOfMemoryError inside the operator, which the
            # interceptor answers by evicting and retrying.
            # The cap sits a little under the budget: the allocator rounds
            # segment growth up, and reserved memory must never pass the budget.
            cap = max(self.budget - _CAP_SLACK, self.budget // 2)
            torch.cuda.set_per_process_memory_fraction(cap / self.total, self.device)
            self._fraction_set = True
            held = torch.cuda.memory_reserved(self.device)
            if held > cap:
                # Segments reserved before the session and still partly in use
                # cannot be returned; they stay until what uses them is freed.
                log.warning("%d bytes of device memory were reserved before the session and cannot be "
                            "released, above the budget's cap of %d bytes: enter the session before "
                            "creating the model, or call torch.cuda.empty_cache() after freeing tensors",
                            held, cap)
        if self.trace:
            self.pager.trace = TraceRecorder(self.budget, self.limit)
        self.pager.stress = self.stress
        self.pager.recompute = self.recompute
        self._install_kind_hooks()
        if self.freeze_gc and hasattr(gc, "freeze"):
            gc.collect()
            gc.freeze()
            self._froze_gc = True
        self._mode.__enter__()
        # See [Note: host reads] in interceptor.py.
        self._host_reads = HostReadMode(self.pager) if self.device.type == "cpu" else None
        if self._host_reads is not None:
            self._host_reads.__enter__()
        _active = self
        log.info("deepum session on %s: budget %d bytes (%d for pages), policy %s%s",
                 self.device, self.budget, self.limit, self.policy,
                 "" if self.prefetch else ", no prefetch")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        global _active
        if _active is self:
            _active = None
        reads, self._host_reads = self._host_reads, None
        if reads is not None:
            reads.__exit__(None, None, None)
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(None, None, None)
        self._remove_kind_hooks()
        self._release_budget()
        if self._froze_gc:
            gc.unfreeze()
            self._froze_gc = False
        self.restore()

    @contextlib.contextmanager
    def attach(self) -> Iterator[Session]:
        """Page the operators of the calling thread under this session.

        A dispatch mode is per thread: the thread that entered the session
        and the autograd threads it starts are paged, a thread started with
        ``threading.Thread`` is not until it attaches. All threads share one
        page table and one budget; the pager's lock orders their changes and
        a page an operator is using is pinned, so another thread's eviction
        cannot take it. Memory allocated by a thread that is not attached is
        invisible to the budget.
        """
        mode = self._mode
        if mode is None:
            raise RuntimeError("attach() needs an active session: enter it first (with ... as session)")
        with mode, (HostReadMode(self.pager) if self.device.type == "cpu" else contextlib.nullcontext()):
            yield self

    def restore(self) -> None:
        """Bring every evicted tensor back to the device and close the session.

        Raises :class:`~deepum.errors.RestoreError` if they do not fit; the
        data then stays in host memory, held by this session, and ``restore()``
        can be called again once device memory was freed.
        """
        pager = self.pager
        if pager is None or pager.closed:
            return
        with torch.utils._python_dispatch._disable_current_modes(), pager.lock:
            if self._final_stats is None:
                # What the run did, before restoring adds its own traffic.
                self._final_stats = pager.stats()
            pager.restore_all()
            self._final_stats["restored_pages"] = pager.restored
            pager.close()
        st = self._final_stats
        log.info("deepum session ended: %d operators, %d faults, %d evictions, %d bytes in, %d bytes out",
                 st["ops"], st["faults"], st["evictions"], st["bytes_to_device"], st["bytes_to_host"])

    def _release_budget(self) -> None:
        if self._fraction_set:
            torch.cuda.set_per_process_memory_fraction(1.0, self.device)
            self._fraction_set = False

    # ------------------------------------------------------------ manage

    def manage(self, *objs: Any) -> int:
        """Make pages of tensors now, before any operator touches them.

        Takes tensors, modules (parameters and buffers), optimizers (their
        state) and lists of those. Returns how many pages were made. Under
        ``stress`` they are evicted at once.
        """
        if self._mode is None:
            raise RuntimeError("manage() needs an active session")
        tensors: list[torch.Tensor] = []

        def collect(o):
            if isinstance(o, torch.Tensor):
                tensors.append(o)
            elif isinstance(o, torch.nn.Module):
                tensors.extend(o.parameters())
                tensors.extend(o.buffers())
            elif isinstance(o, torch.optim.Optimizer):
                for state in o.state.values():
                    collect(list(state.values()))
            elif isinstance(o, (list, tuple, set)):
                for x in o:
                    collect(x)
            elif isinstance(o, dict):
                collect(list(o.values()))

        collect(objs)
        n = self._mode.adopt(tensors)
        pager = self.pager
        # The engine's own copies must not pass through its interceptor.
        with torch.utils._python_dispatch._disable_current_modes(), pager.lock:
            table = pager.table
            if pager.stress:
                pager.evict_unpinned()
            elif table.resident_bytes > table.limit:
                pager.make_room(table.resident_bytes - table.limit)
        return n

    # ------------------------------------------------------------ kinds

    def _install_kind_hooks(self) -> None:
        """Learn what pages hold: saved for backward, or a parameter's gradient and state."""
        pager, mode = self.pager, self._mode

        def page_of(t):
            if not isinstance(t, torch.Tensor) or not mode._is_managed(t) or t.layout != torch.strided:
                return None
            try:
                return pager.table.get(t.untyped_storage()._cdata)
            except (RuntimeError, NotImplementedError):
                return None

        def pack(t):
            page = page_of(t)
            if page is not None and page.kind == Kind.OTHER:
                with pager.lock:
                    pager.set_kind(page, Kind.ACTIVATION)
            return t

        def classify(optimizer, args, kwargs):
            with pager.lock:
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        for t, kind in ((p, Kind.PARAMETER), (p.grad, Kind.GRADIENT)):
                            page = page_of(t)
                            if page is not None:
                                pager.set_kind(page, kind)
                        for v in optimizer.state.get(p, {}).values():
                            page = page_of(v)
                            if page is not None:
                                pager.set_kind(page, Kind.OPTIMIZER_STATE)

        def after_step(optimizer, args, kwargs):
            classify(optimizer, args, kwargs)
            pager.stats_.optimizer_steps += 1  # the "step" of joules per step
            _mark_step(pager)

        self._kind_hooks = [_optim.register_optimizer_step_pre_hook(classify),
                            _optim.register_optimizer_step_post_hook(after_step),
                            _parameter_hook(pager, page_of)]
        if self.track_kinds:
            saved = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
            saved.__enter__()
            self._kind_hooks.append(saved)

    def _remove_kind_hooks(self) -> None:
        hooks, self._kind_hooks = self._kind_hooks, []
        for hook in reversed(hooks):
            if hasattr(hook, "remove"):
                hook.remove()
            else:
                hook.__exit__(None, None, None)

    # ------------------------------------------------------------ trace

    def export_trace(self, path: str) -> None:
        """Write the recorded trace as Chrome trace-event JSON (Perfetto, chrome://tracing)."""
        self._recorder().write(path)

    def plot_memory(self, path: str, title: str = "") -> None:
        """Draw device residency over the recorded run, stacked by page kind, to a PNG."""
        self._recorder().plot(path, title)

    def _recorder(self) -> TraceRecorder:
        if self.pager is None or self.pager.trace is None:
            raise RuntimeError("no trace was recorded: create the session with trace=True")
        return self.pager.trace

    # ------------------------------------------------------------ stats

    def stats(self) -> dict[str, Any]:
        """Counters of what the pager did (see README for the meaning of each)."""
        if self.pager is None:
            return {}
        if self.pager.closed and self._final_stats is not None:
            return dict(self._final_stats)
        with self.pager.lock:
            return self.pager.stats()


def oversubscribe(budget: int | float | str, device: str | torch.device | None = None,
                  **options: Any) -> Session:
    """Run a block of an unmodified PyTorch program under a device-memory budget.

    >>> with deepum.oversubscribe(budget="12GiB") as session:   # doctest: +SKIP
    ...     train(model)
    >>> session.stats()["evictions"]                           # doctest: +SKIP
    """
    return Session(budget, device, **options)


_global: Session | None = None
_global_lock = threading.Lock()


def enable(budget: int | float | str, device: str | torch.device | None = None,
           **options: Any) -> Session:
    """Page the whole process (this thread and the autograd threads it starts) until disable()."""
    global _global
    with _global_lock:
        if _global is not None:
            raise RuntimeError("deepum is already enabled; call deepum.disable() first")
        session = Session(budget, device, **options)
        session.__enter__()
        _global = session
    return session


def disable() -> dict[str, Any]:
    """Stop paging, bring every tensor back to the device, and return the final stats."""
    global _global
    with _global_lock:
        session, _global = _global, None
    if session is None:
        return {}
    session.__exit__(None, None, None)
    return session.stats()


def current() -> Session | None:
    """The session enable() started, if any."""
    return _global


atexit.register(disable)
