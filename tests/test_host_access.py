"""Code that reads or writes tensor memory without an operator sees real data inside a session.

Every test evicts pages for real (stress, or a budget well under the
footprint), asserts that it did, and compares against a run without deepum.
"""

import copy
import ctypes
import io
import pickle

import numpy as np
import pytest
import torch

import deepum
from deepum.core.pages import EVICTED


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 32),
                               torch.nn.BatchNorm1d(32))


def _train(model, opt, steps=2):
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    for _ in range(steps):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()


def _state_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        elif isinstance(a[k], dict):
            _state_equal(a[k], b[k])
        else:
            assert a[k] == b[k], k


def _ckpt(model, opt):
    return {"model": model.state_dict(), "opt": opt.state_dict()}


def test_save_pickle_deepcopy_print_of_evicted_tensors():
    plain_m = _model()
    plain_o = torch.optim.Adam(plain_m.parameters())
    _train(plain_m, plain_o)
    ref = copy.deepcopy(_ckpt(plain_m, plain_o))
    ref_repr = repr(plain_m[0].weight)

    model = _model()
    opt = torch.optim.Adam(model.parameters())
    with deepum.oversubscribe(1.0, "cpu", stress=True) as s:
        s.manage(model)
        _train(model, opt)
        weight = model[0].weight
        # Evicted now: every page leaves after every operator.
        assert weight.untyped_storage().nbytes() == weight.numel() * 4
        torch.add(model[2].bias, 1)  # an operator elsewhere: the hold ends, stress evicts again
        assert weight.untyped_storage().nbytes() == weight.numel() * 4  # faulted in again
        zipped, legacy = io.BytesIO(), io.BytesIO()
        torch.save(_ckpt(model, opt), zipped)
        torch.save(_ckpt(model, opt), legacy, _use_new_zipfile_serialization=False)
        pickled = pickle.dumps(_ckpt(model, opt))
        copies = (copy.deepcopy(weight.detach()), copy.deepcopy(model), copy.deepcopy(opt))
        printed = repr(weight)
        formatted = f"{model[3].running_mean}"
        listed = model[3].running_var.tolist()
    assert s.stats()["evictions"] > 0 and s.stats()["faults"] > 0
    for buf in (zipped, legacy):
        buf.seek(0)
        _state_equal(ref, torch.load(buf))
    _state_equal(ref, pickle.loads(pickled))
    t, m, o = copies
    assert torch.equal(t, plain_m[0].weight.detach())
    _state_equal(ref, _ckpt(m, o))
    assert printed == ref_repr
    assert formatted == f"{plain_m[3].running_mean}"
    assert listed == plain_m[3].running_var.tolist()


def test_views_of_one_storage_are_saved_once():
    base = torch.randn(1000)
    with deepum.oversubscribe(1.0, "cpu", stress=True) as s:
        s.manage(base)
        torch.mul(base, 2)
        buf = io.BytesIO()
        torch.save([base[:500], base[500:]], buf)
    assert s.stats()["evictions"] > 0
    buf.seek(0)
    a, b = torch.load(buf)
    assert torch.equal(torch.cat([a, b]), base)
    assert a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()  # still one storage


def test_safetensors_and_raw_pointers():
    st = pytest.importorskip("safetensors.torch")
    plain = _model()
    x = torch.randn(8, 64)
    plain(x)
    model = _model()
    with deepum.oversubscribe(1.0, "cpu", stress=True) as s:
        s.manage(model)
        model(x)
        blob = st.save(dict(model.state_dict()))
        w = model[2].weight
        ptr = w.data_ptr()  # the page stays in until the next operator
        raw = (ctypes.c_float * w.numel()).from_address(ptr)
        from_ptr = torch.tensor(list(raw)).view_as(w)
        from_storage = torch.tensor(w.untyped_storage().tolist(), dtype=torch.uint8)
        with deepum.resident(w):
            torch.mul(model[0].weight, 3)
            later = (ctypes.c_float * w.numel()).from_address(w.data_ptr())[0]
    assert s.stats()["evictions"] > 0
    loaded = st.load(blob)
    _state_equal(dict(plain.state_dict()), loaded)
    assert torch.equal(from_ptr, plain[2].weight.detach())
    assert torch.equal(from_storage, plain[2].weight.detach().view(-1).view(torch.uint8))
    assert later == plain[2].weight[0, 0].item()


def test_safetensors_save_model_file(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    x = torch.randn(8, 64)
    plain = _model()
    plain(x)
    model = _model()
    with deepum.oversubscribe(1.0, "cpu", stress=True) as s:
        s.manage(model)
        model(x)
        st.save_model(model, str(tmp_path / "m.safetensors"))
        st.save_file(dict(model.state_dict()), str(tmp_path / "f.safetensors"))
    assert s.stats()["evictions"] > 0
    _state_equal(dict(plain.state_dict()), st.load_file(str(tmp_path / "f.safetensors")))
    again = _model()
    for p in again.parameters():
        p.data.zero_()
    st.load_model(again, str(tmp_path / "m.safetensors"))
    _state_equal(dict(plain.state_dict()), dict(again.state_dict()))


def test_hf_save_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    plain = transformers.BertModel(cfg).eval()
    ids = torch.randint(0, 200, (2, 16))
    with deepum.oversubscribe(1.0, "cpu", stress=True) as s:
        s.manage(plain)
        plain(ids)
        plain.save_pretrained(str(tmp_path))
    assert s.stats()["evictions"] > 0
    back = transformers.BertModel.from_pretrained(str(tmp_path))
    _state_equal(dict(plain.state_dict()), dict(back.state_dict()))


def test_numpy_and_dlpack_writes_leave_no_stale_page():
    x = torch.zeros(4096)
    y = torch.zeros(4096)
    with deepum.oversubscribe(1.0, "cpu", stress=True) as s:
        s.manage(x, y)
        torch.add(x, 1)  # both evicted with a host copy
        torch.add(y, 1)
        a = x.numpy()
        a[:] = 7.0  # a host write no operator sees
        b = np.from_dlpack(y)
        b[:10] = 3.0
        got_x = torch.add(x, 0)  # stress evicts everything else after each operator
        got_y = torch.add(y, 0)
    assert s.stats()["evictions"] > 0 and s.stats()["unpageable_pages"] >= 2
    assert torch.equal(got_x, torch.full((4096,), 7.0)) and torch.equal(x, got_x)
    assert torch.equal(got_y[:10], torch.full((10,), 3.0)) and torch.equal(y, got_y)


def test_sparse_embedding_with_sparse_adam():
    def run(budget):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(20000, 256, sparse=True)
        head = torch.nn.Linear(256, 10)
        opts = (torch.optim.SparseAdam(emb.parameters()), torch.optim.Adam(head.parameters()))
        g = torch.Generator().manual_seed(2)

        def steps():
            for _ in range(3):
                for o in opts:
                    o.zero_grad()
                head(emb(torch.randint(0, 20000, (512,), generator=g))).square().mean().backward()
                for o in opts:
                    o.step()

        if budget is None:
            steps()
            return emb.weight.detach(), None
        with deepum.oversubscribe(budget, "cpu") as s:
            steps()
        return emb.weight.detach(), s.stats()

    ref, _ = run(None)
    for budget in ("48MiB", "64MiB"):
        got, st = run(budget)
        assert torch.equal(ref, got)
        assert st["evictions"] > 0 and st["unpageable_pages"] > 0
        assert st["peak_device_bytes"] <= st["budget_bytes"]


def test_torch_compile_inside_a_session():
    """Before: Dynamo traced into the pager (InternalTorchDynamoError: RecursionError).

    Under the interceptor the compiled function runs its operators eagerly, so
    the bits are those of the eager model.
    """
    if not hasattr(torch, "compile"):
        pytest.skip("no torch.compile")

    def run(paged):
        torch.manual_seed(0)
        m = torch.nn.Sequential(*[torch.nn.Linear(512, 512) for _ in range(8)])
        x = torch.randn(256, 512)
        torch._dynamo.reset()
        compiled = torch.compile(m) if paged else m
        ctx = deepum.oversubscribe("6MiB", "cpu") if paged else None
        if ctx is not None:
            ctx.__enter__()
        for _ in range(2):
            compiled(x).sum().backward()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        return [p.grad for p in m.parameters()], ctx

    ref, _ = run(False)
    try:
        got, s = run(True)
    except deepum.UnsupportedError as e:  # the other allowed outcome: at once, with the remedy
        assert "outside the session" in str(e)
        return
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert s.stats()["evictions"] > 0


@pytest.mark.parametrize("cls,budget", [(torch.nn.LSTM, "48MiB"), (torch.nn.GRU, "16MiB")])
def test_rnn_stays_under_the_budget(cls, budget):
    def run(paged):
        torch.manual_seed(0)
        m = cls(256, 512, num_layers=2)
        x = torch.randn(50, 16, 256)
        ctx = deepum.oversubscribe(budget, "cpu", strict=True) if paged else None
        if ctx is not None:
            ctx.__enter__()
        for _ in range(2):
            out, _ = m(x)
            out.sum().backward()
        if ctx is not None:
            ctx.__exit__(None, None, None)
        return [p.grad for p in m.parameters()], ctx

    ref, _ = run(False)
    got, s = run(True)
    assert all(torch.equal(a, b) for a, b in zip(ref, got))
    st = s.stats()
    assert st["evictions"] > 0 and st["overshoots"] == 0
    assert st["peak_device_bytes"] <= st["budget_bytes"]


def test_lstm_too_large_for_the_budget_fails_clearly():
    m = torch.nn.LSTM(256, 512, num_layers=2)
    x = torch.randn(50, 16, 256)
    with pytest.raises(deepum.BudgetTooSmallError, match="mkldnn_rnn_layer"):
        with deepum.oversubscribe("16MiB", "cpu"):
            m(x)[0].sum().backward()


@pytest.mark.parametrize("factory", ["empty", "zeros", "randn", "ones", "full", "arange"])
def test_first_call_factories_make_room_first(factory):
    make = {"full": lambda n: torch.full((n,), 2.0), "arange": lambda n: torch.arange(n, dtype=torch.float32)}
    make = make.get(factory, getattr(torch, factory))
    n = 4 << 20  # 16 MiB of float32
    with deepum.oversubscribe("24MiB", "cpu", strict=True) as s:
        keep = torch.ones(n)
        t = make(n)
        t2 = make(n)
        del t2
        assert float(keep.sum()) == n
    st = s.stats()
    assert st["peak_device_bytes"] <= st["budget_bytes"] and st["evictions"] > 0
    assert st["overshoots"] == 0
    with pytest.raises(deepum.BudgetTooSmallError, match=f"aten.{factory}"):
        with deepum.oversubscribe("12MiB", "cpu"):
            make(n)
    del t


def _grow_op():
    """An operator whose fake kernel states a smaller output than it makes."""
    name = "deepum_test::grow"
    if not hasattr(torch.ops.deepum_test, "grow"):
        @torch.library.custom_op(name, mutates_args=())
        def grow(x: torch.Tensor) -> torch.Tensor:
            return x.repeat(64)

        @grow.register_fake
        def _(x):
            return x.new_empty(x.shape)
    return torch.ops.deepum_test.grow


def test_overshoots_are_counted_and_strict_raises():
    grow = _grow_op()
    x = torch.ones(16 << 10)  # 64 KiB; grows to 4 MiB
    with deepum.oversubscribe("6MiB", "cpu") as s:
        filler = [torch.ones(256 << 10) for _ in range(4)]  # 4 MiB, pressure starts
        y = grow(x)
        assert float(y.sum()) == y.numel() and all(float(f[0]) == 1 for f in filler)
    st = s.stats()
    assert st["overshoots"] >= 1 and st["overshoot_max_bytes"] > 0
    with pytest.raises(deepum.BudgetOvershootError, match="deepum_test.grow"):
        with deepum.oversubscribe("6MiB", "cpu", strict=True):
            filler = [torch.ones(256 << 10) for _ in range(4)]
            grow(x)


def test_a_dead_pages_address_used_again_is_not_that_page():
    # A storage that dies is retired at the next operator's look-up; views
    # and code outside operators run without one. A new storage made outside
    # any operator (from_numpy) can take the dead one's address meanwhile, and
    # host access must not take the dead page's bytes for it.
    def key(t):
        return torch._C.TensorBase.untyped_storage(t)._cdata  # past host access's wrappers

    with deepum.oversubscribe("64MiB", "cpu", stress=True):
        for _ in range(200):
            a = torch.ones(256) * 3  # a page, evicted with a host copy of threes
            old = key(a)
            del a  # dead, not yet retired: no operator has run since
            made = [torch.from_numpy(np.full(256, 7.0, dtype=np.float32)) for _ in range(32)]
            b = next((m for m in made if key(m) == old), None)
            if b is not None:
                break
        else:
            pytest.skip("no storage address was used twice")
        buf = io.BytesIO()
        torch.save(b, buf)
        listed = b.tolist()
    buf.seek(0)
    assert torch.equal(torch.load(buf), torch.full((256,), 7.0))
    assert listed == [7.0] * 256


def test_the_method_wrappers_come_off_with_the_session():
    # [Note: host access without a torch-function mode]: the caught methods
    # are wrapped on torch.Tensor only while a session pages.
    before = (torch.Tensor.__dict__.get("tolist"), torch.Tensor.__dict__.get("__repr__"), torch.tensor_split)
    with deepum.oversubscribe("64MiB", "cpu", dormant=False):
        assert hasattr(torch.Tensor.tolist, "__wrapped__") and hasattr(torch.tensor_split, "__wrapped__")
    assert (torch.Tensor.__dict__.get("tolist"), torch.Tensor.__dict__.get("__repr__"), torch.tensor_split) == before
    with deepum.oversubscribe("64MiB", "cpu", dormant=False, host_access=False):
        assert not hasattr(torch.Tensor.tolist, "__wrapped__")


def test_a_thread_the_session_does_not_page_reads_without_holding_pages():
    # The wrappers act on the threads the paging mode runs on, as the
    # torch-function mode did: a thread outside the session is not paged, so
    # a pointer it asks for pins nothing (its pin would never end: it runs no
    # operator of the session's).
    import threading

    with deepum.oversubscribe("64MiB", "cpu", stress=True) as s:
        y = torch.arange(4096.0) * 2
        page = s.pager.table.pages[torch._C.TensorBase.untyped_storage(y)._cdata]
        assert page.state == EVICTED
        seen = []
        thread = threading.Thread(target=lambda: seen.append(y.data_ptr()))
        thread.start()
        thread.join()
        assert seen and page.pins == 0 and page.state == EVICTED
        assert y.tolist()[:3] == [0.0, 2.0, 4.0]  # this thread's read brings it in
        assert s.stats()["faults"] > 0


def test_torch_compile_first_called_inside_a_session():
    # Dynamo imported for the first time inside the session (a fresh
    # interpreter): torch.compile, wrapped while a session is active, puts
    # deepum's files among Dynamo's skipped ones before any frame is traced,
    # as the torch-function mode's check on every call used to.
    if not hasattr(torch, "compile"):
        pytest.skip("no torch.compile")
    import subprocess
    import sys

    code = (
        "import sys, torch, deepum\n"
        "assert 'torch._dynamo' not in sys.modules\n"
        "torch.manual_seed(0)\n"
        "m = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(4)])\n"
        "x = torch.randn(64, 256)\n"
        "ref = m(x).sum().item()\n"
        "with deepum.oversubscribe('1MiB', 'cpu') as s:\n"
        "    c = torch.compile(m, backend='eager')\n"
        "    out = c(x).sum()\n"
        "    out.backward()\n"
        "    print(s.stats()['evictions'], out.item() == ref)\n"
        "assert torch.compile is deepum.engine.intercept.host_access._original_compile\n")
    import os

    src = os.path.dirname(os.path.dirname(deepum.__file__))  # the deepum this test imported
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    evictions, same = done.stdout.split()
    assert int(evictions) > 0 and same == "True", done.stdout
