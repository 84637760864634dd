"""Host time a dormant session adds to a step of many short operators, on the cpu tier.

    python benchmarks/dormant_host_cpu.py [SRC]

A stack of 156 tiny conv + BatchNorm blocks (468 parameter tensors, as many
as ResNet-152 has) on a 2x2 input, trained with SGD and momentum: compute is
negligible, so the step time is host time, as on a GPU whose step is bound
by its host. Plain and a session whose budget is never reached (dormant
after its first steps) alternate for several rounds on one thread; the best
round of each is printed, with the step time of plain carrying no-op
forward pre-hooks on every block (what a hook on every module costs). SRC
puts another copy of deepum's src/ first on the path (another commit).
"""

import sys
import time

import torch
import torch.nn as nn

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

import deepum  # noqa: E402

torch.set_num_threads(1)


def make():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4))
                            for _ in range(156)])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(1, 4, 2, 2)

    def step():
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    return model, step


def best_ms(step, n=20, rounds=5):
    for _ in range(5):
        step()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        out.append((time.perf_counter() - t0) / n * 1e3)
    return min(out)


def main() -> None:
    model, step = make()
    plain, dormant, hooked = [], [], []
    for _ in range(3):
        plain.append(best_ms(step))
        with deepum.oversubscribe(0.5, "cpu") as s:
            dormant.append(best_ms(step))
        handles = [b.register_forward_pre_hook(lambda m, a: None) for b in [model, *model]]
        hooked.append(best_ms(step))
        for h in handles:
            h.remove()
    st = s.stats()
    print(f"{deepum.__file__}")
    print(f"plain                      {min(plain):7.2f} ms/step")
    print(f"dormant session            {min(dormant):7.2f} ms/step  ({min(dormant) / min(plain):.3f}x; "
          f"paging stopped {st.get('paging_stops')} times, operators intercepted {st['ops']})")
    print(f"plain, 157 no-op hooks     {min(hooked):7.2f} ms/step  ({min(hooked) / min(plain):.3f}x)")


if __name__ == "__main__":
    main()
