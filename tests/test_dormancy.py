"""Dormancy: no interception while memory is not tight (core/dormancy.py, engine/watch.py)."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn as nn

import deepum
from deepum.core.budget import release_limit
from deepum.core.dormancy import Dormancy, Turn, allocator_overhead, paging_measure
from deepum.engine import memsignal

MiB = 1 << 20


# ------------------------------------------------------------------ the rule


def _rule(limit=100, calm=2):
    return Dormancy(limit, engage=0.75, release=0.5, calm=calm)


def test_paging_stops_only_after_calm_windows_in_a_row():
    d = _rule()
    assert d.paging
    assert d.boundary(40) is Turn.STAY
    assert d.boundary(60) is Turn.STAY  # over release: the count starts again
    assert d.boundary(40) is Turn.STAY
    assert d.boundary(40) is Turn.RELEASE
    assert not d.paging and d.released == 1


def test_a_share_of_the_budget_releases_only_within_the_limit():
    """Retargeted to shares of a budget larger than the limit (CUDA's reserve), a window's demand
    under the share but over the limit keeps paging: the reserve is the allocator's room unpaged too."""
    d = Dormancy(limit=80, engage=0.75, release=0.5, calm=1)
    d.retarget(0.95, 0.9, of=100)
    assert d.release_bytes == 80 and d.engage_bytes == 95
    assert d.boundary(85) is Turn.STAY  # under 90 of the budget, over the limit
    assert d.boundary(80) is Turn.RELEASE


def test_the_release_margin_is_a_sixteenth_of_the_budget_at_least_512_mib_and_at_most_the_reserve():
    gib, mib = 1 << 30, 1 << 20
    budget = 16 * gib
    assert release_limit(budget, budget - 2 * gib, 1 / 16, 512 * mib) == 15 * gib
    # A small budget: the floor, but never more than the reserve (the limit is the least).
    assert release_limit(6 * gib, 6 * gib - 768 * mib, 1 / 16, 512 * mib) == 6 * gib - 512 * mib
    assert release_limit(3 * gib, 3 * gib - 384 * mib, 1 / 16, 512 * mib) == 3 * gib - 384 * mib
    assert release_limit(budget, budget, 1 / 16, 512 * mib) == budget  # no reserve: the budget


def test_a_stop_nearer_the_budget_than_the_limit_releases_up_to_it():
    """[Note: the release's margin]: the shares of the budget release up to ``stop``, not the limit."""
    d = Dormancy(limit=80, engage=0.75, release=0.5, calm=1, stop=90)
    assert d.release_bytes == 40  # the limit's own shares are unchanged
    d.retarget(0.98, 0.95, of=100)
    assert d.release_bytes == 90 and d.engage_bytes == 98
    assert d.boundary(90) is Turn.RELEASE


def test_the_release_margin_is_cudas_with_the_default_reserve_alone():
    from deepum.api.session import _stop_bytes
    from deepum.core.config import Config

    gib = 1 << 30
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _stop_bytes(Config(), 16 * gib, 14 * gib, cuda) == 15 * gib
    assert _stop_bytes(Config(), 16 * gib, 16 * gib, cpu) == 16 * gib
    # A reserve the user gave stays free unintercepted too.
    assert _stop_bytes(Config.from_options(reserve=2 * gib), 16 * gib, 14 * gib, cuda) == 14 * gib
    with deepum.oversubscribe("8MiB", "cpu") as s:
        assert s.pager.stop_bytes == s.limit


def test_the_allocators_overhead_is_counted_only_where_the_window_flushed_its_cache():
    # A window that ran into the cap and handed its cache back: what it still held above its
    # allocated peak is rests of pages it could not release.
    assert allocator_overhead(allocated=70, reserved=95, flushed=True) == 25
    # One that never flushed held releasable cache in its reserved peak: no measure of rests.
    assert allocator_overhead(allocated=70, reserved=95, flushed=False) == 0
    assert allocator_overhead(allocated=None, reserved=95, flushed=True) == 0  # the cpu tier
    assert allocator_overhead(allocated=90, reserved=80, flushed=True) == 0


def test_a_window_whose_peak_and_overhead_pass_the_cap_keeps_paging_and_says_by_how_much():
    """The Llama-family identity check at 0.45 (docs/BENCHMARKS.md, session 29): a demand within
    the limit, with the allocator's rests on top, past the cap an unintercepted step meets."""
    d = Dormancy(limit=88, engage=0.75, release=0.5, calm=2, cap=98)
    d.retarget(0.95, 0.9, of=100)
    assert d.release_bytes == 88
    assert d.boundary(85, overhead=10) is Turn.STAY  # 95: fits
    assert d.boundary(86, overhead=14) is Turn.STAY  # 100: over the cap by 2
    assert d.short == 2 and d.calm == 0 and d.paging
    assert d.boundary(85, overhead=10) is Turn.STAY  # the calm count started again
    assert d.short == 0
    assert d.boundary(85, overhead=13) is Turn.RELEASE  # 98: at the cap
    assert not d.paging and d.released == 1
    # Without a cap (the cpu tier) the overhead is not weighed.
    free = Dormancy(limit=88, engage=0.75, release=0.5, calm=1)
    free.retarget(0.95, 0.9, of=100)
    assert free.boundary(86, overhead=14) is Turn.RELEASE


def test_a_dormant_window_over_engage_turns_paging_on_at_its_boundary():
    d = _rule(calm=1)
    assert d.boundary(10) is Turn.RELEASE
    assert d.boundary(70) is Turn.STAY  # under engage (75)
    assert d.boundary(80) is Turn.ENGAGE
    assert d.paging and d.engaged == 1


def test_a_reading_past_engage_turns_paging_on_at_once():
    d = _rule(calm=1)
    d.boundary(10)
    for b in (5, 60, 75):
        assert d.reading(b) is Turn.STAY
    assert d.reading(76) is Turn.ENGAGE
    assert d.paging and d.engaged == 1
    assert d.reading(90) is Turn.STAY  # already paging


def test_a_refused_release_keeps_paging():
    d = _rule(calm=1)
    assert d.boundary(10) is Turn.RELEASE
    d.refused()
    assert d.paging and d.released == 0
    assert d.boundary(10) is Turn.RELEASE


def test_a_deferred_engage_stays_dormant_and_reads_again():
    d = _rule(calm=1)
    d.boundary(10)
    assert d.reading(80) is Turn.ENGAGE
    d.deferred()  # the engine could not push its modes there
    assert not d.paging and d.engaged == 0
    assert d.reading(80) is Turn.ENGAGE


def test_out_of_memory_while_dormant_pages_at_the_next_reading_and_for_good_the_second_time():
    d = Dormancy(limit=100, engage=0.75, release=0.5, calm=1, oom_limit=2)
    assert d.boundary(10) is Turn.RELEASE
    d.alarm()
    assert d.alarms == 1 and d.reading(5) is Turn.ENGAGE  # far under engage: the alarm decides
    d.deferred()  # inside a backward pass: the alarm waits for the next reading
    assert not d.paging and d.reading(5) is Turn.ENGAGE
    assert d.boundary(10) is Turn.RELEASE  # one alarm: paging may stop again
    d.alarm()
    assert d.boundary(5) is Turn.ENGAGE  # (a boundary answers it too)
    for _ in range(4):
        assert d.boundary(10) is Turn.STAY  # the second: paging stays on
    d.alarm()  # while paging: the pager's retry answers it
    assert d.alarms == 2


def test_release_may_not_exceed_engage():
    with pytest.raises(AssertionError):
        Dormancy(100, engage=0.5, release=0.75, calm=1)


# ------------------------------------------------------------------ the engine (cpu tier)


def _native_or_skip():
    if memsignal.load_counter() is None:
        pytest.skip("the counting allocator could not be built here")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                         nn.Linear(1024, 10))


def _train(model, sizes, session=None, trail=None):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for b in sizes:
        x = torch.randn(b, 256, generator=gen)
        y = torch.randint(0, 10, (b,), generator=gen)
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
        if trail is not None:
            st = session.stats()
            trail.append((st["ops"], st["evictions"], st["dormant"]))
    return losses, [p.detach().clone() for p in model.parameters()]


def _same(a, b):
    assert a[0] == b[0]
    assert all(torch.equal(x, y) for x, y in zip(a[1], b[1]))


def test_a_program_far_below_the_budget_stops_being_intercepted():
    _native_or_skip()
    plain = _train(_mlp(), [64] * 6)
    trail = []
    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        paged = _train(_mlp(), [64] * 6, s, trail)
    _same(plain, paged)
    st = s.stats()
    assert st["paging_stops"] == 1 and st["paging_starts"] == 0
    assert st["evictions"] == 0 and st["paging_seconds"] > 0
    ops = [t[0] for t in trail]
    # The first step is paged; a few operators of the second ran before its forward's boundary.
    assert ops[0] > 50
    assert ops[-1] == ops[2], "operators were intercepted while dormant"
    assert trail[-1][2] is True


def test_paging_starts_when_the_batch_grows_and_stops_when_it_shrinks():
    _native_or_skip()
    sizes = [64] * 4 + [2048] * 3 + [64] * 4
    plain = _train(_mlp(), sizes)
    trail = []
    with deepum.oversubscribe(budget=64 * MiB, device="cpu") as s:
        watch = s._watch
        paged = _train(_mlp(), sizes, s, trail)
    _same(plain, paged)
    st = s.stats()
    assert st["paging_starts"] >= 1 and st["paging_stops"] >= 2, st
    # Each window is logged with what the allocator read (bench rows carry it): the large
    # batches' paging windows peak above the small batches' dormant ones.
    paging = [w[1] for w in watch.windows if w[0]]
    dormant_peaks = [w[1] for w in watch.windows if not w[0]]
    assert paging and dormant_peaks and max(paging) > max(dormant_peaks), list(watch.windows)
    assert st["evictions"] > 0, "the large batches never needed paging: the test proves nothing"
    dormant = [t[2] for t in trail]
    assert dormant[3] and not dormant[5] and dormant[-1], dormant
    # Dormant steps cost no interception.
    assert trail[-1][0] == trail[-2][0]


class _Rests(memsignal.CpuSignal):
    """The cpu counter read as a caching allocator that flushes its cache each window and
    still holds ``rests`` bytes above the window's allocated peak."""

    def __init__(self, signal, rests: int) -> None:
        self.__dict__.update(signal.__dict__)
        self.rests = rests

    def close_window(self) -> int:
        peak = super().close_window()
        self.window_reserved = peak + self.rests
        self.flushes += 1
        return peak


def test_paging_goes_on_while_the_allocators_rests_would_pass_the_cap():
    """[Note: the allocator's overhead at release]: a step whose demand fits but whose allocator
    holds rests past the cap keeps paging, bit for bit, until the rests fit."""
    _native_or_skip()
    plain = _train(_mlp(), [64] * 8)
    seen = {}

    class Trail(list):
        def append(self, row):
            super().append(row)
            if len(self) == 5:  # five steps paged: the rests go
                seen["stops"], seen["short"] = s.stats()["paging_stops"], watch.state.short
                watch.signal.rests = 0

    trail = Trail()
    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        watch = s._watch
        watch.signal = _Rests(watch.signal, rests=200 * MiB)
        watch.state.cap = 200 * MiB  # the program's peak is far under it; with the rests, over
        paged = _train(_mlp(), [64] * 8, s, trail)
    _same(plain, paged)
    assert seen["stops"] == 0 and seen["short"] > 0, list(watch.windows)
    assert [t[2] for t in trail[:5]] == [False] * 5
    assert s.stats()["paging_stops"] == 1 and trail[-1][2] is True, trail


def test_release_rests_off_leaves_the_allocators_rests_to_the_reserve(monkeypatch):
    """``Thresholds.release_rests="off"`` (for A/Bs): a caching allocator's rests are not
    weighed at release, so a window over the cap with them stops paging all the same."""
    from deepum.core.config import Config, Thresholds

    _native_or_skip()
    monkeypatch.setattr(memsignal.CpuSignal, "cached", True)  # read as a caching allocator's
    for rests in ("flushed", "clean", "off"):
        with deepum.oversubscribe(budget=256 * MiB, device="cpu",
                                  config=Config(thresholds=Thresholds(release_rests=rests))) as s:
            state = s._watch.state
            assert (state.cap is None) is (rests == "off")
            # The cap: 64 MiB under the budget.
            assert state.over_cap(100 * MiB, 300 * MiB) == (0 if rests == "off" else 208 * MiB)
    with pytest.raises(deepum.OptionError, match="release_rests"):
        Thresholds(release_rests=True)


def test_clean_rests_leave_out_a_window_that_held_pages_out_at_its_peak():
    """``release_rests="clean"``: where the pager held pages out at the peak, the room its
    evictions left in the allocator's cache is among the rests, so the window says nothing of them."""
    from deepum.core.config import Config, Thresholds

    assert allocator_overhead(allocated=70, reserved=95, flushed=True, held_out=True) == 0
    assert allocator_overhead(allocated=70, reserved=95, flushed=True, held_out=False) == 25
    _native_or_skip()

    class Flushing:  # a window that flushed: 10 MiB allocated at its peak, 250 MiB reserved
        flushes = 0
        window_reserved = 0

        def close_window(self):
            self.flushes += 1
            self.window_reserved = 250 * MiB
            return 10 * MiB

    for rests, demand, overhead in (("flushed", 50, 240), ("clean", 50, 0), ("clean", 5, 240)):
        with deepum.oversubscribe(budget=256 * MiB, device="cpu",
                                  config=Config(thresholds=Thresholds(release_rests=rests))) as s:
            watch = s._watch
            real, watch.signal = watch.signal, Flushing()
            s.pager.table.window_demand_bytes = demand * MiB  # over the allocated peak: pages held out
            try:
                assert watch._paging_peak() == (demand * MiB, overhead * MiB), (rests, demand)
            finally:
                watch.signal = real


def test_out_of_memory_while_dormant_is_explained_and_paged_from_the_next_module_call(caplog):
    """[Note: out of memory while dormant]: the allocator's observer (CUDA) calls the watch;
    here it is called as the observer would, from a dormant session on the cpu tier."""
    _native_or_skip()
    plain = _train(_mlp(), [64] * 11)
    trail = []
    seen = {}

    class Trail(list):
        def append(self, row):
            super().append(row)
            if len(self) in (3, 6):  # dormant after steps 3 and 6: the allocator "runs out"
                seen[len(self)] = row[2]
                watch.out_of_memory(1 << 20)

    trail = Trail()
    with caplog.at_level("WARNING", logger="deepum"):
        with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
            watch = s._watch
            paged = _train(_mlp(), [64] * 11, s, trail)
    _same(plain, paged)
    st = s.stats()
    assert seen == {3: True, 6: True}, (seen, [t[2] for t in trail])
    assert st["dormant_ooms"] == 2 and st["paging_starts"] == 2, st
    assert [t[2] for t in trail[3:5]] == [False] * 2  # the first time: paged, then released
    assert [t[2] for t in trail[6:]] == [False] * 5  # the second time: paging to the end
    assert trail[-1][0] > trail[-2][0], "operators were not intercepted after the second alarm"
    told = [r.getMessage() for r in caplog.records if "ran out of memory" in r.getMessage()]
    assert len(told) == 2 and "dormant=False" in told[0] and "stays on" in told[1], told


def test_the_allocators_out_of_memory_observer_reaches_the_signals_of_its_device():
    got = []
    signal = memsignal.CudaSignal(torch.device("cuda", 0))  # (reads nothing until asked)
    signal.on_oom = got.append
    other = memsignal.CudaSignal(torch.device("cuda", 1))
    other.on_oom = lambda asked: 1 / 0  # an observer's error stays in the log
    memsignal._on_out_of_memory(0, 512, 0, 0)
    memsignal._on_out_of_memory(1, 256, 0, 0)
    assert got == [512]
    signal.close()
    memsignal._on_out_of_memory(0, 128, 0, 0)
    assert got == [512]
    other.close()


class _Spike(nn.Module):
    """One module call that allocates far more than any before it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(64, 64)
        self.grow = 1

    def forward(self, x):
        h = self.lin(x)
        wide = h.repeat(self.grow, 1)  # inside one call: no reading sees it coming
        return h.sum() + wide.mean()


def test_a_step_that_jumps_past_the_budget_while_dormant_is_counted_then_paged():
    _native_or_skip()
    model = _Spike()
    with deepum.oversubscribe(budget=16 * MiB, device="cpu") as s:
        x = torch.randn(256, 64)
        for _ in range(4):
            model(x).backward()
        assert s.stats()["dormant"]
        model.grow = 512  # 32 MiB in one call, twice the budget
        model(x).backward()
        before = s.stats()
        model.grow = 1
        model(x).backward()
        after = s.stats()
    # The jump itself ran unintercepted (nothing could make room for it) and
    # is counted as an overshoot at the next boundary, where paging starts.
    assert before["overshoots"] == 0 and before["dormant"]
    assert after["overshoots"] == 1 and after["overshoot_max_bytes"] > 16 * MiB
    assert after["paging_starts"] == 1 and not after["dormant"]


def test_a_first_step_over_the_budget_is_paged_from_its_start():
    _native_or_skip()
    plain = _train(_mlp(), [2048] * 2)
    with deepum.oversubscribe(budget=48 * MiB, device="cpu") as s:
        paged = _train(_mlp(), [2048] * 2)
    _same(plain, paged)
    st = s.stats()
    assert st["evictions"] > 0 and st["paging_stops"] == 0 and st["overshoots"] == 0


def test_without_the_counter_the_cpu_tier_keeps_paging(monkeypatch):
    monkeypatch.setattr(memsignal, "_counter", None)
    monkeypatch.setattr(memsignal, "_counter_failed", False)
    monkeypatch.setenv("DEEPUM_NO_NATIVE", "1")
    plain = _train(_mlp(), [64] * 4)
    trail = []
    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        paged = _train(_mlp(), [64] * 4, s, trail)
    _same(plain, paged)
    assert s.stats()["paging_stops"] == 0
    assert trail[-1][0] > trail[-2][0] > trail[-3][0], "every step is intercepted"


def test_dormant_false_keeps_every_operator_intercepted():
    plain = _train(_mlp(), [64] * 4)
    trail = []
    with deepum.oversubscribe(budget=256 * MiB, device="cpu", dormant=False) as s:
        paged = _train(_mlp(), [64] * 4, s, trail)
    _same(plain, paged)
    assert s.stats()["paging_stops"] == 0
    assert trail[-1][0] > trail[-2][0]


def test_attach_while_dormant_says_what_to_do():
    _native_or_skip()
    model = _mlp()
    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        _train(model, [64] * 4)
        assert s.stats()["dormant"]
        with pytest.raises(deepum.UnsupportedError, match="dormant=False"), s.attach():
            pass


def test_a_checkpoint_saved_while_dormant_holds_the_data():
    _native_or_skip()
    model = _mlp()
    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        _train(model, [64] * 4)
        assert s.stats()["dormant"]
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded[name], p)


def test_an_inference_loop_goes_dormant_under_no_grad():
    _native_or_skip()
    model = _mlp()
    x = torch.randn(32, 256)
    with torch.no_grad():
        ref = [model(x) for _ in range(5)]
        with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
            out = [model(x) for _ in range(5)]
            ops = s.stats()["ops"]
            out.append(model(x))
            assert s.stats()["ops"] == ops
    assert all(torch.equal(a, b) for a, b in zip(ref, out))
    assert s.stats()["paging_stops"] == 1


def test_a_new_model_after_the_first_is_freed_is_watched_again():
    _native_or_skip()
    import gc

    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        first = _mlp()
        _train(first, [64] * 4)
        assert s.stats()["dormant"]
        watch = s._watch
        del first
        gc.collect()
        second = _mlp()
        plain = _train(_mlp(), [64] * 3)  # a third model, called first: the new root
        again = _train(second, [64] * 3)
        assert watch.root() is not None and watch.hooks
    _same(plain, again)
    assert not any(m._forward_pre_hooks for m in second.modules()), "hooks outlived the session"


def test_a_data_loader_loop_goes_dormant_and_stays_exact():
    _native_or_skip()
    data = torch.utils.data.TensorDataset(torch.randn(256, 256, generator=torch.Generator().manual_seed(3)),
                                          torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(4)))

    def run(session=None):
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        losses = []
        for x, y in torch.utils.data.DataLoader(data, batch_size=32):
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        return losses, [p.detach().clone() for p in model.parameters()]

    plain = run()
    with deepum.oversubscribe(budget=256 * MiB, device="cpu") as s:
        paged = run(s)
    _same(plain, paged)
    assert s.stats()["paging_stops"] == 1


def test_a_planned_windows_measure_is_its_recorded_demand_plus_what_no_page_held():
    gib = 1 << 30
    # The Llama-family window of docs/BENCHMARKS.md session 26, call 8: the
    # table's count swollen by lineage, the recorded step's own peak, and the
    # allocator filled to the pager's limit with pages.
    demand, recorded, allocated, resident = 73.20 * gib, 12.87 * gib, 13.36 * gib, 13.19 * gib
    measure = paging_measure(int(demand), int(recorded), int(allocated), int(resident))
    assert abs(measure - 13.04 * gib) < 0.01 * gib
    # Without a recording the allocator's peak (or the table's count) stands.
    assert paging_measure(int(demand), None, int(allocated), int(resident)) == int(demand)
    assert paging_measure(100, None, 120, 90) == 120
    # The allocator beyond what the recording and its own outside share say: the smaller.
    assert paging_measure(200, 100, 150, 140) == 110
    assert paging_measure(200, 100, 90, 140) == 100  # nothing outside pages
    # The cpu tier: the demand measures alone.
    assert paging_measure(200, 100, None, 140) == 100 and paging_measure(200, None, None, 140) == 200
