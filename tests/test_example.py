"""The README's first command runs the bundled example: it must keep working."""

from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_bundled_example_trains_under_its_budget_bit_identically(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_gpt.py")], cwd=tmp_path,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "bit-identical losses and parameters, budget held" in r.stdout, r.stdout[-3000:]
