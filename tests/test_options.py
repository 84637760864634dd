"""Session options: one Config, validated at construction with one clear message each."""

import subprocess
import sys

import numpy as np
import pytest
import torch

import deepum
from deepum.core.config import Config, Thresholds


@pytest.mark.parametrize("device", [0, 123.4])
def test_device_of_the_wrong_type_is_refused(device):
    with pytest.raises(deepum.OptionError, match=f"device {device!r} has type {type(device).__name__}"):
        deepum.oversubscribe("1MiB", device)


@pytest.mark.parametrize("option, value, words", [
    ("lookahead", "x", "must be a whole number"),
    ("lookahead", 0, "at least 1"),
    ("prefetch", "no", "must be True or False"),
    ("recompute", 1, "must be True or False"),
    ("adopt", "yes", "True, False or None"),
    ("reserve", 1.5, "size string"),
    ("policy", "fifo", "choose one of deepum, lru"),
    ("plan", "yes", "True, False or 'auto'"),
    ("recompute_blocks", "partial", "True, False, 'whole' or 'selective'"),
])
def test_bad_option_is_refused_naming_it(option, value, words):
    with pytest.raises(deepum.OptionError, match=f"{option}.*{words}") as err:
        deepum.oversubscribe("1MiB", "cpu", **{option: value})
    assert isinstance(err.value, deepum.DeepUMError)


def test_unknown_option_names_the_known_ones():
    with pytest.raises(deepum.OptionError, match="unknown option lookahed; the options are .*lookahead"):
        deepum.oversubscribe("1MiB", "cpu", lookahed=8)


def test_reserve_accepts_a_size_string():
    s = deepum.oversubscribe("8MiB", "cpu", reserve="1MiB")
    assert (s.budget, s.limit) == (8 << 20, 7 << 20)
    with pytest.raises(deepum.BudgetError, match="reserve '9MiB'.*below the budget"):
        deepum.oversubscribe("8MiB", "cpu", reserve="9MiB")


def test_numpy_numbers_are_budgets():
    assert deepum.oversubscribe(np.int64(3 << 20), "cpu").budget == 3 << 20
    half = deepum.oversubscribe(np.float64(0.5), "cpu")
    assert half.budget == int(0.5 * half.total)


def test_config_object_at_construction():
    config = Config(lookahead=8, thresholds=Thresholds(scan_ops=2))
    with deepum.Session("64MiB", "cpu", config=config) as s:
        assert s.pager.policy.predictor.lookahead == 8 and s.pager.scan_ops == 2
        assert s.pager.headroom == (64 << 20) // 16
    with pytest.raises(deepum.OptionError, match="not both"):
        deepum.Session("64MiB", "cpu", config=config, lookahead=4)


def test_missing_cuda_device_is_named_as_given(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(deepum.DeviceUnavailableError, match=r"'cuda:7'.*2 CUDA devices") as err:
        deepum.oversubscribe("1MiB", "cuda:7")
    assert err.value.asked == "cuda:7"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_missing_cuda_advice_in_the_callers_words(tmp_path):
    with pytest.raises(deepum.DeviceUnavailableError) as err:
        deepum.oversubscribe("1GiB", device="cuda")
    assert "device='cpu'" in str(err.value) and "--device" not in str(err.value)
    script = tmp_path / "s.py"
    script.write_text("print('ran')\n")
    r = subprocess.run([sys.executable, "-m", "deepum", "run", "--device", "cuda", "--budget", "1MiB",
                        str(script)], capture_output=True, text=True)
    assert r.returncode == 2 and "use --device cpu" in r.stderr and "device='cpu'" not in r.stderr
    assert "ran" not in r.stdout


def test_a_session_used_twice_reports_its_second_run():
    session = deepum.oversubscribe(1 << 20, "cpu")  # the smallest budget
    w = torch.ones(64, 64)
    with session:
        x = torch.zeros(64, 64)
        for _ in range(40):
            x = x + w
    first = session.stats()
    with session:
        y = torch.zeros(64, 64)
        for _ in range(5):
            y = y + w
    second = session.stats()
    assert first["ops"] > 40 and 5 <= second["ops"] < 20, (first["ops"], second["ops"])
    assert torch.equal(y, torch.full((64, 64), 5.0))


def test_disable_without_enable_returns_none():
    assert deepum.current() is None
    assert deepum.disable() is None


def test_allocator_settings_a_cuda_session_sets():
    from deepum.api.session import allocator_settings
    from deepum.core.config import Config, Thresholds
    from deepum.core.errors import OptionError

    assert allocator_settings(Config()) == "expandable_segments:True"
    assert allocator_settings(Config(expandable_segments=False)) == ""
    both = Config(thresholds=Thresholds(allocator_gc=0.8))
    assert allocator_settings(both) == "expandable_segments:True,garbage_collection_threshold:0.8"
    with pytest.raises(OptionError, match="allocator_gc"):
        Thresholds(allocator_gc=1.5)


def test_cpu_copy_lag_is_a_count_of_operators():
    from deepum.core.config import Thresholds
    from deepum.core.errors import OptionError

    assert Thresholds().cpu_copy_lag == 0  # the cpu tier's copies free their memory at once
    with pytest.raises(OptionError, match="cpu_copy_lag"):
        Thresholds(cpu_copy_lag=-1)


def test_the_trial_settles_a_count_of_planned_steps():
    from deepum.core.config import Thresholds
    from deepum.core.errors import OptionError

    assert Thresholds(plan_trial_settle=0).plan_trial_settle == 0  # time from the first planned step
    with pytest.raises(OptionError, match="plan_trial_settle"):
        Thresholds(plan_trial_settle=-1)


def test_the_timing_gate_is_a_short_sleep_and_the_cpu_tier_never_sleeps():
    import torch

    from deepum.core.config import Thresholds
    from deepum.core.errors import OptionError
    from deepum.engine.timing import OpTimer

    with pytest.raises(OptionError, match="timing_gate_s"):
        Thresholds(timing_gate_s=-1e-6)
    with pytest.raises(OptionError, match="timing_gate_s"):
        Thresholds(timing_gate_s=1.0)  # a second of sleep per sample is a unit mistake
    samples = []
    timer = OpTimer(torch.device("cpu"), lambda eid, s: samples.append((eid, s)), gate_s=1e-4)
    assert timer.start(7) is None and timer.gate_cycles is None  # nothing timed, no sleep calibrated
