"""Why a parking session keeps paging: each window's measures as the regions' plan sees them.

Usage: python park_probe.py MODEL FRACTION PLAIN_PEAK_BYTES [STEPS]
Runs MODEL under deepum at FRACTION of PLAIN_PEAK_BYTES (measured by gpu_round's
plain row) and prints, at each window boundary, the bytes moved, the peak
demand and its parts, the plan's parking figures, and the bytes of pages
off the device by kind.
"""

from __future__ import annotations

import collections
import sys

import torch

from deepum.benchsuite.case import run_case
from deepum.core.pages import RESIDENT
from deepum.engine import parking as parking_mod
from deepum.engine import regions as regions_mod
from deepum.engine import watch as watch_mod

GB = 1 << 30


def main() -> None:
    model, fraction, plain = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 else 3
    boundary = regions_mod.Regions.boundary
    paging_peak = watch_mod.Watch._paging_peak

    def logged_peak(self):
        table = self.pager.table
        off = collections.Counter()
        for p in table.pages.values():
            if p.state != RESIDENT:
                off[p.kind.name] += p.nbytes
        wp, demand = table.window_peak_bytes, table.window_demand_bytes
        plans = self.pager.plans
        recorded, born, window_born = plans.demand, plans.demand_born, table.window_born_bytes
        allocated = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        peak = paging_peak(self)
        print(f"  peak {peak / GB:.2f} demand {demand / GB:.2f} recorded {recorded / GB:.2f} "
              f"born {window_born / GB:.1f}/{born / GB:.1f} allocated {allocated / GB:.2f} "
              f"window_resident_peak {wp / GB:.2f} "
              f"reserved {self.signal.window_reserved / GB:.2f} off "
              + " ".join(f"{k}={v / GB:.2f}" for k, v in off.items()), flush=True)
        return peak

    def logged_boundary(self, step_peak=0):
        plan = self.plan
        r = boundary(self, step_peak)
        paging = self.watch.paging if self.watch is not None else None
        print(f"window fwd {self.history[-1][0] / GB if self.history else 0:.2f} paging {paging} "
              f"step_peak {step_peak / GB:.2f} release {plan.release_bytes / GB:.2f} target {plan.target_bytes / GB:.2f} "
              f"park {plan.park / GB:.2f} parkable {plan.parkable / GB:.2f} floor {plan.step_floor / GB:.2f} "
              f"chosen {len(plan.chosen)} dropped {plan.dropped} reserved {torch.cuda.memory_reserved() / GB if torch.cuda.is_available() else 0:.2f}",
              flush=True)
        return r

    set_goal = parking_mod.Parking.set_goal

    def logged_goal(self, nbytes):
        changed = set_goal(self, nbytes)
        if changed:
            print(f"  parking goal {nbytes / GB:.2f}", flush=True)
        return changed

    parking_mod.Parking.set_goal = logged_goal
    dormant_window = regions_mod.Regions.dormant_window

    def logged_dormant(self, reserved, flushes):
        dormant_window(self, reserved, flushes)
        print(f"dormant window reserved {reserved / GB:.2f} flushes {flushes} chosen {len(self.plan.chosen)} "
              f"lowered {self.plan.lowered} park {self.plan.park / GB:.2f}", flush=True)

    regions_mod.Regions.dormant_window = logged_dormant
    watch_mod.Watch._paging_peak = logged_peak
    regions_mod.Regions.boundary = logged_boundary
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    try:
        row = run_case(model, "deepum", int(plain * fraction), device, steps, 20)
    except torch.OutOfMemoryError as e:
        print("OOM:", str(e)[:300])
        return
    print({k: row.get(k) for k in ("median_s", "peak_device_bytes", "paging_stops", "regions", "step_parked_bytes",
                                   "step_bytes_to_host", "step_bytes_to_device", "step_phase_bytes")})


if __name__ == "__main__":
    main()
