"""The benchmark harness on CPU, so it does not rot between GPU runs."""

import json
import subprocess
import sys

import pytest

from deepum import bench


def test_bench_harness_on_cpu(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "deepum", "bench", "--device", "cpu", "--model", "tiny-mlp",
                        "--methods", "identity,plain,deepum,lru,ckpt,save_on_cpu,zero3-offload",
                        "--budgets", "0.5", "--steps", "1", "--warmup", "1", "--option", "lookahead=8",
                        "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by = {(row["method"]): row for row in rows}
    assert set(by) == {"identity", "plain", "deepum", "lru", "ckpt", "save_on_cpu", "zero3-offload"}
    plain = by["plain"]
    assert plain["median_s"] > 0 and plain["peak_device_bytes"] > 0
    for method in ("deepum", "lru"):
        row = by[method]
        assert row["budget_bytes"] == int(plain["peak_device_bytes"] * 0.5)
        assert row["fits"] is True and row["step_evictions"] > 0 and row["step_bytes_to_host"] > 0
        phases = row["step_phase_bytes"]
        assert set(phases) == {"forward", "backward", "optimizer"}
        assert sum(o for _, o in phases.values()) == pytest.approx(row["step_bytes_to_host"])
        assert sum(i for i, _ in phases.values()) == pytest.approx(row["step_bytes_to_device"])
    assert by["deepum"]["options"] == ["lookahead=8"]
    ident = by["identity"]
    assert ident["ok"] and ident["bit_identical"] and ident["evictions"] > 0
    assert "activation-checkpointing" in by["ckpt"]["skipped"]
    assert "CUDA" in by["zero3-offload"]["skipped"]
    assert by["save_on_cpu"]["median_s"] > 0
    table = (out / "results.md").read_text()
    assert table.count("| tiny-mlp |") == 7 and "x plain" in table
    png = (out / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000


def test_budget_specs_floor_and_ladder_summary():
    assert bench._budgets("card,0.5,24GiB", peak=1000, card=2000) == [
        ("card", 1900), ("0.5 peak", 500), ("24GiB", 24 << 30)]
    assert bench._budgets("0.5", peak=None, card=None) == [("0.5 peak", None)]
    row = {"median_s": 3.0, "step_bytes_to_device": 110e9, "step_bytes_to_host": 50e9}
    bench._floor(row, plain_s=1.0, link={"h2d_GBps": 55.0, "d2h_GBps": 50.0})
    assert row["link_floor_s"] == 2.0 and row["x_floor"] == 1.5
    # Forward: 50 GB out (1 s); backward: 110 GB in (2 s); they cannot overlap.
    row["step_phase_bytes"] = {"forward": [0, 50e9], "backward": [110e9, 0], "optimizer": [0, 0]}
    bench._floor(row, plain_s=1.0, link={"h2d_GBps": 55.0, "d2h_GBps": 50.0})
    assert row["phase_floor_s"] == 3.0 and row["x_phase_floor"] == 1.0
    rows = [{"model": m, "method": meth, "median_s": 1.0, "fits": fits}
            for m, meth, fits in [("s", "plain", True), ("l", "plain", False), ("s", "deepum", True),
                                  ("l", "deepum", True)]]
    rows.append({"model": "l", "method": "ckpt", "error": "OutOfMemoryError"})
    assert bench.largest(rows, ["s", "l"]) == {"plain": "s", "deepum": "l", "ckpt": None}
