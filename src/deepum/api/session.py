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
import numbers
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from ..core.budget import allocator_cap, parse_budget, release_limit
from ..core.config import POLICIES, Config
from ..engine.intercept import host_access
from ..engine.intercept.mode import PagingMode
from ..engine.memsignal import open_signal
from ..engine.pager import Pager
from ..engine.regions import Regions
from ..engine.telemetry import TraceRecorder
from ..engine.watch import Watch
from ..errors import BudgetError, DeviceUnavailableError, OptionError, UnsupportedError
from ..report.chrome import write_chrome_trace
from ..report.plots import plot_memory
from .kinds import install_kind_hooks, remove_kind_hooks

log = logging.getLogger("deepum")
__all__ = ["POLICIES", "Config", "Session", "current", "disable", "enable", "oversubscribe"]
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
    if not isinstance(device, (str, torch.device)):
        raise OptionError(f"device {device!r} has type {type(device).__name__}; give 'cuda', 'cuda:N' or "
                          "'cpu' (a str or a torch.device)")
    try:
        asked = torch.device(device)
    except RuntimeError as e:
        raise OptionError(f"device {device!r} cannot be parsed ({e}); give 'cuda', 'cuda:N' or 'cpu'") from None
    if asked.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(str(device), f"device {str(device)!r} was asked for, but CUDA is "
                                                      "not available here")
        if asked.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        count = torch.cuda.device_count()
        if asked.index >= count:
            raise DeviceUnavailableError(str(device), f"device {str(device)!r} was asked for, but this "
                                         f"machine has {count} CUDA device{'s' if count != 1 else ''} "
                                         f"(cuda:0 to cuda:{count - 1})")
        return asked
    if asked.type != "cpu":
        raise UnsupportedError(f"device {device} is not supported; deepum pages 'cuda' and 'cpu' devices")
    return asked


def _budget_value(budget: object) -> object:
    """numpy and other numbers as the int or float they stand for (bools stay, to be refused)."""
    if isinstance(budget, (bool, int, float, str)):
        return budget
    if isinstance(budget, numbers.Integral):
        return int(budget)
    if isinstance(budget, numbers.Real):
        return float(budget)
    return budget


def _reserve_bytes(config: Config, budget: int, total: int, device: torch.device) -> int:
    th = config.thresholds
    reserve = config.reserve
    if reserve is None:
        return min(th.of(th.reserve, budget), th.reserve_max) if device.type == "cuda" else 0
    if isinstance(reserve, str):
        try:
            reserve = parse_budget(reserve, total)
        except BudgetError as e:
            raise BudgetError(f"reserve {config.reserve!r}: {e}") from None
    if not 0 <= reserve < budget:
        raise BudgetError(f"reserve {config.reserve!r} ({reserve} bytes) must be at least 0 and below the "
                          f"budget of {budget} bytes")
    return reserve


def device_memory(device: torch.device) -> int:
    """Total memory of the device in bytes (host RAM for the cpu device)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def allocator_settings(config: Config) -> str:
    """The caching allocator's settings a CUDA session sets at entry ("" for none)."""
    settings = ["expandable_segments:True"] if config.expandable_segments else []
    if config.thresholds.allocator_gc:
        settings.append(f"garbage_collection_threshold:{config.thresholds.allocator_gc}")
    return ",".join(settings)


def _cap_allocator(device: torch.device, budget: int, total: int, config: Config) -> None:
    """Cap the caching allocator at the budget (and switch to expandable segments if asked)."""
    torch.cuda.synchronize(device)
    # Pages come and go in every size; expandable segments keep the
    # caching allocator from fragmenting under a hard cap. It applies
    # to segments made from now on, hence the empty_cache after it.
    settings = allocator_settings(config)
    if settings:
        _set_allocator_settings(settings)
    # cuBLAS keeps a workspace per handle and stream, made at the first
    # matmul through the caching allocator and never handed back. Made
    # before the session, it can sit in a segment of the old layout
    # (cut from a large block freed earlier), and the segment's free rest
    # then can neither be released nor hold a large block: the cap's room
    # is smaller than the session counts on. Handed back here, the next
    # matmul makes it again under the session's settings and cap.
    clear = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
    if clear is not None:
        clear()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    # The allocator itself enforces the budget: an allocation past it
    # raises OutOfMemoryError inside the operator, which the
    # interceptor answers by evicting and retrying.
    # The cap sits a little under the budget (Thresholds.cap_slack).
    cap = allocator_cap(budget, config.thresholds.cap_slack)
    torch.cuda.set_per_process_memory_fraction(cap / total, device)
    held = torch.cuda.memory_reserved(device)
    if held > cap:
        # Segments reserved before the session and still partly in use
        # cannot be returned; they stay until what uses them is freed.
        log.warning("%d bytes of device memory were reserved before the session and cannot be "
                    "released, above the budget's cap of %d bytes: enter the session before "
                    "creating the model, or call torch.cuda.empty_cache() after freeing tensors",
                    held, cap)


def _tensors_of(objs: Any) -> list[torch.Tensor]:
    """The tensors of tensors, modules (parameters and buffers), optimizers (their state) and containers."""
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
    return tensors


class Session:
    """One budgeted run. Use it as a context manager, or through enable()/disable().

    Parameters
    ----------
    budget:
        Device memory the process may hold: bytes (int), a string with units
        ("12GiB", "800MB"), or a fraction of the device's memory (0 < f <= 1).
    device:
        "cuda", "cuda:N" or "cpu"; defaults to the current CUDA device, else "cpu".
    config:
        A :class:`~deepum.core.config.Config` holding every option below (and
        the engine's thresholds), or None to build one from the keywords; an
        option of the wrong type or value raises :class:`~deepum.errors.OptionError`
        here, before anything runs.
    policy:
        "deepum" (correlation prefetching and pre-eviction) or "lru" (demand
        paging with least-recently-used eviction).
    prefetch:
        Turn prefetching off while keeping the deepum policy's victim choice.
    lookahead:
        Predicted operators the prefetcher works ahead.
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
    strict:
        Raise BudgetOvershootError on an overshoot instead of counting it.
    dormant:
        Stop intercepting operators while memory is not tight, and start
        again before it is ([Note: dormancy] in core/dormancy.py): a program
        that never comes near the budget runs at its own speed. On the cpu
        device this needs a small allocator that counts, compiled on first
        use; without a compiler the session keeps paging. Off under
        ``stress`` and ``trace``. Default: on.
    recompute_blocks:
        Recompute blocks in the backward pass to fit the step ([Note: regions]); ``"selective"`` may keep their matmul outputs.
    plan:
        ``True``: record one step (optimizer step to optimizer step), plan
        every page's evictions, drops and prefetches from each page's next
        use, and execute the plan in the steps after (a step that departs
        goes online and is recorded again). Faster than the online choice on
        some models, slower on others (docs/BENCHMARKS.md, sessions 6-11), so
        ``"auto"`` (default) times both on the program in turn and keeps the
        faster (``stats()["plan_verdict"]``). ``False``: online only.
    stress:
        Evict every page after every operator (for testing the engine; very slow).
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
        steps, and on the GPU that cost more than it saved (docs/BENCHMARKS.md,
        session 3). It can help a program that builds a large object graph
        before the session.
    reserve:
        Bytes of the budget kept for memory deepum cannot see (kernel
        workspaces, allocator rounding and fragmentation). Default: on CUDA
        an eighth of the budget, at most 2 GiB (Thresholds.reserve,
        reserve_max); on CPU nothing. An int or a size string such as "256MiB".
    """

    def __init__(self, budget: int | float | str, device: str | torch.device | None = None,
                 config: Config | None = None, **options: Any) -> None:
        if config is not None and options:
            raise OptionError("give the options either as a Config or as keywords, not both")
        if config is not None and not isinstance(config, Config):
            raise OptionError(f"config must be a deepum Config, not {type(config).__name__}")
        self.config = config if config is not None else Config.from_options(**options)
        self.device = _resolve_device(device)
        self.total = device_memory(self.device)
        self.budget = parse_budget(_budget_value(budget), self.total)
        self.limit = self.budget - _reserve_bytes(self.config, self.budget, self.total, self.device)
        cfg = self.config
        # On the cpu device every host tensor of the process would be in
        # scope, data loaders' buffers and arrays numpy shares included, so
        # adoption is for CUDA only unless asked for.
        self.adopt = (self.device.type == "cuda") if cfg.adopt is None else cfg.adopt
        self.track_kinds = cfg.trace if cfg.track_kinds is None else cfg.track_kinds
        self._froze_gc = False
        self._kind_hooks: list = []
        self.pager: Pager | None = None
        self._mode: PagingMode | None = None
        self._host_reads: host_access.HostAccessMode | None = None
        self._final_stats: dict[str, Any] | None = None
        self._fraction_set = False
        self._watch: Watch | None = None
        self._paging_seconds = 0.0
        self._folded_peak = 0
        self._entered_at = 0.0
        self._dormancy = False

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
        cfg = self.config
        # A session used again starts from nothing: its stats are the new run's.
        self._final_stats = None
        self.pager = Pager(self.device, self.budget, self.limit, cfg)
        self._mode = PagingMode(self.pager)
        if self.adopt:
            self._adopt_existing()
        if self.device.type == "cuda":
            _cap_allocator(self.device, self.budget, self.total, cfg)
            self._fraction_set = True
        if cfg.freeze_gc and hasattr(gc, "freeze"):
            gc.collect()
            gc.freeze()
            self._froze_gc = True
        watch = self._watch = _open_watch(self)
        self._dormancy = watch is not None
        self._kind_hooks = install_kind_hooks(self.pager, self._mode, self.track_kinds, watch)
        self._entered_at = time.perf_counter()
        self._mode.__enter__()
        # See [Note: host access] in engine/intercept/host_access.py.
        self._host_reads = host_access.enter(self.pager, self._mode.is_managed, self.config.host_access,
                                             self._mode)
        if self._watch is not None and self._host_reads.watching:
            self._watch.host_mode = self._host_reads
        _active = self
        log.info("deepum session on %s: budget %d bytes (%d for pages), policy %s%s",
                 self.device, self.budget, self.limit, cfg.policy,
                 "" if cfg.prefetch else ", no prefetch")
        return self

    def _adopt_existing(self) -> None:
        # type(), not isinstance(): some module proxies warn when their
        # __class__ is read.
        tensor = torch.Tensor
        self._mode.adopt(o for o in gc.get_objects() if issubclass(type(o), tensor))
        table = self.pager.table
        if table.resident_bytes > table.limit:
            self.pager.make_room(table.resident_bytes - table.limit)
        # Memory held before the session is not a peak of the session's.
        # (At entry; an adoption when paging starts again keeps the session's peak.)
        if self.pager.counters.ops == 0:
            table.peak_resident_bytes = table.resident_bytes
        table.new_window()

    def __exit__(self, exc_type, exc, tb) -> None:
        global _active
        if _active is self:
            _active = None
        watch, self._watch = self._watch, None
        paging = watch is None or watch.paging
        if watch is not None:
            watch.close()
            self._paging_seconds = watch.seconds()
            self._folded_peak = watch.signal.folded_reserved_peak
        reads, self._host_reads = self._host_reads, None
        if reads is not None:
            if not paging:
                reads.watching = False  # not on the stack while dormant
            host_access.leave(reads)
        mode, self._mode = self._mode, None
        if mode is not None and paging:
            mode.__exit__(None, None, None)
        hooks, self._kind_hooks = self._kind_hooks, []
        remove_kind_hooks(hooks)
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
        dormancy = self._watch
        if dormancy is not None:
            if not dormancy.paging:
                raise UnsupportedError(
                    "attach() was called while the session was dormant (memory was not tight, so "
                    "no operator was being intercepted): attach threads before the first steps, "
                    "or create the session with dormant=False")
            dormancy.attached += 1
        try:
            with mode:  # (host access watches every thread the paging mode runs on)
                yield self
        finally:
            if dormancy is not None:
                dormancy.attached -= 1

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
                self._final_stats = _session_stats(self)
            pager.restore_all()
            self._final_stats["restored_pages"] = pager.restored
            pager.close()
        st = self._final_stats
        log.info("deepum session ended: %d operators intercepted in %.1f s of paging, %d faults, "
                 "%d evictions, %d bytes in, %d bytes out", st["ops"], st["paging_seconds"], st["faults"],
                 st["evictions"], st["bytes_to_device"], st["bytes_to_host"])

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
        n = self._mode.adopt(_tensors_of(objs))
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

    # ------------------------------------------------------------ trace

    def export_trace(self, path: str) -> None:
        """Write the recorded trace as Chrome trace-event JSON (Perfetto, chrome://tracing)."""
        write_chrome_trace(self._recorder(), path)

    def plot_memory(self, path: str, title: str = "") -> None:
        """Draw device residency over the recorded run, stacked by page kind, to a PNG."""
        plot_memory(self._recorder(), path, title)

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
            return _session_stats(self)


def _session_stats(session: Session) -> dict[str, Any]:
    """The pager's stats with the session's: how long paging was on (see ``dormant``)."""
    out = session.pager.stats()
    watch = session._watch
    if watch is not None:
        session._paging_seconds = watch.seconds()
        session._folded_peak = watch.signal.folded_reserved_peak
    elif not session._dormancy and not session.pager.closed:  # no watch: paging since entry
        session._paging_seconds = time.perf_counter() - session._entered_at
    out["paging_seconds"] = session._paging_seconds
    out["dormant"] = watch is not None and not watch.paging
    if session.device.type == "cuda":
        out["peak_device_bytes"] = max(out["peak_device_bytes"], session._folded_peak)
    return out


def _stop_bytes(config: Config, budget: int, limit: int, device: torch.device) -> int:
    """The most a step's demand may be for paging to stop: nearer the budget than the limit on
    CUDA with the default reserve ([Note: the release's margin] in core/dormancy.py)."""
    if device.type != "cuda" or config.reserve is not None:
        return limit  # a reserve the user gave is kept free unintercepted too
    th = config.thresholds
    return release_limit(budget, limit, th.release_reserve, th.release_reserve_min)


def _open_watch(session: Session) -> Watch | None:
    """The dormancy watch (engine/watch.py), where the options and the device allow one."""
    cfg = session.config
    if not cfg.dormant or cfg.stress or cfg.trace:
        return None
    signal = open_signal(session.device)
    if signal is None:
        return None
    session.pager.stop_bytes = _stop_bytes(cfg, session.budget, session.limit, session.device)
    regions = Regions(session.pager) if cfg.recompute_blocks else None
    return Watch(session.pager, session._mode, signal, adopt=session._adopt_existing if session.adopt else None,
                 regions=regions)


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


def disable() -> dict[str, Any] | None:
    """Stop paging, bring every tensor back to the device, and return the final stats.

    Returns None when deepum was not enabled (nothing ran, so there are no
    stats; an empty dict would read as a run that did nothing).
    """
    global _global
    with _global_lock:
        session, _global = _global, None
    if session is None:
        return None
    session.__exit__(None, None, None)
    return session.stats()


def current() -> Session | None:
    """The session enable() started, if any."""
    return _global


atexit.register(disable)
