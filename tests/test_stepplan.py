"""The planned step (Session(plan=True)): record a step, plan it, execute the plan.

Engine tests train on the cpu device and compare bits with a plain run, with
the plan really in force (plans made, steps run under them, planned
evictions counted). Core tests build traces by hand.
"""

from __future__ import annotations

import time

import pytest
import torch

from deepum.core.planner import carry_over, plan_repeating, plan_step
from deepum.core.remat_policy import Action
from deepum.core.replay import NEVER, simulate
from deepum.core.steptrace import OpSpec, PageSpec, StepTrace, TraceBuilder

from . import models
from .helpers import assert_identical, train, unconstrained_peak

STEPS = 7
CASES = {
    "gpt2": (models.gpt2, models.token_batches, models.lm_loss),
    "cnn_batchnorm": (models.cnn, models.cnn_batches, models.classify),
}


@pytest.mark.parametrize("name", list(CASES))
def test_planned_steps_are_bit_identical_and_follow_the_plan(name):
    make = CASES[name]
    ref = train(*make, STEPS)
    budget = max(unconstrained_peak(*make, STEPS) // 3, 1 << 20)
    planned, online = [], []
    got = train(*make, STEPS, budget=budget, plan=True, each_step=planned, recompute_blocks=False)
    assert_identical(ref, got)
    st = got[3]
    assert st["plans"] >= 1, st
    assert st["planned_steps"] >= 2, st
    assert st["planned_evictions"] > 0 and st["evictions"] > 0, st
    assert st["peak_device_bytes"] <= budget, (st["peak_device_bytes"], budget)
    # The engine follows the plan: most evictions are planned, and in each
    # planned step pages come back ahead of use (the plan's prefetches and
    # rebuilds): seven eighths of page-ins planned in each, and over those
    # steps no more demand faults than the online choice's in the same steps
    # beyond one in fifty page-ins. (Not "fewer than online" any more: the
    # online choice caught up on the GPT-2 here, 2 or 3 a step each, with
    # siblings' stable keys and optimizer slices no wider than the prefetch
    # cap; the CNN's plan still halves them.)
    # (Over the planned steps: the steps before the plan evict more than it does.)
    steps = [s for s in planned if s["planned_steps"]]
    assert steps and sum(s["planned_evictions"] for s in steps) > sum(s["evictions"] for s in steps) / 2, planned
    train(*make, STEPS, budget=budget, each_step=online, recompute_blocks=False)
    steered = [i for i, s in enumerate(planned) if s["planned_evictions"] > s["evictions"] / 2]
    assert len(steered) >= 2, planned
    ins = 0
    for i in steered:
        s = planned[i]
        ins += s["faults"] + s["prefetches"] + s["recomputes"]
        assert 8 * s["faults"] < s["faults"] + s["prefetches"] + s["recomputes"], planned
    faults = sum(planned[i]["faults"] for i in steered), sum(online[i]["faults"] for i in steered)
    assert faults[0] <= faults[1] + ins / 50, (faults, planned, online)
    # A planned step records recipes only for pages the plan drops
    # (StepPlans.recipe_wanted): no more than it drops. (The online choice,
    # which must be ready to drop anything, records more than it drops.)
    for i in steered:
        assert 0 < planned[i]["recipes"] <= planned[i]["drops"], planned[i]
    # ...and holds what the plan counted: few operators find the engine holding
    # more (pages the program let go but recipes kept alive, pages the online
    # choice left on the device when the plan began). The CNN's budget is a
    # few pages wide, where one page the recording never saw (a buffer made
    # mid-step outside any operator) already counts: it is not held to this.
    # On the GPT-2 a lineage page the program let go goes before the next
    # operator, as the plan counts it (_Letting.before; without it this fails).
    if name == "gpt2":
        assert st["plan_over_ops"] <= st["ops"] // 100, (st["plan_over_ops"], st["ops"])


def _changing_shapes(steps: int, **options):
    """Train the test GPT-2 on sequence lengths that change every step, plain and
    under a third of its peak with ``options``; assert the bits agree; return the stats and budget."""

    def batches():
        g = torch.Generator().manual_seed(5)
        return [torch.randint(0, 256, (4, 16 + 8 * (i % 3)), generator=g) for i in range(steps)]

    make = (models.gpt2, batches, models.lm_loss)
    ref = train(*make, steps)
    budget = max(unconstrained_peak(*make, steps) // 3, 1 << 20)
    got = train(*make, steps, budget=budget, **options)
    assert_identical(ref, got)
    return got[3], budget


def test_a_step_that_changes_shape_leaves_the_plan_and_stays_exact():
    # Variable sequence length: each step departs from the one recorded
    # before it, falls back to the online choice and is recorded again.
    st, budget = _changing_shapes(8, plan=True)
    assert st["plans"] >= 1 and st["plan_departures"] >= 1, st
    assert st["peak_device_bytes"] <= budget


def test_lru_and_plan_false_never_plan():
    import deepum

    assert deepum.Config().plan == "auto"  # the default plans, and keeps the plan only where it pays
    make = CASES["gpt2"]
    budget = max(unconstrained_peak(*make, 4) // 3, 1 << 20)
    for options in ({"policy": "lru", "plan": True}, {"plan": False}):
        st = train(*make, 4, budget=budget, **options)[3]
        assert st["evictions"] > 0 and st["plans"] == 0 and st["planned_evictions"] == 0, (options, st)


# ----------------------------------------------------------------- the core

def test_trace_builder_frees_before_the_first_operator_count_after_it():
    b = TraceBuilder()
    b.existing(1, 10, 4, resident=True, dirty=True, pageable=True)
    b.existing(2, 11, 4, resident=True, dirty=True, pageable=True)
    b.free(1)  # the program let go before any operator of the step ended
    b.op(7, (2,), (), [(3, 12, 4, True)])
    b.recipe(3, 7, (2,))
    b.recipe(3, 7, (99,))  # an input the step never saw: no recipe
    trace = b.build(lambda eid: 1e-3, lambda eid: 2e-3)
    trace.validate()
    assert trace.ops[0].frees == (1,)
    assert trace.pages[3].rebuild_seconds == 2e-3 and trace.pages[3].recipe_inputs == (2,)


def _repeating_trace():
    """A step that begins with last step's output ``old`` (role 50), frees it
    unused, and makes a new one (``new``, role 50) from a parameter; between
    them a large temporary must fit."""
    pages = {
        0: PageSpec(4, resident=True),                     # parameter, role 40
        1: PageSpec(4, resident=True),                     # last step's output, role 50
        2: PageSpec(4, rebuild_seconds=1e-6, recipe_inputs=(0,)),  # this step's output, role 50
        3: PageSpec(8),                                    # a temporary
    }
    ops = [
        OpSpec(0, 1e-3, uses=(0,), creates=(2,)),
        OpSpec(1, 1e-3, uses=(0,), creates=(3,), frees=(1,)),
        OpSpec(2, 1e-3, uses=(3, 0), frees=(3,)),
    ]
    return StepTrace(ops, pages), {0: 40, 1: 50, 2: 50}


def test_carry_over_matches_roles_and_a_heir_freed_unused_is_dropped_for_nothing():
    trace, skeys = _repeating_trace()
    assert carry_over(trace, skeys) == {0: 0, 1: 2}
    # The output is never read before the next step frees it: dropped for
    # nothing, where a copy over a one-byte-per-second link would stall.
    once = plan_step(trace, 16, h2d_Bps=1.0, d2h_Bps=1.0, tails={2: NEVER})
    evicted = {pid: action for moves in once.evictions.values() for pid, action in moves}
    assert once.fits and evicted == {2: Action.DROP}
    # Planned as a repeating step the same holds.
    plan = plan_repeating(trace, skeys, limit=16, h2d_Bps=1.0, d2h_Bps=1.0)
    assert plan.fits and plan.evictions == once.evictions and not plan.fetches


def test_a_freed_input_is_kept_as_lineage_so_its_reader_can_be_dropped():
    # a is made from a parameter and freed once b is made from it; later b
    # must leave the device for a large temporary. Kept as a dropped lineage
    # node (no memory), a lets b be dropped and rebuilt; let go, it would
    # leave only a copy of b over a slow link.
    pages = {
        0: PageSpec(4, resident=True),                                   # parameter
        1: PageSpec(8, rebuild_seconds=1e-6, recipe_inputs=(0,)),        # a
        2: PageSpec(8, rebuild_seconds=1e-6, recipe_inputs=(1,)),        # b
        3: PageSpec(12),                                                 # temporary
    }
    ops = [
        OpSpec(0, 1e-3, uses=(0,), creates=(1,)),
        OpSpec(1, 1e-3, uses=(1,), creates=(2,), frees=(1,)),
        OpSpec(2, 1e-3, creates=(3,), frees=(3,)),
        OpSpec(3, 1e-3, uses=(2, 0)),
    ]
    trace = StepTrace(ops, pages)
    plan = plan_step(trace, limit=20, h2d_Bps=1.0, d2h_Bps=1.0)
    assert plan.fits
    assert plan.kept == {1: (2,)}
    evicted = [move for moves in plan.evictions.values() for move in moves]
    assert (1, Action.DROP) in evicted and (2, Action.DROP) in evicted
    assert not plan.fetches
    # Once b is rebuilt for op 3, nothing needs a: the runner lets it go there.
    assert plan.releases.get(3) == [1], plan.releases
    sim = simulate(trace, plan, 20)
    assert sim.over_limit == [] and sim.h2d_bytes == 0 and sim.d2h_bytes == 0


def test_long_chains_of_dropped_pages_plan_quickly():
    # Each page is made from the one before and used once, then read again
    # at the end: the planner drops them in a chain. Finding a page's next use
    # through the dropped pages that need it once took exponential time.
    n = 400
    pages = {0: PageSpec(1, resident=True)}
    ops = []
    for i in range(1, n):
        pages[i] = PageSpec(1, rebuild_seconds=1e-9, recipe_inputs=(i - 1,))
        ops.append(OpSpec(i, 1e-3, uses=(i - 1,), creates=(i,)))
    ops.append(OpSpec(n, 1e-3, uses=tuple(range(0, n, 7))))
    trace = StepTrace(ops, pages)
    t0 = time.perf_counter()
    plan = plan_step(trace, limit=80, h2d_Bps=1.0, d2h_Bps=1.0)
    assert time.perf_counter() - t0 < 10
    assert plan.stats["evictions"] > 0
    assert NEVER > n


def test_recording_sees_a_lineage_page_let_go_long_after_its_last_use():
    # a's storage outlives the program's reference (b's recipe holds it), so
    # its death says nothing: the recording must notice that the program let
    # go of it, here four operators after its last use (as autograd lets go
    # of a saved tensor only when its node ends), or the plan counts a's
    # memory to the end of the step.
    import deepum

    with deepum.oversubscribe(4 << 20, "cpu", plan=True) as session:
        pager = session.pager
        x = torch.ones(1 << 16)  # 256 KiB pages: above the recipes' minimum size
        pager._pressure_begins()
        pager.plans.boundary()  # starts recording
        builder = pager.plans.builder
        assert builder is not None
        before = set(pager.table.pages)
        a = x * 2
        (key_a,) = set(pager.table.pages) - before
        b = a + 1  # b's recipe reads a
        page_a = pager.table.pages[key_a]
        assert page_a.readers
        ys = [x * k for k in range(3, 7)]  # operators that do not touch a
        assert not any(page_a.pid in frees for frees in builder.frees)
        del a
        z = x + 7
        freed_at = [i for i, frees in enumerate(builder.frees) if page_a.pid in frees]
        # Noticed at z, the first operator since the del, and recorded after
        # the one before z: the program let go before z ran.
        assert freed_at == [len(builder.frees) - 2], freed_at
        del b, ys, z


def _steps_timed(monkeypatch, planned_seconds: float) -> None:
    """Give every StepPlans a clock by which an online step takes 1 s and a planned one ``planned_seconds``."""
    from deepum.engine import stepplan

    init = stepplan.StepPlans.__init__

    def patched(self, pager):
        init(self, pager)
        now = [0.0]

        def clock():
            # Read at the boundary, before the step that just ended hands over.
            now[0] += planned_seconds if self.steering else 1.0
            return now[0]

        if self.trial is not None:
            self.trial.clock = clock

    monkeypatch.setattr(stepplan.StepPlans, "__init__", patched)


@pytest.mark.parametrize("plan_faster", [True, False])
def test_auto_keeps_the_plan_only_where_it_is_faster(monkeypatch, plan_faster):
    # plan="auto" records a step, then times planned and online steps in
    # turn and keeps the faster way (core/plantrial.py); either way the bits
    # are plain's.
    _steps_timed(monkeypatch, 0.5 if plan_faster else 2.0)
    steps = 19  # the recording, two settling steps, three pairs of each way, planned steps after the verdict
    make = (models.gpt2, lambda: models.token_batches(n=steps), models.lm_loss)
    ref = train(*make, steps)
    budget = max(unconstrained_peak(*make, steps) // 3, 1 << 20)
    got = train(*make, steps, budget=budget, plan="auto")
    assert_identical(ref, got)
    st = got[3]
    assert st["plans"] == 1 and st["evictions"] > 0, st
    # The stats keep what the verdict was taken on: three timed steps each way.
    planned_ms = 500.0 if plan_faster else 2000.0
    assert st["plan_trial_ms"] == {"planned": [planned_ms] * 3, "online": [1000.0] * 3}, st
    if plan_faster:
        assert st["plan_verdict"] == 1, st
        assert st["planned_steps"] >= 8, st  # the trial's seven and those after
    else:
        assert st["plan_verdict"] == 0, st
        # The trial's: two settling, the first sample right after them, then two
        # pairs (each planned sample after an unsampled planned step); then online for good.
        assert st["planned_steps"] == 7, st
    assert st["peak_device_bytes"] <= budget


def test_auto_pages_online_a_program_that_keeps_leaving_the_plan():
    # Variable sequence length: every planned step departs from the one
    # recorded before it; after three such departures plan="auto" stops
    # recording and pages online, exactly and within the budget.
    st, budget = _changing_shapes(10, plan="auto")
    assert st["plan_verdict"] == 0 and st["plan_departures"] == 3 and st["plans"] == 3, st
    assert st["evictions"] > 0 and st["peak_device_bytes"] <= budget, st


def test_plan_trial_verdict():
    from deepum.core.plantrial import ONLINE, PLANNED, PlanTrial

    trial = PlanTrial(samples=2, margin=0.1)
    assert trial.wants(ONLINE) and trial.wants(PLANNED)
    assert trial.note(ONLINE, 1.0) is None and trial.note(ONLINE, 1.2) is None
    assert not trial.wants(ONLINE)
    assert trial.note(ONLINE, 9.0) is None and trial.times[ONLINE] == [1.0, 1.2]  # enough online
    assert trial.note(PLANNED, 1.3) is None
    assert trial.note(PLANNED, 1.15) is False  # the fastest: 1.15 against 1.0 * 1.1
    fastest = PlanTrial(samples=2, margin=0.1)
    for seconds in (1.0, 1.2):
        fastest.note(ONLINE, seconds)
    fastest.note(PLANNED, 3.0)  # a one-off cost (a collector pass) in one sample
    assert fastest.note(PLANNED, 1.05) is True
    slower = PlanTrial(samples=1, margin=0.0)
    slower.note(PLANNED, 2.0)
    assert slower.note(ONLINE, 1.0) is False
    with pytest.raises(ValueError):
        PlanTrial(samples=0, margin=0.0)
    turns = PlanTrial(samples=2, margin=0.0)
    kinds = []
    while turns.verdict is None:
        kinds.append(turns.next_kind())
        turns.note(kinds[-1], 1.0)
    assert kinds == [PLANNED, ONLINE, PLANNED, ONLINE] and not turns.online_next()
    # Through ended(), a step is a sample only after a step of the same kind:
    # the first of each pair begins from the other way's residency.
    pairs = PlanTrial(samples=2, margin=0.0)
    kinds = [None]  # the recorded step
    pairs.ended(None, 9.0)
    while pairs.verdict is None:
        kinds.append(pairs.next_kind())
        pairs.ended(kinds[-1], 1.0 if kinds[-1] == ONLINE else 5.0 if kinds[-2] != PLANNED else 0.5)
    assert kinds[1:] == [PLANNED, PLANNED, ONLINE, ONLINE] * 2, kinds
    assert pairs.times[PLANNED] == [0.5, 0.5] and pairs.verdict is True  # the first of each pair unseen
    # A plan's first planned steps are no samples: with settle=2 the trial
    # runs them, then takes its pairs.
    settling = PlanTrial(samples=1, margin=0.0, settle=2)
    kinds = [None]
    settling.ended(None, 9.0)
    while settling.verdict is None:
        kinds.append(settling.next_kind())
        settling.ended(kinds[-1], 5.0 if len(kinds) <= 3 else 1.0)
    assert kinds[1:] == [PLANNED, PLANNED, PLANNED, ONLINE, ONLINE], kinds
    assert settling.times[PLANNED] == [1.0] and settling.verdict is True
    with pytest.raises(ValueError):
        PlanTrial(samples=1, margin=0.0, settle=-1)
    leaving = PlanTrial(samples=2, margin=0.0)
    assert leaving.departed() is None and leaving.departed() is False  # two departures: online
    kept = PlanTrial(samples=1, margin=0.0)
    kept.note(ONLINE, 1.0)
    kept.note(PLANNED, 1.0)
    assert kept.departed() is True and kept.departures == 0  # after the verdict, no count


def test_pages_the_plan_counts_on_the_device_come_back_as_its_step_begins():
    # A plan starts from the residency it counted (the recorded step's, or
    # its own end). Pages it counts on the device that the last step left on
    # the host come back as the step begins, rather than each faulting where
    # it is first used, every step.
    from torch.utils._python_dispatch import _disable_current_modes

    import deepum
    from deepum.core.pages import EVICTED, RESIDENT

    model, batches, loss_fn = models.gpt2(), models.token_batches(), models.lm_loss
    budget = max(unconstrained_peak(*CASES["gpt2"], 4) // 3, 1 << 20)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    faults = []
    with deepum.oversubscribe(budget, "cpu", plan=True) as session:
        pager = session.pager
        for i, batch in enumerate(batches[:6]):
            before = session.stats()["faults"]
            loss_fn(model, batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            faults.append(session.stats()["faults"] - before)
            plans = pager.plans
            if i == 3:
                # The plan for step 4 has begun (at the optimizer step): send the
                # start pages it uses first to the host, and begin it again.
                early = sorted((plans.uses[pid][0], pid) for pid, page in plans.by_pid.items()
                               if pid in plans.plan.start and plans.uses.get(pid)
                               and page.state == RESIDENT and page.pageable and not page.pins)[:10]
                sent = [plans.by_pid[pid] for _, pid in early]
                with _disable_current_modes(), pager.lock:  # as the engine itself evicts
                    pager.evict(sent, lambda p: Action.COPY)
                    assert len(sent) == 10 and all(p.state == EVICTED for p in sent)
                    plans._start_running()
                assert not any(p.state == EVICTED for p in sent)
        st = session.stats()
    assert st["planned_steps"] >= 3 and st["plan_departures"] == 0, st
    assert faults[4] <= faults[3] + 1, faults  # none of the ten faulted



def test_copies_out_that_hold_memory_and_the_two_answers_to_them():
    # On CUDA a page copied out keeps its memory until its copy ends; the
    # plan counts it free at once, so its prefetches find no room and pages
    # fault, and operators wait for copies (Thresholds.cpu_copy_lag makes the
    # cpu tier's copies out hold memory so). Two answers, both off by default:
    # plan under the limit less what copies out held at once when recorded
    # (plan_leaving_room), or let a planned prefetch wait for the copies
    # holding its room (plan_prefetch_waits). Both stay exact, as does the
    # retry after the next operator (plan_prefetch_retry, on by default).
    # Planned at a tenth of the link price, so that copies dominate the plan
    # and the lag is the case (the default drops more and copies less).
    from deepum.core.config import Thresholds

    make = CASES["gpt2"]
    ref = train(*make, STEPS)
    budget = max(unconstrained_peak(*make, STEPS) // 3, 1 << 20)
    runs = {}
    for option in ("none", "plan_leaving_room", "plan_prefetch_waits", "plan_prefetch_retry"):
        each = []
        # plan_prefetch_retry is on by default: the run named for it turns it off.
        value = option != "plan_prefetch_retry"
        th = Thresholds(cpu_copy_lag=10, plan_link_price=0.1, **({option: value} if option != "none" else {}))
        got = train(*make, STEPS, budget=budget, plan=True, each_step=each, thresholds=th)
        assert_identical(ref, got)
        steered = [s for s in each if s["planned_evictions"] > s["evictions"] / 2]
        assert len(steered) >= 2, each
        runs[option] = {k: sum(s[k] for s in steered) / len(steered)
                        for k in ("faults", "leaving_waits", "plan_prefetch_no_room")}
    base, room, waits = runs["none"], runs["plan_leaving_room"], runs["plan_prefetch_waits"]
    once = runs["plan_prefetch_retry"]  # no second try after the next operator
    assert base["faults"] <= once["faults"], runs  # (its own test is below: the lag here is not its case)
    assert base["plan_prefetch_no_room"] > 0 and base["faults"] > 0, runs  # the lag bites
    assert room["faults"] < base["faults"] and room["leaving_waits"] < base["leaving_waits"], runs
    assert waits["plan_prefetch_no_room"] == 0 and waits["faults"] < base["faults"] / 2, runs


def test_a_prefetch_with_no_room_is_tried_once_more_after_the_next_operator():
    # [Note: prefetches that wait for frees]: the room the plan counted after
    # operator t comes once autograd has let go of what t's node saved.
    from types import SimpleNamespace

    from deepum.core.config import Thresholds
    from deepum.core.pages import EVICTED, RESIDENT, Page
    from deepum.engine.stepplan import _fetch

    class Pager:
        def __init__(self, retry: bool) -> None:
            self.room, self.fetched = 0, []
            self.counters = SimpleNamespace(plan_prefetch_no_room=0)
            self.config = SimpleNamespace(thresholds=Thresholds(plan_prefetch_retry=retry))

        def prefetch_pages(self, pages):
            short = []
            for p in pages:
                if p.state != EVICTED:
                    continue
                if p.nbytes > self.room:
                    short.append(p)
                    continue
                self.room -= p.nbytes
                p.state = RESIDENT
                self.fetched.append(p)
            return short

    def evicted(n: int) -> Page:
        page = Page(n, 100)
        page.state = EVICTED
        return page

    pager = Pager(retry=True)
    a, b, c = evicted(1), evicted(2), evicted(3)
    waiting = _fetch(pager, [], [a, b], used=())  # after operator t: no room yet
    assert waiting == [a, b] and pager.counters.plan_prefetch_no_room == 0
    pager.room = 150  # the frees after t came; operator t + 1 used b (it faulted in)
    b.state = RESIDENT
    waiting = _fetch(pager, waiting, [c], used=[b])
    # t + 1's own prefetch goes first, and a finds no room even now
    assert pager.fetched == [c] and waiting == []
    assert pager.counters.plan_prefetch_no_room == 2  # a (no room twice) and b (faulted)

    d = evicted(5)
    assert _fetch(pager, [], [d], used=()) == [d] and pager.room == 50
    pager.room = 100
    assert _fetch(pager, [d], [], used=()) == [] and pager.fetched[-1] is d  # it came this time
    assert pager.counters.plan_prefetch_no_room == 2

    pager = Pager(retry=False)
    assert _fetch(pager, [], [evicted(4)], used=()) == []
    assert pager.counters.plan_prefetch_no_room == 1  # left to fault at once


def test_the_link_price_reaches_the_planner_and_moves_copies_to_drops(monkeypatch):
    # Thresholds.plan_link_price is the planner's LINK_PRICE; a higher one
    # charges copies more, so the plan copies fewer pages that have recipes.
    import deepum.engine.stepplan as stepplan
    from deepum.core.config import Thresholds
    from deepum.core.errors import OptionError

    with pytest.raises(OptionError, match="plan_link_price"):
        Thresholds(plan_link_price=-0.1)
    make = CASES["gpt2"]
    budget = max(unconstrained_peak(*make, STEPS) // 3, 1 << 20)
    original, copied = stepplan.plan_repeating, {}

    def planned(trace, skeys, limit, **kw):
        plan = original(trace, skeys, limit, **kw)
        copies = [pid for moves in plan.evictions.values() for pid, action in moves
                  if action == Action.COPY and trace.pages[pid].rebuild_seconds is not None]
        copied.setdefault(kw["link_price"], []).append(sum(trace.pages[p].nbytes for p in copies))
        return plan

    monkeypatch.setattr(stepplan, "plan_repeating", planned)
    ref = train(*make, STEPS)
    for price in (0.0, 10.0):
        # Weighing every page, this small model's plan drops all but one page at
        # either price (a copy's host time outweighs a rebuild here): sixteen
        # candidates, the default until session 17, leave copies to compare.
        got = train(*make, STEPS, budget=budget, plan=True,
                    thresholds=Thresholds(plan_link_price=price, plan_candidates=16))
        assert_identical(ref, got)
    assert set(copied) == {0.0, 10.0}, copied
    assert min(copied[10.0]) < min(copied[0.0]), copied


def test_the_candidate_count_reaches_the_planner_and_the_steps_stay_exact(monkeypatch):
    # Thresholds.plan_candidates is how many pages the planner prices for each
    # eviction; with few (the default is many), the same program plans and runs
    # bit-identically.
    import deepum.engine.stepplan as stepplan
    from deepum.core.config import Thresholds
    from deepum.core.errors import OptionError

    with pytest.raises(OptionError, match="plan_candidates"):
        Thresholds(plan_candidates=0)
    make = CASES["gpt2"]
    budget = max(unconstrained_peak(*make, STEPS) // 3, 1 << 20)
    original, seen = stepplan.plan_repeating, []

    def planned(trace, skeys, limit, **kw):
        seen.append(kw["candidates"])
        return original(trace, skeys, limit, **kw)

    monkeypatch.setattr(stepplan, "plan_repeating", planned)
    ref = train(*make, STEPS)
    got = train(*make, STEPS, budget=budget, plan=True, thresholds=Thresholds(plan_candidates=8))
    assert_identical(ref, got)
    assert seen and set(seen) == {8}, seen


def test_after_looks_at_waiting_pages_only_when_something_moved():
    """A page the plan lets go may wait for a dropped reader's rebuild; the plan looks at the
    waiting pages again only after an operator that rebuilt or released something, and
    otherwise does nothing after an operator where nothing is planned."""
    from types import SimpleNamespace

    from deepum.core.pages import Page
    from deepum.engine.stepplan import RUNNING, StepPlans, _Letting

    counters = SimpleNamespace(recomputes=0, lineage_released=0, plan_over_ops=0)
    pager = SimpleNamespace(counters=counters, table=SimpleNamespace(resident_bytes=0))
    plans = StepPlans.__new__(StepPlans)
    plans.pager, plans.mode, plans.left, plans.shadow = pager, RUNNING, False, False
    plans.t, plans.eids, plans.births = 0, [7, 7, 7], [(), (), ()]
    plans.made, plans.using, plans.written, plans.by_pid = [], [], (), {}
    plans.plan = SimpleNamespace(resident=[0, 0, 0], limit=64)
    plans.busy, plans.waiting, plans.mismatches = set(), [], 0
    plans.letting = _Letting(pager)
    plans.letting.waiting = {1: Page(1, 100)}
    plans.letting.stamp = plans.letting.now()
    ran = []
    plans._execute = lambda t, used=(): ran.append(t)
    plans.after(7)
    assert ran == []  # nothing moved: the waiting page is not looked at
    counters.recomputes += 1  # a rebuild: its inputs may be free to go now
    plans.after(7)
    assert ran == [1]
    plans.letting.waiting = {}
    counters.lineage_released += 1
    plans.after(7)
    assert ran == [1]  # nothing waits and nothing is planned
