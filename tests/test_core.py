"""The pure core, driven by synthetic operator traces (no torch)."""

import pytest

from deepum.core.correlation import HISTORY, PageCorrelation, Predictor, SuccessorTable
from deepum.core.pages import Page, PageTable, State
from deepum.core.policy import DeepUMPolicy, LruPolicy, make_policy


def make_table(limit, sizes):
    table = PageTable(limit)
    pages = []
    for key, n in enumerate(sizes):
        p = Page(key, n, skey=key)
        table.add(p)
        pages.append(p)
    return table, pages


class TestPageTable:
    def test_accounting_through_every_state(self):
        table, (a, b, c) = make_table(100, [10, 20, 30])
        assert table.resident_bytes == 60 and table.room() == 40
        table.evicted(b)
        assert b.state == State.EVICTED and table.resident_bytes == 40
        table.arriving(b)
        assert b.state == State.ARRIVING and table.resident_bytes == 60
        table.arrived(b)
        table.retire(a)
        assert a.state == State.DEAD and table.resident_bytes == 50 and len(table) == 2
        table.evicted(c)
        table.retire(c)  # an evicted page that dies gives back no device bytes
        assert table.resident_bytes == 20
        assert table.peak_resident_bytes == 60
        table.check()

    def test_lru_order_follows_touches(self):
        table, (a, b, c) = make_table(100, [10, 10, 10])
        table.touch(a)
        assert [p.key for p in table.lru()] == [1, 2, 0]

    def test_touch_all(self):
        table, (a, b, c, d) = make_table(100, [10, 10, 10, 10])
        table.touch_all([c, a])
        assert [p.key for p in table.lru()] == [1, 3, 2, 0]
        table.touch_all(p for p in (b,))
        assert [p.key for p in table.lru()] == [3, 2, 0, 1]
        table.check()

    def test_pinned_page_cannot_be_evicted(self):
        table, (a,) = make_table(100, [10])
        a.pins = 1
        with pytest.raises(AssertionError):
            table.evicted(a)

    def test_unpageable_pages_count_but_are_never_candidates(self):
        table = PageTable(100)
        p = Page(7, 40, pageable=False)
        table.add(p)
        assert table.resident_bytes == 40 and table.unpageable_bytes == 40
        assert list(table.lru()) == []
        assert LruPolicy(table).choose_victims(10) == []

    def test_resize(self):
        table, (a,) = make_table(100, [10])
        table.resize(a, 50)
        assert table.resident_bytes == 50 and a.nbytes == 50 and table.live_bytes == 50
        table.check()

    def test_demand_counts_what_paging_moved_out(self):
        """[Note: demand]: the window's peak demand is what it would have held unpaged."""
        table, (a, b) = make_table(100, [40, 40])
        table.new_window()
        table.evicted(a)  # paged out to make room for c: resident never passes 80
        c = Page(2, 40, skey=2)
        table.add(c)
        assert table.resident_bytes == 80 and table.window_peak_bytes == 80
        assert table.live_bytes == 120 and table.window_demand_bytes == 120
        assert table.window_born_bytes == 40  # what the window's operators made (the watch checks a recording by it)
        table.retire(a)  # dead while evicted: no longer demanded
        assert table.live_bytes == 80 and table.window_demand_bytes == 120
        table.new_window()
        assert table.window_demand_bytes == 80 and table.window_born_bytes == 0
        table.check()


def trace(iterations, body):
    """Execution IDs of ``iterations`` repetitions of ``body``."""
    return [eid for _ in range(iterations) for eid in body]


class TestCorrelation:
    def test_successor_table_keeps_most_recent_first(self):
        t = SuccessorTable()
        h = (1, 2, 3)
        t.record(h, 4)
        t.record(h, 5)
        t.record(h, 4)
        assert t.successors(h) == [4, 5]
        assert t.predict(h) == 4
        assert t.predict((9, 9, 9)) is None

    def test_repeated_iterations_are_predicted_after_the_first(self):
        body = list(range(10, 30))
        p = Predictor(SuccessorTable(), PageCorrelation(), lookahead=4)
        for eid in trace(3, body):
            p.observe(eid)
        # The first iteration teaches, the next two are predicted; only the
        # first HISTORY operators of iteration two lack a full history.
        assert p.predictions >= len(body) * 2 - HISTORY
        assert p.accuracy > 0.95
        assert list(p.window) == body[: 4]  # the window wraps to the next iteration

    def test_window_pages_track_the_predicted_operators(self):
        pages = PageCorrelation()
        for eid in range(5):
            pages.record(eid, [100 + eid])
        p = Predictor(SuccessorTable(), pages, lookahead=2)
        for eid in trace(2, range(5)):
            p.observe(eid)
        # After operator 4 the next two are 0 and 1.
        assert list(p.window) == [0, 1]
        assert dict(p.window_pages) == {100: 1, 101: 1}
        assert p.next_use(101) == 2 and p.next_use(104) is None
        assert p.first_uses() == {100: 1, 101: 2}

    def test_first_uses_agree_with_next_use(self):
        pages = PageCorrelation()
        for eid in range(6):
            pages.record(eid, [100 + eid % 3, 200 + eid])  # keys 100-102 recur in the window
        p = Predictor(SuccessorTable(), pages, lookahead=5)
        for eid in trace(3, range(6)):
            p.observe(eid)
        first = p.first_uses()
        assert first == {k: p.next_use(k) for k in p.window_pages}
        assert first[100] < first.get(203, 99)

    def test_changed_branch_is_learned_on_its_second_visit(self):
        a = [1, 2, 3, 4, 5, 6]
        b = [1, 2, 3, 4, 7, 8]  # same prefix, a different branch after 4
        p = Predictor(SuccessorTable(), PageCorrelation(), lookahead=3)
        for eid in a + a:
            p.observe(eid)
        for eid in b:
            p.observe(eid)
        assert p.successors.predict((2, 3, 4)) == 7  # the most recent successor
        assert p.successors.successors((2, 3, 4)) == [7, 5]
        hits = []
        for eid in b:
            hits.append(p.observe(eid))
        # Where b starts again its history (4, 7, 8) is new, so 1, 2 and 3
        # are unpredicted; from 4 on, the new branch is followed.
        assert hits == [False, False, False, True, True, True]

    def test_a_new_shape_gives_new_ids_and_no_false_predictions(self):
        # A new input shape changes every execution ID downstream (they are
        # made of stable keys that include the shape's producer).
        old, new = list(range(10)), list(range(100, 110))
        p = Predictor(SuccessorTable(), PageCorrelation(), lookahead=4)
        for eid in old + old:
            p.observe(eid)
        for eid in new:
            assert not p.observe(eid)  # never predicted
            assert all(e >= 100 for e in p.window)
        assert len(p.window) == 0  # nothing known to follow the new IDs yet
        for eid in new:
            p.observe(eid)
        assert list(p.window)[:1] == [100]


class TestPolicies:
    def test_lru_chooses_least_recent_unpinned(self):
        table, (a, b, c) = make_table(100, [10, 20, 30])
        a.pins = 1
        assert LruPolicy(table).choose_victims(25) == [b, c]
        assert LruPolicy(table).choose_victims(10) == [b]

    def test_deepum_spares_pages_of_predicted_operators(self):
        table, pages = make_table(1000, [10] * 6)
        live = {p.skey: p for p in pages}
        pol = DeepUMPolicy(table, lookahead=2, live=live)
        # Operators 0..3 touch pages 0..3; in a loop of 4.
        for eid in range(4):
            pol.pages.record(eid, [eid])
        for eid in trace(2, range(4)):
            pol.observe(eid)
        # After operator 3 the window is [0, 1]: pages 0 and 1 are protected.
        victims = pol.choose_victims(30, protect_window=True)
        assert {v.key for v in victims}.isdisjoint({0, 1})
        assert sum(v.nbytes for v in victims) >= 30
        # Asked for more than the unprotected pages hold, it gives up the
        # window page used furthest ahead first.
        victims = pol.choose_victims(50)
        assert [v.key for v in victims][-1] == 1

    def test_deepum_prefetches_evicted_pages_in_order_of_need(self):
        table, pages = make_table(1000, [10] * 4)
        live = {p.skey: p for p in pages}
        pol = DeepUMPolicy(table, lookahead=3, live=live)
        for eid in range(4):
            pol.pages.record(eid, [eid])
        for eid in trace(2, range(4)):
            pol.observe(eid)
        # After operator 3 the window is [0, 1, 2].
        table.evicted(pages[2])
        pol.on_evict(pages[2])
        table.evicted(pages[1])
        pol.on_evict(pages[1])
        assert pol.prefetch_plan(max_ops=8) == [(1, pages[1]), (2, pages[2])]
        assert pol.prefetch_plan(max_ops=8) == []  # scanned already
        pol.rewind(2)  # the pager could not fit page 2
        assert pol.prefetch_plan(max_ops=8) == [(2, pages[2])]
        # The scan is bounded per call.
        pol.rewind(0)
        assert pol.prefetch_plan(max_ops=1) == []  # operator 0's page is resident
        assert pol.prefetch_plan(max_ops=1) == [(1, pages[1])]

    def test_make_policy(self):
        table = PageTable(10)
        assert make_policy("lru", table, 4, {}).name == "lru"
        assert make_policy("deepum", table, 4, {}).name == "deepum"
        with pytest.raises(ValueError):
            make_policy("fifo", table, 4, {})


def _policy_pair(kind, lookahead, n_pages):
    """Two policies of ``kind`` over tables of their own, alike in every respect."""
    from deepum.core.costs import Costs
    from deepum.core.remat_policy import RecomputeFirstPolicy

    out = []
    for _ in range(2):
        table, pages = make_table(10_000, [10] * n_pages)
        live = {p.skey: p for p in pages}
        if kind == "cost":
            pol = RecomputeFirstPolicy(table, lookahead, live, Costs(), lambda page: None)
        else:
            pol = DeepUMPolicy(table, lookahead, live)
        out.append((table, pages, pol))
    return out


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("kind", ["deepum", "cost"])
def test_advance_is_observe_then_prefetch_plan(kind, seed):
    # DeepUMPolicy.advance writes observe() and prefetch_plan() out for the
    # pager's every operator (core/policy.py): on a loop with detours, pages
    # leaving and coming back and scans rewound, it must say and keep what
    # the two calls do.
    import random

    rng = random.Random(seed)
    lookahead, n_pages, max_ops = rng.choice([2, 4, 8]), 12, rng.choice([1, 3, 16])
    (ta, pa, a), (tb, pb, b) = _policy_pair(kind, lookahead, n_pages)
    body = list(range(rng.randint(3, 9)))
    for eid in body + [100, 101]:
        used = rng.sample(range(n_pages), 2)
        a.pages.record(eid, used)
        b.pages.record(eid, used)
    for i in range(400):
        eid = rng.choice([100, 101]) if rng.random() < 0.1 else body[i % len(body)]
        got = a.advance(eid, max_ops)
        b.observe(eid)
        want = b.prefetch_plan(max_ops)
        assert [(d, p.key) for d, p in got] == [(d, p.key) for d, p in want]
        assert (a._cursor, list(a.predictor.window), a.clock) == (b._cursor, list(b.predictor.window), b.clock)
        k, leave = rng.randrange(n_pages), rng.random() < 0.5
        for table, pages, pol in ((ta, pa, a), (tb, pb, b)):
            page = pages[k]
            if page.state == State.RESIDENT and leave:
                table.evicted(page)
                pol.on_evict(page)
            elif page.state == State.EVICTED:
                table.arriving(page)
                table.arrived(page)
        if rng.random() < 0.05:
            d = rng.randint(0, lookahead)
            a.rewind(d)
            b.rewind(d)
