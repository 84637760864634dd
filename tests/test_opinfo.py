"""A fast subset of PyTorch's OpInfo database under stress mode (the full sweep: benchmarks/opinfo_sweep.py)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("expecttest", reason="torch.testing's OpInfo database needs expecttest")

SWEEP = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "opinfo_sweep.py")


@pytest.mark.parametrize("recipes", [False, True], ids=["copied", "recomputed"])
def test_first_opinfos_bit_identical_when_every_input_is_faulted_in(recipes):
    # With recipes every elementwise output is also dropped and computed again.
    r = subprocess.run([sys.executable, SWEEP, "--first", "25", "--max-samples", "4"]
                       + (["--recipes"] if recipes else []), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary, _ = json.JSONDecoder().raw_decode(r.stdout)  # the summary comes first
    assert summary["operators_run"] >= 20 and summary["samples_passed"] >= 60
    assert summary["samples_failed"] == 0 and not summary["operators_crashed"]
    # Stress mode really paged: every sample with a non-empty input faulted.
    assert summary["samples_without_faults"] == 0
    if recipes:
        assert summary["pages_recomputed"] > 0
