"""Must-show: a training script under `deepum run` at a third of its footprint checkpoints,
copies and prints evicted tensors; the files equal a plain run's bit for bit."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent('''
    import copy, sys
    import torch
    out = sys.argv[1]
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Tanh())
                                  for _ in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(3):
        x = torch.randn(64, 256)
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, out + "/ckpt.pt")
    torch.save(model.state_dict(), out + "/legacy.pt", _use_new_zipfile_serialization=False)
    try:
        from safetensors.torch import save_file
        save_file(dict(model.state_dict()), out + "/model.safetensors")
    except ImportError:
        pass
    first = model[0][0].weight  # trained early, evicted by the later layers and Adam
    copies = {"w": copy.deepcopy(first), "state": copy.deepcopy(opt.state_dict()["state"][0]["exp_avg"]),
              "model": copy.deepcopy(model).state_dict()}
    assert torch.equal(copies["w"], first)
    assert all(torch.equal(a, b) for a, b in zip(copies["model"].values(), model.state_dict().values()))
    print(first[:2, :4])
    torch.save(copies, out + "/copies.pt")
''')


def _run(cmd, tmp):
    r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _equal(a, b):
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def test_checkpoints_copies_and_prints_under_a_third_of_the_footprint(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    plain, probe, paged = (tmp_path / n for n in ("plain", "probe", "paged"))
    for d in (plain, probe, paged):
        d.mkdir()
    ref = _run([str(script), str(plain)], tmp_path)
    _run(["-m", "deepum", "run", "--device", "cpu", "--budget", "1.0", "--stats", str(tmp_path / "probe.json"),
          str(script), str(probe)], tmp_path)
    footprint = json.loads((tmp_path / "probe.json").read_text())["peak_device_bytes"]
    got = _run(["-m", "deepum", "run", "--device", "cpu", "--budget", str(footprint // 3),
                "--stats", str(tmp_path / "paged.json"), str(script), str(paged)], tmp_path)
    stats = json.loads((tmp_path / "paged.json").read_text())
    assert stats["evictions"] > 0 and stats["faults"] > 0
    assert stats["peak_device_bytes"] <= stats["budget_bytes"]
    assert got.stdout == ref.stdout  # the printed evicted tensor
    for name in ("ckpt.pt", "legacy.pt", "copies.pt"):
        assert _equal(torch.load(plain / name), torch.load(paged / name)), name
    if (plain / "model.safetensors").exists():
        assert (plain / "model.safetensors").read_bytes() == (paged / "model.safetensors").read_bytes()
    else:
        pytest.skip("safetensors is not installed")
