"""Would a native page look-up pay? One operator's storage look-up in Python against C++ (cpu).

    python benchmarks/native_gather_probe_cpu.py

Issue 14 names a compiled fast path as a route to a leaner operator path. The
first piece one would move is the gather: each tensor argument's storage
address looked up in the page table. This builds (``load_inline``, about
half a minute on first use) a pybind11 function that does that look-up for a
list of tensors against a dict keyed by ``UntypedStorage._cdata``, and times
20,000 additions of two 16-float tensors (one thread, best of three) under
three dispatch modes: a pass-through, one that looks both tensors up in
Python as the engine does, and one that calls the native look-up. Each
mode only looks up; it neither pins nor registers pages.
"""

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.cpp_extension import load_inline

SOURCE = r"""
#include <torch/extension.h>

py::list gather(py::list tensors, py::dict table) {
  py::list out;
  PyObject* d = table.ptr();
  for (auto h : tensors) {
    PyObject* o = h.ptr();
    if (!THPVariable_Check(o)) continue;
    const at::Tensor& t = THPVariable_Unpack(o);
    if (t.layout() != at::kStrided || !t.has_storage()) continue;
    PyObject* key = PyLong_FromVoidPtr((void*)t.storage().unsafeGetStorageImpl());
    PyObject* v = PyDict_GetItem(d, key);
    Py_DECREF(key);
    if (v) out.append(py::handle(v));
  }
  return out;
}
"""


def main() -> None:
    native = load_inline("deepum_gather_probe", cpp_sources=[SOURCE], functions=["gather"])
    torch.set_num_threads(1)
    x, y = torch.randn(16), torch.randn(16)
    table = {x.untyped_storage()._cdata: "x", y.untyped_storage()._cdata: "y"}
    assert native.gather([x, y], table) == ["x", "y"]  # the same address as _cdata

    def python_gather(tensors):
        out, get = [], table.get
        for t in tensors:
            if t.layout == torch.strided:
                p = get(t.untyped_storage()._cdata)
                if p is not None:
                    out.append(p)
        return out

    class PassThrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    class PythonLookUp(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            python_gather(args)
            return func(*args, **(kwargs or {}))

    class NativeLookUp(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            native.gather(list(args), table)
            return func(*args, **(kwargs or {}))

    def per_op_us(mode, n: int = 20000) -> float:
        best = float("inf")
        for _ in range(3):
            with mode:
                t0 = time.perf_counter()
                for _ in range(n):
                    torch.add(x, y)
                best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6

    for name, mode in (("pass-through", PassThrough()), ("look-up in Python", PythonLookUp()),
                       ("look-up in C++ (pybind11)", NativeLookUp())):
        print(f"{name:28s} {per_op_us(mode):6.2f} us per operator")


if __name__ == "__main__":
    main()
