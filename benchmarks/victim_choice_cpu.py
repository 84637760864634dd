"""Host time of one online victim choice (RecomputeFirstPolicy.choose_victims), on its own.

    python benchmarks/victim_choice_cpu.py [SRC]

A table of 400 pages of mixed sizes (a quarter clean with a host copy), a
constant rebuild price for two thirds of them, and the policy's default
number of ranked candidates; each choice asks for one average page's
bytes, as the headroom top-up after an operator does. Prints microseconds
per choice, best of five rounds of 20,000. Under pressure on the GPU this
choice runs about once per three operators and the step waits for the host
(docs/BENCHMARKS.md, session 9). SRC puts another copy of deepum's src/
first on the path (another commit), so two trees can be compared on one
machine, one after the other.
"""

import random
import sys
import time

if len(sys.argv) > 1:
    sys.path.insert(0, sys.argv[1])

from deepum.core.config import THRESHOLDS  # noqa: E402
from deepum.core.costs import Costs  # noqa: E402
from deepum.core.pages import Page, PageTable  # noqa: E402
from deepum.core.remat_policy import RecomputeFirstPolicy  # noqa: E402

MB = 1 << 20


def make():
    rng = random.Random(0)
    table = PageTable(1 << 40)
    pages = []
    for key in range(400):
        p = Page(key, rng.randint(1, 64) * MB, skey=key)
        table.add(p)
        if rng.random() < 0.25:
            p.dirty, p.host = False, object()
        p.last_use = rng.randint(0, 1000)
        pages.append(p)
    rebuild = {p.key: (1e-5 if p.key % 3 else None) for p in pages}
    pol = RecomputeFirstPolicy(table, 4, {}, Costs(50e9, 50e9), lambda p: rebuild[p.key],
                               max_candidates=THRESHOLDS.victim_candidates)
    pol.clock = 1000
    return pol, 32 * MB


def main() -> None:
    pol, need = make()
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20_000):
            pol.choose_victims(need)
        rounds.append((time.perf_counter() - t0) / 20_000 * 1e6)
    print(f"{sys.modules['deepum.core.remat_policy'].__file__}: {min(rounds):.2f} us per choice")


if __name__ == "__main__":
    main()
