import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    print("argv", sys.argv[1:])
    print("name", __name__)
    x = torch.randn(512, 512)
    for _ in range(20):
        x = torch.tanh(x @ x.T / 512)
    print("sum", float(x.sum()))
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
''')


def deepum(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "deepum", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=env)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def test_run_is_like_python(script, tmp_path):
    plain = subprocess.run([sys.executable, str(script), "3", "b"], capture_output=True, text=True)
    paged = deepum("run", "--device", "cpu", "--budget", "2400KB", str(script), "3", "b")
    assert paged.returncode == plain.returncode == 3
    assert paged.stdout == plain.stdout
    assert "argv ['3', 'b']" in paged.stdout and "name __main__" in paged.stdout
    assert "deepum: policy " in paged.stderr and "evictions" in paged.stderr


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
    x = torch.randn(256, 256)
    kept = []
    for _ in range(10):
        h = x @ x.T / 256
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
    paged = deepum("run", "--quiet", "--device", "cpu", "--budget", "2400KB", "--stats", str(stats), *flag,
                   str(path))
    assert paged.returncode == 0 and paged.stdout == plain.stdout, paged.stderr
    st = json.loads(stats.read_text())
    assert st["evictions"] > 0
    assert (st["drops"] > 0) == dropped, st


def test_dash_dash_reaches_the_script_as_under_python(script):
    plain = subprocess.run([sys.executable, str(script), "0", "--", "x"], capture_output=True, text=True)
    paged = deepum("run", "--quiet", "--device", "cpu", "--budget", "0.5", str(script), "0", "--", "x")
    assert paged.stdout == plain.stdout and "argv ['0', '--', 'x']" in paged.stdout
    # A '--' before the script ends deepum's options, as in other tools.
    sep = deepum("run", "--quiet", "--device", "cpu", "--budget", "0.5", "--", str(script), "0", "--debug")
    assert sep.returncode == 0 and "argv ['0', '--debug']" in sep.stdout


def test_version():
    import deepum as pkg

    r = deepum("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"deepum {pkg.__version__}"


def one_line_error(r, *words):
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepum "), r.stderr
    for w in words:
        assert w in lines[0], r.stderr


@pytest.mark.parametrize("options, words", [
    (("--device", "bogus"), ("'bogus'", "'cpu'")),
    (("--device", "cuda:x"), ("'cuda:x'",)),
    (("--budget", "-5"), ("must be positive",)),
    (("--budget", "1"), ("one byte", "'1GiB'")),
    (("--stats", "/nonexistent/s.json"), ("--stats", "does not exist")),
    (("--trace", "/nonexistent/t.json"), ("--trace", "does not exist")),
    (("--plot", "out.txt"), ("--plot", ".png")),
    (("--lookahead", "0"), ("lookahead",)),
], ids=["device", "device-index", "negative-budget", "one-byte", "stats", "trace", "plot", "lookahead"])
def test_user_mistakes_are_one_line_and_exit_2_before_the_script(tmp_path, options, words):
    marker = tmp_path / "ran"
    path = tmp_path / "s.py"
    path.write_text(f"open({str(marker)!r}, 'w').close()\n")
    r = deepum("run", "--device", "cpu", *options, str(path)) if options[0] != "--device" else \
        deepum("run", *options, str(path))
    one_line_error(r, *words)
    assert not marker.exists()  # found before the script ran


def test_cuda_without_cuda_says_the_cli_option():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    r = deepum("run", "--device", "cuda", __file__)
    one_line_error(r, "--device cpu")
    assert "device='cpu'" not in r.stderr


def test_report_of_a_trace_or_of_other_json(tmp_path):
    trace = tmp_path / "trace.json"
    trace.write_text('{"traceEvents": []}')
    one_line_error(deepum("report", str(trace)), "is a trace")
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')
    one_line_error(deepum("report", str(other)), "not stats", "policy")


TOO_BIG = textwrap.dedent('''
    import sys
    import torch
    m = torch.nn.Linear(1024, 1024)
    print("before", flush=True)
    m(torch.randn(256, 1024)).sum().backward()
    print("after")
''')


def test_budget_too_small_is_one_line_after_the_summary_and_debug_shows_the_traceback(tmp_path):
    import os

    path = tmp_path / "big.py"
    path.write_text(TOO_BIG)
    r = deepum("run", "--device", "cpu", "--budget", "2MiB", str(path))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "after" not in r.stdout
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("deepum run: error: operator aten.") and "Raise the budget" in last
    assert "deepum: policy " in r.stderr  # the summary is kept
    for env, args in ((dict(os.environ, DEEPUM_DEBUG="1"), ()), (None, ("--debug",))):
        d = deepum("run", *args, "--device", "cpu", "--budget", "2MiB", str(path), env=env)
        assert d.returncode == 2 and "Traceback" in d.stderr and "BudgetTooSmallError" in d.stderr


def test_script_traceback_is_pythons(tmp_path):
    path = tmp_path / "boom.py"
    path.write_text("def f():\n    raise ValueError('boom')\nf()\n")
    plain = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    r = deepum("run", "--quiet", "--device", "cpu", "--budget", "0.5", str(path))
    assert r.returncode == plain.returncode == 1
    assert r.stderr == plain.stderr  # no frame of deepum's or runpy's


def test_an_output_that_fails_at_the_end_keeps_the_summary_and_the_exit_code(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    path = tmp_path / "s.py"
    # The directory checked at the start is gone at the end.
    path.write_text(f"import shutil, sys, torch\ntorch.ones(4).sum()\nshutil.rmtree({str(out)!r})\nsys.exit(3)\n")
    r = deepum("run", "--device", "cpu", "--budget", "0.5", "--stats", str(out / "s.json"), str(path))
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr and "could not write --stats" in r.stderr
    assert "deepum: policy " in r.stderr


def test_summary_shows_overshoots_and_drops():
    from deepum.api.cli import summary

    stats = {"policy": "deepum", "budget_bytes": 12 << 20, "peak_device_bytes": 13 << 20, "managed_pages": 4,
             "ops": 10, "faults": 1, "evictions": 2, "overshoots": 3, "overshoot_max_bytes": 3 << 20,
             "bytes_dropped": 5 << 20, "recompute_seconds": 0.25}
    text = summary(stats)
    assert "budget 12 MiB" in text and "peak device 13 MiB" in text
    assert "3 overshoots" in text and "largest by 3 MiB" in text
    assert "dropped 5 MiB" in text and "0.250 s" in text


ESTIMATE = textwrap.dedent('''
    import torch
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 256))
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for i in range(10):
        try:  # the estimate's stop is not an Exception a script's handler catches
            m(torch.randn(512, 256)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        except Exception as e:
            print("caught", type(e).__name__)
            raise
        print("step", i)
''')


@pytest.mark.parametrize("how", [("estimate",), ("run", "--estimate")])
def test_estimate_stops_early_and_its_budget_works(tmp_path, how):
    import re

    path = tmp_path / "est.py"
    path.write_text(ESTIMATE)
    r = deepum(*how, "--device", "cpu", str(path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "step 0\nstep 1\n"  # stopped in the third optimizer step
    m = re.search(r"smallest budget that would have worked: ([0-9.]+) MiB, set by operator (aten\.\S+)", r.stderr)
    assert m, r.stderr
    assert "unconstrained peak" in r.stderr
    need = float(m.group(1))
    fits = deepum("run", "--quiet", "--device", "cpu", "--budget", f"{need:.3f}MiB", str(path))
    assert fits.returncode == 0 and fits.stdout.count("step") == 10, fits.stderr
    short = deepum("run", "--device", "cpu", "--budget", f"{need * 0.8:.3f}MiB", str(path))
    assert short.returncode == 2 and "error: operator" in short.stderr, short.stderr
