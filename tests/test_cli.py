import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    print("argv", sys.argv[1:])
    print("name", __name__)
    x = torch.randn(256, 256)
    for _ in range(20):
        x = torch.tanh(x @ x.T / 256)
    print("sum", float(x.sum()))
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
''')


def deepum(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "deepum", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def test_run_is_like_python(script, tmp_path):
    plain = subprocess.run([sys.executable, str(script), "3", "b"], capture_output=True, text=True)
    paged = deepum("run", "--device", "cpu", "--budget", "600KB", str(script), "3", "b")
    assert paged.returncode == plain.returncode == 3
    assert paged.stdout == plain.stdout
    assert "argv ['3', 'b']" in paged.stdout and "name __main__" in paged.stdout
    assert "deepum: policy deepum" in paged.stderr and "evictions" in paged.stderr


def test_quiet_and_zero_exit(script):
    r = deepum("run", "--quiet", "--device", "cpu", "--budget", "0.5", str(script), "0")
    assert r.returncode == 0 and r.stderr == ""


def test_missing_script(tmp_path):
    r = deepum("run", "--device", "cpu", str(tmp_path / "nope.py"))
    assert r.returncode == 2 and "no such script" in r.stderr


def test_bad_budget(script):
    r = deepum("run", "--device", "cpu", "--budget", "lots", str(script))
    assert r.returncode == 2 and "cannot be parsed" in r.stderr


def test_script_exception_propagates(tmp_path):
    path = tmp_path / "boom.py"
    path.write_text("raise ValueError('boom')\n")
    r = deepum("run", "--device", "cpu", "--budget", "0.5", str(path))
    assert r.returncode == 1 and "ValueError: boom" in r.stderr


RECIPES = textwrap.dedent('''
    import torch
    torch.manual_seed(0)
    x = torch.randn(128, 128)
    kept = []
    for _ in range(10):
        h = x @ x.T / 128
        kept.append((h, h * 0.5, torch.tanh(h) + 1.0))  # elementwise of a page that stays
        x = torch.tanh(h)
    print("sum", sum(float(t.sum()) for group in kept for t in group))
''')


@pytest.mark.parametrize("flag, dropped", [((), True), (("--no-recompute",), False)])
def test_recompute_flag(tmp_path, flag, dropped):
    import json

    path = tmp_path / "recipes.py"
    path.write_text(RECIPES)
    stats = tmp_path / "stats.json"
    plain = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    paged = deepum("run", "--quiet", "--device", "cpu", "--budget", "600KB", "--stats", str(stats), *flag,
                   str(path))
    assert paged.returncode == 0 and paged.stdout == plain.stdout, paged.stderr
    st = json.loads(stats.read_text())
    assert st["evictions"] > 0
    assert (st["drops"] > 0) == dropped, st
