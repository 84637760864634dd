"""Traces, the memory picture, page kinds, saved stats."""

import json
import subprocess
import sys

import torch

import deepum
from deepum.core.pages import Kind
from deepum.report.chrome import chrome_trace

from . import models
from .helpers import unconstrained_peak


def traced_run(steps=3):
    budget = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 3) // 3
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    with deepum.oversubscribe(budget, device="cpu", trace=True) as session:
        for batch in models.mlp_batches()[:steps]:
            opt.zero_grad(set_to_none=True)
            loss = models.classify(model, batch)
            loss.backward()
            inside = session.stats()  # after backward: gradients and saved activations known
            opt.step()
    return session, model, opt, inside


def test_trace_is_valid_trace_event_json(tmp_path):
    session, *_ = traced_run()
    path = tmp_path / "trace.json"
    session.export_trace(str(path))
    data = json.loads(path.read_text())
    events = data["traceEvents"]
    phases = {e["ph"] for e in events}
    assert {"X", "C", "M"} <= phases
    cats = {e.get("cat") for e in events if e["ph"] == "X"}
    assert {"operators", "faults", "evictions", "prefetches"} <= cats
    ops = [e for e in events if e.get("cat") == "operators"]
    # Every intercepted operator is a slice; those that touched managed memory carry their ID.
    assert len([e for e in ops if e["args"]["eid"] >= 0]) == session.stats()["ops"]
    timed = [e["ts"] for e in events if "ts" in e]
    assert timed == sorted(timed) and timed[0] >= 0
    for e in events:
        if e["ph"] == "X":
            assert e["dur"] > 0
        if e.get("cat") in ("faults", "evictions", "prefetches"):
            assert e["args"]["bytes"] > 0 and e["args"]["kinds"]
    counters = [e for e in events if e["ph"] == "C" and e["name"] == "resident bytes"]
    assert set(counters[0]["args"]) == {"other", "parameter", "gradient", "optimizer_state", "activation"}


def test_the_plans_decisions_are_in_the_trace():
    # Issue 12: which step was recorded and which ran a plan, each eviction
    # batch's drops and copies and whether the plan chose them, and each
    # rebuild, on the trace's tracks.
    batches = lambda: models.token_batches(n=6)  # noqa: E731
    budget = unconstrained_peak(models.gpt2, batches, models.lm_loss, 3) // 3
    torch.manual_seed(0)
    model = models.gpt2()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    with deepum.oversubscribe(budget, device="cpu", trace=True, plan=True) as session:
        for batch in batches():
            opt.zero_grad(set_to_none=True)
            models.lm_loss(model, batch).backward()
            opt.step()
    st = session.stats()
    assert st["planned_steps"] >= 2 and st["drops"] > 0 and st["recomputes"] > 0, st
    events = chrome_trace(session.pager.trace)["traceEvents"]
    steps = [e["args"]["paging"] for e in events if e["name"].startswith("optimizer step")]
    assert len(steps) == 6 and "recorded" in steps and steps.count("planned") == st["planned_steps"], steps
    evictions = [e["args"] for e in events if e.get("cat") == "evictions"]
    assert all(a["dropped"] + a["copied"] <= a["pages"] for a in evictions)
    assert sum(a["dropped"] for a in evictions) == st["drops"]
    assert any(a["planned"] and a["dropped"] for a in evictions)
    assert any(not a["planned"] for a in evictions)  # the online choice's, before the plan
    rebuilds = [e for e in events if e.get("cat") == "recomputes"]
    assert len(rebuilds) == st["recomputes"] and any(e["args"]["planned"] for e in rebuilds)
    assert all(e["name"].startswith("recompute aten.") and e["args"]["bytes"] > 0 for e in rebuilds)


def test_memory_picture(tmp_path):
    session, *_ = traced_run()
    path = tmp_path / "memory.png"
    session.plot_memory(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_page_kinds_of_a_small_model():
    session, model, opt, inside = traced_run()
    assert len(session.pager.table.pages) == 0  # the session forgot every page at exit
    # During the last step, after backward and before the optimizer ran:
    kinds = inside["pages_by_kind"]
    n_params = len(list(model.parameters()))
    assert kinds["parameter"] == n_params
    assert kinds["gradient"] == n_params        # grads, known by their stable keys from step 1
    assert kinds["optimizer_state"] >= 2 * n_params  # exp_avg, exp_avg_sq (+ steps)
    by_kind = inside["resident_bytes_by_kind"]
    assert sum(by_kind.values()) == inside["resident_bytes"]
    assert session.stats()["optimizer_steps"] == 3
    assert "energy_joules" not in session.stats()  # no NVML on the cpu device


def test_saved_activations_are_classified():
    torch.manual_seed(0)
    model = models.mlp()
    x, y = models.mlp_batches()[0]
    with deepum.oversubscribe(1.0, device="cpu", track_kinds=True) as session:
        loss = models.classify(model, (x, y))
        during = session.stats()["pages_by_kind"]
        loss.backward()
    assert during["activation"] >= 8  # inputs of every Linear and GELU, kept for backward
    assert during["parameter"] == len(list(model.parameters()))


def test_cli_stats_trace_plot_and_report(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import torch\n"
        "m = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])\n"
        "o = torch.optim.SGD(m.parameters(), lr=0.1)\n"
        "for _ in range(3):\n"
        "    m(torch.randn(64, 256)).square().mean().backward(); o.step(); o.zero_grad()\n")
    stats, trace, plot = tmp_path / "stats.json", tmp_path / "t.json", tmp_path / "m.png"
    r = subprocess.run([sys.executable, "-m", "deepum", "run", "--device", "cpu", "--budget", "1200KB",
                        "--stats", str(stats), "--trace", str(trace), "--plot", str(plot), str(script)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    saved = json.loads(stats.read_text())
    assert saved["evictions"] > 0
    assert json.loads(trace.read_text())["traceEvents"]
    assert plot.stat().st_size > 10_000
    rep = subprocess.run([sys.executable, "-m", "deepum", "report", str(stats)], capture_output=True, text=True)
    assert rep.returncode == 0 and f"{saved['evictions']} evictions" in rep.stdout


def test_profiler_sees_deepum_ranges():
    budget = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 2) // 3
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with deepum.oversubscribe(budget, device="cpu"):
            for batch in models.mlp_batches()[:2]:
                models.classify(model, batch).backward()
                opt.step()
                opt.zero_grad()
    names = {e.name for e in prof.events()}
    assert {"deepum::evict", "deepum::fault"} <= names


def test_logging_under_the_deepum_logger(caplog):
    import logging

    budget = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 2) // 3
    model = models.mlp()
    with caplog.at_level(logging.INFO, logger="deepum"):
        with deepum.oversubscribe(budget, device="cpu"):
            models.classify(model, models.mlp_batches()[0]).backward()
    text = caplog.text
    assert "deepum session on cpu" in text and "memory pressure" in text and "session ended" in text


STATUS_SCRIPT = (
    "import time, torch\n"
    "m = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])\n"
    "t = time.time()\n"
    "while time.time() - t < 1.5:\n"
    "    m(torch.randn(64, 256)).square().mean().backward()\n")


def _run_status(tmp_path, tty: bool, text: str = STATUS_SCRIPT) -> str:
    import os
    import pty

    script = tmp_path / "s.py"
    script.write_text(text)
    cmd = [sys.executable, "-m", "deepum", "run", "--device", "cpu", "--budget", "1200KB", str(script)]
    env = dict(os.environ, DEEPUM_STATUS_INTERVAL="0.1")
    if not tty:
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300).stderr
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


def test_status_line_on_a_terminal_only(tmp_path):
    on_tty = _run_status(tmp_path, tty=True)
    assert "deepum: " in on_tty and " ops | " in on_tty and "faults/s" in on_tty and "resident" in on_tty
    piped = _run_status(tmp_path, tty=False)
    assert "faults/s" not in piped
    assert "deepum: policy" in piped  # the exit summary is still there


PRINTING_SCRIPT = (
    "import sys, time, torch\n"
    "m = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])\n"
    "for i in range(25):\n"
    "    m(torch.randn(64, 256)).square().mean().backward()\n"
    "    print('step', i, 'loss', 0.5, flush=True)\n"
    "    print('warn', i, file=sys.stderr, end='')\n"
    "    time.sleep(0.05)\n"
    "    print(file=sys.stderr)\n")


def _screen_lines(raw: str) -> list[str]:
    """The lines a terminal shows for ``raw``: carriage return and erase-to-end-of-line applied."""
    lines, line, cur, i = [], [], 0, 0
    while i < len(raw):
        if raw.startswith("\x1b[K", i):
            del line[cur:]
            i += 3
            continue
        ch = raw[i]
        if ch == "\r":
            cur = 0
        elif ch == "\n":
            lines.append("".join(line))
            line, cur = [], 0
        else:
            line[cur:cur + 1] = [ch]
            cur += 1
        i += 1
    lines.append("".join(line))
    return lines


def test_status_line_never_splices_into_the_programs_output(tmp_path):
    import re

    raw = _run_status(tmp_path, tty=True, text=PRINTING_SCRIPT)
    assert "faults/s" in raw and " MiB" in raw and "GiB" not in raw  # units that fit a MiB budget
    shown = _screen_lines(raw)
    printed = [x for x in shown if "step" in x or "warn" in x]
    assert len(printed) > 10
    for x in printed:
        assert re.fullmatch(r"step \d+ loss 0\.5|warn \d+", x), x


def test_parameters_made_in_the_session_are_parameters_from_birth():
    with deepum.oversubscribe(1.0, device="cpu") as session:
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 8))
        model(torch.randn(4, 64))
        kinds = session.stats()["pages_by_kind"]
    assert kinds["parameter"] == len(list(model.parameters()))


def test_plot_fits_the_data_and_marks_steps(tmp_path):
    import matplotlib

    with deepum.oversubscribe(1.0, device="cpu", trace=True) as session:  # a budget that never binds
        model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            model(torch.randn(32, 256)).square().mean().backward()
            opt.step()
            opt.zero_grad()
    rec = session.pager.trace
    assert len(rec.steps) == 3
    steps = [e for e in chrome_trace(rec)["traceEvents"] if e["name"].startswith("optimizer step")]
    assert len(steps) == 3
    # Before the first step the parameters are drawn as parameters, not as "other".
    first = [c for t, c in rec.counters if t < rec.steps[0]]
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert max(c[Kind.PARAMETER] for c in first) == param_bytes
    path = tmp_path / "m.svg"
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text
        session.plot_memory(str(path))
    svg = path.read_text()
    assert "resident on device (MiB)" in svg and "GiB (off the scale)" in svg and "optimizer step" in svg


def test_optimizer_hooks_stop_looking_once_classes_settle(monkeypatch):
    # Each look-up round of the optimizer hooks costs microseconds per tensor.
    # Once two steps' rounds changed nothing, they run only every
    # kinds_every-th step; gradients born again each step keep their class
    # from their stable keys all the same.
    from deepum.api import kinds as kinds_module
    from deepum.core.config import Config, Thresholds

    rounds = []
    settled_due = kinds_module._Settled.due

    def due(self, optimizer):
        d = settled_due(self, optimizer)
        rounds.append(d)
        return d

    budget = unconstrained_peak(models.mlp, models.mlp_batches, models.classify, 3) // 3
    monkeypatch.setattr(kinds_module._Settled, "due", due)
    torch.manual_seed(0)
    model = models.mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    config = Config(dormant=False, thresholds=Thresholds(kinds_settle=2, kinds_every=5))
    inside = []
    with deepum.oversubscribe(budget, device="cpu", config=config) as session:
        for batch in models.mlp_batches()[:2] * 6:
            opt.zero_grad(set_to_none=True)
            models.classify(model, batch).backward()
            inside.append(session.stats()["pages_by_kind"])
            opt.step()
    # Two hooks a step; a step looked if either did.
    looked = [rounds[i] or rounds[i + 1] for i in range(0, len(rounds), 2)]
    assert len(looked) == 12 and looked[:3] == [True] * 3, looked
    first_skip = looked.index(False)
    assert first_skip >= 2 and looked[first_skip + 1] is False, looked  # settled
    assert any(looked[first_skip:]), looked  # and the every-5th round still came
    assert sum(looked) < 12 - 4, looked
    n_params = len(list(model.parameters()))
    # Gradients born again in a step that did not look still carry their class.
    assert all(inside[i]["gradient"] == n_params for i, d in enumerate(looked) if not d), inside


class _CountingNvml:
    """NVML's energy query, counted: a millijoule more each time it is asked."""

    def __init__(self) -> None:
        self.queries = 0

    def nvmlDeviceGetTotalEnergyConsumption(self, handle) -> int:  # noqa: N802 (NVML's name)
        self.queries += 1
        return 1000 * self.queries


def test_energy_reading_is_reused_while_young(monkeypatch):
    """stats() on every phase of every step must not query NVML each time (a slow call on
    some drivers); a reading older than the limit is taken again, and a zero limit reads anew."""
    from types import SimpleNamespace

    from deepum.engine import energy as energy_mod

    clock = [100.0]
    monkeypatch.setattr(energy_mod, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    nvml = _CountingNvml()
    e = energy_mod.Energy(nvml, handle=None)
    assert nvml.queries == 1  # the start
    clock[0] += 2.0
    first = e.joules(1.0)
    assert nvml.queries == 2 and first == 1.0
    clock[0] += 0.5
    assert e.joules(1.0) == first and nvml.queries == 2  # young: reused
    clock[0] += 0.6
    assert e.joules(1.0) == 2.0 and nvml.queries == 3  # old: read again
    assert e.joules() == 3.0 and nvml.queries == 4  # the harness's fresh reading


def test_a_build_lock_left_behind_is_removed(tmp_path):
    """A killed build leaves torch's lock file, on which every later build waits forever:
    an old one is removed, a fresh one (a build under way elsewhere) is left."""
    import os
    import time

    from deepum.engine.build import clear_stale_lock

    lock = tmp_path / "lock"
    assert not clear_stale_lock(str(lock), stale_s=60)  # none
    lock.write_text("")
    assert not clear_stale_lock(str(lock), stale_s=60) and lock.exists()  # fresh: another build
    old = time.time() - 120
    os.utime(lock, (old, old))
    assert clear_stale_lock(str(lock), stale_s=60) and not lock.exists()
