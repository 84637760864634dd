"""What torch charges for watching an output storage's death, outside any dispatch mode (cpu).

    python benchmarks/birth_cost_cpu.py

deepum notices a page's death through a weak reference to its storage's
Python object, whose callback is the dead queue's ``append``
(engine/lifecycle.py). This times 50,000 additions of two 16-float tensors
(one thread, best of three), each output dropped at once, with the steps of
a page's birth added one at a time: the storage's Python object, a weak
reference with that callback, the storage's address; and, apart, a C-level
weak pointer to the storage (``_weak_ref``/``_free_weak_ref``) in place of
the Python weak reference. The differences are what torch itself costs per
output, with none of deepum's own bookkeeping.
"""

import collections
import time
import weakref

import torch


def main() -> None:
    torch.set_num_threads(1)
    x, y = torch.randn(16), torch.randn(16)
    dead = collections.deque()

    def per_op_us(body, n: int = 50000) -> float:
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for _ in range(n):
                body()
            dead.clear()
            best = min(best, (time.perf_counter() - t0) / n)
        return best * 1e6

    def add_only():
        torch.add(x, y)

    def storage():
        torch.add(x, y).untyped_storage()

    def with_weakref():
        weakref.ref(torch.add(x, y).untyped_storage(), dead.append)

    def with_address():
        s = torch.add(x, y).untyped_storage()
        weakref.ref(s, dead.append)
        return s._cdata

    def c_weak_pointer():
        torch.UntypedStorage._free_weak_ref(torch.add(x, y).untyped_storage()._weak_ref())

    for name, body in (("add only", add_only), ("+ the storage's Python object", storage),
                       ("+ a weak reference with a callback", with_weakref), ("+ the storage's address", with_address),
                       ("storage + C weak pointer instead", c_weak_pointer)):
        print(f"{name:36s} {per_op_us(body):6.2f} us per operator")


if __name__ == "__main__":
    main()
