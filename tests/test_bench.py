"""The benchmark harness on CPU, so it does not rot between GPU runs."""

import json
import subprocess
import sys


def test_bench_harness_on_cpu(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "deepum", "bench", "--device", "cpu", "--model", "tiny-mlp",
                        "--methods", "plain,deepum,lru,ckpt,save_on_cpu", "--budgets", "0.5",
                        "--steps", "1", "--warmup", "1", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    by = {(row["method"]): row for row in rows}
    assert set(by) == {"plain", "deepum", "lru", "ckpt", "save_on_cpu"}
    plain = by["plain"]
    assert plain["median_s"] > 0 and plain["peak_device_bytes"] > 0
    for method in ("deepum", "lru"):
        row = by[method]
        assert row["budget_bytes"] == int(plain["peak_device_bytes"] * 0.5)
        assert row["fits"] is True and row["step_evictions"] > 0 and row["step_bytes_to_host"] > 0
    assert "activation-checkpointing" in by["ckpt"]["skipped"]
    assert by["save_on_cpu"]["median_s"] > 0
    table = (out / "results.md").read_text()
    assert table.count("| tiny-mlp |") == 5 and "x plain" in table
    png = (out / "throughput.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
