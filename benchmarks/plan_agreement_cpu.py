"""Does the engine hold what the plan counted? The planned step on the cpu tier.

    python benchmarks/plan_agreement_cpu.py [FRACTION] [SRC]

Trains an HF GPT-2 (4 layers, d=256, batch 8 x 256, bf16 autocast) two steps
unconstrained for its peak, then four under FRACTION of it (default 0.5) with
``plan=True``, and prints, over the planned steps: the operators after which
the engine held more than the plan counted by over 1/64 of the limit
(``plan_over_ops``), the evictions chosen beyond the plan's, and the largest
excess in bytes (measured after each operator, before the plan's evictions
and prefetches for it). SRC puts another copy of deepum's src/ first on the
path (another commit).
"""

import sys

if len(sys.argv) > 2:
    sys.path.insert(0, sys.argv[2])

from cpu_gpt2 import gpt2_step  # noqa: E402

import deepum  # noqa: E402
import deepum.engine.stepplan as stepplan  # noqa: E402


def main() -> None:
    frac = float(sys.argv[1]) if len(sys.argv) > 1 else 0.5
    step = gpt2_step(autocast=True)
    with deepum.oversubscribe(1.0, "cpu") as s:
        for i in range(2):
            step(i)
    peak = s.stats()["peak_managed_bytes"]
    excess = [0]
    original = stepplan.StepPlans._execute

    def execute(self, t):
        if t >= 0:
            excess[0] = max(excess[0], self.pager.table.resident_bytes - self.plan.resident[t])
        return original(self, t)

    stepplan.StepPlans._execute = execute
    with deepum.oversubscribe(int(peak * frac), "cpu", plan=True) as s:
        for i in range(4):
            step(i)
        st = s.stats()
    print(f"{deepum.__file__}: peak {peak / 2**20:.1f} MiB, budget {frac}")
    for k in ("plans", "planned_steps", "plan_departures", "plan_over_ops", "plan_short_evictions", "faults"):
        print(f"  {k:22s} {st.get(k, '-')}")
    print(f"  largest excess         {excess[0] / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
